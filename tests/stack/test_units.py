"""The local stack runs its children with the shipped systemd units' own settings (stack/units.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trading_ops.stack.profiles import FAST, STANDARD
from trading_ops.stack.units import PAPER_BOT_UNIT_FILE, RECONCILER_UNIT_FILE, UnitFileError, read_policy, timespan


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5), ("2", 2), ("10min", 600), ("1min 30s", 90), ("100ms", 0.1), ("1h", 3600), ("2 d", 172800)],
)
def test_systemd_time_spans(text: str, seconds: float) -> None:
    assert timespan(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5 fortnights", "s5", "5s x"])
def test_what_is_not_a_time_span_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        timespan(text)


def test_the_standard_profile_runs_the_bot_exactly_as_its_unit_says() -> None:
    policy = read_policy(PAPER_BOT_UNIT_FILE, "trading-ops-paper-bot.service", STANDARD)
    assert (policy.notify, policy.watchdog_seconds, policy.restart_seconds) == (True, 30.0, 5.0)
    assert (policy.start_limit_burst, policy.start_limit_interval, policy.start_timeout) == (5, 600.0, 120.0)


def test_the_fast_profile_shortens_the_timings_as_it_shortens_for() -> None:
    bot = read_policy(PAPER_BOT_UNIT_FILE, "trading-ops-paper-bot.service", FAST)
    assert (bot.restart_seconds, bot.watchdog_seconds, bot.start_limit_interval) == (1.0, 10.0, 120.0)
    assert bot.start_limit_burst == 5  # a crash loop still stops after the same number of starts
    # Type=notify: the reconciler is ready once its ledger answered and its port listens.
    reconciler = read_policy(RECONCILER_UNIT_FILE, "trading-ops-reconciler.service", FAST)
    assert (reconciler.notify, reconciler.restart_seconds, reconciler.start_limit_interval) == (True, 1.0, 60.0)


def test_a_unit_that_does_not_restart_on_failure_is_refused(tmp_path: Path) -> None:
    unit = tmp_path / "x.service"
    unit.write_text("[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n")
    with pytest.raises(UnitFileError, match="Restart=no"):
        read_policy(unit, "x.service", STANDARD)
