"""The Binance dialect's signed endpoints (USER_DATA, TRADE): one account's balances, orders and trades as Binance
serves them, each a translation of one paper-venue call into Binance's shapes and numbered errors. An order the venue
rejects never existed for Binance: the request answers -2010 and the order is not listed."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from trading_ops.bot.broker import BrokerError, OrderRequest, OrderStatus, OrderType, Side, VenueFill, VenueOrder
from trading_ops.paper.gateway.binance.errors import (
    CANCEL_REJECTED,
    CANCEL_REPLACE_FAILED,
    CANCEL_REPLACE_PARTIAL,
    CLIENT_ORDER_ID_PATTERN,
    DISCONNECTED,
    DISCONNECTED_MSG,
    DUPLICATE_ORDER_MSG,
    ILLEGAL_CHARS,
    ILLEGAL_CHARS_MSG,
    INSUFFICIENT_BALANCE_MSG,
    INVALID_ORDER_TYPE,
    INVALID_ORDER_TYPE_MSG,
    INVALID_SIDE,
    INVALID_SIDE_MSG,
    INVALID_TIF,
    INVALID_TIF_MSG,
    NEW_ORDER_REJECTED,
    NO_SUCH_ORDER,
    NO_SUCH_ORDER_MSG,
    TOO_MANY_ORDERS,
    UNKNOWN_ORDER_MSG,
    BinanceError,
    invalid,
    mandatory,
)
from trading_ops.paper.gateway.binance.market import Market, trade_number
from trading_ops.paper.gateway.binance.symbols import Symbol, Symbols, decimal_param, digits, fmt
from trading_ops.paper.venue import PaperVenue

_CLIENT_ORDER_ID = re.compile(CLIENT_ORDER_ID_PATTERN)
DEFAULT_LIST = 500
MAX_LIST = 1000
ORDER_TYPES = ("LIMIT", "MARKET", "LIMIT_MAKER")
# Only good-till-canceled: the paper venue's limit orders rest until filled or canceled.
TIME_IN_FORCE = ("GTC",)
RESPONSE_TYPES = ("ACK", "RESULT", "FULL")
WOULD_MATCH_MSG = "Order would immediately match and take."
CANCEL_REPLACE_FAILED_MSG = "Order cancel-replace failed."
CANCEL_REPLACE_PARTIAL_MSG = "Order cancel-replace partially failed."
# How Binance refuses what the paper venue rejects (the order then never existed).
REJECT_MESSAGES = {"insufficient_funds": INSUFFICIENT_BALANCE_MSG}
STATUS = {
    OrderStatus.NEW: "NEW",
    OrderStatus.ACKNOWLEDGED: "NEW",
    OrderStatus.PARTIALLY_FILLED: "PARTIALLY_FILLED",
    OrderStatus.FILLED: "FILLED",
    OrderStatus.CANCELED: "CANCELED",
    OrderStatus.REJECTED: "REJECTED",
}


def ms(order_time: Any) -> int:
    return 0 if order_time is None else int(order_time.timestamp() * 1000)


def order_number(order: VenueOrder) -> int:
    return trade_number(order.venue_order_id)


def client_order_id(params: Mapping[str, str], name: str) -> str:
    """A client order id parameter: -1100 for one Binance refuses (over 36 characters, or outside its range)."""
    cid = params.get(name, "")
    if cid and not _CLIENT_ORDER_ID.match(cid):
        raise BinanceError(ILLEGAL_CHARS, ILLEGAL_CHARS_MSG.format(name=name, legal=CLIENT_ORDER_ID_PATTERN))
    return cid


def generated_id() -> str:
    """A client order id for an order sent without one, as Binance makes them (22 characters)."""
    return secrets.token_urlsafe(16)[:22]


@dataclass(frozen=True)
class NewOrder:
    sym: Symbol
    side: Side
    kind: str  # Binance's: LIMIT, MARKET, LIMIT_MAKER
    quantity: Decimal
    price: Decimal | None
    cid: str
    response: str


class Trading:
    """The signed endpoints; each takes the account (paper venue) of the key that signed the request.
    `order_fault` is asked before each new order (the dialect's filter-refusal fault raises from it)."""

    def __init__(
        self, symbols: Symbols, market: Market, now_ms: Callable[[], int], order_fault: Callable[[], None]
    ) -> None:
        self.symbols = symbols
        self.market = market
        self.now_ms = now_ms
        self.order_fault = order_fault

    # -- account ----------------------------------------------------------------------------------------------
    async def account(self, venue: PaperVenue, _params: Mapping[str, str]) -> dict[str, Any]:
        maker, taker = venue.maker_fee, venue.taker_fee
        return {
            "makerCommission": int(maker * 10000),
            "takerCommission": int(taker * 10000),
            "buyerCommission": 0,
            "sellerCommission": 0,
            "commissionRates": {
                "maker": fmt(maker),
                "taker": fmt(taker),
                "buyer": fmt(Decimal(0)),
                "seller": fmt(Decimal(0)),
            },
            "canTrade": True,
            "canWithdraw": False,
            "canDeposit": False,
            "brokered": False,
            "requireSelfTradePrevention": False,
            "preventSor": False,
            "updateTime": self.now_ms(),
            "accountType": "SPOT",
            "balances": await self.balances(venue),
            "permissions": ["SPOT"],
            "uid": 0,
        }

    @staticmethod
    async def balances(venue: PaperVenue) -> list[dict[str, str]]:
        held = venue.reserved()
        rows = []
        for asset, total in sorted((await venue.balances()).items()):
            locked = held.get(asset, Decimal(0))
            rows.append({"asset": asset, "free": fmt(total - locked), "locked": fmt(locked)})
        return rows

    # -- orders -----------------------------------------------------------------------------------------------
    def _new_order_params(self, params: Mapping[str, str], *, cid_name: str = "newClientOrderId") -> NewOrder:
        sym = self.symbols.one(params)
        side_raw = params.get("side", "")
        if not side_raw:
            raise mandatory("side")
        if side_raw not in ("BUY", "SELL"):
            raise BinanceError(INVALID_SIDE, INVALID_SIDE_MSG)
        kind = params.get("type", "")
        if not kind:
            raise mandatory("type")
        if kind not in ORDER_TYPES:
            raise BinanceError(INVALID_ORDER_TYPE, INVALID_ORDER_TYPE_MSG)
        quantity = decimal_param(params, "quantity")
        assert quantity is not None
        price = decimal_param(params, "price", required=kind != "MARKET") if kind != "MARKET" else None
        if kind == "LIMIT":
            tif = params.get("timeInForce", "")
            if not tif:
                raise mandatory("timeInForce")
            if tif not in TIME_IN_FORCE:
                raise BinanceError(INVALID_TIF, INVALID_TIF_MSG)
        response = params.get("newOrderRespType", "FULL")
        if response not in RESPONSE_TYPES:
            raise invalid("newOrderRespType")
        cid = client_order_id(params, cid_name)
        return NewOrder(sym, Side(side_raw.lower()), kind, quantity, price, cid, response)

    def _check(self, order: NewOrder) -> None:
        """The filters and the faults, before the venue sees the order."""
        quote = self.market.quote(order.sym)
        order.sym.check(order.quantity, order.price, quote.mid)
        self.order_fault()
        if order.kind == "LIMIT_MAKER" and order.price is not None:
            crosses = order.price >= quote.ask if order.side is Side.BUY else order.price <= quote.bid
            if crosses:
                raise BinanceError(NEW_ORDER_REJECTED, WOULD_MATCH_MSG)

    async def new_order(self, venue: PaperVenue, params: Mapping[str, str]) -> dict[str, Any]:
        return await self._place(venue, self._new_order_params(params))

    async def test_order(self, _venue: PaperVenue, params: Mapping[str, str]) -> dict[str, Any]:
        """order/test: checked as a new order would be, never placed."""
        self._check(self._new_order_params(params))
        return {}

    async def _place(self, venue: PaperVenue, new: NewOrder) -> dict[str, Any]:
        self._check(new)
        request = OrderRequest(
            client_order_id=new.cid or generated_id(),
            symbol=new.sym.symbol,
            side=new.side,
            order_type=OrderType.MARKET if new.kind == "MARKET" else OrderType.LIMIT,
            quantity=new.quantity,
            price=new.price,
        )
        try:
            order = await venue.submit(request)
        except BrokerError as exc:
            raise self._venue_error(exc) from None
        if order.status is OrderStatus.REJECTED:
            raise BinanceError(
                NEW_ORDER_REJECTED, REJECT_MESSAGES.get(order.reject_reason or "", "Order was rejected.")
            )
        now = self.now_ms()
        answer: dict[str, Any] = {
            "symbol": new.sym.id,
            "orderId": order_number(order),
            "orderListId": -1,
            "clientOrderId": order.client_order_id,
            "transactTime": now,
        }
        if new.response == "ACK":
            return answer
        fills = await self._fills_of(venue, order)
        answer.update(self._order_fields(order, fills, new.kind))
        answer["workingTime"] = ms(order.created_at)
        answer["selfTradePreventionMode"] = "NONE"
        if new.response == "FULL":
            answer["fills"] = [
                {
                    "price": fmt(f.price),
                    "qty": fmt(f.quantity),
                    "commission": fmt(f.fee),
                    "commissionAsset": f.fee_asset,
                    "tradeId": trade_number(f.trade_id),
                }
                for f in fills
            ]
        return answer

    @staticmethod
    def _venue_error(exc: BrokerError) -> BinanceError:
        if exc.error_class == "rate_limit":
            return BinanceError(TOO_MANY_ORDERS, "Too many new orders.", 429)
        if exc.error_class in ("network", "unavailable"):
            return BinanceError(DISCONNECTED, DISCONNECTED_MSG)
        if "duplicate" in str(exc):
            return BinanceError(NEW_ORDER_REJECTED, DUPLICATE_ORDER_MSG)
        return BinanceError(NEW_ORDER_REJECTED, str(exc))

    @staticmethod
    async def _fills_of(venue: PaperVenue, order: VenueOrder) -> list[VenueFill]:
        return [f for f in await venue.recent_fills() if f.venue_order_id == order.venue_order_id]

    def _order_fields(self, order: VenueOrder, fills: list[VenueFill], kind: str | None = None) -> dict[str, Any]:
        cost = sum((f.quantity * f.price for f in fills), Decimal(0))
        if kind is None:
            kind = "MARKET" if order.order_type is OrderType.MARKET else "LIMIT"
        return {
            "price": fmt(order.price if order.price is not None else Decimal(0)),
            "origQty": fmt(order.quantity),
            "executedQty": fmt(order.filled_quantity),
            "origQuoteOrderQty": fmt(Decimal(0)),
            "cummulativeQuoteQty": fmt(cost),
            "status": STATUS[order.status],
            "timeInForce": "GTC",
            "type": kind,
            "side": order.side.value.upper(),
        }

    def _order_info(self, order: VenueOrder, fills: list[VenueFill]) -> dict[str, Any]:
        """An order as query order, openOrders and allOrders show it."""
        sym = self.symbols.by_symbol[order.symbol]
        updated = order.closed_at or (fills[-1].executed_at if fills else order.created_at)
        return {
            "symbol": sym.id,
            "orderId": order_number(order),
            "orderListId": -1,
            "clientOrderId": order.client_order_id,
            **self._order_fields(order, fills),
            "stopPrice": fmt(Decimal(0)),
            "icebergQty": fmt(Decimal(0)),
            "time": ms(order.created_at),
            "updateTime": ms(updated),
            "isWorking": order.status.is_open,
            "workingTime": ms(order.created_at),
            "selfTradePreventionMode": "NONE",
        }

    @staticmethod
    def _listed(venue: PaperVenue) -> list[VenueOrder]:
        return [o for o in venue.orders() if o.status is not OrderStatus.REJECTED]

    def _find(
        self, venue: PaperVenue, sym: Symbol, params: Mapping[str, str], id_name: str, cid_name: str
    ) -> VenueOrder | None:
        raw = params.get(id_name, "")
        cid = client_order_id(params, cid_name)
        if not raw and not cid:
            raise BinanceError(-1102, f"Param '{id_name}' or '{cid_name}' must be sent, but both were empty/null!")
        if raw and not digits(raw):
            raise invalid(id_name)
        for order in self._listed(venue):
            if order.symbol != sym.symbol:
                continue
            if (raw and order_number(order) == int(raw)) or (not raw and order.client_order_id == cid):
                return order
        return None

    async def query_order(self, venue: PaperVenue, params: Mapping[str, str]) -> dict[str, Any]:
        sym = self.symbols.one(params)
        order = self._find(venue, sym, params, "orderId", "origClientOrderId")
        if order is None:
            raise BinanceError(NO_SUCH_ORDER, NO_SUCH_ORDER_MSG)
        return self._order_info(order, await self._fills_of(venue, order))

    async def _cancel(self, venue: PaperVenue, order: VenueOrder, new_cid: str) -> dict[str, Any]:
        try:
            canceled = await venue.cancel(venue_order_id=order.venue_order_id)
        except BrokerError as exc:
            if exc.error_class in ("network", "unavailable", "rate_limit"):
                raise self._venue_error(exc) from None
            raise BinanceError(CANCEL_REJECTED, UNKNOWN_ORDER_MSG) from None
        sym = self.symbols.by_symbol[order.symbol]
        return {
            "symbol": sym.id,
            "origClientOrderId": canceled.client_order_id,
            "orderId": order_number(canceled),
            "orderListId": -1,
            "clientOrderId": new_cid or generated_id(),
            "transactTime": self.now_ms(),
            **self._order_fields(canceled, await self._fills_of(venue, canceled)),
            "selfTradePreventionMode": "NONE",
        }

    async def cancel_order(self, venue: PaperVenue, params: Mapping[str, str]) -> dict[str, Any]:
        sym = self.symbols.one(params)
        order = self._find(venue, sym, params, "orderId", "origClientOrderId")
        if order is None or not order.status.is_open:
            raise BinanceError(CANCEL_REJECTED, UNKNOWN_ORDER_MSG)
        return await self._cancel(venue, order, client_order_id(params, "newClientOrderId"))

    async def cancel_open_orders(self, venue: PaperVenue, params: Mapping[str, str]) -> list[dict[str, Any]]:
        sym = self.symbols.one(params)
        open_orders = [o for o in await venue.open_orders() if o.symbol == sym.symbol]
        if not open_orders:
            raise BinanceError(CANCEL_REJECTED, UNKNOWN_ORDER_MSG)
        return [await self._cancel(venue, o, "") for o in open_orders]

    async def cancel_replace(self, venue: PaperVenue, params: Mapping[str, str]) -> dict[str, Any]:
        """order/cancelReplace: cancel an order, then place a new one (STOP_ON_FAILURE: not if the cancel failed;
        ALLOW_FAILURE: anyway). -2022 when nothing was done as asked, -2021 when one half failed."""
        mode = params.get("cancelReplaceMode", "")
        if not mode:
            raise mandatory("cancelReplaceMode")
        if mode not in ("STOP_ON_FAILURE", "ALLOW_FAILURE"):
            raise invalid("cancelReplaceMode")
        new = self._new_order_params(params)
        order = self._find(venue, new.sym, params, "cancelOrderId", "cancelOrigClientOrderId")
        cancel_response: dict[str, Any]
        try:
            if order is None or not order.status.is_open:
                raise BinanceError(CANCEL_REJECTED, UNKNOWN_ORDER_MSG)
            cancel_response = await self._cancel(venue, order, client_order_id(params, "cancelNewClientOrderId"))
            cancel_ok = True
        except BinanceError as exc:
            cancel_response, cancel_ok = exc.body(), False
        if not cancel_ok and mode == "STOP_ON_FAILURE":
            data = {
                "cancelResult": "FAILURE",
                "newOrderResult": "NOT_ATTEMPTED",
                "cancelResponse": cancel_response,
                "newOrderResponse": None,
            }
            raise BinanceError(CANCEL_REPLACE_FAILED, CANCEL_REPLACE_FAILED_MSG, data=data)
        try:
            new_response, new_ok = await self._place(venue, new), True
        except BinanceError as exc:
            new_response, new_ok = exc.body(), False
        data = {
            "cancelResult": "SUCCESS" if cancel_ok else "FAILURE",
            "newOrderResult": "SUCCESS" if new_ok else "FAILURE",
            "cancelResponse": cancel_response,
            "newOrderResponse": new_response,
        }
        if cancel_ok and new_ok:
            return data
        if cancel_ok or new_ok:
            raise BinanceError(CANCEL_REPLACE_PARTIAL, CANCEL_REPLACE_PARTIAL_MSG, data=data)
        raise BinanceError(CANCEL_REPLACE_FAILED, CANCEL_REPLACE_FAILED_MSG, data=data)

    async def open_orders(self, venue: PaperVenue, params: Mapping[str, str]) -> list[dict[str, Any]]:
        sym = self.symbols.one(params) if params.get("symbol") else None
        fills = await self._fills_by_order(venue)
        return [
            self._order_info(o, fills.get(o.venue_order_id, []))
            for o in await venue.open_orders()
            if sym is None or o.symbol == sym.symbol
        ]

    @staticmethod
    async def _fills_by_order(venue: PaperVenue) -> dict[str, list[VenueFill]]:
        by_order: dict[str, list[VenueFill]] = {}
        for fill in await venue.recent_fills():
            by_order.setdefault(fill.venue_order_id, []).append(fill)
        return by_order

    @staticmethod
    def _window(params: Mapping[str, str]) -> tuple[int | None, int | None, int]:
        def whole(name: str) -> int | None:
            raw = params.get(name, "")
            if raw == "":
                return None
            if not digits(raw):
                raise invalid(name)
            return int(raw)

        limit = whole("limit")
        if limit is not None and not 1 <= limit <= MAX_LIST:
            raise invalid("limit")
        return whole("startTime"), whole("endTime"), limit or DEFAULT_LIST

    async def all_orders(self, venue: PaperVenue, params: Mapping[str, str]) -> list[dict[str, Any]]:
        sym = self.symbols.one(params)
        start, end, limit = self._window(params)
        from_id = params.get("orderId", "")
        if from_id and not digits(from_id):
            raise invalid("orderId")
        fills = await self._fills_by_order(venue)
        rows = []
        for order in self._listed(venue):
            at = ms(order.created_at)
            if order.symbol != sym.symbol or (start is not None and at < start) or (end is not None and at > end):
                continue
            if from_id and order_number(order) < int(from_id):
                continue
            rows.append(self._order_info(order, fills.get(order.venue_order_id, [])))
        rows.sort(key=lambda r: r["orderId"])
        return rows[:limit] if (start is not None or from_id) else rows[-limit:]

    async def my_trades(self, venue: PaperVenue, params: Mapping[str, str]) -> list[dict[str, Any]]:
        sym = self.symbols.one(params)
        start, end, limit = self._window(params)
        order_id, from_id = params.get("orderId", ""), params.get("fromId", "")
        for name, raw in (("orderId", order_id), ("fromId", from_id)):
            if raw and not digits(raw):
                raise invalid(name)
        rows: list[dict[str, Any]] = []
        for fill in await venue.recent_fills():
            at = int(fill.executed_at.timestamp() * 1000)
            number = trade_number(fill.trade_id)
            if fill.symbol != sym.symbol or (start is not None and at < start) or (end is not None and at > end):
                continue
            if (order_id and trade_number(fill.venue_order_id) != int(order_id)) or (from_id and number < int(from_id)):
                continue
            rows.append(
                {
                    "symbol": sym.id,
                    "id": number,
                    "orderId": trade_number(fill.venue_order_id),
                    "orderListId": -1,
                    "price": fmt(fill.price),
                    "qty": fmt(fill.quantity),
                    "quoteQty": fmt(fill.price * fill.quantity),
                    "commission": fmt(fill.fee),
                    "commissionAsset": fill.fee_asset,
                    "time": at,
                    "isBuyer": fill.side is Side.BUY,
                    "isMaker": fill.liquidity == "maker",
                    "isBestMatch": True,
                }
            )
        rows.sort(key=lambda r: r["id"])
        return rows[:limit] if (start is not None or from_id) else rows[-limit:]
