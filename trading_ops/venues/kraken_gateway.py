"""A Kraken-compatible REST gateway over the paper venue: any ccxt client trades on it with `urls` pointed here.

It serves the endpoints ccxt's `kraken` client calls (public: Time, SystemStatus, Assets, AssetPairs, Ticker, OHLC,
Depth, Trades, Spread; private: Balance, BalanceEx, AddOrder, CancelOrder, CancelAll, OpenOrders, ClosedOrders,
QueryOrders, TradesHistory) with Kraken's shapes: the `{"error": [...], "result": ...}` envelope, HTTP 200 for API
errors, assets named as Kraken names them (XXBT, ZUSD), pairs keyed by their id (XXBTZUSD) with an altname (XBTUSD),
at most PAGE_SIZE closed orders or trades per call (`ofs` pages on), newest first.

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
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import math
import secrets
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from trading_ops.bot.broker import (
    BrokerError,
    BrokerEvents,
    OrderRequest,
    OrderStatus,
    OrderType,
    Quote,
    Side,
    VenueFill,
    VenueOrder,
)
from trading_ops.config import GATEWAY_MAIN_ACCOUNT, Config, ConfigError, resolve_secret
from trading_ops.paper.venue import PaperVenue
from trading_ops.tasks import stop_tasks
from trading_ops.venues.call_counter import CounterLimiter

LOG = logging.getLogger(__name__)

PAGE_SIZE = 50  # ClosedOrders and TradesHistory answer at most this many per call
MAX_QUERY_IDS = 50  # QueryOrders takes at most this many txids
DEPTH_LEVELS = 10  # book levels per side Depth answers at most
CANDLE_SECONDS = 60
MAX_CANDLES = 720  # one-minute candles kept per pair (OHLC answers at most 720, as Kraken does)
MAX_TRADES = 1000  # Trades answers at most this many (Kraken's `count` default and maximum)
MAX_SPREADS = 200  # changes of the best bid and ask kept per pair for Spread
NANOSECONDS = 10**9
SECONDS_OR_NANOSECONDS = 10**12  # a `since` above this is a nanosecond id, not Unix seconds
OHLC_INTERVALS = (1, 5, 15, 30, 60, 240, 1440, 10080, 21600)  # minutes
MAX_FAULT_SECONDS = 3600.0
MAX_FAULT_COUNT = 10_000
# The account of the gateway's own API key (`gateway.api_key`); sub-accounts have names of their own.
MAIN_ACCOUNT = GATEWAY_MAIN_ACCOUNT
# Each account's order and trade ids count from its own multiple of this, so no two accounts share an id (Kraken's
# txids are unique across the venue).
ACCOUNT_ID_SPAN = 10**12
# The call a reconnecting client starts its new session with: it ends a drop_connection.
RECONNECT_METHOD = "SystemStatus"
DEFAULT_LOST_REPLY_DELAY_SECONDS = 30.0
ASSET_DECIMALS = 10
# Kraken's ids for the assets it names the legacy way (X for crypto, Z for fiat): (id, altname). Others keep their
# name as both.
KRAKEN_ASSETS = {
    "BTC": ("XXBT", "XBT"),
    "ETH": ("XETH", "ETH"),
    "LTC": ("XLTC", "LTC"),
    "XRP": ("XXRP", "XRP"),
    "USD": ("ZUSD", "USD"),
    "EUR": ("ZEUR", "EUR"),
    "GBP": ("ZGBP", "GBP"),
}

# Kraken's error strings, as its REST API documents them.
E_INVALID_KEY = "EAPI:Invalid key"  # an unknown key, and a signature that does not verify
E_INVALID_NONCE = "EAPI:Invalid nonce"
E_RATE_LIMIT = "EAPI:Rate limit exceeded"
E_ORDER_RATE_LIMIT = "EOrder:Rate limit exceeded"
E_UNAVAILABLE = "EService:Unavailable"
E_BUSY = "EService:Busy"
E_INSUFFICIENT_FUNDS = "EOrder:Insufficient funds"
E_ORDER_MINIMUM = "EOrder:Order minimum not met"
E_INVALID_ORDER = "EOrder:Invalid order"
E_INVALID_PRICE = "EOrder:Invalid price:Invalid price argument"
E_PRICE_DECIMALS = "EOrder:Invalid price:{pair} price can only be specified up to {decimals} decimals."
E_UNKNOWN_ORDER = "EOrder:Unknown order"
E_UNKNOWN_PAIR = "EQuery:Unknown asset pair"
E_INVALID_ARGUMENTS = "EGeneral:Invalid arguments"
E_UNKNOWN_METHOD = "EGeneral:Unknown method"
# The order-placement calls count against Kraken's trading limiter, whose refusal says EOrder.
TRADING_METHODS = frozenset({"AddOrder", "CancelOrder", "CancelAll"})
# How Kraken refuses what the paper venue rejects (the order then never existed).
REJECT_ERRORS = {
    "insufficient_funds": E_INSUFFICIENT_FUNDS,
    "venue_busy": E_BUSY,
    "price_out_of_band": E_INVALID_PRICE,
    "reduce_only": E_INVALID_ORDER,
}
FAULTS = (
    "drop_connection",
    "outage",
    "unavailable",
    "rate_limit",
    "nonce",
    "lost_reply",
    "insufficient_funds",
    "invalid_order",
    "stale_market_data",
    "position_drift",
    "price_gap",
    "clear",
)
# The faults that last `seconds` (0: until cleared, or healed by the client), and the Faults field holding their end.
UNTIL_FIELDS = {
    "drop_connection": "dropped_until",
    "outage": "outage_until",
    "unavailable": "unavailable_until",
    "rate_limit": "rate_limited_until",
}
LOST_REPLY_MODES = ("close", "timeout")
# The venue's client order id of an order sent without one (Kraken's cl_ord_id is optional); never shown.
ANONYMOUS_PREFIX = "anonymous:"
TRUE_VALUES = frozenset({"true", "True", "1"})


class KrakenError(Exception):
    """A request refused with one of Kraken's error strings."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class FaultError(Exception):
    """A fault command with bad arguments (400)."""


@dataclass(frozen=True)
class Pair:
    symbol: str  # ours: BTC-USD
    pair_id: str  # Kraken's key: XXBTZUSD
    altname: str  # XBTUSD
    wsname: str  # XBT/USD
    base_id: str
    quote_id: str


def asset_id(asset: str) -> str:
    """Kraken's id for an asset: XXBT for BTC, ZUSD for USD, SOL for SOL."""
    return KRAKEN_ASSETS.get(asset, (asset, asset))[0]


def make_pair(symbol: str, base: str, quote: str) -> Pair:
    base_id, base_alt = KRAKEN_ASSETS.get(base, (base, base))
    quote_id, quote_alt = KRAKEN_ASSETS.get(quote, (quote, quote))
    legacy = base_id != base_alt and quote_id != quote_alt  # XXBTZUSD; but SOLUSD
    pair_id = base_id + quote_id if legacy else base_alt + quote_alt
    return Pair(symbol, pair_id, base_alt + quote_alt, f"{base_alt}/{quote_alt}", base_id, quote_id)


def sign(secret: bytes, path: str, nonce: str, body: str) -> str:
    """Kraken's API-Sign: base64(HMAC-SHA512(secret, path + SHA256(nonce + body)))."""
    digest = hashlib.sha256((nonce + body).encode()).digest()
    return base64.b64encode(hmac.new(secret, path.encode() + digest, hashlib.sha512).digest()).decode()


def decode_secret(secret: str) -> bytes:
    """A Kraken API secret is base64; raises ValueError naming the problem otherwise."""
    try:
        decoded = base64.b64decode(secret.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("an API secret must be base64 (as Kraken issues them)") from None
    if not decoded:
        raise ValueError("an API secret must not be empty")
    return decoded


def _num(value: Decimal) -> str:
    """A decimal as Kraken writes it: plain notation, never an exponent."""
    return format(value, "f")


def _ts(at: datetime | None) -> float:
    return 0.0 if at is None else at.timestamp()


def _flag(params: Mapping[str, str], name: str) -> bool:
    return params.get(name, "") in TRUE_VALUES


def _decimal(params: Mapping[str, str], name: str) -> Decimal | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise KrakenError(f"{E_INVALID_ARGUMENTS}:{name}") from None
    if not value.is_finite():
        raise KrakenError(f"{E_INVALID_ARGUMENTS}:{name}")
    return value


def _seconds(params: Mapping[str, str], name: str) -> float | None:
    value = _decimal(params, name)
    return None if value is None else float(value)


def _page(items: list[Any], params: Mapping[str, str]) -> list[Any]:
    raw = params.get("ofs", "0") or "0"
    if not raw.isdigit():
        raise KrakenError(f"{E_INVALID_ARGUMENTS}:ofs")
    offset = int(raw)
    return items[offset : offset + PAGE_SIZE]


@dataclass
class Faults:
    """What the gateway is told to break; `*_until` are monotonic deadlines (inf: until cleared or healed)."""

    dropped_until: float = 0.0
    outage_until: float = 0.0  # the whole venue down: a reconnect does not end it
    unavailable_until: float = 0.0
    rate_limited_until: float = 0.0
    nonce_errors: int = 0
    lost_replies: int = 0
    lost_reply_mode: str = "close"
    lost_reply_delay: float = DEFAULT_LOST_REPLY_DELAY_SECONDS
    insufficient_funds: int = 0
    invalid_orders: int = 0
    stale: dict[str, float] = field(default_factory=dict)  # symbol -> until

    def describe(self, now: float) -> dict[str, Any]:
        def left(until: float, healed_by: str = "") -> float | str | None:
            if until <= now:
                return None
            return f"until {healed_by or 'cleared'}" if math.isinf(until) else round(until - now, 3)

        return {
            "drop_connection": left(self.dropped_until, "the client reconnects"),
            "outage": left(self.outage_until),
            "unavailable": left(self.unavailable_until),
            "rate_limit": left(self.rate_limited_until),
            "nonce": self.nonce_errors,
            "lost_reply": self.lost_replies,
            "lost_reply_mode": self.lost_reply_mode,
            "insufficient_funds": self.insufficient_funds,
            "invalid_order": self.invalid_orders,
            "stale_market_data": {s: left(u, "the client resubscribes") for s, u in sorted(self.stale.items())},
        }


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

    Its size is the API's: one small method per Kraken endpoint (each a translation of one paper-venue call into
    Kraken's response shape), plus authentication and fault injection, which every endpoint passes through.
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
        venue.spot = True  # Kraken's spot accounts: no balance goes negative
        self._account_of_key: dict[str, PaperVenue] = dict.fromkeys(api_keys, venue)
        self._secrets = {key: decode_secret(secret) for key, secret in api_keys.items()}
        for sub in subaccounts:
            if sub.name in self.accounts:
                raise ValueError(f"two accounts are named {sub.name}")
            if not sub.api_keys:
                raise ValueError(f"sub-account {sub.name} needs at least one API key")
            if missing := [s for s in venue.symbols if s not in sub.venue.symbols]:
                raise ValueError(f"sub-account {sub.name} does not trade {', '.join(missing)}")
            for key, secret in sub.api_keys.items():
                if key in self._secrets:
                    raise ValueError(f"API key of sub-account {sub.name} is another account's key too")
                self._secrets[key] = decode_secret(secret)
                self._account_of_key[key] = sub.venue
            sub.venue.spot = True
            self.accounts[sub.name] = sub.venue
        self._subaccounts = [v for name, v in self.accounts.items() if name != MAIN_ACCOUNT]
        self._clock = clock
        self.call_counter = call_counter  # Kraken's REST call counter per key (trading_ops.venues.call_counter)
        self.pairs = {s: make_pair(s, venue.base_asset(s), venue.quote_asset) for s in venue.symbols}
        self._pair_by_name: dict[str, Pair] = {}
        for pair in self.pairs.values():
            self._pair_by_name[pair.pair_id] = pair
            self._pair_by_name[pair.altname] = pair
            self._pair_by_name[pair.wsname] = pair
        self._nonces: dict[str, int] = {}
        self.faults = Faults()
        self.calls: dict[str, int] = {}  # answered calls per method (what a test counts)
        self._quotes: dict[str, Quote] = {}
        self._candles: dict[str, list[list[Decimal]]] = {s: [] for s in venue.symbols}
        self._spreads: dict[str, deque[tuple[int, Decimal, Decimal]]] = {
            s: deque(maxlen=MAX_SPREADS) for s in venue.symbols
        }
        self._task: asyncio.Task[None] | None = None
        self._release = asyncio.Event()  # ends the wait of answers held back (lost_reply timeout) at clear or stop
        self._public: dict[str, Callable[[Mapping[str, str]], Awaitable[Any]]] = {
            "Time": self._time,
            "SystemStatus": self._system_status,
            "Assets": self._assets,
            "AssetPairs": self._asset_pairs,
            "Ticker": self._ticker,
            "OHLC": self._ohlc,
            "Depth": self._depth,
            "Trades": self._trades,
            "Spread": self._spread,
        }
        self._private: dict[str, Callable[[PaperVenue, Mapping[str, str]], Awaitable[Any]]] = {
            "Balance": self._balance,
            "BalanceEx": self._balance_ex,
            "AddOrder": self._add_order,
            "CancelOrder": self._cancel_order,
            "CancelAll": self._cancel_all,
            "OpenOrders": self._open_orders,
            "ClosedOrders": self._closed_orders,
            "QueryOrders": self._query_orders,
            "TradesHistory": self._trades_history,
        }

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.venue.connect(BrokerEvents(on_quote=self._on_quote))
        for sub in self._subaccounts:
            await sub.connect(BrokerEvents())  # nobody listens: its clients poll
        await self._follow()
        self._task = asyncio.create_task(self._run_market(), name="paper-gateway-market")

    async def _run_market(self) -> None:
        """The market ticks on the main venue; every sub-account follows its prices (its resting orders fill)."""
        while True:
            await asyncio.sleep(self.venue.tick_interval)
            try:
                await self.venue.tick()
                await self._follow()
            except Exception:
                LOG.exception("the market's tick failed")

    async def _follow(self) -> None:
        if self._subaccounts:
            prices = self.venue.prices()
            for sub in self._subaccounts:
                await sub.follow(prices)

    def release_held(self) -> None:
        """Send now the answers a lost_reply fault (mode timeout) holds back."""
        self._release.set()
        self._release = asyncio.Event()

    async def stop(self) -> None:
        self.release_held()
        await stop_tasks([self._task])
        for venue in self.accounts.values():
            await venue.close()

    async def _on_quote(self, quote: Quote) -> None:
        self._quotes[quote.symbol] = quote
        spreads = self._spreads[quote.symbol]
        if not spreads or spreads[-1][1:] != (quote.bid, quote.ask):
            spreads.append((int(quote.timestamp.timestamp()), quote.bid, quote.ask))
        mid = quote.mid.quantize(self.venue.tick_size(quote.symbol))
        minute = Decimal(int(quote.timestamp.timestamp()) // CANDLE_SECONDS * CANDLE_SECONDS)
        candles = self._candles[quote.symbol]
        if not candles:
            # The minute before the first quote, flat at its price, as history a real venue would have: a client
            # that drops the candle in progress (freqtrade does) has a closed one from the start.
            candles.append([minute - CANDLE_SECONDS, mid, mid, mid, mid, Decimal(0)])
        if candles[-1][0] == minute:
            candle = candles[-1]
            candle[2], candle[3], candle[4] = max(candle[2], mid), min(candle[3], mid), mid
            candle[5] += 1
        else:
            candles.append([minute, mid, mid, mid, mid, Decimal(1)])
            del candles[:-MAX_CANDLES]

    # -- HTTP -------------------------------------------------------------------------------------------------
    async def handle_public(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        if method == RECONNECT_METHOD and self.faults.dropped_until > self._clock():
            LOG.warning("drop_connection ended: a client reconnected (%s)", method)
            self.faults.dropped_until = 0.0
        if self._dropping(request):
            return web.Response()  # the connection is already closed: nothing is sent
        await self._end_stale(expired_only=True)
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
        if self._dropping(request):
            return web.Response()
        body = await request.text()
        try:
            self._service_faults(method)
            account, params = self._authenticate(request, body)
            if self.call_counter is not None and not self.call_counter.admit(request.headers["API-Key"], method):
                raise KrakenError(E_RATE_LIMIT)
            handler = self._private.get(method)
            if handler is None:
                raise KrakenError(E_UNKNOWN_METHOD)
            result = await handler(account, params)
        except KrakenError as exc:
            return self._error(method, exc)
        if method == "AddOrder" and self.faults.lost_replies > 0:
            # The order is placed; its answer never arrives.
            self.faults.lost_replies -= 1
            LOG.warning("lost_reply: dropping the answer to AddOrder %s", result.get("txid"))
            if self.faults.lost_reply_mode == "close":
                self._close(request)
                return web.Response()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), self.faults.lost_reply_delay)
        return self._answer(method, result)

    def _answer(self, method: str, result: Any) -> web.Response:
        self.calls[method] = self.calls.get(method, 0) + 1
        return web.json_response({"error": [], "result": result})

    @staticmethod
    def _error(method: str, exc: KrakenError) -> web.Response:
        LOG.info("%s: %s", method, exc.error)
        return web.json_response({"error": [exc.error], "result": {}})

    def _dropping(self, request: web.Request) -> bool:
        now = self._clock()
        if max(self.faults.dropped_until, self.faults.outage_until) > now:
            self._close(request)
            return True
        if self.faults.outage_until:
            LOG.warning("outage over: the venue answers again")
            self.faults.outage_until = 0.0
        return False

    @staticmethod
    def _close(request: web.Request) -> None:
        """Close the connection without an answer: the client sees it drop."""
        if request.transport is not None:
            request.transport.abort()

    def _service_faults(self, method: str) -> None:
        now = self._clock()
        if self.faults.unavailable_until > now:
            raise KrakenError(E_UNAVAILABLE)
        if self.faults.rate_limited_until > now:
            raise KrakenError(E_ORDER_RATE_LIMIT if method in TRADING_METHODS else E_RATE_LIMIT)

    def _authenticate(self, request: web.Request, body: str) -> tuple[PaperVenue, dict[str, str]]:
        """The account of the key and the POST parameters of a correctly signed private call with a fresh nonce;
        KrakenError otherwise."""
        key = request.headers.get("API-Key", "")
        secret = self._secrets.get(key)
        if secret is None:
            raise KrakenError(E_INVALID_KEY)
        try:
            params = dict(parse_qsl(body, keep_blank_values=True, strict_parsing=bool(body)))
        except ValueError:
            raise KrakenError(E_INVALID_ARGUMENTS) from None
        nonce = params.get("nonce", "")
        expected = sign(secret, request.path, nonce, body)
        given = request.headers.get("API-Sign", "")
        if not hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace")):
            raise KrakenError(E_INVALID_KEY)  # as Kraken answers a wrong secret
        if self.faults.nonce_errors > 0:
            self.faults.nonce_errors -= 1
            raise KrakenError(E_INVALID_NONCE)
        if not nonce.isascii() or not nonce.isdigit() or int(nonce) <= self._nonces.get(key, 0):
            raise KrakenError(E_INVALID_NONCE)
        self._nonces[key] = int(nonce)
        return self._account_of_key[key], params

    async def handle_chaos(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            LOG.warning("fault command from %s refused: missing or wrong bearer token", request.remote)
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        fault = request.match_info["fault"]
        if fault == "clear_chaos":
            fault = "clear"
        if fault not in FAULTS:
            return web.json_response({"error": f"unknown fault; one of {', '.join(FAULTS)}"}, status=404)
        try:
            args = await request.json() if request.can_read_body else {}
        except ValueError:
            args = None
        if not isinstance(args, dict):
            LOG.warning("fault %s refused: the body is not a JSON object", fault)
            return web.json_response({"error": "the body must be a JSON object"}, status=400)
        try:
            answer = await self.inject(fault, args)
        except FaultError as exc:
            LOG.warning("fault %s refused: %s", fault, exc)
            return web.json_response({"error": str(exc)}, status=400)
        LOG.warning("fault injected: %s %s", fault, answer)
        return web.json_response(answer)

    async def handle_chaos_status(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        return web.json_response(
            {
                "faults": self.faults.describe(self._clock()),
                "venue": self.venue.faults(),
                "accounts": list(self.accounts),
            }
        )

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.isascii():
            return False
        return hmac.compare_digest(token.strip().encode(), self.control_token.encode())

    # -- faults -----------------------------------------------------------------------------------------------
    async def inject(self, fault: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """Apply one fault (see FAULTS); raises FaultError for bad arguments."""
        f = self.faults
        now = self._clock()
        if fault in UNTIL_FIELDS:
            seconds = _fault_number(args, "seconds", 0.0, 0.0, MAX_FAULT_SECONDS)
            until = now + seconds if seconds > 0 else math.inf
            setattr(f, UNTIL_FIELDS[fault], until)
            healed = "until the client reconnects" if fault == "drop_connection" else "until cleared"
            return {"fault": fault, "seconds": seconds or healed}
        if fault in ("nonce", "insufficient_funds", "invalid_order"):
            count = int(_fault_number(args, "count", 1, 1, MAX_FAULT_COUNT))
            attr = {"nonce": "nonce_errors", "insufficient_funds": "insufficient_funds"}.get(fault, "invalid_orders")
            setattr(f, attr, getattr(f, attr) + count)
            return {"fault": fault, "count": count}
        if fault == "lost_reply":
            count = int(_fault_number(args, "count", 1, 1, MAX_FAULT_COUNT))
            mode = args.get("mode", "close")
            if mode not in LOST_REPLY_MODES:
                raise FaultError(f"mode must be one of {', '.join(LOST_REPLY_MODES)}")
            f.lost_replies += count
            f.lost_reply_mode = str(mode)
            f.lost_reply_delay = _fault_number(args, "delay", DEFAULT_LOST_REPLY_DELAY_SECONDS, 0.0, MAX_FAULT_SECONDS)
            return {"fault": fault, "count": count, "mode": mode}
        if fault == "stale_market_data":
            symbol = self._fault_symbol(args)
            seconds = _fault_number(args, "seconds", 0.0, 0.0, MAX_FAULT_SECONDS)
            await self.venue.stop_market_data(symbol)
            f.stale[symbol] = now + seconds if seconds > 0 else math.inf
            return {"fault": fault, "symbol": symbol, "seconds": seconds or "until the client resubscribes"}
        if fault == "position_drift":
            symbol = self._fault_symbol(args)
            quantity = Decimal(str(_fault_number(args, "quantity", 0.01, -1e9, 1e9)))
            account = str(args.get("account", MAIN_ACCOUNT))
            if account not in self.accounts:
                raise FaultError(f"unknown account {account[:64]!r}; known: {', '.join(self.accounts)}")
            try:
                fill = await self.accounts[account].inject_hidden_fill(symbol, quantity)
            except ValueError as exc:
                raise FaultError(str(exc)) from None
            answer = {"fault": fault, "symbol": symbol, "quantity": str(quantity), "trade_id": fill.trade_id}
            return answer if account == MAIN_ACCOUNT else {**answer, "account": account}
        if fault == "price_gap":
            symbol = self._fault_symbol(args)
            change = _fault_number(args, "change", -0.05, -0.5, 0.5)
            quote = await self.venue.gap_price(symbol, change)
            await self._follow()  # every account's resting orders it crosses fill
            return {"fault": fault, "symbol": symbol, "change": change, "mid": str(quote.mid)}
        # clear
        await self._end_stale()
        self.faults = Faults()
        self.release_held()
        return {"cleared": True}

    async def _end_stale(self, symbols: Iterable[str] | None = None, *, expired_only: bool = False) -> None:
        """The feed of these pairs (all when None; with `expired_only`, those whose `seconds` ran out) flows again."""
        now = self._clock()
        stale = self.faults.stale
        ended = [
            s
            for s in (list(stale) if symbols is None else symbols)
            if s in stale and (not expired_only or stale[s] <= now)
        ]
        for symbol in ended:
            del stale[symbol]
        if ended:
            LOG.warning("stale_market_data ended for %s", ", ".join(ended))
            await self.venue.resubscribe(ended)

    def _fault_symbol(self, args: Mapping[str, Any]) -> str:
        symbol = args.get("symbol", self.venue.symbols[0])
        if symbol not in self.pairs:
            raise FaultError(f"unknown symbol {str(symbol)[:32]!r}; known: {', '.join(self.pairs)}")
        return str(symbol)

    # -- public endpoints -------------------------------------------------------------------------------------
    async def _time(self, _params: Mapping[str, str]) -> dict[str, Any]:
        now = await self.venue.server_time()
        return {"unixtime": int(now.timestamp()), "rfc1123": format_datetime(now, usegmt=True)}

    async def _system_status(self, _params: Mapping[str, str]) -> dict[str, Any]:
        now = await self.venue.server_time()
        return {"status": "online", "timestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ")}

    async def _assets(self, params: Mapping[str, str]) -> dict[str, Any]:
        assets = {self.venue.quote_asset, *(self.venue.base_asset(s) for s in self.pairs)}
        assets.update(await self.venue.balances())
        wanted = set(params["asset"].split(",")) if params.get("asset") else None
        result = {}
        for asset in sorted(assets):
            aid, alt = KRAKEN_ASSETS.get(asset, (asset, asset))
            if wanted is None or aid in wanted or alt in wanted or asset in wanted:
                result[aid] = {
                    "aclass": "currency",
                    "altname": alt,
                    "decimals": ASSET_DECIMALS,
                    "display_decimals": 5,
                    "status": "enabled",
                }
        return result

    def _pairs(self, params: Mapping[str, str], *, required: bool = False) -> list[Pair]:
        raw = params.get("pair", "")
        if not raw:
            if required:
                raise KrakenError(f"{E_INVALID_ARGUMENTS}:pair")
            return list(self.pairs.values())
        found = []
        for name in raw.split(","):
            pair = self._pair_by_name.get(name)
            if pair is None:
                raise KrakenError(E_UNKNOWN_PAIR)
            found.append(pair)
        return found

    async def _asset_pairs(self, params: Mapping[str, str]) -> dict[str, Any]:
        pairs = self._pairs(params)
        await self._end_stale([p.symbol for p in pairs])  # listed again: a polling client's new subscription
        result = {}
        for pair in pairs:
            tick, step = self.venue.tick_size(pair.symbol), self.venue.step_size(pair.symbol)
            result[pair.pair_id] = {
                "altname": pair.altname,
                "wsname": pair.wsname,
                "aclass_base": "currency",
                "base": pair.base_id,
                "aclass_quote": "currency",
                "quote": pair.quote_id,
                "lot": "unit",
                "cost_decimals": 5,
                "pair_decimals": max(0, -int(tick.as_tuple().exponent)),
                "lot_decimals": max(0, -int(step.as_tuple().exponent)),
                "lot_multiplier": 1,
                "leverage_buy": [],
                "leverage_sell": [],
                "fees": [[0, float(self.venue.taker_fee * 100)]],
                "fees_maker": [[0, float(self.venue.maker_fee * 100)]],
                "fee_volume_currency": asset_id(self.venue.quote_asset),
                "margin_call": 80,
                "margin_stop": 40,
                "ordermin": _num(step),
                "costmin": "0",
                "tick_size": _num(tick),
                "status": "online",
            }
        return result

    def _quote(self, symbol: str) -> Quote:
        """The last quote the feed published (frozen while the symbol's market data is stale)."""
        quote = self._quotes.get(symbol)
        if quote is None:
            raise KrakenError(E_UNAVAILABLE)
        return quote

    async def _ticker(self, params: Mapping[str, str]) -> dict[str, Any]:
        result = {}
        for pair in self._pairs(params):
            if pair.symbol in self.faults.stale:
                continue  # its feed stopped: nothing to tell
            quote = self._quote(pair.symbol)
            candles = self._candles[pair.symbol]
            last = _num(quote.mid.quantize(self.venue.tick_size(pair.symbol)))
            low = _num(min(c[3] for c in candles)) if candles else last
            high = _num(max(c[2] for c in candles)) if candles else last
            opened = _num(candles[0][1]) if candles else last
            result[pair.pair_id] = {
                "a": [_num(quote.ask), "1", "1.000"],
                "b": [_num(quote.bid), "1", "1.000"],
                "c": [last, "0.00000000"],
                "v": ["0.00000000", "0.00000000"],
                "p": [last, last],
                "t": [0, 0],
                "l": [low, low],
                "h": [high, high],
                "o": opened,
            }
        return result

    async def _ohlc(self, params: Mapping[str, str]) -> dict[str, Any]:
        (pair,) = self._pairs(params, required=True)[:1]
        raw = params.get("interval", "1") or "1"
        if not raw.isdigit() or int(raw) not in OHLC_INTERVALS:
            raise KrakenError(f"{E_INVALID_ARGUMENTS}:interval")
        width = int(raw) * CANDLE_SECONDS
        since = _seconds(params, "since")
        merged: list[list[Decimal]] = []
        for t, o, h, low, c, n in self._candles[pair.symbol]:
            start = t - t % width
            if merged and merged[-1][0] == start:
                m = merged[-1]
                m[2], m[3], m[4], m[5] = max(m[2], h), min(m[3], low), c, m[5] + n
            else:
                merged.append([start, o, h, low, c, n])
        rows = [
            [int(t), _num(o), _num(h), _num(low), _num(c), _num(c), "0.00000000", int(n)]
            for t, o, h, low, c, n in merged
            if since is None or t > Decimal(str(since))
        ]
        return {pair.pair_id: rows, "last": int(merged[-1][0]) if merged else 0}

    async def _depth(self, params: Mapping[str, str]) -> dict[str, Any]:
        (pair,) = self._pairs(params, required=True)[:1]
        raw = params.get("count", "") or str(DEPTH_LEVELS)
        if not raw.isdigit() or int(raw) < 1:
            raise KrakenError(f"{E_INVALID_ARGUMENTS}:count")
        levels = min(int(raw), DEPTH_LEVELS)
        quote = self._quote(pair.symbol)
        tick = self.venue.tick_size(pair.symbol)
        at = int(quote.timestamp.timestamp())
        asks = [[_num(quote.ask + i * tick), "1.000", at] for i in range(levels)]
        bids = [[_num(quote.bid - i * tick), "1.000", at] for i in range(levels) if quote.bid - i * tick > 0]
        return {pair.pair_id: {"asks": asks, "bids": bids}}

    @staticmethod
    def _since_ns(params: Mapping[str, str]) -> int | None:
        """Trades' and Spread's `since`: Unix seconds, or a nanosecond id (Trades' `last`) as Kraken also takes."""
        since = _decimal(params, "since")
        if since is None:
            return None
        return int(since) if since > SECONDS_OR_NANOSECONDS else int(since * NANOSECONDS)

    async def _trades(self, params: Mapping[str, str]) -> dict[str, Any]:
        """The market's public trades: every account's fills of the pair, as the taker saw them (the side and order
        type of the taker; a fill of a resting order was taken by the other side at the market), oldest first."""
        (pair,) = self._pairs(params, required=True)[:1]
        raw = params.get("count", "") or str(MAX_TRADES)
        if not raw.isdigit() or int(raw) < 1:
            raise KrakenError(f"{E_INVALID_ARGUMENTS}:count")
        since = self._since_ns(params)
        rows: list[tuple[int, int, list[Any]]] = []
        for venue in self.accounts.values():
            kinds = {o.venue_order_id: o.order_type for o in venue.orders()}
            for fill in await venue.recent_fills():
                if fill.symbol != pair.symbol:
                    continue
                at = int(fill.executed_at.timestamp() * NANOSECONDS)
                if since is not None and at <= since:
                    continue
                taker = fill.liquidity != "maker"
                side = fill.side if taker else (Side.SELL if fill.side is Side.BUY else Side.BUY)
                kind = "l" if taker and kinds.get(fill.venue_order_id) is OrderType.LIMIT else "m"
                trade_id = int(fill.trade_id.lstrip("T") or 0)
                row = [_num(fill.price), _num(fill.quantity), at / NANOSECONDS, side.value[0], kind, "", trade_id]
                rows.append((at, trade_id, row))
        rows.sort(key=lambda r: (r[0], r[1]))
        newest = rows[-int(raw) :] if int(raw) < len(rows) else rows
        last = newest[-1][0] if newest else (since or 0)
        return {pair.pair_id: [row for _, _, row in newest], "last": str(last)}

    async def _spread(self, params: Mapping[str, str]) -> dict[str, Any]:
        """The best bid and ask of the pair each time they changed (frozen with a stale feed), oldest first."""
        (pair,) = self._pairs(params, required=True)[:1]
        since = self._since_ns(params)
        rows = [
            [at, _num(bid), _num(ask)]
            for at, bid, ask in self._spreads[pair.symbol]
            if since is None or at * NANOSECONDS > since
        ]
        last = rows[-1][0] if rows else (since or 0) // NANOSECONDS
        return {pair.pair_id: rows, "last": last}

    # -- private endpoints ------------------------------------------------------------------------------------
    async def _balance(self, venue: PaperVenue, _params: Mapping[str, str]) -> dict[str, str]:
        return {asset_id(a): _num(b) for a, b in (await venue.balances()).items()}

    async def _balance_ex(self, venue: PaperVenue, _params: Mapping[str, str]) -> dict[str, Any]:
        balances = await venue.balances()
        held = venue.reserved()
        return {
            asset_id(a): {"balance": _num(b), "hold_trade": _num(held.get(a, Decimal(0)))} for a, b in balances.items()
        }

    async def _add_order(self, venue: PaperVenue, params: Mapping[str, str]) -> dict[str, Any]:
        (pair,) = self._pairs(params, required=True)[:1]
        side, kind = params.get("type", ""), params.get("ordertype", "")
        if side not in ("buy", "sell"):
            raise KrakenError(f"{E_INVALID_ARGUMENTS}:type")
        if kind not in ("market", "limit"):
            raise KrakenError(f"{E_INVALID_ARGUMENTS}:ordertype")
        volume = _decimal(params, "volume")
        if volume is None or volume <= 0:
            raise KrakenError(f"{E_INVALID_ARGUMENTS}:volume")
        if volume < venue.step_size(pair.symbol):
            raise KrakenError(E_ORDER_MINIMUM)
        price = _decimal(params, "price") if kind == "limit" else None
        if kind == "limit" and (price is None or price <= 0):
            raise KrakenError(f"{E_INVALID_ARGUMENTS}:price")
        tick = venue.tick_size(pair.symbol)
        if price is not None and price % tick != 0:
            decimals = max(0, -int(tick.as_tuple().exponent))
            raise KrakenError(E_PRICE_DECIMALS.format(pair=pair.pair_id, decimals=decimals))
        if _flag(params, "validate"):
            return {"descr": {"order": self._description(side, volume, pair, kind, price)}}
        if self.faults.insufficient_funds > 0:
            self.faults.insufficient_funds -= 1
            raise KrakenError(E_INSUFFICIENT_FUNDS)
        if self.faults.invalid_orders > 0:
            self.faults.invalid_orders -= 1
            raise KrakenError(E_INVALID_ORDER)
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
            reduce_only=_flag(params, "reduce_only"),
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
        return text if price is None else f"{text} {_num(price)}"

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

    async def _cancel_order(self, venue: PaperVenue, params: Mapping[str, str]) -> dict[str, Any]:
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

    async def _cancel_all(self, venue: PaperVenue, _params: Mapping[str, str]) -> dict[str, Any]:
        count = 0
        for order in await venue.open_orders():
            try:
                await venue.cancel(venue_order_id=order.venue_order_id)
            except BrokerError as exc:
                raise self._venue_error(exc) from None
            count += 1
        return {"count": count}

    @staticmethod
    async def _fills_by_order(venue: PaperVenue) -> dict[str, list[VenueFill]]:
        by_order: dict[str, list[VenueFill]] = {}
        for fill in await venue.recent_fills():
            by_order.setdefault(fill.venue_order_id, []).append(fill)
        return by_order

    def _order_info(self, order: VenueOrder, fills: list[VenueFill], trades: bool) -> dict[str, Any]:
        pair = self.pairs[order.symbol]
        cost = sum((f.quantity * f.price for f in fills), Decimal(0))
        fee = sum((f.fee for f in fills), Decimal(0))
        average = cost / order.filled_quantity if order.filled_quantity else Decimal(0)
        if order.status.is_open:
            status = "open"
        else:
            status = "closed" if order.status is OrderStatus.FILLED else "canceled"
        price = _num(order.price) if order.price is not None else "0"
        kind = order.order_type.value
        info: dict[str, Any] = {
            "refid": None,
            "userref": None,
            "status": status,
            "opentm": _ts(order.created_at),
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
            "vol": _num(order.quantity),
            "vol_exec": _num(order.filled_quantity),
            "cost": _num(cost),
            "fee": _num(fee),
            "price": _num(average.quantize(Decimal("1e-10")) if average else average),
            "stopprice": "0",
            "limitprice": "0",
            "misc": "",
            "oflags": "fciq",
        }
        if not order.client_order_id.startswith(ANONYMOUS_PREFIX):
            info["cl_ord_id"] = order.client_order_id
        if not order.status.is_open:
            info["closetm"] = _ts(fills[-1].executed_at if fills else order.created_at)
            info["reason"] = None if status == "closed" else "User requested"
        if trades and fills:
            info["trades"] = [f.trade_id for f in fills]
        return info

    def _matches(self, order: VenueOrder, params: Mapping[str, str]) -> bool:
        if order.status is OrderStatus.REJECTED:
            return False
        cid = params.get("cl_ord_id", "")
        return not cid or (order.client_order_id == cid and not cid.startswith(ANONYMOUS_PREFIX))

    async def _open_orders(self, venue: PaperVenue, params: Mapping[str, str]) -> dict[str, Any]:
        fills = await self._fills_by_order(venue)
        trades = _flag(params, "trades")
        return {
            "open": {
                o.venue_order_id: self._order_info(o, fills.get(o.venue_order_id, []), trades)
                for o in await venue.open_orders()
                if self._matches(o, params)
            }
        }

    async def _closed_orders(self, venue: PaperVenue, params: Mapping[str, str]) -> dict[str, Any]:
        fills = await self._fills_by_order(venue)
        trades = _flag(params, "trades")
        start, end = _seconds(params, "start"), _seconds(params, "end")
        closed = []
        for order in reversed(venue.orders()):  # newest first
            if order.status.is_open or not self._matches(order, params):
                continue
            opened = _ts(order.created_at)
            if (start is not None and opened <= start) or (end is not None and opened > end):
                continue
            closed.append(order)
        page = _page(closed, params)
        return {
            "closed": {o.venue_order_id: self._order_info(o, fills.get(o.venue_order_id, []), trades) for o in page},
            "count": len(closed),
        }

    async def _query_orders(self, venue: PaperVenue, params: Mapping[str, str]) -> dict[str, Any]:
        ids = [t for t in params.get("txid", "").split(",") if t]
        if not ids or len(ids) > MAX_QUERY_IDS:
            raise KrakenError(f"{E_INVALID_ARGUMENTS}:txid")
        fills = await self._fills_by_order(venue)
        trades = _flag(params, "trades")
        orders = {o.venue_order_id: o for o in venue.orders() if o.status is not OrderStatus.REJECTED}
        return {txid: self._order_info(orders[txid], fills.get(txid, []), trades) for txid in ids if txid in orders}

    async def _trades_history(self, venue: PaperVenue, params: Mapping[str, str]) -> dict[str, Any]:
        start, end = _seconds(params, "start"), _seconds(params, "end")
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
                "pair": self.pairs[fill.symbol].pair_id,
                "time": fill.executed_at.timestamp(),
                "type": fill.side.value,
                "ordertype": kinds.get(fill.venue_order_id, "market"),
                "price": _num(fill.price),
                "cost": _num(fill.quantity * fill.price),
                "fee": _num(fill.fee),
                "vol": _num(fill.quantity),
                "margin": "0",
                "leverage": "0",
                "misc": "",
                "trade_id": int(fill.trade_id.lstrip("T") or 0),
                "maker": fill.liquidity == "maker",
            }
        return {"trades": trades, "count": len(fills)}


def _fault_number(args: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FaultError(f"{key} must be a number")
    if not low <= value <= high:
        raise FaultError(f"{key} must be between {low:g} and {high:g}")
    return float(value)


GATEWAY = web.AppKey("gateway", KrakenGateway)
# Routes that check a bearer token themselves (the fault commands): a web configuration's basic auth covers the
# Kraken API (whose private methods are signed with an API key besides).
BEARER_ROUTES = ("/chaos",)


def create_app(gateway: KrakenGateway) -> web.Application:
    """The gateway's aiohttp application; the venue's market ticks while the app runs."""
    app = web.Application()
    app[GATEWAY] = gateway
    app.router.add_get("/0/public/{method}", gateway.handle_public)
    app.router.add_post("/0/public/{method}", gateway.handle_public)
    app.router.add_post("/0/private/{method}", gateway.handle_private)
    app.router.add_get("/chaos", gateway.handle_chaos_status)
    app.router.add_post("/chaos/{fault}", gateway.handle_chaos)
    app.cleanup_ctx.append(_run_venue)
    app.on_shutdown.append(_release_held_answers)
    return app


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
    for i, extra in enumerate(g.extra_keys):
        key = f"gateway.extra_keys[{i}]"
        api_key = _secret(config, extra, "api_key", f"{key}.api_key")
        if api_key in keys:
            raise ConfigError(f"{key}.api_key", "is another key of the main account too")
        keys[api_key] = _secret(config, extra, "api_secret", f"{key}.api_secret")
    state = config.path(g.state_file) if g.state_file else None
    seed = config.paper.seed or secrets.randbits(32)
    venue = _paper_venue(config, list(config.paper.symbols), seed, "kraken-gateway", state, "gateway.state_file")
    subaccounts = []
    for i, account in enumerate(g.accounts):
        key = f"gateway.accounts[{i}]"
        api_key = _secret(config, account, "api_key", f"{key}.api_key")
        api_secret = _secret(config, account, "api_secret", f"{key}.api_secret")
        if account.state_file:
            account_state: Path | None = config.path(account.state_file)
        else:
            account_state = state.with_name(f"{state.stem}.{account.name}{state.suffix}") if state else None
        # The main venue's symbols (its state file may have added some): every account trades the whole market.
        name = f"kraken-gateway/{account.name}"
        sub = _paper_venue(config, list(venue.symbols), seed + i + 1, name, account_state, f"{key}.state_file", i + 1)
        subaccounts.append(SubAccount(account.name, sub, {api_key: api_secret}))
    try:
        counter = None if g.call_counter == "off" else CounterLimiter(g.call_counter)
        return KrakenGateway(venue, keys, values["control_token"], subaccounts=subaccounts, call_counter=counter)
    except ValueError as exc:
        raise ConfigError("gateway.accounts", str(exc)) from None


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
    p, g = config.paper, config.gateway
    venue = PaperVenue(
        symbols,
        quote_asset=p.quote_asset,
        starting_balance=Decimal(str(p.starting_balance)),
        seed=seed,
        volatility=p.volatility,
        order_latency=p.order_latency_seconds,
        reject_probability=p.reject_probability,
        partial_fill_probability=p.partial_fill_probability,
        maker_fee=Decimal(str(p.maker_fee_rate)),
        taker_fee=Decimal(str(p.taker_fee_rate)),
        tick_interval=p.tick_interval_seconds,
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
