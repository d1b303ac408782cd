"""The Binance dialect's REST routes: `/api/v3/...` (and the few `/sapi`, `/fapi`, `/dapi` calls ccxt's stock
`load_markets` makes), each request passing the gateway's faults, then its weight, then its security (none, an API
key, or a signature), then its endpoint; every answer with `X-MBX-USED-WEIGHT-1M`, order placement with the order
counts; a refusal is Binance's `{"code", "msg"}` with its HTTP status.

A stale_market_data fault ends as on the Kraken API: by itself once its `seconds` ran out (at the next request), or
when a client loads the markets again (`exchangeInfo` listing the pair: a polling client's new subscription)."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from trading_ops.http_input import InputError, read_body
from trading_ops.paper.gateway.binance.auth import BinanceAuth
from trading_ops.paper.gateway.binance.errors import (
    DISCONNECTED,
    DISCONNECTED_MSG,
    INSUFFICIENT_BALANCE_MSG,
    NEW_ORDER_REJECTED,
    NOT_FOUND_STATUS,
    TOO_MANY_REQUESTS,
    BinanceError,
    filter_failure,
    mandatory,
)
from trading_ops.paper.gateway.binance.market import Market
from trading_ops.paper.gateway.binance.trading import Trading
from trading_ops.paper.gateway.binance.user_stream import UserStreams
from trading_ops.paper.gateway.binance.weights import WeightLimiter, weight
from trading_ops.paper.gateway.kraken.api import E_INSUFFICIENT_FUNDS, E_INVALID_ORDER, E_UNAVAILABLE, KrakenError
from trading_ops.paper.gateway.kraken.faults import RECONNECT_METHOD, GatewayFaults
from trading_ops.paper.venue import PaperVenue

LOG = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
# The URL prefixes the dialect answers under (ccxt's `urls.api` keys: public/private, sapi, fapiPublic, dapiPublic).
PREFIXES = {"api": "/api/v3", "sapi": "/sapi/v1", "fapi": "/fapi/v1", "dapi": "/dapi/v1"}
# The venue's status, which a careful client asks first in a new session (ccxt's fetch_status): Kraken's SystemStatus.
STATUS_ROUTE = "sapi/system/status"


class Security(enum.Enum):
    NONE = "NONE"  # market data
    API_KEY = "USER_STREAM"  # X-MBX-APIKEY only
    SIGNED = "SIGNED"  # TRADE and USER_DATA: the key, a signature, a timestamp


@dataclass(frozen=True)
class Call:
    params: Mapping[str, str]
    api_key: str = ""
    account: str = ""
    venue: PaperVenue | None = None

    @property
    def account_venue(self) -> PaperVenue:
        assert self.venue is not None
        return self.venue


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    security: Security
    handler: Handler
    places_order: bool = False
    weighed: bool = True  # counts against the IP's request weight (the /api/v3 routes)


def _sync(fn: Callable[[Mapping[str, str]], Any]) -> Handler:
    async def call(c: Call) -> Any:
        return fn(c.params)

    return call


def _private(fn: Callable[[PaperVenue, Mapping[str, str]], Awaitable[Any]]) -> Handler:
    async def call(c: Call) -> Any:
        return await fn(c.account_venue, c.params)

    return call


class RestApi:
    """The routes over `market`, `trading` and `users` for the accounts of `accounts` (name -> paper venue)."""

    def __init__(
        self,
        accounts: Mapping[str, PaperVenue],
        auth: BinanceAuth,
        weights: WeightLimiter,
        market: Market,
        trading: Trading,
        users: UserStreams,
        gateway_faults: GatewayFaults,
    ) -> None:
        self.accounts = accounts
        self.auth = auth
        self.weights = weights
        self.gateway_faults = gateway_faults
        # Answered requests per route, whatever its method, and per method and route ("POST api/order": what a test
        # counts).
        self.calls: dict[str, int] = {}
        m, t = market, trading
        empty_info = {"timezone": "UTC", "rateLimits": [], "exchangeFilters": [], "assets": [], "symbols": []}

        async def exchange_info(c: Call) -> Any:
            answer = m.exchange_info(c.params)
            # Listed again: what subscribing again is for a polling client (Kraken's AssetPairs does the same).
            await gateway_faults.end_stale([m.symbols.by_id[s["symbol"]].symbol for s in answer["symbols"]])
            return answer

        async def no_markets(_c: Call) -> Any:
            return {**empty_info, "serverTime": market.now_ms()}

        async def no_pairs(_c: Call) -> Any:
            return []

        async def system_status(_c: Call) -> Any:
            return {"status": 0, "msg": "normal"}  # ccxt's fetch_status (a session's first call)

        async def coins(c: Call) -> Any:
            rows = await t.balances(c.account_venue)
            return [
                {
                    "coin": r["asset"],
                    "name": r["asset"],
                    "free": r["free"],
                    "locked": r["locked"],
                    "freeze": "0",
                    "withdrawing": "0",
                    "ipoing": "0",
                    "ipoable": "0",
                    "storage": "0",
                    "isLegalMoney": False,
                    "trading": True,
                    "depositAllEnable": False,
                    "withdrawAllEnable": False,
                    "networkList": [],
                }
                for r in rows
            ]

        async def listen_key(c: Call) -> Any:
            return users.create_listen_key(c.api_key, c.account)

        async def keepalive(c: Call) -> Any:
            return users.keepalive(c.params, c.account)

        async def close_key(c: Call) -> Any:
            return users.close_listen_key(c.params, c.account)

        s, k, n = Security.SIGNED, Security.API_KEY, Security.NONE
        self.routes: dict[tuple[str, str], Route] = {
            ("GET", "api/ping"): Route(n, _sync(m.ping)),
            ("GET", "api/time"): Route(n, _sync(m.time)),
            ("GET", "api/exchangeInfo"): Route(n, exchange_info),
            ("GET", "api/depth"): Route(n, _sync(m.depth)),
            ("GET", "api/trades"): Route(n, _sync(m.recent_trades)),
            ("GET", "api/aggTrades"): Route(n, _sync(m.agg_trades)),
            ("GET", "api/ticker/24hr"): Route(n, _sync(m.ticker_24hr_endpoint)),
            ("GET", "api/ticker/price"): Route(n, _sync(m.ticker_price)),
            ("GET", "api/ticker/bookTicker"): Route(n, _sync(m.book_ticker)),
            ("GET", "api/account"): Route(s, _private(t.account)),
            ("POST", "api/order"): Route(s, _private(t.new_order), places_order=True),
            ("POST", "api/order/test"): Route(s, _private(t.test_order)),
            ("DELETE", "api/order"): Route(s, _private(t.cancel_order)),
            ("POST", "api/order/cancelReplace"): Route(s, _private(t.cancel_replace), places_order=True),
            ("GET", "api/order"): Route(s, _private(t.query_order)),
            ("GET", "api/openOrders"): Route(s, _private(t.open_orders)),
            ("DELETE", "api/openOrders"): Route(s, _private(t.cancel_open_orders)),
            ("GET", "api/allOrders"): Route(s, _private(t.all_orders)),
            ("GET", "api/myTrades"): Route(s, _private(t.my_trades)),
            ("POST", "api/userDataStream"): Route(k, listen_key),
            ("PUT", "api/userDataStream"): Route(k, keepalive),
            ("DELETE", "api/userDataStream"): Route(k, close_key),
            # What ccxt's stock load_markets asks besides exchangeInfo: no futures, no margin, the account's coins.
            ("GET", "fapi/exchangeInfo"): Route(n, no_markets, weighed=False),
            ("GET", "dapi/exchangeInfo"): Route(n, no_markets, weighed=False),
            ("GET", STATUS_ROUTE): Route(n, system_status, weighed=False),
            ("GET", "sapi/margin/allPairs"): Route(s, no_pairs, weighed=False),
            ("GET", "sapi/margin/isolated/allPairs"): Route(s, no_pairs, weighed=False),
            ("GET", "sapi/capital/config/getall"): Route(s, coins, weighed=False),
        }

    def mount(self, app: web.Application) -> None:
        for prefix, base in PREFIXES.items():
            app.router.add_route("*", base + "/{path:.+}", self._handler(prefix))

    def _handler(self, prefix: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.handle(request, f"{prefix}/{request.match_info['path']}")

        return handle

    async def handle(self, request: web.Request, name: str) -> web.StreamResponse:
        if name == STATUS_ROUTE:  # a client's new session (ccxt's fetch_status) ends a drop_connection, as on Kraken
            self.gateway_faults.reconnected(RECONNECT_METHOD)
        if self.gateway_faults.dropping(request):
            return web.Response()  # the connection is already closed: nothing is sent
        await self.gateway_faults.end_stale(expired_only=True)
        headers: dict[str, str] = {}
        route = self.routes.get((request.method, name))
        try:
            if route is None:
                raise BinanceError(-1000 if name.startswith("api/") else -1000, "Not found", NOT_FOUND_STATUS)
            if route.weighed:
                headers.update(
                    self.weights.charge(request.remote or "", weight(request.method, name[4:], request.query))
                )
            self._service_faults()
            call = await self._call(request, route)
            if route.places_order:
                headers.update(self.weights.count_order(call.account))
            result = await route.handler(call)
        except BinanceError as exc:
            LOG.info("%s %s: %s %s", request.method, name, exc.code, exc.msg)
            return web.json_response(exc.body(), status=exc.status, headers={**headers, **exc.headers})
        if route.places_order and await self.gateway_faults.lose_reply(request, result):
            return web.Response()  # the order is placed; its answer never arrives (lost_reply, as on Kraken)
        for counted in (name, f"{request.method} {name}"):
            self.calls[counted] = self.calls.get(counted, 0) + 1
        return web.json_response(result, headers=headers)

    def _service_faults(self) -> None:
        try:
            self.gateway_faults.check_service("")
        except KrakenError as exc:
            if exc.error == E_UNAVAILABLE:
                raise BinanceError(DISCONNECTED, DISCONNECTED_MSG, 503) from None
            raise BinanceError(TOO_MANY_REQUESTS, "Too many requests queued.", 429, {"Retry-After": "1"}) from None

    def order_faults(self) -> None:
        """The gateway's own order faults (insufficient_funds, invalid_order) in Binance's words."""
        try:
            self.gateway_faults.check_order()
        except KrakenError as exc:
            if exc.error == E_INSUFFICIENT_FUNDS:
                raise BinanceError(NEW_ORDER_REJECTED, INSUFFICIENT_BALANCE_MSG) from None
            if exc.error == E_INVALID_ORDER:
                raise filter_failure("PRICE_FILTER") from None
            raise

    async def _call(self, request: web.Request, route: Route) -> Call:
        if route.security is Security.NONE:
            return Call(request.query)
        api_key = request.headers.get("X-MBX-APIKEY", "")
        try:
            body = (await read_body(request, MAX_BODY_BYTES)).decode("utf-8") if request.can_read_body else ""
        except (InputError, UnicodeDecodeError):
            raise mandatory("body") from None
        if route.security is Security.API_KEY:
            account = self.auth.account_of(api_key)
            params = {**request.query, **self.auth.parse(body)}
            return Call(params, api_key, account, self.accounts[account])
        account, params = self.auth.verify(api_key, request.rel_url.raw_query_string, body)
        return Call(params, api_key, account, self.accounts[account])


def now_ms(drift: Callable[[], int], clock: Callable[[], float] = time.time) -> int:
    return int(clock() * 1000) + drift()
