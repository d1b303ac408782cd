"""ccxt's orders and trades as the library's VenueOrder and VenueFill, and the ids learned on the way: a ccxt trade
carries no client order id, so each order seen leaves its client id (and, for a venue asked per symbol, its symbol)
behind for the trades and lookups that follow.

Apart from the broker because translating at the edge is a job of its own (the amounts exact, the times the venue's)
that every path through the broker shares: a submit's answer, a poll, a lookup, a streamed trade."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from trading_ops.bot.broker import OrderRequest, OrderStatus, OrderType, Side, VenueFill, VenueOrder
from trading_ops.venues.ccxt.symbols import STATUSES, from_ccxt_symbol

MAX_REMEMBERED = 20_000  # client ids and symbols per venue order id


def decimal(value: Any) -> Decimal | None:
    """A ccxt amount (a string: the broker sets the exchange's `number` to `str`) as an exact Decimal, or None."""
    if value is None or value == "":
        return None
    return Decimal(value if isinstance(value, str) else repr(value))


def ms_time(ms: Any) -> datetime | None:
    """ccxt's milliseconds as an aware UTC time; None if absent."""
    return None if ms is None else datetime.fromtimestamp(int(ms) / 1000, UTC)


class Translator:
    """ccxt's raw orders and trades into ours, remembering the last MAX_REMEMBERED venue order ids' client order ids
    ("" for an order the venue does not know: a fill with no order behind it) and ccxt symbols."""

    def __init__(self) -> None:
        self._client_ids: OrderedDict[str, str] = OrderedDict()  # venue order id -> client order id ("" = none)
        self._symbols: OrderedDict[str, str] = OrderedDict()  # venue order id -> its ccxt symbol

    def symbol_of(self, venue_order_id: str) -> str | None:
        """The ccxt symbol an order was last seen on, else None."""
        return self._symbols.get(venue_order_id) if venue_order_id else None

    def unlearned(self, venue_order_ids: Iterable[str]) -> list[str]:
        """The orders (sorted) whose client order id is not known yet: their trades cannot say whose they are."""
        return sorted(v for v in venue_order_ids if v not in self._client_ids)

    def orderless(self, venue_order_ids: Iterable[str]) -> None:
        """Of orders just asked for, those the venue did not know as orders: their fills have no client order id."""
        for vid in venue_order_ids:
            if vid not in self._client_ids:
                _remember(self._client_ids, vid, "")

    def order(self, raw: Mapping[str, Any], request: OrderRequest | None = None) -> VenueOrder:
        """A ccxt order (its ids remembered); what the venue's answer leaves out is the `request`'s, if given."""
        vid = str(raw.get("id") or "")
        cid = raw.get("clientOrderId") or (request.client_order_id if request else "") or self._client_ids.get(vid, "")
        if vid:
            _remember(self._client_ids, vid, cid)
            if raw.get("symbol"):
                _remember(self._symbols, vid, str(raw["symbol"]))
        quantity = decimal(raw.get("amount"))
        filled = decimal(raw.get("filled")) or Decimal(0)
        status = STATUSES.get(raw.get("status") or "")
        if status is None:
            status = OrderStatus.PARTIALLY_FILLED if filled > 0 else OrderStatus.ACKNOWLEDGED
        kind = raw.get("type")
        order_type = OrderType(kind) if kind in ("market", "limit") else (request.order_type if request else None)
        price = decimal(raw.get("price"))
        if order_type is None:
            order_type = OrderType.LIMIT if price else OrderType.MARKET
        symbol = raw.get("symbol")
        side = raw.get("side")
        return VenueOrder(
            client_order_id=cid,
            venue_order_id=vid,
            symbol=from_ccxt_symbol(symbol) if symbol else (request.symbol if request else ""),
            side=Side(side) if side in ("buy", "sell") else (request.side if request else Side.BUY),
            order_type=order_type,
            quantity=quantity if quantity is not None else (request.quantity if request else Decimal(0)),
            price=(price if price else (request.price if request else None)) if order_type is OrderType.LIMIT else None,
            filled_quantity=filled,
            status=status,
            created_at=ms_time(raw.get("timestamp")) or (datetime.now(UTC) if request else None),
        )

    def fill(self, raw: Mapping[str, Any]) -> VenueFill:
        """A ccxt trade, its client order id the one remembered for its order (None: not known)."""
        symbol = from_ccxt_symbol(str(raw.get("symbol") or ""))
        fee = raw.get("fee") or {}
        vid = str(raw.get("order") or "")
        return VenueFill(
            trade_id=str(raw["id"]),
            client_order_id=self._client_ids.get(vid) or None,
            venue_order_id=vid,
            symbol=symbol,
            side=Side(raw["side"]),
            quantity=decimal(raw.get("amount")) or Decimal(0),
            price=decimal(raw.get("price")) or Decimal(0),
            fee=decimal(fee.get("cost")) or Decimal(0),
            fee_asset=str(fee.get("currency") or symbol.partition("-")[2]),
            liquidity=str(raw.get("takerOrMaker") or "taker"),
            executed_at=ms_time(raw.get("timestamp")) or datetime.now(UTC),
        )


def _remember(store: OrderedDict[str, str], key: str, value: str) -> None:
    store[key] = value
    store.move_to_end(key)
    while len(store) > MAX_REMEMBERED:
        store.popitem(last=False)
