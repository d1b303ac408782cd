"""The Binance spot dialect of the paper gateway: its parts wired over the gateway's market and accounts, mounted on
the gateway's app beside the Kraken API (`gateway.dialects`), its faults among the gateway's fault commands.

One account may be reached through both dialects: a Binance key maps to an account of the gateway (its main
account, or a sub-account), so its balances, orders and trades are the ones the Kraken API shows."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aiohttp import web

from trading_ops.bot.broker import Quote, VenueFill, VenueOrder
from trading_ops.config import Config, ConfigError, resolve_secret
from trading_ops.paper.gateway.binance.auth import BinanceAuth
from trading_ops.paper.gateway.binance.execution import ExecutionReports
from trading_ops.paper.gateway.binance.faults import FAULT_NAMES, DialectFaults, flag, whole
from trading_ops.paper.gateway.binance.market import Market
from trading_ops.paper.gateway.binance.rest import RestApi
from trading_ops.paper.gateway.binance.streams import MarketStreams
from trading_ops.paper.gateway.binance.symbols import DEFAULT_MIN_NOTIONAL, Symbols
from trading_ops.paper.gateway.binance.trading import Trading
from trading_ops.paper.gateway.binance.user_stream import UserStreams, account_position
from trading_ops.paper.gateway.binance.weights import WEIGHT_LIMIT_PER_MINUTE, WeightLimiter
from trading_ops.tasks import stop_tasks

if TYPE_CHECKING:
    from trading_ops.paper.gateway.kraken.gateway import KrakenGateway

LOG = logging.getLogger(__name__)

# Where the dialect's sockets are: market streams (and listen-key streams) as wss://stream.binance.com:9443/ws (a
# client's URL must contain `/stream`: ccxt.pro tells a spot stream by it), the WebSocket API as
# wss://ws-api.binance.com:443/ws-api/v3.
STREAM_PATH = "/stream/ws"
WS_API_PATH = "/ws-api/v3"
HOUSEKEEPING_SECONDS = 1.0


class BinanceDialect:
    """Binance spot over `gateway`'s accounts; `keys` maps each Binance API key to (its secret, its account's name).
    Add it to `gateway.dialects` before the gateway's app is made."""

    name: str = "binance"
    fault_names: tuple[str, ...] = FAULT_NAMES

    def __init__(
        self,
        gateway: KrakenGateway,
        keys: Mapping[str, tuple[str, str]],
        *,
        weight_limit: int = WEIGHT_LIMIT_PER_MINUTE,
        weights: WeightLimiter | None = None,
        min_notional: Decimal = DEFAULT_MIN_NOTIONAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for key, (_secret, account) in keys.items():
            if account not in gateway.accounts:
                raise ValueError(f"Binance key {key} names no account of the gateway: {account}")
        self.gateway = gateway
        self.clock = clock
        self.faults = DialectFaults()
        venue = gateway.venue
        self.symbols = Symbols(
            venue.symbols, venue.base_asset, venue.quote_asset, venue.tick_size, venue.step_size, min_notional
        )
        self.weights = weights or WeightLimiter(weight_limit, clock=clock)
        self.auth = BinanceAuth(keys, self.now_ms)
        # A pair whose feed stopped (stale_market_data, the gateway's fault) keeps its last data and time.
        self.market = Market(self.symbols, self.weights, self.now_ms, feed_stopped=gateway.faults.stale)
        self.users = UserStreams(self.auth, self.weights, self.now_ms)
        self.trading = Trading(self.symbols, self.market, self.now_ms, self._order_faults)
        self.rest = RestApi(
            gateway.accounts, self.auth, self.weights, self.market, self.trading, self.users, gateway.faults
        )
        self.streams = MarketStreams(self.symbols.by_id, on_subscribe=self._subscribed)
        self.reports = ExecutionReports(self.symbols)
        self._task: asyncio.Task[None] | None = None

    def now_ms(self) -> int:
        """The server's clock in milliseconds (moved by the clock-drift fault)."""
        return int(self.clock() * 1000) + self.faults.drift_ms

    async def _subscribed(self, ids: list[str]) -> None:
        """A market stream of these symbols (ids in lower case) was subscribed: their stale_market_data ends, as a new
        subscription on Kraken's WebSocket ends it."""
        by_id = {sym.id.lower(): sym.symbol for sym in self.symbols.by_symbol.values()}
        await self.gateway.faults.end_stale([by_id[i] for i in ids if i in by_id])

    def _order_faults(self) -> None:
        self.faults.check_order()
        self.rest.order_faults()

    # -- the gateway's hooks ----------------------------------------------------------------------------------
    def mount(self, app: web.Application) -> None:
        self.rest.mount(app)
        app.router.add_get(STREAM_PATH + "/{name}", self.handle_stream)
        app.router.add_get(WS_API_PATH, self.handle_ws_api)
        app.on_shutdown.append(self._going_away)

    async def _going_away(self, _app: web.Application) -> None:
        """A shutdown closes every socket (1001) rather than waiting for its clients to leave."""
        self.streams.drop(1001)
        self.users.drop(1001)

    async def start(self) -> None:
        for quote in [self.gateway.venue.quote(s) for s in self.gateway.venue.symbols]:
            self.market.on_quote(quote)
        self._task = asyncio.create_task(self._housekeeping(), name="binance-dialect-housekeeping")

    async def stop(self) -> None:
        await stop_tasks([self._task])
        self.streams.drop(1001)
        self.users.drop(1001)

    async def _housekeeping(self) -> None:
        """Listen keys past their life expire."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            if expired := self.users.expire():
                LOG.warning("binance: %d listen keys expired", len(expired))

    async def on_quote(self, quote: Quote) -> None:
        self.streams.publish(self.market.on_quote(quote))

    async def on_order(self, account: str, order: VenueOrder) -> None:
        now = self.now_ms()
        reports = self.reports.on_order(order, now)
        for report in reports:
            self.users.publish(account, report)
        if reports:
            await self._publish_balances(account)

    async def on_fill(self, account: str, fill: VenueFill) -> None:
        self.streams.publish(self.market.on_fill(fill))
        venue = self.gateway.accounts[account]
        order = next((o for o in reversed(venue.orders()) if o.venue_order_id == fill.venue_order_id), None)
        for report in self.reports.on_fill(order, fill, self.now_ms()):
            self.users.publish(account, report)
        await self._publish_balances(account)

    async def _publish_balances(self, account: str) -> None:
        balances = await self.trading.balances(self.gateway.accounts[account])
        self.users.publish(account, account_position(balances, self.now_ms()))

    # -- sockets ----------------------------------------------------------------------------------------------
    async def handle_stream(self, request: web.Request) -> web.StreamResponse:
        """A market stream, or a listen key's user stream (`/stream/ws/<listenKey>`)."""
        if self.gateway.faults.dropping(request):
            return web.Response()
        name = request.match_info["name"]
        if self.users.is_listen_key(name):
            return await self.users.handle_listen_key(request, name)
        return await self.streams.handle(request, name)

    async def handle_ws_api(self, request: web.Request) -> web.StreamResponse:
        if self.gateway.faults.dropping(request):
            return web.Response()
        return await self.users.handle_ws_api(request)

    # -- faults -----------------------------------------------------------------------------------------------
    async def inject(self, fault: str, args: Mapping[str, Any]) -> dict[str, Any]:
        faults: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
            "binance_weight_exhausted": lambda _: {"weight_exhausted_for_seconds": round(self.weights.exhaust(), 3)},
            "binance_listen_key_expired": self._expire_listen_keys,
            "binance_depth_gap": self._depth_gap,
            "binance_depth_silent": self._depth_silent,
            "binance_user_stream_silent": lambda a: {
                "user_streams_silenced": self.users.silence(flag(a, "persistent"))
            },
            "binance_user_stream_refused": self._refuse_user_streams,
            "binance_clock_drift": self.faults.set_drift,
            "binance_filter_refusal": self.faults.set_refusals,
        }
        if fault not in faults:
            raise ValueError(f"unknown fault {fault}")
        return faults[fault](args)

    def _expire_listen_keys(self, _args: Mapping[str, Any]) -> dict[str, Any]:
        expired = self.users.expire(every=True)
        return {"listen_keys_expired": len(expired), "subscriptions_terminated": self.users.terminate()}

    def _depth_gap(self, args: Mapping[str, Any]) -> dict[str, Any]:
        count = whole(args, "count", 1, 1, 1_000_000)
        symbol = args.get("symbol")
        if symbol is not None and symbol not in self.symbols.by_symbol:
            raise ValueError(f"symbol must be one of {', '.join(self.symbols.by_symbol)}")
        books = [self.market.books[self.symbols.by_symbol[symbol].id]] if symbol else list(self.market.books.values())
        for book in books:
            book.skip(count)
        return {"depth_gap": count, "symbols": [b.symbol.symbol for b in books]}

    def _depth_silent(self, args: Mapping[str, Any]) -> dict[str, Any]:
        symbol = args.get("symbol")
        if symbol is not None and symbol not in self.symbols.by_symbol:
            raise ValueError(f"symbol must be one of {', '.join(self.symbols.by_symbol)}")
        syms = [self.symbols.by_symbol[symbol]] if symbol else list(self.symbols.by_symbol.values())
        count = self.streams.silence_depth([s.id for s in syms], flag(args, "persistent"))
        return {"depth_streams_silenced": count, "symbols": [s.symbol for s in syms]}

    def _refuse_user_streams(self, _args: Mapping[str, Any]) -> dict[str, Any]:
        self.users.refuse_new = True
        return {"user_streams_refused": True}

    def clear(self) -> None:
        self.faults.clear()
        self.weights.clear()
        self.users.clear()
        self.streams.clear()

    async def drop_sockets(self) -> None:
        self.streams.drop()
        self.users.drop()
        await asyncio.sleep(0)

    def describe(self) -> dict[str, Any]:
        return {
            **self.faults.describe(),
            "banned_ips": {ip: round(left, 1) for ip, left in self.weights.banned().items()},
            "user_streams": len(self.users.subscribers),
            "silent_user_streams": sum(1 for s in self.users.subscribers if s.silenced),
            "user_streams_refused": self.users.refuse_new,
            "market_stream_connections": self.streams.connections(),
            "silent_depth_streams": sorted(self.streams.silence_new),
        }


def dialect_from_config(config: Config, gateway: KrakenGateway) -> BinanceDialect:
    """The dialect `config.gateway.binance` sets up over `gateway`'s accounts; ConfigError for a missing secret or a
    key naming no account."""
    section = config.gateway.binance
    keys: dict[str, tuple[str, str]] = {}
    for i, entry in enumerate(section.keys):
        where = f"gateway.binance.keys[{i}]"
        values = []
        for name in ("api_key", "api_secret"):
            value = resolve_secret(config, entry, name, f"{where}.{name}")
            if not value:
                raise ConfigError(f"{where}.{name}", f"not set: give {name}_file or {name}_env")
            values.append(value)
        if values[0] in keys:
            raise ConfigError(f"{where}.api_key", "is listed twice")
        if entry.account not in gateway.accounts:
            raise ConfigError(
                f"{where}.account", f"{entry.account} is no account of the gateway (main or gateway.accounts)"
            )
        keys[values[0]] = (values[1], entry.account)
    return BinanceDialect(
        gateway, keys, weight_limit=section.weight_limit, min_notional=Decimal(str(section.min_notional))
    )
