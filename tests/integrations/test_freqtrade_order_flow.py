"""The library's order-flow counters from freqtrade's trades (trading_ops.integrations.freqtrade.order_flow), poll by
poll, with trades shaped as freqtrade 2026.9's /status and /trades list them.
tests/integrations/test_freqtrade_sidecar.py checks the same counters against a real freqtrade on the gateway; these
cases pin what a poll that sees a change half done (a trade closed between two of its requests, an answer listed again)
must not do: count twice, or count a fill as a cancel."""

from __future__ import annotations

from typing import Any

from trading_ops.integrations.freqtrade.logs import OrderProblem
from trading_ops.integrations.freqtrade.order_flow import OrderFlow, order_type_of

VS = ("kraken", "S")


def order(order_id: str, side: str = "buy", filled: float = 0.0, is_open: bool = True, **extra: Any) -> dict[str, Any]:
    status = "open" if is_open else "closed"
    return {
        "order_id": order_id,
        "ft_order_side": side,
        "order_type": "market",
        "status": status,
        "is_open": is_open,
        "filled": filled,
        "cost": filled * 100.0,
        **extra,
    }


def trade(
    trade_id: int, *orders: dict[str, Any], fee_open: float | None = None, fee_close: float | None = None
) -> dict:
    return {
        "trade_id": trade_id,
        "pair": "BTC/USD",
        "orders": list(orders),
        "fee_open_cost": fee_open,
        "fee_close_cost": None,
    }


def count(flow: OrderFlow, family: str) -> float:
    return sum(flow.counts.get(family, {}).values())


def test_what_the_first_poll_finds_is_history_then_everything_counts_once() -> None:
    flow = OrderFlow()
    flow.observe(*VS, [trade(1, order("E1", filled=1.0, is_open=False), fee_open=0.05)], [], [], count=False)
    assert flow.counts == {}
    # The trade's exit fills: one sell submitted, acknowledged, filled; the exit fee counted, not the entry's again.
    exited = trade(1, order("E1", filled=1.0, is_open=False), order("X1", "sell", 1.0, False), fee_open=0.05)
    exited["fee_close_cost"] = 0.06
    flow.observe(*VS, [exited], [], [])
    flow.observe(*VS, [exited], [], [])  # listed again: nothing new
    assert flow.counts["orders_submitted"] == {(*VS, "BTC-USD", "sell", "market"): 1.0}
    assert flow.counts["fills"] == {(*VS, "BTC-USD", "sell", "unknown"): 1.0}
    assert flow.counts["filled_quantity"] == {(*VS, "BTC-USD", "sell"): 1.0}
    assert flow.counts["filled_notional"] == {(*VS, "BTC-USD", "sell"): 100.0}
    assert count(flow, "fees") == 0.06


def test_a_partial_fill_then_the_rest_are_two_fills_of_one_order() -> None:
    flow = OrderFlow()
    flow.observe(*VS, [], [], [], count=False)
    flow.observe(*VS, [trade(2, order("L1", filled=0.4))], [], [])
    flow.observe(*VS, [trade(2, order("L1", filled=1.0, is_open=False))], [], [])
    assert count(flow, "orders_submitted") == 1 and count(flow, "fills") == 2
    assert count(flow, "filled_quantity") == 1.0 and count(flow, "filled_notional") == 100.0


def test_a_trade_that_closed_between_two_requests_is_not_a_cancel() -> None:
    flow = OrderFlow()
    flow.observe(*VS, [], [], [], count=False)
    flow.observe(*VS, [trade(3, order("E3", filled=1.0, is_open=False), order("X3", "sell"))], [], [])
    # Next poll: /status no longer lists the trade, /profit did not count it closed yet: one poll of grace ...
    flow.observe(*VS, [], [], [])
    assert count(flow, "orders_canceled") == 0
    # ... and the poll after fetches it closed: its exit filled.
    closed = trade(3, order("E3", filled=1.0, is_open=False), order("X3", "sell", 1.0, False))
    flow.observe(*VS, [], [closed], [])
    flow.observe(*VS, [], [closed], [])  # the next answer overlaps: listed again, counted once
    assert count(flow, "orders_canceled") == 0
    # The entry (filled when first seen) and the exit, each once.
    assert flow.counts["fills"] == {(*VS, "BTC-USD", "buy", "unknown"): 1.0, (*VS, "BTC-USD", "sell", "unknown"): 1.0}


def test_an_open_order_that_leaves_freqtrade_unfilled_was_canceled() -> None:
    flow = OrderFlow()
    flow.observe(*VS, [], [], [], count=False)
    flow.observe(*VS, [trade(4, order("L4", order_type="limit"))], [], [])
    flow.observe(*VS, [], [], [])  # freqtrade deleted the trade whose entry never filled
    flow.observe(*VS, [], [], [])
    assert flow.counts["orders_canceled"] == {(*VS, "BTC-USD"): 1.0}
    assert flow.counts["orders_submitted"] == {(*VS, "BTC-USD", "buy", "limit"): 1.0}
    assert "fills" not in flow.counts
    # A partly filled order canceled stays listed with its status: canceled once, its fill counted.
    flow.observe(*VS, [trade(5, order("L5", filled=0.3, is_open=False, status="canceled"))], [], [])
    flow.observe(*VS, [trade(5, order("L5", filled=0.3, is_open=False, status="canceled"))], [], [])
    assert count(flow, "orders_canceled") == 2 and count(flow, "fills") == 1


def test_refused_and_unanswered_orders_from_the_log() -> None:
    flow = OrderFlow()
    problems = [
        OrderProblem(1.0, "ETH/USD", "buy", "market", "insufficient_funds"),
        OrderProblem(2.0, "ETH/USD", "sell", "", "unknown_outcome"),
    ]
    flow.observe(*VS, [], [], problems, count=False)  # history: not counted
    assert flow.counts == {}
    flow.observe(*VS, [], [], problems)
    assert flow.counts["orders_rejected"] == {(*VS, "ETH-USD", "insufficient_funds"): 1.0}
    assert flow.counts["orders_submitted"] == {(*VS, "ETH-USD", "buy", "market"): 1.0}
    assert flow.counts["orders_outcome_unknown"] == {(*VS, "ETH-USD"): 1.0}


def test_freqtrade_order_types_as_the_librarys() -> None:
    assert [order_type_of(t) for t in ("market", "limit", "stop_loss_limit", "stop-loss", "weird", None)] == [
        "market",
        "limit",
        "stop_limit",
        "stop",
        "other",
        "other",
    ]
