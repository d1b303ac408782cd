"""A Kraken-compatible REST gateway over the paper venue: any ccxt client trades on it with `urls` pointed here.

It serves the endpoints ccxt's `kraken` client calls (public: Time, SystemStatus, Assets, AssetPairs, Ticker, OHLC,
Depth, Trades, Spread; private: Balance, BalanceEx, AddOrder, CancelOrder, CancelAll, CancelAllOrdersAfter,
OpenOrders, ClosedOrders, QueryOrders, TradesHistory) with Kraken's shapes: the `{"error": [...], "result": ...}`
envelope, HTTP 200 for API errors, assets named as Kraken names them (XXBT, ZUSD), pairs keyed by their id (XXBTZUSD)
with an altname (XBTUSD), at most PAGE_SIZE closed orders or trades per call (`ofs` pages on), newest first.

Accounts, as Kraken has them: the main account (gateway.api_key; several keys may reach one account) and sub-accounts
(gateway.accounts), each with balances, orders and trades of its own on the one market (its prices tick on the main
venue; every sub-account's paper venue follows them, so its resting orders fill as the market moves). A private call
acts on the account of the key that signed it and sees nothing of the others: several bots share the venue, one
account each, and never see (or cancel) each other's orders. Order and trade ids are unique across accounts.

Private calls are authenticated as Kraken does: `API-Key` must be a known key, `API-Sign` the base64
HMAC-SHA512 (keyed with the base64-decoded secret) of the URI path followed by SHA256(nonce + POST body), and the
nonce must be greater than the last one accepted for that key. Errors carry Kraken's own strings, so a ccxt client
raises its real exception classes: an unknown key and a signature that does not verify (a wrong secret) both answer
`EAPI:Invalid key`, as Kraken answers a wrong secret today (its own CLI's maintainers say so, krakenfx/kraken-cli#33;
Kraken's documentation also lists `EAPI:Invalid signature`, which older reports show and which ccxt leaves a bare
ExchangeError, so a client could not tell a wrong secret from any venue error).

Every account is a spot account, as on Kraken: no balance goes negative. Open orders hold funds (BalanceEx's
`hold_trade`): a buy its remaining volume at its price plus fee in the quote asset, a sell its remaining volume of the
base asset; an order the rest cannot pay for answers `EOrder:Insufficient funds` and is not placed (PaperVenue with
`spot`). Order validation answers Kraken's strings: `EOrder:Order minimum not met` under the pair's `ordermin`,
`EOrder:Invalid price:<pair> price can only be specified up to N decimals.` for a price finer than its tick,
`EGeneral:Invalid arguments:<field>` for a missing or malformed one.

Public trades (Trades) are the fills of every account on the market, each as its taker saw it, oldest first; Spread
the best bid and ask each time they changed, as the feed published them.

The dead man's switch (CancelAllOrdersAfter) is the account's, as Kraken's is: one timer per account, which any key
of that account arms (`timeout` seconds, under a day), pushes back, or disarms (`timeout=0`; `triggerTime` "0"); when
it runs out (checked every market tick), every open order of that account is canceled, whichever key placed it, and
the timer stays disarmed until armed again. Other accounts' orders are untouched. It adds 1 to the key's REST call
counter, as every private call but order placement and cancellation does. Bad input (no timeout, not whole seconds,
a day or more) answers `EGeneral:Invalid arguments`.

Fault injection (`POST /chaos/{fault}` with the control token as a bearer token; `GET /chaos` lists what is in
force): drop_connection, outage, unavailable, rate_limit, stale_market_data (for `seconds`, 0 = until cleared or
healed), nonce, lost_reply, insufficient_funds, invalid_order (the next `count` calls), position_drift (a fill nobody
is told about, on the main account or `account`), price_gap, clear. Every fault but position_drift is the venue's: it
hits every account.

An outage is the venue down for everyone: every request of every client and key is closed unanswered for `seconds`,
whatever the clients do (a reconnect's SystemStatus too); it ends by itself, or at `clear`.

Two faults end the way they end on a real venue, by what the client does, so that a bot's own recovery heals them:
- drop_connection: the venue drops the client's connections, every request closed unanswered, until the client
  reconnects: a new session, which a careful client starts by asking the venue's status (SystemStatus, ccxt's
  `fetch_status`, as CcxtBroker's connect and reconnect do); SystemStatus is answered and ends the drop.
- stale_market_data: one pair's feed stops. Ticker answers leave the pair out (a polling client sees no quote,
  however quiet the market: a frozen price would look like a quiet market), its depth and candles freeze while
  the market moves on, until a client subscribes again: for a polling client, loading the markets again
  (AssetPairs listing the pair, as CcxtBroker's resubscribe does).

Orders the paper venue rejects never existed for Kraken: AddOrder answers the error and the order is not listed.

With `gateway.call_counter` set to a tier, private calls count on Kraken's REST call counter of their key
(trading_ops.venues.call_counter.CounterLimiter), and a call past its maximum answers `EAPI:Rate limit exceeded`.

The same market and accounts stream over Kraken's Spot WebSocket v2 on the same port (its ws/ package):
public at `/ws/v2`, private at `/ws-auth/v2` with a token from the private call GetWebSocketsToken (bound to the key
that asked, and so to its account). Its stream faults (`ws_*`) are fault commands like the others; drop_connection
and outage drop every socket too.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from trading_ops.bot.broker import BrokerEvents, Quote
from trading_ops.config import GATEWAY_MAIN_ACCOUNT, Config, ConfigError, GatewayKeyConfig, resolve_secret
from trading_ops.http_guard import guard
from trading_ops.http_input import InputError, read_body, read_json_object
from trading_ops.paper.faults import FaultModel
from trading_ops.paper.gateway.dialect import Dialect
from trading_ops.paper.gateway.kraken.account import AccountEndpoints
from trading_ops.paper.gateway.kraken.api import (
    E_INVALID_ARGUMENTS,
    E_RATE_LIMIT,
    E_UNKNOWN_METHOD,
    KrakenError,
    Pairs,
    decode_secret,
)
from trading_ops.paper.gateway.kraken.auth import KrakenAuth
from trading_ops.paper.gateway.kraken.faults import FAULTS, FaultError, GatewayFaults
from trading_ops.paper.gateway.kraken.market import MarketData
from trading_ops.paper.gateway.kraken.ws.faults import WS_FAULTS, StreamFaultError
from trading_ops.paper.gateway.kraken.ws.server import PRIVATE_PATH, PUBLIC_PATH, KrakenWebSocket
from trading_ops.paper.venue import PaperVenue
from trading_ops.tasks import stop_tasks
from trading_ops.venues.call_counter import CounterLimiter

LOG = logging.getLogger(__name__)

# The account of the gateway's own API key (`gateway.api_key`); sub-accounts have names of their own.
MAIN_ACCOUNT = GATEWAY_MAIN_ACCOUNT
# Each account's order and trade ids count from its own multiple of this, so no two accounts share an id (Kraken's
# txids are unique across the venue).
ACCOUNT_ID_SPAN = 10**12


@dataclass(frozen=True)
class SubAccount:
    """An account of its own on the gateway's market, as Kraken's subaccounts are: its balances, orders and trades
    are `venue`'s (a PaperVenue that follows the main venue's prices), reached with its own API keys."""

    name: str
    venue: PaperVenue
    api_keys: Mapping[str, str]


class KrakenGateway:
    """The paper venue behind Kraken's REST API; `start()` connects to it and keeps its market ticking.

    Accounts: `venue` is the main account (reached with `api_keys`, several keys on one account as Kraken allows);
    each SubAccount has its own balances, orders and trades on the same market. A private call acts on the account
    of the key that signed it, and sees nothing of the others.

    It owns the accounts, the market's clock (the main venue ticks, sub-accounts follow) and the HTTP surface: a
    request passes the faults in force, then authentication (private calls), then its endpoint. The work is done by
    `faults` (GatewayFaults over `fault_model`, the FaultModel the paper venue uses too), `auth` (KrakenAuth: keys,
    signatures, nonces), `market` (MarketData: the public endpoints) and `account` (AccountEndpoints: the private
    ones).
    """

    def __init__(
        self,
        venue: PaperVenue,
        api_keys: Mapping[str, str],
        control_token: str,
        *,
        subaccounts: Iterable[SubAccount] = (),
        clock: Callable[[], float] = time.monotonic,
        call_counter: CounterLimiter | None = None,
    ) -> None:
        if not api_keys:
            raise ValueError("the gateway needs at least one API key")
        if not control_token:
            raise ValueError("the gateway needs a control token for its fault commands")
        self.venue = venue
        self.control_token = control_token
        self.accounts: dict[str, PaperVenue] = {MAIN_ACCOUNT: venue}
        self.pairs = Pairs(venue.symbols, venue.base_asset, venue.quote_asset)
        self.fault_model = FaultModel(clock)
        self.faults = GatewayFaults(self.fault_model, venue, self.accounts, MAIN_ACCOUNT, self.pairs, self._follow)
        self.auth = KrakenAuth(self.faults)
        venue.spot = True  # Kraken's spot accounts: no balance goes negative
        self.auth.add_keys(api_keys, venue)
        for sub in subaccounts:
            self._add_subaccount(sub)
        self._subaccounts = [v for name, v in self.accounts.items() if name != MAIN_ACCOUNT]
        self.market = MarketData(venue, self.accounts, self.pairs, self.faults)
        self.account = AccountEndpoints(self.pairs, self.faults)
        self.call_counter = call_counter  # Kraken's REST call counter per key (trading_ops.venues.call_counter)
        self.calls: dict[str, int] = {}  # answered calls per method (what a test counts)
        # Kraken's Spot WebSocket v2 on the same market and accounts (trading_ops.paper.gateway.kraken.ws).
        self.websocket = KrakenWebSocket(
            venue,
            self.accounts,
            self.pairs,
            self.account,
            self.fault_model,
            self.faults.check_service,
            call_counter,
            on_subscribe=self.faults.end_stale,  # a new subscription to a pair ends its stale_market_data
            candles=self.market.candles,  # the ohlc channel streams the candles REST OHLC serves
        )
        # More dialects on the same market and accounts (trading_ops.paper.gateway.binance), added before start().
        self.dialects: list[Dialect] = []
        self._task: asyncio.Task[None] | None = None
        self._public: dict[str, Callable[[Mapping[str, str]], Awaitable[Any]]] = {
            "Time": self.market.time,
            "SystemStatus": self.market.system_status,
            "Assets": self.market.assets,
            "AssetPairs": self.market.asset_pairs,
            "Ticker": self.market.ticker,
            "OHLC": self.market.ohlc,
            "Depth": self.market.depth,
            "Trades": self.market.trades,
            "Spread": self.market.spread,
        }
        self._private: dict[str, Callable[[PaperVenue, Mapping[str, str]], Awaitable[Any]]] = {
            "Balance": self.account.balance,
            "BalanceEx": self.account.balance_ex,
            "AddOrder": self.account.add_order,
            "CancelOrder": self.account.cancel_order,
            "CancelAll": self.account.cancel_all,
            "CancelAllOrdersAfter": self.account.cancel_all_orders_after,
            "OpenOrders": self.account.open_orders,
            "ClosedOrders": self.account.closed_orders,
            "QueryOrders": self.account.query_orders,
            "TradesHistory": self.account.trades_history,
        }

    def _add_subaccount(self, sub: SubAccount) -> None:
        if sub.name in self.accounts:
            raise ValueError(f"two accounts are named {sub.name}")
        if not sub.api_keys:
            raise ValueError(f"sub-account {sub.name} needs at least one API key")
        if missing := [s for s in self.venue.symbols if s not in sub.venue.symbols]:
            raise ValueError(f"sub-account {sub.name} does not trade {', '.join(missing)}")
        if any(self.auth.has_key(key) for key in sub.api_keys):
            raise ValueError(f"API key of sub-account {sub.name} is another account's key too")
        self.auth.add_keys(sub.api_keys, sub.venue)
        sub.venue.spot = True
        self.accounts[sub.name] = sub.venue

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def start(self) -> None:
        for name, account in self.accounts.items():
            # Each account's orders and fills go to its private WebSocket subscribers; the main venue's quotes are
            # the market (REST's and the public WebSocket's).
            on_order, on_fill = self._account_events(name, account)
            on_quote = self._on_quote if account is self.venue else None
            await account.connect(BrokerEvents(on_quote=on_quote, on_order=on_order, on_fill=on_fill))
        await self._follow()
        await self.websocket.start()
        for dialect in self.dialects:
            await dialect.start()
        self._task = asyncio.create_task(self._run_market(), name="paper-gateway-market")

    def _account_events(self, name: str, account: PaperVenue) -> tuple[Any, Any]:
        """on_order and on_fill of `account`: its private WebSocket subscribers', then every dialect's."""
        ws_order, ws_fill = self.websocket.account_events(name, account)

        async def on_order(order: Any) -> None:
            await ws_order(order)
            for dialect in self.dialects:
                await dialect.on_order(name, order)

        async def on_fill(fill: Any) -> None:
            await ws_fill(fill)
            for dialect in self.dialects:
                await dialect.on_fill(name, fill)

        return on_order, on_fill

    async def _run_market(self) -> None:
        """The market ticks on the main venue; every sub-account follows its prices (its resting orders fill)."""
        while True:
            await asyncio.sleep(self.venue.tick_interval)
            try:
                await self.venue.tick()
                await self._follow()
                for sub in self._subaccounts:
                    await sub.expire_dead_man_switch()
            except Exception:
                LOG.exception("the market's tick failed")

    async def _on_quote(self, quote: Quote) -> None:
        await self.market.on_quote(quote)
        await self.websocket.on_quote(quote)
        for dialect in self.dialects:
            await dialect.on_quote(quote)

    def _websockets_token(self, api_key: str, venue: PaperVenue) -> dict[str, Any]:
        """GetWebSocketsToken: a token for the private WebSocket, bound to the key that asked (and its account)."""
        account = next(name for name, v in self.accounts.items() if v is venue)
        return self.websocket.tokens.issue(api_key, account)

    async def _follow(self) -> None:
        if self._subaccounts:
            prices = self.venue.prices()
            for sub in self._subaccounts:
                await sub.follow(prices)

    def release_held(self) -> None:
        """Send now the answers a lost_reply fault (mode timeout) holds back."""
        self.faults.release_held()

    async def stop(self) -> None:
        self.release_held()
        await self.websocket.stop()
        for dialect in self.dialects:
            await dialect.stop()
        await stop_tasks([self._task])
        for venue in self.accounts.values():
            await venue.close()

    # -- HTTP -------------------------------------------------------------------------------------------------
    async def handle_public(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        self.faults.reconnected(method)
        if self.faults.dropping(request):
            return web.Response()  # the connection is already closed: nothing is sent
        await self.faults.end_stale(expired_only=True)
        try:
            self._service_faults(method)
            handler = self._public.get(method)
            if handler is None:
                raise KrakenError(E_UNKNOWN_METHOD)
            result = await handler(request.query)
        except KrakenError as exc:
            return self._error(method, exc)
        return self._answer(method, result)

    async def handle_private(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        if self.faults.dropping(request):
            return web.Response()
        try:
            body = (await read_body(request, MAX_BODY_BYTES)).decode("utf-8")
        except (InputError, UnicodeDecodeError):
            return self._error(method, KrakenError(E_INVALID_ARGUMENTS))
        try:
            self._service_faults(method)
            account, params = self._authenticate(request, body)
            if self.call_counter is not None and not self.call_counter.admit(request.headers["API-Key"], method):
                raise KrakenError(E_RATE_LIMIT)
            handler = self._private.get(method)
            if method == WEBSOCKETS_TOKEN:
                result = self._websockets_token(request.headers["API-Key"], account)
            elif handler is None:
                raise KrakenError(E_UNKNOWN_METHOD)
            else:
                result = await handler(account, params)
        except KrakenError as exc:
            return self._error(method, exc)
        if method == "AddOrder" and await self.faults.lose_reply(request, result):
            return web.Response()  # the order is placed; its answer never arrives
        return self._answer(method, result)

    async def handle_websocket(self, request: web.Request) -> web.StreamResponse:
        """Kraken's Spot WebSocket v2, public (PUBLIC_PATH) or private (PRIVATE_PATH); refused like every request
        while the venue is out or dropping its connections."""
        if self.faults.dropping(request):
            return web.Response()
        if request.path == PRIVATE_PATH:
            return await self.websocket.handle_private(request)
        return await self.websocket.handle_public(request)

    def _answer(self, method: str, result: Any) -> web.Response:
        self.calls[method] = self.calls.get(method, 0) + 1
        return web.json_response({"error": [], "result": result})

    @staticmethod
    def _error(method: str, exc: KrakenError) -> web.Response:
        LOG.info("%s: %s", method, exc.error)
        return web.json_response({"error": [exc.error], "result": {}})

    def _service_faults(self, method: str) -> None:
        """KrakenError while a fault refuses the service (unavailable, rate_limit)."""
        self.faults.check_service(method)

    def _authenticate(self, request: web.Request, body: str) -> tuple[PaperVenue, dict[str, str]]:
        """The account of the key and the POST parameters of a correctly signed private call with a fresh nonce;
        KrakenError otherwise."""
        return self.auth.authenticate(request, body)

    async def handle_chaos(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            LOG.warning("fault command from %s refused: missing or wrong bearer token", request.remote)
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        fault = request.match_info["fault"]
        if fault == "clear_chaos":
            fault = "clear"
        dialect = next((d for d in self.dialects if fault in d.fault_names), None)
        if fault not in FAULTS and fault not in WS_FAULTS and dialect is None:
            known = ", ".join((*FAULTS, *WS_FAULTS, *(f for d in self.dialects for f in d.fault_names)))
            return web.json_response({"error": f"unknown fault; one of {known}"}, status=404)
        try:
            args = await read_json_object(request, MAX_BODY_BYTES)
        except InputError as exc:
            LOG.warning("fault %s refused: %s", fault, exc)
            return web.json_response({"error": exc.message}, status=exc.status)
        try:
            if dialect is not None:
                answer = await dialect.inject(fault, args)
            elif fault in WS_FAULTS:
                answer = await self.websocket.faults.inject(fault, args)
            else:
                if fault == "clear":
                    self.websocket.faults.clear()
                    for d in self.dialects:
                        d.clear()
                answer = await self.faults.inject(fault, args)
        except (FaultError, StreamFaultError, ValueError) as exc:
            LOG.warning("fault %s refused: %s", fault, exc)
            return web.json_response({"error": str(exc)}, status=400)
        if fault in ("outage", "drop_connection"):  # the venue's sockets drop with its REST connections
            await self.websocket.faults.inject("ws_close", {"code": 1006})
            for d in self.dialects:
                await d.drop_sockets()
        LOG.warning("fault injected: %s %s", fault, answer)
        return web.json_response(answer)

    async def handle_chaos_status(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        return web.json_response(
            {
                "faults": self.faults.describe(),
                "websocket": self.websocket.faults.describe(),
                "venue": self.venue.faults(),
                "accounts": list(self.accounts),
                **{d.name: d.describe() for d in self.dialects},
            }
        )

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.isascii():
            return False
        return hmac.compare_digest(token.strip().encode(), self.control_token.encode())


GATEWAY = web.AppKey("gateway", KrakenGateway)
# The private call that issues a token for the private WebSocket (Kraken's GetWebSocketsToken).
WEBSOCKETS_TOKEN = "GetWebSocketsToken"
# A private call's form or a fault command's arguments: far more than either takes.
MAX_BODY_BYTES = 64 * 1024
# Routes that check a bearer token themselves (the fault commands): a web configuration's basic auth covers the
# Kraken API (whose private methods are signed with an API key besides).
BEARER_ROUTES = ("/chaos",)


def create_app(gateway: KrakenGateway) -> web.Application:
    """The gateway's aiohttp application; the venue's market ticks while the app runs."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    # Every answer with its security headers, an unexpected error a 500 in JSON (the Kraken API's own errors are 200s).
    guard(app)
    app[GATEWAY] = gateway
    app.router.add_get("/0/public/{method}", gateway.handle_public)
    app.router.add_post("/0/public/{method}", gateway.handle_public)
    app.router.add_post("/0/private/{method}", gateway.handle_private)
    app.router.add_get(PUBLIC_PATH, gateway.handle_websocket)
    app.router.add_get(PRIVATE_PATH, gateway.handle_websocket)
    app.router.add_get("/chaos", gateway.handle_chaos_status)
    app.router.add_post("/chaos/{fault}", gateway.handle_chaos)
    for dialect in gateway.dialects:
        dialect.mount(app)
    app.cleanup_ctx.append(_run_venue)
    app.on_shutdown.append(_release_held_answers)
    app.on_shutdown.append(_close_websockets)
    return app


async def _close_websockets(app: web.Application) -> None:
    """A shutdown closes every WebSocket (1001, going away) rather than waiting for its clients to leave."""
    await app[GATEWAY].websocket.stop()


async def _release_held_answers(app: web.Application) -> None:
    """A shutdown does not wait for answers held back by a lost_reply fault."""
    app[GATEWAY].release_held()


async def _run_venue(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    await gateway.start()
    yield
    await gateway.stop()


def gateway_from_config(config: Config) -> KrakenGateway:
    """The gateway of `config.gateway` over a paper venue set up by `config.paper` (its state loaded from
    `gateway.state_file` when that exists, and saved there after every change), with a venue of its own for each
    sub-account of `gateway.accounts` on the same market. ConfigError for a missing or bad secret."""
    g = config.gateway
    values = {}
    for name in ("api_key", "api_secret", "control_token"):
        values[name] = _secret(config, g, name, f"gateway.{name}")
    keys = {values["api_key"]: values["api_secret"]}
    _extra_keys(config, g.extra_keys, "gateway", keys, "the main account")
    state = Path(g.state_file) if g.state_file else None
    seed = config.paper.seed or secrets.randbits(32)
    venue = _paper_venue(config, list(config.paper.symbols), seed, "kraken-gateway", state, "gateway.state_file")
    subaccounts = []
    for i, account in enumerate(g.accounts):
        key = f"gateway.accounts[{i}]"
        api_key = _secret(config, account, "api_key", f"{key}.api_key")
        api_secret = _secret(config, account, "api_secret", f"{key}.api_secret")
        if account.state_file:
            account_state: Path | None = Path(account.state_file)
        else:
            account_state = state.with_name(f"{state.stem}.{account.name}{state.suffix}") if state else None
        # The main venue's symbols (its state file may have added some): every account trades the whole market.
        name = f"kraken-gateway/{account.name}"
        sub = _paper_venue(config, list(venue.symbols), seed + i + 1, name, account_state, f"{key}.state_file", i + 1)
        account_keys = {api_key: api_secret}
        _extra_keys(config, account.extra_keys, key, account_keys, f"sub-account {account.name}")
        subaccounts.append(SubAccount(account.name, sub, account_keys))
    try:
        counter = None if g.call_counter == "off" else CounterLimiter(g.call_counter)
        gateway = KrakenGateway(venue, keys, values["control_token"], subaccounts=subaccounts, call_counter=counter)
    except ValueError as exc:
        raise ConfigError("gateway.accounts", str(exc)) from None
    return gateway


def _extra_keys(config: Config, extra: list[GatewayKeyConfig], where: str, keys: dict[str, str], whose: str) -> None:
    """Add an account's `extra_keys` to its `keys` (key -> secret); ConfigError for a key it already has."""
    for i, more in enumerate(extra):
        key = f"{where}.extra_keys[{i}]"
        api_key = _secret(config, more, "api_key", f"{key}.api_key")
        if api_key in keys:
            raise ConfigError(f"{key}.api_key", f"is another key of {whose} too")
        keys[api_key] = _secret(config, more, "api_secret", f"{key}.api_secret")


def _secret(config: Config, section: Any, name: str, key: str) -> str:
    value = resolve_secret(config, section, name, key)
    if not value:
        raise ConfigError(key, f"not set: give {name}_file or {name}_env")
    if name == "api_secret":
        try:
            decode_secret(value)
        except ValueError as exc:
            raise ConfigError(key, str(exc)) from None
    return value


def _paper_venue(
    config: Config, symbols: list[str], seed: int, name: str, state: Path | None, key: str, account: int = 0
) -> PaperVenue:
    """The paper venue of the `account`-th account (0: the main one) as `config.paper` sets it up, its state loaded
    from `state` when that exists."""
    g = config.gateway
    venue = PaperVenue.from_config(
        config.paper,
        symbols,
        seed=seed,
        rate_limit_per_second=g.orders_per_second,
        rate_limit_burst=max(1.0, g.orders_per_second),
        venue=name,
        autosave_path=state,
        id_base=account * ACCOUNT_ID_SPAN,
    )
    if state is not None and state.exists():
        try:
            venue.load_state(state)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(key, f"cannot load {state}: {exc}") from None
    return venue
