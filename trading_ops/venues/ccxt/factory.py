"""Which ccxt broker a configuration gets, and the ccxt clients it is built on: the REST broker (rest), the streaming
broker over our Kraken WebSocket v2 client (streaming) or the one whose fills come through ccxt.pro (pro_broker)."""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt_async

from trading_ops.config import Config, ConfigError, bot_order_id_prefix, resolve_secret, shared_account
from trading_ops.venues.call_counter import CallBudget, WeightBudget
from trading_ops.venues.ccxt.rest import CcxtBroker
from trading_ops.webconfig import client_ssl_context

log = logging.getLogger(__name__)

KRAKEN_PRIVATE_WS_URL = "wss://ws-auth.kraken.com/v2"  # Kraken's private WebSocket v2
KRAKEN_PUBLIC_WS_URL = "wss://ws.kraken.com/v2"  # and its public one
STREAMED = ("kraken",)  # exchanges whose stream (Kraken's WebSocket v2) StreamingCcxtBroker speaks


def make_exchange(config: Config) -> ccxt_async.Exchange:
    """A `ccxt.async_support` exchange from `config.ccxt`: its keys from the secret files or variables, its API URLs
    overridden by `urls`. Nothing is fetched until the broker connects. ConfigError for what is missing or unknown."""
    c = config.ccxt
    if c.exchange not in ccxt_async.exchanges:
        raise ConfigError("ccxt.exchange", f"ccxt has no exchange {c.exchange!r}")
    settings: dict[str, Any] = {
        "enableRateLimit": c.enable_rate_limit,
        "timeout": int(c.timeout_seconds * 1000),
    }
    for name, ccxt_name in (("api_key", "apiKey"), ("api_secret", "secret")):
        value = resolve_secret(config, c, name, f"ccxt.{name}")
        if not value:
            raise ConfigError(f"ccxt.{name}", f"not set: give {name}_file or {name}_env")
        settings[ccxt_name] = value
    if c.urls:
        settings["urls"] = {"api": rest_urls(c.exchange, c.urls)}
    exchange: ccxt_async.Exchange = getattr(ccxt_async, c.exchange)(settings)
    tls = client_ssl_context(c.tls, "ccxt.tls")
    if tls is not None:
        exchange.ssl_context = tls  # ccxt's session takes it instead of certifi's bundle
    return exchange


def rest_urls(exchange: str, urls: Mapping[str, str]) -> dict[str, Any]:
    """ccxt's `urls.api` from `ccxt.urls`. On Binance, whose client reaches a dozen REST URLs (/api/v3, /sapi/v1,
    /fapi/v1, ...: its load_markets asks several), each one `urls` does not name keeps its path on the host of
    `urls.private` (else `urls.public`): a gateway or proxy is named once. Elsewhere `urls` as given."""
    given = dict(urls)
    host = given.get("private") or given.get("public")
    if exchange != "binance" or not host:
        return given
    parts = urllib.parse.urlsplit(host)
    api: dict[str, Any] = {}
    cls = ccxt_async.binance
    for name, url in cls.describe(cls.__new__(cls))["urls"]["api"].items():  # the class's URLs, no client built
        if isinstance(url, str):
            path = urllib.parse.urlsplit(url).path
            api[name] = urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    return {**api, **given}


def binance_ws_urls(cls: Any, config: Config) -> dict[str, Any]:
    """ccxt.pro binance's `urls.api.ws` with its spot URLs moved: the user data stream (the WebSocket API) to
    `ccxt.stream_url`, the market streams to `ccxt.stream_public_url`, each else at the host of `urls.private` (or
    `public`) under the paths a paper gateway serves them (/ws-api/v3, /stream/ws: docs/gateway-binance.md)."""
    c = config.ccxt
    ws = dict(cls.describe(cls.__new__(cls))["urls"]["api"]["ws"])  # the class's URLs, no client built
    host = c.urls.get("private") or c.urls.get("public") or ""
    parts = urllib.parse.urlsplit(host)
    scheme = "wss" if parts.scheme == "https" else "ws"
    base = urllib.parse.urlunsplit((scheme, parts.netloc, "", "", ""))
    private = c.stream_url or f"{base}/ws-api/v3"
    public = c.stream_public_url or f"{base}/stream/ws"
    ws.update({"spot": public, "margin": public})
    ws["ws-api"] = {**ws.get("ws-api", {}), "spot": private}
    return ws


def stream_url(config: Config, endpoint: str = "private") -> str:
    """The WebSocket v2 URL of `config.ccxt` for `endpoint` (private: the account's executions; public: the books):
    `stream_url` / `stream_public_url`, else the same REST URL's host at /ws-auth/v2 or /ws/v2 (a paper gateway
    serves both), else Kraken's."""
    c = config.ccxt
    given = c.stream_url if endpoint == "private" else c.stream_public_url
    if given:
        return given
    path = "/ws-auth/v2" if endpoint == "private" else "/ws/v2"
    rest = c.urls.get(endpoint) or c.urls.get("private")
    if not rest:
        return KRAKEN_PRIVATE_WS_URL if endpoint == "private" else KRAKEN_PUBLIC_WS_URL
    parts = urllib.parse.urlsplit(rest)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


def pro_has(exchange: str) -> dict[str, Any]:
    """What ccxt.pro's client of `exchange` says it can watch (its `has`; empty when ccxt.pro has no such client)."""
    import ccxt.pro as ccxt_pro

    cls = getattr(ccxt_pro, exchange, None)
    if cls is None:
        return {}
    return dict(cls.describe(cls.__new__(cls)).get("has", {}))  # the class's description, no client built


def streams(exchange: str) -> bool:
    """Whether ccxt.pro's client of `exchange` streams the book and the account's fills (its `has`), and this
    package speaks that stream (Kraken's WebSocket v2)."""
    has = pro_has(exchange)
    return exchange in STREAMED and bool(has.get("watchOrderBook")) and bool(has.get("watchMyTrades"))


def executions_client(exchange: str, choice: str = "auto") -> str | None:
    """Which client streams the account's fills (`ccxt.stream_executions`): `kraken-v2`, our own Kraken v2 client
    (it sees the sequence gaps and snapshot repeats ccxt.pro hides: trading_ops.venues.ccxt.pro_fills), where this
    package speaks the venue's stream; `ccxt.pro`, ccxt.pro's own `watch_my_trades`, where its `has` says
    watchMyTrades; `auto` the first of the two that serves; None: none serves, REST polls only."""
    ours = streams(exchange)
    pro = bool(pro_has(exchange).get("watchMyTrades"))
    if choice == "kraken-v2":
        return "kraken-v2" if ours else None
    if choice == "ccxt.pro":
        return "ccxt.pro" if pro else None
    return "kraken-v2" if ours else ("ccxt.pro" if pro else None)


def make_pro_exchange(config: Config, rest: ccxt_async.Exchange) -> Any:
    """ccxt.pro's client of `config.ccxt`'s exchange with the keys, timeout, REST URLs and TLS of `rest`
    (make_exchange's), for its own watch_my_trades; on Kraken its WebSocket v2 URLs from `stream_url` (stream_url())."""
    import ccxt.pro as ccxt_pro

    c = config.ccxt
    settings: dict[str, Any] = {
        "apiKey": rest.apiKey,
        "secret": rest.secret,
        "enableRateLimit": c.enable_rate_limit,
        "timeout": int(c.timeout_seconds * 1000),
    }
    api: dict[str, Any] = rest_urls(c.exchange, c.urls)
    if c.exchange == "binance" and (c.urls or c.stream_url or c.stream_public_url):
        api["ws"] = binance_ws_urls(getattr(ccxt_pro, "binance"), config)
    if c.exchange == "kraken":
        private = stream_url(config, "private")
        api["ws"] = {"privateV2": private, "private": private}
    if api:
        settings["urls"] = {"api": api}
    cls = getattr(ccxt_pro, c.exchange)
    if c.exchange == "binance":  # its user data stream's events and ends told (ProFills' clock and resubscribe)
        from trading_ops.venues.ccxt.binance_pro import UserStreamBinance

        cls = UserStreamBinance
    pro = cls(settings)
    if getattr(rest, "ssl_context", None) is not None:
        pro.ssl_context = rest.ssl_context
    return pro


def broker_from_config(config: Config) -> CcxtBroker:
    """A CcxtBroker on `make_exchange(config)` for `config.ccxt.symbols`; on Kraken, with a call budget of the
    account's tier (`ccxt.kraken_tier`). Streaming unless `ccxt.stream: false`, its fills by the client
    `executions_client` picks (`ccxt.stream_executions`): StreamingCcxtBroker on Kraken's WebSocket v2 (fills and
    books, our own clients), ProStreamingCcxtBroker (fills through ccxt.pro's watch_my_trades, the rest REST; on Binance
    the books too, from the diff-depth stream synced by update ids) on a venue whose ccxt.pro client watches the
    account's trades. On an account shared with other bots (`shared_account`), only the orders carrying the bot's
    prefix are its own."""
    c = config.ccxt
    exchange = make_exchange(config)
    kw: dict[str, Any] = {}
    cls: type[CcxtBroker] = CcxtBroker
    client = executions_client(c.exchange, c.stream_executions) if c.stream else None
    if client == "ccxt.pro":
        from trading_ops.venues.ccxt.pro_broker import ProStreamingCcxtBroker  # ccxt.pro loads only where it serves

        cls = ProStreamingCcxtBroker
        kw["pro"] = make_pro_exchange(config, exchange)
        if c.exchange == "binance":  # each book from the diff-depth stream, synced by update ids (binance_book)
            kw["book_pro"] = make_pro_exchange(config, exchange)
    elif client == "kraken-v2":
        from trading_ops.venues.ccxt.streaming import StreamingCcxtBroker  # ccxt.pro loads only where it serves

        cls = StreamingCcxtBroker
        kw["private_url"] = stream_url(config, "private")
        kw["public_url"] = stream_url(config, "public")
        kw["book_cadence"] = c.stream_book_cadence_seconds or None
        kw["ssl"] = client_ssl_context(c.tls, "ccxt.tls")
    elif c.stream:
        log.info("ccxt.stream: %s does not stream here; polling over REST only", c.exchange)
    return cls(
        exchange,
        list(c.symbols),
        **kw,
        poll_interval=c.poll_interval_seconds,
        quote_interval=c.quote_poll_interval_seconds,
        position_baseline={asset: Decimal(str(v)) for asset, v in c.position_baseline.items()},
        call_budget=CallBudget(c.kraken_tier) if c.exchange == "kraken" and c.kraken_tier != "off" else None,
        weight_budget=WeightBudget() if c.exchange == "binance" else None,
        shared_account=bot_order_id_prefix(config) if shared_account(config) else "",
    )
