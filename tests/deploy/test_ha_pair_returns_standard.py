"""A returning host is never paged by the Prometheus pair and the Alertmanager cluster at the standard profile (every
timing as shipped: 5 s scrapes, `for: 10s`, the cluster's 15 s peer timeout, the pages' 20 s group interval): neither
its host-down page nor the reconciler's exposure page, over ten deaths and returns. The fast profile's run is
tests/deploy/test_ha_pair_returns.py (`make test`); this one waits out the shipped timers (about a minute and a
half), so it runs in `make test-deploy` (CI runs both).

TRADING_OPS_HA_PAIR_STANDARD_SEQUENCES=1 gives it the fast profile's sequences (five hosts each dead twice, three of
them again as soon as their end reached the pager): about a minute more. Without it, ten hosts die once each
(docs/development.md).

Needs real servers, started here on 127.0.0.1: Debian's prometheus (2.42) and the long-term-support 3.5 (`make
monitoring-lts`), two of Debian's prometheus-alertmanager gossiping as a cluster, and the reconciler
(tests/ha_pair_returns.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ha_pair_returns import live_and_judge, sequences

from trading_ops.stack.profiles import STANDARD

pytestmark = [pytest.mark.prometheus, pytest.mark.alertmanager, pytest.mark.slow]

# The fast profile's sequences at the standard profile, on request.
AGAIN = os.environ.get("TRADING_OPS_HA_PAIR_STANDARD_SEQUENCES", "") not in ("", "0")


def test_a_returning_host_pages_nothing_and_each_death_pages_once_at_the_standard_profile(tmp_path: Path) -> None:
    """Ten deaths and returns at the shipped timings (ten hosts dead once, two of them a freqtrade's; with
    TRADING_OPS_HA_PAIR_STANDARD_SEQUENCES=1, five hosts dead twice): each death paged once by its host-down page and
    once by its exposure page, on time, no return paged, no alert firing after its resolution, the last word
    "resolved", nothing else paged (ha_pair_returns.live_and_judge)."""
    live_and_judge(tmp_path, {STANDARD: sequences(STANDARD, again=AGAIN)})
