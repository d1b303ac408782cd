"""The trading loop's reading of the venue's clock (trading_ops/bot/loop.py): one reading's offset is the bound nearest
zero, so a slow round trip or a whole-second venue clock never reads as skew. The loop itself runs in every runtime
test (tests/bot/test_runtime.py, test_dead_man_switch.py: a hung loop stops refreshing the switch)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from trading_ops.bot.loop import clock_offset


def test_clock_offset_is_the_bound_nearest_zero_of_what_one_reading_allows() -> None:
    sent = datetime(2026, 1, 1, 0, 0, 10, 200000, tzinfo=UTC)
    received = datetime(2026, 1, 1, 0, 0, 10, 900000, tzinfo=UTC)  # a 0.7 s round trip
    exact = datetime(2026, 1, 1, 0, 0, 10, 500000, tzinfo=UTC)
    assert clock_offset(sent, received, exact) == 0.0  # the venue read its clock within the round trip
    assert clock_offset(sent, received, datetime(2026, 1, 1, 0, 0, 8, tzinfo=UTC)) == pytest.approx(2.2)
    assert clock_offset(sent, received, datetime(2026, 1, 1, 0, 0, 13, tzinfo=UTC)) == pytest.approx(-2.1)
    # Whole seconds: an answer of 10 s may mean 10.999 s.
    assert clock_offset(sent, received, datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC), 1.0) == 0.0
    assert clock_offset(sent, received, datetime(2026, 1, 1, 0, 0, 8, tzinfo=UTC), 1.0) == pytest.approx(1.2)
