"""The paper venue, its Kraken-compatible gateway and the ccxt broker's sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trading_ops.config.common import ListenConfig, TLSClientConfig
from trading_ops.config.fields import (
    GATEWAY_MAIN_ACCOUNT,
    SYMBOL_PATTERN,
    ConfigError,
    bounded,
    check_account,
    check_asset,
    check_name,
    checked,
    describe,
    path_field,
    secret,
)


@dataclass
class PaperConfig:
    symbols: list[str] = field(default_factory=lambda: ["BTC-USD", "ETH-USD", "SOL-USD"])
    quote_asset: str = checked("USD", check_asset)
    starting_balance: float = bounded(100_000.0, min=0)
    seed: int = 0
    tick_interval_seconds: float = bounded(0.1, min=0.001)
    loop_interval_seconds: float = bounded(0.5, min=0.001)
    # Simulated venue behaviour.
    order_latency_seconds: float = bounded(0.005, min=0)
    reject_probability: float = bounded(0.02, min=0, max=1)
    partial_fill_probability: float = bounded(0.3, min=0, max=1)
    maker_fee_rate: float = bounded(0.0002, min=0, max=0.1)
    taker_fee_rate: float = bounded(0.0005, min=0, max=0.1)
    volatility: float = bounded(0.0005, min=0, max=0.5)
    # Strategy limits.
    order_notional: float = bounded(1_000.0, min=0)
    max_position_notional: float = bounded(10_000.0, min=0)
    order_max_age_seconds: float = bounded(5.0, min=0.01)
    daily_loss_limit: float = bounded(5_000.0, min=0)
    # The bot's broker: true (the default) streams the venue's order updates, fills and quotes over its push channel
    # (REST polls kept as the fallback and the reconciliation); false: REST only, the venue's events as direct calls.
    stream: bool = True
    stream_poll_seconds: float = bounded(5.0, min=0.1)  # the REST poll while streaming (1 s while a stream is down)

    def validate(self, prefix: str, given: set[str]) -> None:
        if not self.symbols:
            raise ConfigError(f"{prefix}.symbols", "must list at least one symbol")
        seen: set[str] = set()
        for i, symbol in enumerate(self.symbols):
            key = f"{prefix}.symbols[{i}]"
            match = SYMBOL_PATTERN.match(symbol)
            if match is None:
                raise ConfigError(key, f"expected BASE-QUOTE in capitals such as BTC-USD, got {describe(symbol)}")
            if match.group(2) != self.quote_asset:
                raise ConfigError(
                    key, f"{symbol} is quoted in {match.group(2)}, but {prefix}.quote_asset is {self.quote_asset}"
                )
            if symbol in seen:
                raise ConfigError(key, f"{symbol} is listed twice")
            seen.add(symbol)
        if self.order_notional > self.max_position_notional:
            raise ConfigError(
                f"{prefix}.order_notional",
                f"{self.order_notional:g} is more than {prefix}.max_position_notional ({self.max_position_notional:g})",
            )


@dataclass
class GatewayListenConfig(ListenConfig):
    port: int = bounded(9110, min=0, max=65535)


@dataclass
class GatewayKeyConfig:
    """One more API key of the gateway's main account, as Kraken lets an account have several: each key has its own
    nonce, so each client of the account (a bot, its sidecar's reconciliation, a person's script) signs with its own and
    none has its orders refused because another's nonce arrived first."""

    api_key: str = secret("", "an API key of the main account")
    api_secret: str = secret("", "base64 API secret of that key")


@dataclass
class GatewayAccountConfig:
    """A sub-account of the gateway's venue, as Kraken's subaccounts: balances, orders and trades of its own on the
    same market, reached with its own API key (several bots on one venue never see each other's orders)."""

    name: str = checked("", check_name)
    api_key: str = secret("", "API key of this sub-account")
    api_secret: str = secret("", "base64 API secret of that key")
    # More keys of this sub-account, as Kraken lets every account have several: one per client of it (the bot's own,
    # the reconciler's for its venue steps), each with its own nonce.
    extra_keys: list[GatewayKeyConfig] = field(default_factory=list)
    # Its state between restarts; empty: beside gateway.state_file as <stem>.<name><suffix> (none without it).
    state_file: str = path_field()


@dataclass
class GatewayBinanceKeyConfig:
    """A Binance API key of the gateway's Binance spot dialect and the account it reaches (`main`, or a sub-account's
    name): one account may be traded through the Kraken API and the Binance API alike."""

    account: str = GATEWAY_MAIN_ACCOUNT
    api_key: str = secret("", "Binance API key of the gateway's Binance dialect")
    api_secret: str = secret("", "its secret (the HMAC-SHA256 key, any string)")


@dataclass
class GatewayBinanceConfig:
    """The paper venue also in Binance spot's dialect, on the gateway's port (trading_ops.paper.gateway.binance):
    REST under /api/v3, market streams under /stream/ws, the WebSocket API at /ws-api/v3. Off without keys."""

    keys: list[GatewayBinanceKeyConfig] = field(default_factory=list)
    # The request weight per minute per IP (Binance's REQUEST_WEIGHT); past it 429, then a 418 ban.
    weight_limit: int = bounded(6000, min=1)
    # NOTIONAL's minimum order value in the quote asset.
    min_notional: float = bounded(5.0, min=0)


@dataclass
class GatewayConfig:
    """`trading-ops paper-gateway`: the paper venue (set up by the `paper` section) behind Kraken's REST API."""

    listen: GatewayListenConfig = field(default_factory=GatewayListenConfig)
    # The API key of the venue's main account and its secret (base64, as Kraken issues them).
    api_key: str = secret("TRADING_OPS_GATEWAY_API_KEY", "API key ccxt clients sign with")
    api_secret: str = secret("TRADING_OPS_GATEWAY_API_SECRET", "base64 API secret of that key")
    # Bearer token of POST /chaos/{fault} (`trading-ops gateway-chaos`).
    control_token: str = secret("TRADING_OPS_GATEWAY_CONTROL_TOKEN", "bearer token of the gateway's fault commands")
    # The venue's state survives restarts in this file (relative to this configuration); empty keeps it in memory.
    state_file: str = path_field()
    # The venue's order rate limit per account (a token bucket); past it AddOrder answers EOrder:Rate limit exceeded.
    orders_per_second: float = bounded(50.0, min=0.1)
    # Kraken's REST call counter per API key of this tier (trading_ops.venues.call_counter), past whose maximum a
    # private call answers EAPI:Rate limit exceeded; off: no such limit.
    call_counter: Literal["off", "starter", "intermediate", "pro"] = "off"
    # More keys of the main account (`api_key_file`/`_env`, `api_secret_file`/`_env` each): one per client of it.
    extra_keys: list[GatewayKeyConfig] = field(default_factory=list)
    # Sub-accounts on the same market, each with its own key (one per bot sharing the venue).
    accounts: list[GatewayAccountConfig] = field(default_factory=list)
    # The same market and accounts in Binance spot's dialect too.
    binance: GatewayBinanceConfig = field(default_factory=GatewayBinanceConfig)

    def validate(self, prefix: str, given: set[str]) -> None:
        seen = {GATEWAY_MAIN_ACCOUNT}
        for i, account in enumerate(self.accounts):
            if not account.name:
                raise ConfigError(f"{prefix}.accounts[{i}].name", "every sub-account needs a name")
            if account.name in seen:
                taken = "is the main account's name" if account.name == GATEWAY_MAIN_ACCOUNT else "is listed twice"
                raise ConfigError(f"{prefix}.accounts[{i}].name", f"{account.name} {taken}")
            seen.add(account.name)


@dataclass
class CcxtConfig:
    """A bot trading through ccxt (trading_ops.venues.ccxt): the exchange, its keys and where to reach it."""

    exchange: str = checked("kraken", check_name)  # a ccxt exchange id
    api_key: str = secret("TRADING_OPS_CCXT_API_KEY", "the exchange API key")
    api_secret: str = secret("TRADING_OPS_CCXT_API_SECRET", "the exchange API secret")
    # Overrides of the exchange's API URLs by name (kraken: public, private), e.g. a paper gateway's address.
    urls: dict[str, str] = field(default_factory=dict)
    symbols: list[str] = field(default_factory=lambda: ["BTC-USD"])
    poll_interval_seconds: float = bounded(1.0, min=0.01)
    quote_poll_interval_seconds: float = bounded(1.0, min=0.01)
    timeout_seconds: float = bounded(10.0, min=0.1)
    enable_rate_limit: bool = True
    # Kraken only: the account's verification tier, whose REST call counter (maximum, decay) the broker budgets every
    # private call against (trading_ops.venues.call_counter); tradingbot_rate_limit_headroom_ratio is what is left.
    # off: no budget and no headroom (a Kraken-compatible venue without that counter, e.g. a paper gateway without
    # gateway.call_counter).
    kraken_tier: Literal["off", "starter", "intermediate", "pro"] = "starter"
    # Base-asset balances that are not the bot's (spot positions are the balance less this).
    position_baseline: dict[str, float] = field(default_factory=dict)
    # The account is shared with other bots (Binance spot only; docs/configuration.md, "Bots sharing a Binance
    # account"): the broker sees, reconciles and cancels only the orders carrying the bot's order-id prefix, and
    # compares only its symbols' base assets. Taken as true when `bots:` lists another bot on the account of this one.
    shared_account: bool = False
    # Stream where the exchange streams (ccxt.pro's `has` says so; here Kraken's WebSocket v2): the account's fills
    # over the private socket, each symbol's book over the public one (StreamingCcxtBroker: REST stays for every
    # call, the reconciliation and the fallback). `stream: false` is REST polls only. Other exchanges poll.
    stream: bool = True
    # Which client streams the account's fills: auto (the default) our own Kraken v2 client where the venue speaks it
    # (Kraken: it sees sequence gaps and snapshot repeats ccxt.pro hides), else ccxt.pro's watch_my_trades where its
    # `has` says watchMyTrades, else none (REST polls); kraken-v2 or ccxt.pro: that one only (docs/streams.md).
    stream_executions: Literal["auto", "kraken-v2", "ccxt.pro"] = "auto"
    # The private WebSocket URL; empty: the `private` REST URL's host at /ws-auth/v2 when `urls` names one (a paper
    # gateway), else Kraken's wss://ws-auth.kraken.com/v2.
    stream_url: str = ""
    # The public WebSocket URL (the books); empty: the `public` REST URL's host at /ws/v2 when `urls` names one, else
    # Kraken's wss://ws.kraken.com/v2.
    stream_public_url: str = ""
    # How often a traded pair's book changes at least (seconds): its silence timeout is three of these (never under
    # three heartbeats). A pair that does not move is no silence: the REST quote poll finding its best bid and ask
    # unchanged keeps the ticker and book current (trading_ops.venues.ccxt.pro). 0: no silence timeout at all.
    stream_book_cadence_seconds: float = bounded(1.0, min=0)
    # TLS to an https venue whose certificate is not in ccxt's CA bundle (certifi), e.g. a paper gateway with a
    # web_config_file: the CA to verify it with, and a client certificate if it asks for one (mutual TLS).
    tls: TLSClientConfig = field(default_factory=TLSClientConfig)

    def validate(self, prefix: str, given: set[str]) -> None:
        if not self.symbols:
            raise ConfigError(f"{prefix}.symbols", "must list at least one symbol")
        check_account(prefix, self.symbols, self.urls, self.position_baseline)
