"""The library's order-flow counters (orders submitted, acknowledged, canceled, rejected, with an unknown outcome;
fills, filled quantity and notional, fees) derived from the orders freqtrade records and the refusals it logs.

freqtrade records an order only once the venue accepted it, and lists with each trade its open orders and those that
filled (an order canceled before any fill drops out of the list; a trade whose entry never filled is deleted). So:
- a recorded order seen for the first time is submitted and acknowledged; an order the venue refused (freqtrade logs
  why) is submitted and rejected; one whose request got no answer counts as an unknown outcome (freqtrade gives up on
  it without looking it up);
- a fill is a rise of an order's filled amount between two polls (freqtrade keeps no executions, so one order that
  fills in steps the sidecar does not see apart counts once); maker or taker it does not say (`liquidity="unknown"`);
- canceled: an order that is canceled or expired, or an open order that left freqtrade's lists without filling;
- fees: the rise of each trade's entry and exit fee costs (quote currency); a negative one is a rebate.
Counters count what happened while the sidecar watched: what it finds at its first poll is its baseline.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from trading_ops.integrations.freqtrade.logs import OrderProblem
from trading_ops.integrations.freqtrade.poller import symbol_of

# Orders and trades done with are remembered this many at a time, so a trade listed again is not counted twice.
REMEMBERED = 10_000
# Polls in a row an open order must be missing from freqtrade's lists before it counts as canceled: a trade that
# closed between two of a poll's requests is listed neither open nor closed for one poll.
MISSING_POLLS = 2
LIQUIDITY = "unknown"
CANCELED_STATES = ("canceled", "cancelled", "expired")
Labels = tuple[str, ...]


def order_type_of(value: Any) -> str:
    """freqtrade's order type (market, limit, stop_loss_limit, stop-loss, ...) as the library's."""
    text = str(value or "").lower().replace("-", "_")
    if "stop" in text:
        return "stop_limit" if "limit" in text else "stop"
    return text if text in ("market", "limit") else "other"


@dataclass
class _Order:
    symbol: str
    side: str
    order_type: str
    filled: float
    cost: float
    open: bool
    done: bool  # canceled or closed: nothing more will happen to it
    missing: int = 0  # polls in a row that did not list it


class OrderFlow:
    """Counter values by family and label values (venue, strategy, then the family's own labels)."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[Labels, float]] = {}
        self._orders: dict[str, _Order] = {}
        self._fees: dict[int, tuple[float, float]] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()  # order ids of trades that closed or vanished
        self._closed_trades: OrderedDict[int, None] = OrderedDict()

    def add(self, family: str, labels: Labels, amount: float = 1.0) -> None:
        if amount > 0:
            values = self.counts.setdefault(family, {})
            values[labels] = values.get(labels, 0.0) + amount

    def observe(
        self,
        venue: str,
        strategy: str,
        open_trades: Iterable[dict[str, Any]],
        closed_trades: Iterable[dict[str, Any]],
        problems: Iterable[OrderProblem],
        count: bool = True,
    ) -> None:
        """Take a poll: freqtrade's open trades, the trades that closed since the last poll, the order problems its
        log reported since. `count` false takes the baseline."""
        vs = (venue, strategy)
        if count:
            self._count_problems(vs, problems)
        listed: set[str] = set()
        for trade in closed_trades:
            trade_id = trade.get("trade_id")
            if isinstance(trade_id, int) and trade_id in self._closed_trades:
                continue
            listed |= self._trade(vs, trade, count)
            if isinstance(trade_id, int):
                self._remember(self._closed_trades, trade_id)
                self._fees.pop(trade_id, None)
            for order_id in self._order_ids(trade):
                self._orders.pop(order_id, None)
                self._remember(self._finished, order_id)
        open_ids = set()
        for trade in open_trades:
            trade_id = trade.get("trade_id")
            if isinstance(trade_id, int):
                if trade_id in self._closed_trades:
                    continue  # closed since this poll's /status answered
                open_ids.add(trade_id)
            listed |= self._trade(vs, trade, count)
        for trade_id in set(self._fees) - open_ids:
            del self._fees[trade_id]
        self._drop_unlisted(vs, listed, count)

    def _count_problems(self, vs: Labels, problems: Iterable[OrderProblem]) -> None:
        """The order problems freqtrade's log reported: an order whose outcome is unknown, or one the venue
        rejected (submitted, then rejected)."""
        for problem in problems:
            symbol = symbol_of(problem.pair)
            if problem.reason == "unknown_outcome":
                self.add("orders_outcome_unknown", (*vs, symbol))
                continue
            self.add("orders_submitted", (*vs, symbol, problem.side, order_type_of(problem.order_type)))
            self.add("orders_rejected", (*vs, symbol, problem.reason))

    def _drop_unlisted(self, vs: Labels, listed: set[str], count: bool) -> None:
        """Forget the orders freqtrade stopped listing (for MISSING_POLLS polls when counting), an open one counted
        as canceled."""
        for order_id, order in list(self._orders.items()):
            if order_id in listed:
                order.missing = 0
                continue
            order.missing += 1
            if order.missing < MISSING_POLLS and count:
                continue
            # An open order freqtrade no longer lists: canceled before it filled (or its unfilled entry's trade was
            # deleted). A filled one leaves only with its closed trade, handled in observe.
            if order.open and not order.done and count:
                self.add("orders_canceled", (*vs, order.symbol))
            del self._orders[order_id]
            self._remember(self._finished, order_id)

    def _trade(self, vs: Labels, trade: dict[str, Any], count: bool) -> set[str]:
        symbol = symbol_of(str(trade.get("pair", "?")))
        exit_side = "buy" if trade.get("is_short") else "sell"
        listed = set()
        for raw in trade.get("orders") or ():
            if not isinstance(raw, dict) or raw.get("order_id") is None:
                continue
            order_id = str(raw["order_id"])
            listed.add(order_id)
            if order_id in self._finished:
                continue
            side = str(raw.get("ft_order_side") or "")
            side = side if side in ("buy", "sell") else exit_side  # freqtrade's "stoploss" orders exit
            self._order(vs, order_id, raw, symbol, side, count)
        trade_id = trade.get("trade_id")
        if isinstance(trade_id, int):
            fees = (_float(trade.get("fee_open_cost")), _float(trade.get("fee_close_cost")))
            before = self._fees.get(trade_id)
            self._fees[trade_id] = fees
            if count:
                paid = sum(now - then for now, then in zip(fees, before or (0.0, 0.0), strict=True))
                self.add("fees" if paid > 0 else "fee_rebates", (*vs, symbol), abs(paid))
        return listed

    def _order(self, vs: Labels, order_id: str, raw: dict[str, Any], symbol: str, side: str, count: bool) -> None:
        filled, cost = _float(raw.get("filled")), _float(raw.get("cost"))
        status = str(raw.get("status") or "").lower()
        is_open = bool(raw.get("is_open"))
        done = status in CANCELED_STATES or (not is_open and status == "closed")
        order_type = order_type_of(raw.get("order_type"))
        seen = self._orders.get(order_id)
        if seen is None:
            seen = _Order(symbol, side, order_type, 0.0, 0.0, is_open, False)
            if count:
                self.add("orders_submitted", (*vs, symbol, side, order_type))
                self.add("orders_acknowledged", (*vs, symbol, side, order_type))
            else:  # the baseline: what it already filled is history
                seen.filled, seen.cost = filled, cost
            self._orders[order_id] = seen
        if count and filled > seen.filled:
            self.add("fills", (*vs, symbol, side, LIQUIDITY))
            self.add("filled_quantity", (*vs, symbol, side), filled - seen.filled)
            average = _float(raw.get("average")) or _float(raw.get("safe_price"))
            notional = cost - seen.cost if cost > seen.cost else (filled - seen.filled) * average
            self.add("filled_notional", (*vs, symbol, side), notional)
        if count and status in CANCELED_STATES and not seen.done:
            self.add("orders_canceled", (*vs, symbol))
        seen.filled, seen.cost = max(seen.filled, filled), max(seen.cost, cost)
        seen.open, seen.done = is_open, seen.done or done

    @staticmethod
    def _order_ids(trade: dict[str, Any]) -> list[str]:
        return [str(o["order_id"]) for o in trade.get("orders") or () if isinstance(o, dict) and o.get("order_id")]

    @staticmethod
    def _remember(store: OrderedDict[Any, None], key: Any) -> None:
        store[key] = None
        store.move_to_end(key)
        while len(store) > REMEMBERED:
            store.popitem(last=False)


def _float(value: Any) -> float:
    try:
        return float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0
