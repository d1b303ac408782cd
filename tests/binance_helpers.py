"""The paper gateway with its Binance spot dialect on a free loopback port, and ccxt's stock binance clients (REST
and ccxt.pro) with every URL pointed at it: the same account reached with a Kraken key and a Binance key."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import ccxt.async_support as ccxt_async
import ccxt.pro as ccxtpro
import yaml
from ccxt_example_bot import BOT, write_config
from ccxt_helpers import API_KEY, API_SECRET, CONTROL_TOKEN, QUIET_VENUE, SUB_ACCOUNT, SUB_KEY, SUB_SECRET, serving

from trading_ops.paper.gateway.binance.client_urls import ccxt_urls
from trading_ops.paper.gateway.binance.dialect import BinanceDialect
from trading_ops.paper.gateway.kraken.gateway import MAIN_ACCOUNT, KrakenGateway, SubAccount
from trading_ops.paper.venue import PaperVenue

# Binance keys: the main account's (the account API_KEY reaches on the Kraken API) and a sub-account's.
BINANCE_KEY = "binanceMainAccountKey0123456789"
BINANCE_SECRET = "the binance secret of the main account"
BINANCE_SUB_KEY = "binanceSubAccountKey0123456789"
BINANCE_SUB_SECRET = "the binance secret of the sub-account"
# The reconciler's own key on the main account (a `venue` step's: trade permission only, never the bot's key).
BINANCE_RECONCILER_KEY = "binanceReconcilerKey0123456789"
BINANCE_RECONCILER_SECRET = "the reconciler's binance secret of the main account"
KEYS = {
    BINANCE_KEY: (BINANCE_SECRET, MAIN_ACCOUNT),
    BINANCE_SUB_KEY: (BINANCE_SUB_SECRET, SUB_ACCOUNT),
    BINANCE_RECONCILER_KEY: (BINANCE_RECONCILER_SECRET, MAIN_ACCOUNT),
}
VENUE = "binance"
POLL_SECONDS = 3.0
# The book is stale past three polls: one late poll on a busy machine is not an outage (at one poll, a 2 s poll on a
# 2 s threshold made the bot unready whenever a cycle ran late, as a loaded run showed).
STALE_SECONDS = 3 * POLL_SECONDS
__all__ = ["API_KEY", "API_SECRET", "CONTROL_TOKEN"]


@contextlib.asynccontextmanager
async def binance_gateway(**venue_args: Any) -> AsyncIterator[tuple[KrakenGateway, BinanceDialect, str]]:
    """A gateway over a fresh paper venue (quiet unless told otherwise; BTC-USD, ETH-USD, SOL-USD in USD) with its
    sub-account, serving Kraken's API and Binance's on 127.0.0.1; yields it, its Binance dialect and its URL."""
    args = {**QUIET_VENUE, "seed": 7, **venue_args}
    venue = PaperVenue(**args)
    sub = SubAccount(SUB_ACCOUNT, PaperVenue(**{**args, "seed": 8, "id_base": 10**12}), {SUB_KEY: SUB_SECRET})
    gateway = KrakenGateway(venue, {API_KEY: API_SECRET}, CONTROL_TOKEN, subaccounts=[sub])
    dialect = BinanceDialect(gateway, KEYS)
    gateway.dialects.append(dialect)
    async with serving(gateway) as base:
        yield gateway, dialect, base


# ccxt's timeout for the tests' clients (ms). exchangeInfo, the gateway's largest answer, once took over 5 s on a
# loaded 2-core machine (two lanes of tests beside CI): a deadline, not a measurement, so wide.
CLIENT_TIMEOUT_MS = 15_000


def binance_urls(base: str) -> dict[str, Any]:
    """ccxt binance's `urls.api` on the gateway (trading_ops.paper.gateway.binance.client_urls): what "pointed at the
    gateway" means, nothing else changed."""
    return ccxt_urls(base, ccxtpro.binance().urls["api"])


def binance(base: str, key: str = BINANCE_KEY, secret: str = BINANCE_SECRET, **options: Any) -> ccxt_async.binance:
    """ccxt's stock (async) binance client on the gateway: its URLs changed, nothing else (no rate limiter: the
    tests pace themselves)."""
    return ccxt_async.binance(
        {
            "apiKey": key,
            "secret": secret,
            "enableRateLimit": False,
            "timeout": CLIENT_TIMEOUT_MS,
            "urls": {"api": binance_urls(base)},
            **options,
        }
    )


def binance_pro(base: str, key: str = BINANCE_KEY, secret: str = BINANCE_SECRET, **options: Any) -> ccxtpro.binance:
    """ccxt.pro's stock binance client on the gateway (REST and streams), its URLs changed and nothing else."""
    return ccxtpro.binance(
        {
            "apiKey": key,
            "secret": secret,
            "enableRateLimit": False,
            "timeout": CLIENT_TIMEOUT_MS,
            "urls": {"api": binance_urls(base)},
            **options,
        }
    )


def binance_config(tmp: Path, base: str, port: int, *, bot: str = BOT, **ccxt: Any) -> Path:
    """The example bot's configuration (ccxt_example_bot.write_config) on the gateway's Binance dialect: bot `bot`,
    the venue `binance`, its REST URLs named once by the gateway's /api/v3 (every other keeps its path on that host),
    the Binance key of the gateway's main account, REST polls only unless told."""
    settings: dict[str, Any] = {
        "exchange": VENUE,
        "urls": {"public": f"{base}/api/v3", "private": f"{base}/api/v3"},
        "stream": False,
        # Binance counts weight per minute (6000 here): each order poll asks each symbol's open orders (6) and trades
        # (20), each quote poll the tickers (ticker/24hr with `symbols`: 2 for up to 20): every 2 s, 2,077 a minute
        # for two symbols (measured: docs/library.md); every 3 s less, clear of the 70 % past which the weight budget
        # skips the polls at a minute's end.
        "poll_interval_seconds": POLL_SECONDS,
        "quote_poll_interval_seconds": POLL_SECONDS,
        **ccxt,
    }
    path = write_config(tmp, base, port, bot=bot, key=(BINANCE_KEY, BINANCE_SECRET), **settings)
    doc = yaml.safe_load(path.read_text())
    doc["bot"]["venue"] = VENUE
    doc["bot"]["market_data_stale_seconds"] = STALE_SECONDS
    path.write_text(yaml.safe_dump(doc))
    return path
