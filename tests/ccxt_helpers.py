"""Shared by the gateway, ccxt broker and ccxt bot tests: a gateway on a free loopback port, its faults, and ccxt's
real kraken client pointed at it; and what a broker test submits (what it gives a broker to record its events is
broker_recorder's Recorder)."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import aiohttp
import ccxt.async_support as ccxt
from aiohttp import web
from polling import until_async
from ports import free_port

from trading_ops.bot.broker import OrderRequest, OrderType, Side
from trading_ops.paper.gateway.kraken.gateway import KrakenGateway, SubAccount, create_app
from trading_ops.paper.venue import PaperVenue

API_KEY = "test-key"
API_SECRET = base64.b64encode(b"a gateway secret of some length").decode()
OTHER_KEY = "bench-key"
OTHER_SECRET = base64.b64encode(b"another secret").decode()
# A sub-account's key: an account of its own on the same market.
SUB_ACCOUNT = "desk-2"
SUB_KEY = "sub-account-key"
SUB_SECRET = base64.b64encode(b"the sub-account's secret").decode()
CONTROL_TOKEN = "chaos-token"
# The paper venue's symbols (its DEFAULT_SYMBOLS): what a broker test trades and subscribes to.
SYMBOLS = ["BTC-USD", "ETH-USD", "SOL-USD"]
QUIET_VENUE = {
    "tick_interval": 3600.0,
    "volatility": 0.0,
    "partial_fill_probability": 0.0,
    "rate_limit_per_second": 10_000.0,
    "rate_limit_burst": 10_000.0,
}


@contextlib.asynccontextmanager
async def running_gateway(sub_account: bool = False, **venue_args: Any) -> AsyncIterator[tuple[KrakenGateway, str]]:
    """A gateway over a fresh paper venue (quiet unless told otherwise) on 127.0.0.1, its main account reached with
    API_KEY and OTHER_KEY, and with `sub_account` SUB_ACCOUNT (SUB_KEY) on the same market; yields it and its URL."""
    args = {**QUIET_VENUE, "seed": 7, **venue_args}
    venue = PaperVenue(**args)
    subs = [SubAccount(SUB_ACCOUNT, PaperVenue(**{**args, "seed": 8, "id_base": 10**12}), {SUB_KEY: SUB_SECRET})]
    keys = {API_KEY: API_SECRET, OTHER_KEY: OTHER_SECRET}
    gateway = KrakenGateway(venue, keys, CONTROL_TOKEN, subaccounts=subs if sub_account else ())
    async with serving(gateway) as base:
        yield gateway, base


@contextlib.asynccontextmanager
async def serving(gateway: KrakenGateway) -> AsyncIterator[str]:
    """`gateway` served on a free port of 127.0.0.1 until the block ends; yields its URL."""
    runner = web.AppRunner(create_app(gateway))
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def kraken(base: str, key: str = API_KEY, secret: str = API_SECRET, **options: Any) -> ccxt.kraken:
    """ccxt's real kraken client with both API URLs on the gateway; no rate limiter (the tests pace themselves)."""
    return ccxt.kraken(
        {
            "apiKey": key,
            "secret": secret,
            "enableRateLimit": False,
            "timeout": 5000,
            "urls": {"api": {"public": base, "private": base}},
            **options,
        }
    )


async def wait_for(predicate: Callable[[], Awaitable[bool] | bool], timeout: float = 20.0) -> None:
    """`polling.until_async` (no error waited out): fail after `timeout` seconds (a deadline, not a measurement)."""
    await until_async("condition", predicate, timeout, 0.02, tolerate=())


async def chaos(base: str, fault: str, **args: object) -> dict:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base}/chaos/{fault}", json=args, headers={"Authorization": f"Bearer {CONTROL_TOKEN}"}) as r,
    ):
        assert r.status == 200, await r.text()
        return await r.json()


def limit(cid: str, symbol: str = "BTC-USD", price: str = "1000", quantity: str = "0.01") -> OrderRequest:
    return OrderRequest(cid, symbol, Side.BUY, OrderType.LIMIT, Decimal(quantity), Decimal(price))


def market(cid: str, symbol: str = "ETH-USD", side: Side = Side.BUY, quantity: str = "0.5") -> OrderRequest:
    return OrderRequest(cid, symbol, side, OrderType.MARKET, Decimal(quantity))
