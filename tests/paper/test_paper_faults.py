"""The fault model the paper venue and the Kraken gateway share (trading_ops.paper.faults), on a clock of its own."""

from __future__ import annotations

import math

from trading_ops.paper.faults import UNTIL_HEALED, FaultModel


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_timed_fault_runs_out_but_its_deadline_stays_until_ended() -> None:
    """A reader can tell a fault that ran out from one that never was (the gateway logs an outage's end)."""
    clock = Clock()
    model = FaultModel(clock)
    assert model.until("outage") == 0.0 and not model.active("outage")
    assert model.start("outage", 5) == 105.0
    assert model.active("outage") and model.remaining("outage") == 5.0
    clock.now = 105.0
    assert not model.active("outage") and model.remaining("outage") is None
    assert model.until("outage") == 105.0  # ran out, still stored
    assert model.end("outage") is True
    assert model.until("outage") == 0.0 and model.end("outage") is False


def test_a_fault_without_seconds_lasts_until_healed() -> None:
    clock = Clock()
    model = FaultModel(clock)
    model.start("drop_connection")
    clock.now += 1e9
    assert model.active("drop_connection") and model.until("drop_connection") == UNTIL_HEALED
    assert model.remaining("drop_connection") == math.inf
    model.end("drop_connection")
    assert not model.active("drop_connection")


def test_subjects_are_kept_apart_and_listed_sorted() -> None:
    clock = Clock()
    model = FaultModel(clock)
    model.start("stale", subject="SOL-USD")
    model.start("stale", 1, subject="BTC-USD")
    model.start("fail_query", 10, subject="positions")
    assert model.subjects("stale") == ["BTC-USD", "SOL-USD"]
    assert model.active("stale", "BTC-USD") and not model.active("stale", "ETH-USD") and not model.active("stale")
    clock.now += 2
    assert model.subjects("stale") == ["BTC-USD", "SOL-USD"]  # stored, one of them run out
    assert model.subjects("stale", active_only=True) == ["SOL-USD"]
    assert model.subjects("fail_query", active_only=True) == ["positions"]


def test_a_counted_fault_breaks_exactly_the_next_n_calls_and_keeps_its_detail() -> None:
    model = FaultModel(Clock())
    assert model.take("nonce") is False
    model.add("lost_reply", 2, detail=("timeout", 3.0))
    model.add("lost_reply", 1)  # on top of those owed, the detail kept
    assert model.count("lost_reply") == 3
    assert [model.take("lost_reply") for _ in range(4)] == [True, True, True, False]
    assert model.count("lost_reply") == 0 and model.detail("lost_reply") == ("timeout", 3.0)


def test_clear_ends_everything_details_included() -> None:
    model = FaultModel(Clock())
    model.start("reject_orders", 60, detail="venue_busy")
    model.add("invalid_order", 3)
    model.clear()
    assert not model.active("reject_orders") and model.detail("reject_orders", default="none") == "none"
    assert model.count("invalid_order") == 0 and model.subjects("reject_orders") == []
