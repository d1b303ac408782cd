"""The private channels and trading methods of the gateway's WebSocket: tokens from REST GetWebSocketsToken,
`executions` (order and trade snapshots, a `sequence` per subscription) and `balances`, and add_order,
cancel_order, cancel_all and cancel_all_orders_after, answered with Kraken's v2 envelope and error strings."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from trading_ops.bot.broker import OrderStatus, OrderType, VenueFill, VenueOrder
from trading_ops.paper.faults import FaultModel
from trading_ops.paper.gateway.kraken.account import ANONYMOUS_PREFIX, AccountEndpoints
from trading_ops.paper.gateway.kraken.api import E_RATE_LIMIT, KrakenError, Pairs
from trading_ops.paper.gateway.kraken.ws.connection import Connection, Subscription
from trading_ops.paper.gateway.kraken.ws.messages import (
    E_ARGUMENTS,
    E_CHANNEL,
    E_PAIR,
    E_SESSION,
    E_UNAVAILABLE,
    RequestError,
    answer,
    now_text,
)
from trading_ops.paper.gateway.kraken.ws.public import ws_symbol
from trading_ops.paper.venue import PaperVenue
from trading_ops.venues.call_counter import CounterLimiter

TOKEN_SECONDS = 900  # a token not used within this long is refused (one used by a subscription stays valid)
MAX_TOKENS = 10_000  # tokens kept; the oldest are forgotten first
PRIVATE_CHANNELS = ("executions", "balances")
TRADING_METHODS = ("add_order", "cancel_order", "cancel_all", "cancel_all_orders_after")
TRADE_SNAPSHOT = 50  # fills an executions snapshot with snap_trades carries
MAX_IDS = 50  # order ids one cancel_order takes
# Fault names (kept in the gateway's FaultModel).
SEQUENCE_GAP = "ws_sequence_gap"
REPEAT_FILLS = "ws_repeat_fills"
INVALID_SESSION = "ws_invalid_session"
MAINTENANCE = "ws_maintenance"
REST_METHOD = {
    "add_order": "AddOrder",
    "cancel_order": "CancelOrder",
    "cancel_all": "CancelAll",
    "cancel_all_orders_after": "CancelAllOrdersAfter",
}


@dataclass
class Token:
    api_key: str
    account: str
    issued: float
    used: bool = False


class Tokens:
    """WebSocket tokens, each bound to the key (and so the account) that asked for it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._tokens: dict[str, Token] = {}
        self._clock = clock

    def issue(self, api_key: str, account: str) -> dict[str, Any]:
        token = base64.b64encode(secrets.token_bytes(32)).decode()
        self._tokens[token] = Token(api_key, account, self._clock())
        if len(self._tokens) > MAX_TOKENS:
            del self._tokens[next(iter(self._tokens))]
        return {"token": token, "expires": TOKEN_SECONDS}

    def find(self, token: Any) -> Token:
        """The token's entry; RequestError(ESession:Invalid session) for an unknown or expired one."""
        found = self._tokens.get(token) if isinstance(token, str) else None
        if found is None or (not found.used and self._clock() - found.issued > TOKEN_SECONDS):
            raise RequestError(E_SESSION)
        found.used = True
        return found


def order_item(order: VenueOrder, exec_type: str, fills: Iterable[VenueFill]) -> dict[str, Any]:
    """An order event of the executions channel (exec_type new, pending_new, filled, canceled)."""
    cost = sum((f.quantity * f.price for f in fills), Decimal(0))
    fee = sum((f.fee for f in fills), Decimal(0))
    status = {
        OrderStatus.FILLED: "filled",
        OrderStatus.CANCELED: "canceled",
        OrderStatus.PARTIALLY_FILLED: "partially_filled",
    }.get(order.status, "pending_new" if exec_type == "pending_new" else "new")
    item: dict[str, Any] = {
        "order_id": order.venue_order_id,
        "symbol": order.symbol.replace("-", "/"),
        "order_qty": order.quantity,
        "cum_qty": order.filled_quantity,
        "cum_cost": cost,
        "avg_price": (cost / order.filled_quantity).quantize(Decimal("1e-10")) if order.filled_quantity else 0,
        "time_in_force": "GTC",
        "exec_type": exec_type,
        "side": order.side.value,
        "order_type": order.order_type.value,
        "order_userref": 0,
        "order_status": status,
        "fee_usd_equiv": fee,
        "fee_ccy_pref": "fciq",
        "timestamp": now_text(order.closed_at or order.created_at),
    }
    if order.order_type is OrderType.LIMIT and order.price is not None:
        item["limit_price"] = order.price
        item["limit_price_type"] = "static"
    if not order.client_order_id.startswith(ANONYMOUS_PREFIX):
        item["cl_ord_id"] = order.client_order_id
    if exec_type == "canceled":
        item["cancel_reason"] = item["reason"] = "User requested"
    return item


def trade_item(fill: VenueFill, order: VenueOrder | None) -> dict[str, Any]:
    """A fill as the executions channel reports it (exec_type trade; exec_id is the REST trade id)."""
    filled = order is not None and order.status is OrderStatus.FILLED
    item: dict[str, Any] = {
        "order_id": fill.venue_order_id,
        "exec_id": fill.trade_id,
        "exec_type": "trade",
        "trade_id": int(fill.trade_id.lstrip("T") or 0),
        "symbol": fill.symbol.replace("-", "/"),
        "side": fill.side.value,
        "last_qty": fill.quantity,
        "last_price": fill.price,
        "liquidity_ind": "m" if fill.liquidity == "maker" else "t",
        "cost": fill.quantity * fill.price,
        "order_userref": 0,
        "order_status": "filled" if filled else "partially_filled",
        "order_type": order.order_type.value if order is not None else "market",
        "fee_usd_equiv": fill.fee,
        "fees": [{"asset": fill.fee_asset, "qty": fill.fee}],
        "timestamp": now_text(fill.executed_at),
    }
    if fill.client_order_id and not fill.client_order_id.startswith(ANONYMOUS_PREFIX):
        item["cl_ord_id"] = fill.client_order_id
    return item


class PrivateChannels:
    """The private endpoint's channels and trading methods for the account of each request's token."""

    def __init__(
        self,
        tokens: Tokens,
        pairs: Pairs,
        accounts: Mapping[str, PaperVenue],
        endpoints: AccountEndpoints,
        faults: FaultModel,
        check_service: Callable[[str], None],
        connections: Callable[[], Iterable[Connection]],
        call_counter: CounterLimiter | None = None,
        silenced: Callable[[str, str], bool] = lambda _channel, _symbol: False,
    ) -> None:
        self.tokens = tokens
        self.silenced = silenced  # whether a new subscription starts silenced (a persistent silent-channel fault)
        self.pairs = pairs
        self.accounts = accounts
        self.endpoints = endpoints
        self.faults = faults
        self.check_service = check_service
        self.connections = connections
        self.call_counter = call_counter
        self.by_ws = {ws_symbol(p): p for p in pairs.by_symbol.values()}

    def _token(self, conn: Connection, params: Mapping[str, Any]) -> Token:
        if self.faults.take(INVALID_SESSION):
            raise RequestError(E_SESSION)
        token = self.tokens.find(params.get("token"))
        conn.account = token.account
        return token

    # -- channels ---------------------------------------------------------------------------------------------
    async def subscribe(self, conn: Connection, params: Mapping[str, Any], req_id: Any, time_in: str) -> None:
        channel = params.get("channel")
        if channel not in PRIVATE_CHANNELS:
            raise RequestError(E_CHANNEL)
        token = self._token(conn, params)
        venue = self.accounts[token.account]
        snapshot = params.get("snapshot", True) is not False
        sub = Subscription(str(channel))
        sub.silenced = self.silenced(sub.channel, "")
        conn.subs[(sub.channel, "")] = sub  # subscribing again replaces it: a fresh snapshot, sequence from 1
        if sub.silenced:  # acked, then nothing: no snapshot, no update, until the fault is cleared
            conn.send(answer("subscribe", req_id, time_in, {"channel": sub.channel, "snapshot": True}))
            return
        if channel == "balances":
            conn.send(answer("subscribe", req_id, time_in, {"channel": "balances", "snapshot": snapshot}))
            if snapshot:
                balances = await venue.balances()
                data = [
                    {
                        "asset": asset,
                        "asset_class": "currency",
                        "balance": amount,
                        "wallets": [{"type": "spot", "id": "main", "balance": amount}],
                    }
                    for asset, amount in sorted(balances.items())
                ]
                conn.send({"channel": "balances", "type": "snapshot", "data": data, "sequence": sub.next_sequence()})
            return
        snap_orders = params.get("snap_orders", True) is not False
        snap_trades = params.get("snap_trades", False) is True
        sub.options = {"snap_orders": snap_orders, "snap_trades": snap_trades}
        result = {"channel": "executions", "maxratecount": 180, "snapshot": snap_orders or snap_trades}
        conn.send(answer("subscribe", req_id, time_in, result))
        fills = venue.book.fills
        if snap_orders:
            orders = await venue.open_orders()
            by_order: dict[str, list[VenueFill]] = {}
            for fill in fills:
                by_order.setdefault(fill.venue_order_id, []).append(fill)
            data = [order_item(o, "new", by_order.get(o.venue_order_id, [])) for o in orders]
            conn.send({"channel": "executions", "type": "snapshot", "data": data, "sequence": sub.next_sequence()})
        if snap_trades:
            orders_by_id = {o.venue_order_id: o for o in venue.orders()}
            recent = [f for f in fills[-TRADE_SNAPSHOT:] if f.venue_order_id not in venue.book.silent]
            data = [trade_item(f, orders_by_id.get(f.venue_order_id)) for f in recent]
            if self.faults.take(REPEAT_FILLS):
                data = data + data  # the fault: every fill of the snapshot twice
            conn.send({"channel": "executions", "type": "snapshot", "data": data, "sequence": sub.next_sequence()})

    def unsubscribe(self, conn: Connection, params: Mapping[str, Any], req_id: Any, time_in: str) -> None:
        channel = params.get("channel")
        if channel not in PRIVATE_CHANNELS:
            raise RequestError(E_CHANNEL)
        self._token(conn, params)
        conn.subs.pop((str(channel), ""), None)
        conn.send(answer("unsubscribe", req_id, time_in, {"channel": channel}))

    def _publish(self, account: str, channel: str, data: list[dict[str, Any]]) -> None:
        gap = self.faults.take(SEQUENCE_GAP) if channel == "executions" else False
        for conn in self.connections():
            sub = conn.subs.get((channel, ""))
            if sub is None or conn.account != account or sub.silenced:
                continue
            sequence = sub.next_sequence()
            if gap:
                continue  # the fault: this message is lost, its sequence number with it
            conn.send({"channel": channel, "type": "update", "data": data, "sequence": sequence})

    async def on_order(self, account: str, order: VenueOrder) -> None:
        """An order of `account` changed: its executions event (a partial fill is told by its trade)."""
        if order.status in (OrderStatus.NEW, OrderStatus.ACKNOWLEDGED):
            items = [order_item(order, "pending_new", []), order_item(order, "new", [])]
        elif order.status in (OrderStatus.FILLED, OrderStatus.CANCELED):
            fills = [f for f in self.accounts[account].book.fills if f.venue_order_id == order.venue_order_id]
            items = [order_item(order, order.status.value, fills)]
        else:
            return  # partially filled (its trade said so) or rejected (never existed for Kraken)
        self._publish(account, "executions", items)

    async def on_fill(self, account: str, fill: VenueFill) -> None:
        """A fill of `account`: its trade event, and the balances it changed."""
        venue = self.accounts[account]
        order = venue.book.orders.get(fill.venue_order_id)
        self._publish(account, "executions", [trade_item(fill, order)])
        balances = venue.book.balances
        base = venue.base_asset(fill.symbol)
        sign = 1 if fill.side.value == "buy" else -1
        changes = [
            (base, sign * fill.quantity, Decimal(0)),
            (fill.fee_asset, -sign * fill.quantity * fill.price, fill.fee),
        ]
        data = [
            {
                "ledger_id": f"L{fill.trade_id}-{asset}",
                "ref_id": fill.trade_id,
                "timestamp": now_text(fill.executed_at),
                "type": "trade",
                "asset": asset,
                "asset_class": "currency",
                "category": "trade",
                "wallet_type": "spot",
                "wallet_id": "main",
                "amount": amount,
                "fee": fee,
                "balance": balances.get(asset, Decimal(0)),
            }
            for asset, amount, fee in changes
        ]
        self._publish(account, "balances", data)

    # -- trading ----------------------------------------------------------------------------------------------
    async def trade(self, conn: Connection, method: str, params: Mapping[str, Any], req_id: Any, time_in: str) -> None:
        """One trading request: its answer (or answers: cancel_order answers each order id) on `conn`."""
        token = self._token(conn, params)
        if self.faults.active(MAINTENANCE):
            raise RequestError(E_UNAVAILABLE)
        try:
            self.check_service(REST_METHOD[method])
            if self.call_counter is not None and not self.call_counter.admit(token.api_key, REST_METHOD[method]):
                raise KrakenError(E_RATE_LIMIT)
            venue = self.accounts[token.account]
            if method == "add_order":
                result = await self.endpoints.add_order(venue, self._order_params(params))
                answer_result: dict[str, Any] = {"order_id": result["txid"][0]} if "txid" in result else {}
                if "cl_ord_id" in result:
                    answer_result["cl_ord_id"] = result["cl_ord_id"]
                conn.send(answer(method, req_id, time_in, answer_result))
            elif method == "cancel_order":
                await self._cancel(conn, venue, params, req_id, time_in)
            elif method == "cancel_all":
                count = (await self.endpoints.cancel_all(venue, {}))["count"]
                conn.send(answer(method, req_id, time_in, {"count": count}))
            else:
                timeout = params.get("timeout")
                if isinstance(timeout, bool) or not isinstance(timeout, int):
                    raise RequestError(E_ARGUMENTS)
                switch = await self.endpoints.cancel_all_orders_after(venue, {"timeout": str(timeout)})
                conn.send(answer(method, req_id, time_in, switch))
        except KrakenError as exc:
            raise RequestError(exc.error) from None

    async def _cancel(
        self, conn: Connection, venue: PaperVenue, params: Mapping[str, Any], req_id: Any, time_in: str
    ) -> None:
        ids = params.get("order_id", [])
        cids = params.get("cl_ord_id", [])
        if not isinstance(ids, list) or not isinstance(cids, list) or not ids + cids or len(ids + cids) > MAX_IDS:
            raise RequestError(E_ARGUMENTS)
        for key, values in (("txid", ids), ("cl_ord_id", cids)):
            for value in values:
                if not isinstance(value, str) or not value:
                    raise RequestError(E_ARGUMENTS)
                try:
                    await self.endpoints.cancel_order(venue, {key: value})
                except KrakenError as exc:
                    conn.send(answer("cancel_order", req_id, time_in, error=exc.error))
                    continue
                result = {"order_id": value} if key == "txid" else {"cl_ord_id": value}
                conn.send(answer("cancel_order", req_id, time_in, result))

    def _order_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        """add_order's parameters as AddOrder's (REST) form: the same checks and error strings."""
        pair = self.by_ws.get(params.get("symbol"))  # type: ignore[arg-type]
        if pair is None:
            raise RequestError(f"{E_PAIR} {str(params.get('symbol'))[:32]}")
        form = {"pair": pair.pair_id}
        for name, key in (("side", "type"), ("order_type", "ordertype")):
            value = params.get(name)
            if not isinstance(value, str):
                raise RequestError(f"{E_ARGUMENTS}:{name}")
            form[key] = value
        for name, key in (("order_qty", "volume"), ("limit_price", "price")):
            value = params.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | Decimal):
                raise RequestError(f"{E_ARGUMENTS}:{name}")
            form[key] = format(value, "f") if isinstance(value, Decimal) else str(value)
        cid = params.get("cl_ord_id")
        if cid is not None:
            if not isinstance(cid, str):
                raise RequestError(f"{E_ARGUMENTS}:cl_ord_id")
            form["cl_ord_id"] = cid
        if params.get("validate") is True:
            form["validate"] = "true"
        return form
