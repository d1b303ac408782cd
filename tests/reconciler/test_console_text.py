"""What the operator console says in words: its one time format and relative times, an outcome read back from what the
verification writes (its own formatters: a change of wording there fails here), money and positions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from trading_ops.reconciler.console_text import (
    absolute,
    amount,
    as_utc,
    number,
    outcome,
    quantity,
    quote_of,
    relative,
    span,
)
from trading_ops.reconciler.verify import UNVERIFIED, clear_detail, deadline_detail, resolved_detail, with_source

NOW = datetime(2026, 11, 26, 20, 58, 30, 973558, tzinfo=UTC)
QUERY = 'tradingbot_daily_loss_limit_breached{job="trading-bot"} == 1'


def test_one_format_for_every_time_whatever_the_ledger_gives() -> None:
    for given in (NOW, NOW.replace(tzinfo=None), "2026-11-26T20:58:30.973558+00:00", "2026-11-26T20:58:30.973558Z"):
        at = as_utc(given)
        assert at is not None and absolute(at) == "2026-11-26 20:58:30 UTC"
    assert absolute(datetime(2026, 11, 26, 21, 58, 30, tzinfo=UTC).astimezone(UTC)) == "2026-11-26 21:58:30 UTC"
    assert as_utc("not a time") is None and as_utc(None) is None and as_utc("") is None


@pytest.mark.parametrize(
    ("delta", "said"),
    [
        (timedelta(minutes=12), "in 12 min"),
        (timedelta(minutes=12, seconds=-0.4), "in 12 min"),  # rendered a moment after it was asked
        (-timedelta(minutes=3), "3 min ago"),
        (timedelta(seconds=40), "in 40 s"),
        (timedelta(seconds=2), "just now"),
        (-timedelta(seconds=2), "just now"),
        (-timedelta(hours=2, minutes=5), "2 h 5 min ago"),
        (timedelta(hours=3), "in 3 h"),
        (-timedelta(days=3, hours=4), "3 d 4 h ago"),
    ],
)
def test_relative_times_as_a_person_says_them(delta: timedelta, said: str) -> None:
    assert relative(NOW + delta, NOW) == said


def test_span_never_says_sixty_minutes() -> None:
    assert span(3599) == "1 h" and span(59.6) == "1 min" and span(89) == "1 min"


def test_a_verified_recovery_is_said_in_words_with_its_query_apart() -> None:
    told = outcome(with_source(clear_detail(QUERY, True), "prometheus_rules"))
    assert told.words == (
        "Recovered: after the action, Prometheus no longer finds the alert's condition and the alert resolved."
    )
    assert (told.query, told.source) == (QUERY, "prometheus_rules")
    assert QUERY not in told.words and "[expression" not in told.words


def test_a_failed_verification_says_how_long_it_waited() -> None:
    detail = deadline_detail(60, "1 series of this alert still match", QUERY)
    told = outcome("after 2 attempt(s): " + with_source(detail, "playbook"))
    assert told.words == (
        "after 2 attempt(s): Not recovered: the alert's condition still held 1 min after the action "
        "(1 series of this alert still match)."
    )
    assert told.query == QUERY and told.source == "playbook"


def test_other_outcomes() -> None:
    resolved = outcome(with_source(resolved_detail("1 series of this alert still match"), "playbook"))
    assert resolved.words.startswith("The alert resolved while the reconciler was checking its action")
    assert resolved.query == ""
    assert outcome(UNVERIFIED).words == (
        "Done: every step succeeded (this rule does not check the result in Prometheus)."
    )
    assert outcome("approval 3 rejected by alice").words == "approval 3 rejected by alice"  # not ours: as it is
    assert outcome(None).words == ""
    waiting = outcome("awaiting approval 3 for bot command=flatten until 2026-11-26T21:08:30.973558+00:00", NOW)
    assert waiting.words == "awaiting approval 3 for bot command=flatten until 2026-11-26 21:08:30 UTC (in 10 min)"
    then = outcome(with_source(clear_detail("up == 0", False), "playbook") + "; on_recovery: resume failed")
    assert then.words.endswith("Then: on_recovery: resume failed.") and then.query == "up == 0"


def test_money_and_positions() -> None:
    assert amount(Decimal("-1234.5")) == "-1,234.50" and amount(Decimal("2500")) == "2,500.00"
    assert quantity(Decimal("-0.40650000")) == "-0.4065" and quantity(Decimal("3")) == "3"
    assert number("-0.4065") == Decimal("-0.4065") and number(2500.0) == Decimal("2500.0")
    assert number(True) is None and number("NaN") is None and number("x") is None and number(None) is None
    assert quote_of("ETH-USD") == "USD" and quote_of("BTC/USD") == "USD" and quote_of("BTC/USDT:USDT") == "USDT"
    assert quote_of("XBTUSD") == ""
