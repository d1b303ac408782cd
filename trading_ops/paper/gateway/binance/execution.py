"""An account's order events as the user data stream's `executionReport`s: NEW when an order is first seen, TRADE
for each fill (with the order's state after it), CANCELED; each with Binance's one-letter fields."""

from __future__ import annotations

from collections import OrderedDict
from decimal import Decimal
from typing import Any

from trading_ops.bot.broker import OrderStatus, OrderType, VenueFill, VenueOrder
from trading_ops.paper.gateway.binance.market import trade_number
from trading_ops.paper.gateway.binance.symbols import Symbols, fmt
from trading_ops.paper.gateway.binance.trading import STATUS, ms, order_number

ZERO = Decimal(0)
MAX_ANNOUNCED = 100_000  # orders remembered as announced (a venue keeps at most 1000 closed ones per account)


class ExecutionReports:
    """Which orders each account's stream has announced, and the reports of what happens to them."""

    def __init__(self, symbols: Symbols) -> None:
        self.symbols = symbols
        self._announced: OrderedDict[str, None] = OrderedDict()  # venue order ids (unique across accounts)
        self._quote_filled: dict[str, Decimal] = {}  # venue order id -> cumulative quote quantity

    def on_order(self, order: VenueOrder, now: int) -> list[dict[str, Any]]:
        """The reports an order update makes: NEW the first time, CANCELED when canceled; fills report themselves."""
        if order.status is OrderStatus.REJECTED or order.symbol not in self.symbols.by_symbol:
            return []
        if order.status is OrderStatus.FILLED:
            return []  # its fill reports it (with a NEW first if it was never announced)
        reports = []
        if self._announce(order.venue_order_id):
            new = self._report(order, "NEW", "NEW", now, ZERO)
            new["z"] = fmt(ZERO)
            reports.append(new)
        if order.status is OrderStatus.CANCELED:
            reports.append(self._report(order, "CANCELED", "CANCELED", now, ZERO))
            reports[-1]["C"] = order.client_order_id
            self._quote_filled.pop(order.venue_order_id, None)
        return reports

    def on_fill(self, order: VenueOrder | None, fill: VenueFill, now: int) -> list[dict[str, Any]]:
        """A TRADE report for `fill` of `order` (its state after the fill); NEW first if never announced."""
        if order is None or order.symbol not in self.symbols.by_symbol:
            return []
        reports = []
        if self._announce(order.venue_order_id):
            new = self._report(order, "NEW", "NEW", now, ZERO)
            new["z"], new["Z"] = fmt(ZERO), fmt(ZERO)
            reports.append(new)
        cumulative = self._quote_filled.get(order.venue_order_id, ZERO) + fill.quantity * fill.price
        self._quote_filled[order.venue_order_id] = cumulative
        trade = self._report(order, "TRADE", STATUS[order.status], now, cumulative)
        trade.update(
            {
                "l": fmt(fill.quantity),
                "L": fmt(fill.price),
                "n": fmt(fill.fee),
                "N": fill.fee_asset,
                "T": int(fill.executed_at.timestamp() * 1000),
                "t": trade_number(fill.trade_id),
                "m": fill.liquidity == "maker",
                "Y": fmt(fill.quantity * fill.price),
            }
        )
        reports.append(trade)
        if not order.status.is_open:
            self._quote_filled.pop(order.venue_order_id, None)
        return reports

    def _announce(self, venue_order_id: str) -> bool:
        """True the first time an order is seen (its NEW is owed); the oldest are forgotten past MAX_ANNOUNCED."""
        if venue_order_id in self._announced:
            return False
        self._announced[venue_order_id] = None
        if len(self._announced) > MAX_ANNOUNCED:
            self._announced.popitem(last=False)
        return True

    def _report(
        self, order: VenueOrder, execution: str, status: str, now: int, quote_filled: Decimal
    ) -> dict[str, Any]:
        sym = self.symbols.by_symbol[order.symbol]
        return {
            "e": "executionReport",
            "E": now,
            "s": sym.id,
            "c": order.client_order_id,
            "S": order.side.value.upper(),
            "o": "MARKET" if order.order_type is OrderType.MARKET else "LIMIT",
            "f": "GTC",
            "q": fmt(order.quantity),
            "p": fmt(order.price if order.price is not None else ZERO),
            "P": fmt(ZERO),
            "F": fmt(ZERO),
            "g": -1,
            "C": "",
            "x": execution,
            "X": status,
            "r": "NONE",
            "i": order_number(order),
            "l": fmt(ZERO),
            "z": fmt(order.filled_quantity),
            "L": fmt(ZERO),
            "n": "0",
            "N": None,
            "T": now,
            "t": -1,
            "v": 0,
            "I": order_number(order),
            "w": order.status.is_open,
            "m": False,
            "M": False,
            "O": ms(order.created_at),
            "Z": fmt(quote_filled),
            "Y": fmt(ZERO),
            "Q": fmt(ZERO),
            "W": ms(order.created_at),
            "V": "NONE",
        }
