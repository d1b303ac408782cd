"""End to end for a streaming freqtrade's silent candles: a real freqtrade streaming its candles from the gateway's
WebSocket v2 (tests/deploy/test_freqtrade_streams.py), the `trading-ops freqtrade` sidecar process exporting its
stream state, real Prometheus with the repository's stream rules, Alertmanager with a pager receiver of the test's own,
and the reconciler running the packaged playbook's freqtrade-stream-reconnect rule as it is (tests/freqtrade_stack.py).

Every candle subscription goes silent (the gateway acks them and sends nothing more, heartbeats flowing): freqtrade's
watch waits on it for good, its stream state stale past its timeout: TradingBotStreamChannelStale (job freqtrade)
fires, freqtrade-stream-reconnect asks the sidecar for `reconnect` (the venue checked, then freqtrade's
reload_config: a new ccxt.pro client, fresh watches), and the heal is verified by the alert's own expression: each
pair's candles fresh again. Nothing reaches a person: the pager, a receiver of the test's own, hears nothing.

Needs prometheus and prometheus-alertmanager (Debian packages) and the `freqtrade` extra; waits on freqtrade's
1-minute candles (about six minutes).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator

import pytest
from e2e_stack import DEADLINE_SECONDS
from freqtrade_helpers import until
from freqtrade_stack import Stack, freqtrade_stack, heal
from host_deaths import Pager

# Each test waits on candles (a minute each) and on freqtrade's restarts; its own deadlines below bound it, not the
# suite's 300 s default.
pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.alertmanager, pytest.mark.timeout(900)]

# From the fault to the end of its episodes: the candles' silence timeout (a candle and 20 s: 80 s) from their last
# message, the alert's `for:`, the rule's reconnect (a reload_config: up to a start's time on a busy machine) and its
# verification (each pair's next candle message).
HEAL_DEADLINE_SECONDS = 420.0
# A busy machine starts freqtrade in minutes; its stream state reaches Prometheus after its first candles.
STREAMING_DEADLINE_SECONDS = 240.0
# After the alerts ended: a page already sent has reached the pager by then (alertmanager/alertmanager.yml's pager
# route waits 1 minute for TradingBotFreqtradeDown, which the playbook heals unattended; a group whose alert ended
# before that flushes nothing). The root's group_wait, with 2 s for a page in flight.
PAGER_GROUP_WAIT_SECONDS = 10.0


@pytest.fixture(scope="module")
def pager() -> Iterator[Pager]:
    with Pager() as sink:
        yield sink


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pager: Pager) -> Iterator[Stack]:
    with freqtrade_stack(tmp_path_factory.mktemp("freqtrade-stream-e2e"), stream=True, pager_url=pager.url) as built:
        yield built


def test_silent_candles_are_reconnected_verified_and_page_no_one(stack: Stack, pager: Pager) -> None:
    streaming = f'tradingbot_stream_connected{{instance="{stack.instance}", endpoint="public"}}'
    until("Prometheus sees freqtrade streaming", lambda: stack.scalar(streaming) == 1, STREAMING_DEADLINE_SECONDS)
    fresh = f'tradingbot_stream_last_message_timestamp_seconds{{instance="{stack.instance}", channel="ohlc"}}'
    until("each pair's candle messages in Prometheus", lambda: len(stack.query(fresh)) == 2, STREAMING_DEADLINE_SECONDS)
    started = stack.freqtrade.api("GET", "/health")["bot_startup_ts"]

    healed = heal(
        stack,
        "TradingBotStreamChannelStale",
        lambda: stack.gateway.chaos("ws_silent_channel", channel="ohlc"),
        HEAL_DEADLINE_SECONDS,
    )
    episode = healed.episode
    assert episode["rule"] == "freqtrade-stream-reconnect", episode
    assert episode["labels"]["job"] == "freqtrade" and episode["labels"]["channel"] == "ohlc"
    # The reconnect was freqtrade's reload_config: a new start of the same process, its trades kept.
    assert stack.freqtrade.api("GET", "/health")["bot_startup_ts"] != started and stack.pid() == healed.pid
    assert len(stack.freqtrade.open_trades()) == 2
    print(f"silent candles healed {healed.seconds:.0f} s after the fault")  # noqa: T201 - measured
    # Healed and verified: nothing for a person. freqtrade's API did not answer for the seconds its reload_config took:
    # at the fast profile's `for:` that may fire TradingBotFreqtradeDown (critical; freqtrade-restart waits 10 s before
    # it acts), which resolves once freqtrade answers, within the pager route's wait (a minute): no page goes out.
    until("Alertmanager holds no critical alert", lambda: _critical(stack) == [], DEADLINE_SECONDS)
    time.sleep(PAGER_GROUP_WAIT_SECONDS + 2)
    assert pager.pages == [], pager.notices
    assert stack.pid() == healed.pid  # and nothing restarted it


def _critical(stack: Stack) -> list[dict[str, str]]:
    """The labels of the critical alerts Alertmanager holds (what its pager route takes)."""
    with urllib.request.urlopen(f"{stack.alertmanager}/api/v2/alerts", timeout=5) as resp:
        return [a["labels"] for a in json.loads(resp.read()) if a["labels"].get("severity") == "critical"]
