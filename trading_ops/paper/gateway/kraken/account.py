"""The Kraken gateway's private endpoints: one account's balances, orders and trades as Kraken serves them, each a
translation of one paper-venue call into Kraken's response shape and error strings."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from trading_ops.bot.broker import BrokerError, OrderRequest, OrderStatus, OrderType, Side, VenueFill, VenueOrder
from trading_ops.paper.dead_man import MAX_CANCEL_AFTER_SECONDS
from trading_ops.paper.gateway.kraken.api import (
    E_BUSY,
    E_INSUFFICIENT_FUNDS,
    E_INVALID_ARGUMENTS,
    E_INVALID_ORDER,
    E_INVALID_PRICE,
    E_ORDER_MINIMUM,
    E_ORDER_RATE_LIMIT,
    E_PRICE_DECIMALS,
    E_UNAVAILABLE,
    E_UNKNOWN_ORDER,
    KrakenError,
    Pair,
    Pairs,
    asset_id,
    count_param,
    decimal_param,
    flag,
    num,
    rfc3339,
    seconds_param,
    ts,
)
from trading_ops.paper.gateway.kraken.faults import GatewayFaults
from trading_ops.paper.venue import PaperVenue

PAGE_SIZE = 50  # ClosedOrders and TradesHistory answer at most this many per call
MAX_OFFSET = 10**9  # an `ofs` past this is no offset
MAX_QUERY_IDS = 50  # QueryOrders takes at most this many txids
# How Kraken refuses what the paper venue rejects (the order then never existed).
REJECT_ERRORS = {
    "insufficient_funds": E_INSUFFICIENT_FUNDS,
    "venue_busy": E_BUSY,
    "price_out_of_band": E_INVALID_PRICE,
    "reduce_only": E_INVALID_ORDER,
}
# The venue's client order id of an order sent without one (Kraken's cl_ord_id is optional); never shown.
ANONYMOUS_PREFIX = "anonymous:"


def _page(items: list[Any], params: Mapping[str, str]) -> list[Any]:
    offset = count_param(params, "ofs", 0, MAX_OFFSET)
    return items[offset : offset + PAGE_SIZE]


class AccountEndpoints:
    """The private endpoints; each takes the account (paper venue) of the key that signed the call. An order that
    the venue rejects never existed for Kraken: AddOrder answers the error and the order is not listed."""

    def __init__(self, pairs: Pairs, faults: GatewayFaults) -> None:
        self.pairs = pairs
        self.faults = faults

    # -- endpoints --------------------------------------------------------------------------------------------
    async def balance(self, venue: PaperVenue, _params: Mapping[str, str]) -> dict[str, str]:
        return {asset_id(a): num(b) for a, b in (await venue.balances()).items()}

    async def balance_ex(self, venue: PaperVenue, _params: Mapping[str, str]) -> dict[str, Any]:
        balances = await venue.balances()
        held = venue.reserved()
        return {
            asset_id(a): {"balance": num(b), "hold_trade": num(held.get(a, Decimal(0)))} for a, b in balances.items()
        }

    async def add_order(self, venue: PaperVenue, params: Mapping[str, str]) -> dict[str, Any]:
        pair, side, kind, volume, price = self._order_params(venue, params)
        if flag(params, "validate"):
            return {"descr": {"order": self._description(side, volume, pair, kind, price)}}
        self.faults.check_order()
        cid = params.get("cl_ord_id", "")
        if cid.startswith(ANONYMOUS_PREFIX):
            raise KrakenError(f"{E_INVALID_ARGUMENTS}:cl_ord_id")
        if not cid:  # Kraken takes orders without one; the venue needs one: an internal id, never shown
            cid = f"{ANONYMOUS_PREFIX}{uuid.uuid4().hex}"
        request = OrderRequest(
            client_order_id=cid,
            symbol=pair.symbol,
            side=Side(side),
            order_type=OrderType(kind),
            quantity=volume,
            price=price,
            reduce_only=flag(params, "reduce_only"),
        )
        try:
            order = await venue.submit(request)
        except BrokerError as exc:
            raise self._venue_error(exc) from None
        if order.status is OrderStatus.REJECTED:
            raise KrakenError(REJECT_ERRORS.get(order.reject_reason or "", E_INVALID_ORDER))
        answer: dict[str, Any] = {
            "descr": {"order": self._description(side, order.quantity, pair, kind, order.price)},
            "txid": [order.venue_order_id],
        }
        if not order.client_order_id.startswith(ANONYMOUS_PREFIX):
            answer["cl_ord_id"] = order.client_order_id
        return answer

    def _order_params(
        self, venue: PaperVenue, params: Mapping[str, str]
    ) -> tuple[Pair, str, str, Decimal, Decimal | None]:
        """The pair, side, order type, volume and price of an AddOrder, checked as Kraken checks them."""
        pair = self.pairs.one(params)
        side, kind = params.get("type", ""), params.get("ordertype", "")
        if side not in ("buy", "sell"):
            raise KrakenError(f"{E_INVALID_ARGUMENTS}:type")
        if kind not in ("market", "limit"):
            raise KrakenError(f"{E_INVALID_ARGUMENTS}:ordertype")
        volume = decimal_param(params, "volume")
        if volume is None or volume <= 0:
            raise KrakenError(f"{E_INVALID_ARGUMENTS}:volume")
        if volume < venue.step_size(pair.symbol):
            raise KrakenError(E_ORDER_MINIMUM)
        price = decimal_param(params, "price") if kind == "limit" else None
        if kind == "limit" and (price is None or price <= 0):
            raise KrakenError(f"{E_INVALID_ARGUMENTS}:price")
        tick = venue.tick_size(pair.symbol)
        if price is not None and price % tick != 0:
            decimals = max(0, -int(tick.as_tuple().exponent))
            raise KrakenError(E_PRICE_DECIMALS.format(pair=pair.pair_id, decimals=decimals))
        return pair, side, kind, volume, price

    @staticmethod
    def _venue_error(exc: BrokerError) -> KrakenError:
        if exc.error_class == "rate_limit":
            return KrakenError(E_ORDER_RATE_LIMIT)
        if exc.error_class in ("network", "unavailable"):
            return KrakenError(E_UNAVAILABLE)
        if "duplicate" in str(exc):
            return KrakenError(f"{E_INVALID_ARGUMENTS}:cl_ord_id")
        return KrakenError(E_INVALID_ARGUMENTS)

    @staticmethod
    def _description(side: str, volume: Decimal, pair: Pair, kind: str, price: Decimal | None) -> str:
        text = f"{side} {volume:.8f} {pair.altname} @ {kind}"
        return text if price is None else f"{text} {num(price)}"

    @staticmethod
    def _find(venue: PaperVenue, params: Mapping[str, str]) -> VenueOrder | None:
        orders = {o.venue_order_id: o for o in venue.orders() if o.status is not OrderStatus.REJECTED}
        txid = params.get("txid", "")
        if txid:
            return orders.get(txid)
        cid = params.get("cl_ord_id", "")
        if not cid or cid.startswith(ANONYMOUS_PREFIX):
            return None
        return next((o for o in orders.values() if o.client_order_id == cid), None)

    async def cancel_order(self, venue: PaperVenue, params: Mapping[str, str]) -> dict[str, Any]:
        if not params.get("txid") and not params.get("cl_ord_id"):
            raise KrakenError(f"{E_INVALID_ARGUMENTS}:txid")
        order = self._find(venue, params)
        if order is None or not order.status.is_open:
            raise KrakenError(E_UNKNOWN_ORDER)
        try:
            await venue.cancel(venue_order_id=order.venue_order_id)
        except BrokerError as exc:
            raise self._venue_error(exc) from None
        return {"count": 1, "pending": False}

    async def cancel_all(self, venue: PaperVenue, _params: Mapping[str, str]) -> dict[str, Any]:
        count = 0
        for order in await venue.open_orders():
            try:
                await venue.cancel(venue_order_id=order.venue_order_id)
            except BrokerError as exc:
                raise self._venue_error(exc) from None
            count += 1
        return {"count": count}

    async def cancel_all_orders_after(self, venue: PaperVenue, params: Mapping[str, str]) -> dict[str, str]:
        """Kraken's dead man's switch for the account of the key: `timeout` whole seconds (0 disarms, under a day);
        `currentTime` and `triggerTime` in RFC 3339 to the second, `triggerTime` "0" when disarmed. Every key of the
        account arms, pushes back and disarms the one timer; at the trigger every open order of the account is
        canceled."""
        raw = params.get("timeout", "")
        # Its length first: int() of thousands of digits raises (and takes time) before any bound is checked.
        digits = raw.isascii() and raw.isdigit() and len(raw.lstrip("0")) <= len(str(MAX_CANCEL_AFTER_SECONDS))
        if not digits or int(raw) >= MAX_CANCEL_AFTER_SECONDS:
            # Kraken's bare string here (ccxt's BadRequest), not the field-named one its order validation answers.
            raise KrakenError(E_INVALID_ARGUMENTS)
        try:
            now, trigger = await venue.cancel_all_orders_after(int(raw))
        except BrokerError as exc:
            raise self._venue_error(exc) from None
        return {"currentTime": rfc3339(now), "triggerTime": "0" if trigger is None else rfc3339(trigger)}

    @staticmethod
    async def _fills_by_order(venue: PaperVenue) -> dict[str, list[VenueFill]]:
        by_order: dict[str, list[VenueFill]] = {}
        for fill in await venue.recent_fills():
            by_order.setdefault(fill.venue_order_id, []).append(fill)
        return by_order

    def _order_info(self, order: VenueOrder, fills: list[VenueFill], trades: bool) -> dict[str, Any]:
        pair = self.pairs.by_symbol[order.symbol]
        cost = sum((f.quantity * f.price for f in fills), Decimal(0))
        fee = sum((f.fee for f in fills), Decimal(0))
        average = cost / order.filled_quantity if order.filled_quantity else Decimal(0)
        if order.status.is_open:
            status = "open"
        else:
            status = "closed" if order.status is OrderStatus.FILLED else "canceled"
        price = num(order.price) if order.price is not None else "0"
        kind = order.order_type.value
        info: dict[str, Any] = {
            "refid": None,
            "userref": None,
            "status": status,
            "opentm": ts(order.created_at),
            "starttm": 0,
            "expiretm": 0,
            "descr": {
                "pair": pair.altname,
                "type": order.side.value,
                "ordertype": kind,
                "price": price,
                "price2": "0",
                "leverage": "none",
                "order": self._description(order.side.value, order.quantity, pair, kind, order.price),
                "close": "",
            },
            "vol": num(order.quantity),
            "vol_exec": num(order.filled_quantity),
            "cost": num(cost),
            "fee": num(fee),
            "price": num(average.quantize(Decimal("1e-10")) if average else average),
            "stopprice": "0",
            "limitprice": "0",
            "misc": "",
            "oflags": "fciq",
        }
        if not order.client_order_id.startswith(ANONYMOUS_PREFIX):
            info["cl_ord_id"] = order.client_order_id
        if not order.status.is_open:
            # The time it closed: its last fill for a filled order, the cancel for a canceled one (an order from a
            # state file older than closed_at: its last fill, or its creation).
            closed = order.closed_at or (fills[-1].executed_at if fills else order.created_at)
            info["closetm"] = ts(closed)
            info["reason"] = None if status == "closed" else "User requested"
        if trades and fills:
            info["trades"] = [f.trade_id for f in fills]
        return info

    def _matches(self, order: VenueOrder, params: Mapping[str, str]) -> bool:
        if order.status is OrderStatus.REJECTED:
            return False
        cid = params.get("cl_ord_id", "")
        return not cid or (order.client_order_id == cid and not cid.startswith(ANONYMOUS_PREFIX))

    async def open_orders(self, venue: PaperVenue, params: Mapping[str, str]) -> dict[str, Any]:
        fills = await self._fills_by_order(venue)
        trades = flag(params, "trades")
        return {
            "open": {
                o.venue_order_id: self._order_info(o, fills.get(o.venue_order_id, []), trades)
                for o in await venue.open_orders()
                if self._matches(o, params)
            }
        }

    async def closed_orders(self, venue: PaperVenue, params: Mapping[str, str]) -> dict[str, Any]:
        fills = await self._fills_by_order(venue)
        trades = flag(params, "trades")
        start, end = seconds_param(params, "start"), seconds_param(params, "end")
        closed = []
        for order in reversed(venue.orders()):  # newest first
            if order.status.is_open or not self._matches(order, params):
                continue
            opened = ts(order.created_at)
            if (start is not None and opened <= start) or (end is not None and opened > end):
                continue
            closed.append(order)
        page = _page(closed, params)
        return {
            "closed": {o.venue_order_id: self._order_info(o, fills.get(o.venue_order_id, []), trades) for o in page},
            "count": len(closed),
        }

    async def query_orders(self, venue: PaperVenue, params: Mapping[str, str]) -> dict[str, Any]:
        ids = [t for t in params.get("txid", "").split(",") if t]
        if not ids or len(ids) > MAX_QUERY_IDS:
            raise KrakenError(f"{E_INVALID_ARGUMENTS}:txid")
        fills = await self._fills_by_order(venue)
        trades = flag(params, "trades")
        orders = {o.venue_order_id: o for o in venue.orders() if o.status is not OrderStatus.REJECTED}
        return {txid: self._order_info(orders[txid], fills.get(txid, []), trades) for txid in ids if txid in orders}

    async def trades_history(self, venue: PaperVenue, params: Mapping[str, str]) -> dict[str, Any]:
        start, end = seconds_param(params, "start"), seconds_param(params, "end")
        kinds = {o.venue_order_id: o.order_type.value for o in venue.orders()}
        fills = [
            f
            for f in reversed(await venue.recent_fills())  # newest first
            if (start is None or f.executed_at.timestamp() > start)
            and (end is None or f.executed_at.timestamp() <= end)
        ]
        trades = {}
        for fill in _page(fills, params):
            trades[fill.trade_id] = {
                "ordertxid": fill.venue_order_id,
                "postxid": "",
                "pair": self.pairs.by_symbol[fill.symbol].pair_id,
                "time": fill.executed_at.timestamp(),
                "type": fill.side.value,
                "ordertype": kinds.get(fill.venue_order_id, "market"),
                "price": num(fill.price),
                "cost": num(fill.quantity * fill.price),
                "fee": num(fill.fee),
                "vol": num(fill.quantity),
                "margin": "0",
                "leverage": "0",
                "misc": "",
                "trade_id": int(fill.trade_id.lstrip("T") or 0),
                "maker": fill.liquidity == "maker",
            }
        return {"trades": trades, "count": len(fills)}
