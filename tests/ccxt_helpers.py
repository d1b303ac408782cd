"""Shared by the gateway and ccxt broker tests: a gateway on a free loopback port, ccxt's real kraken client
pointed at it, and a journal-backed stand-in for the bot's reconciliation hooks."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt
from aiohttp import web

from tests.conftest import free_port
from trading_ops.bot.book import Book
from trading_ops.bot.broker import VenueFill, VenueOrder
from trading_ops.bot.journal import Journal
from trading_ops.bot.reconciliation import ADJUSTMENT_LIQUIDITY, balance_changes
from trading_ops.db.base import utcnow
from trading_ops.paper.venue import PaperVenue
from trading_ops.venues.kraken_gateway import KrakenGateway, create_app

API_KEY = "test-key"
API_SECRET = base64.b64encode(b"a gateway secret of some length").decode()
OTHER_KEY = "bench-key"
OTHER_SECRET = base64.b64encode(b"another secret").decode()
CONTROL_TOKEN = "chaos-token"
QUIET_VENUE = {
    "tick_interval": 3600.0,
    "volatility": 0.0,
    "partial_fill_probability": 0.0,
    "rate_limit_per_second": 10_000.0,
    "rate_limit_burst": 10_000.0,
}


@contextlib.asynccontextmanager
async def running_gateway(**venue_args: Any) -> AsyncIterator[tuple[KrakenGateway, str]]:
    """A gateway over a fresh paper venue (quiet unless told otherwise) on 127.0.0.1; yields it and its URL."""
    args = {**QUIET_VENUE, "seed": 7, **venue_args}
    venue = PaperVenue(**args)
    gateway = KrakenGateway(venue, {API_KEY: API_SECRET, OTHER_KEY: OTHER_SECRET}, CONTROL_TOKEN)
    runner = web.AppRunner(create_app(gateway))
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield gateway, f"http://127.0.0.1:{port}"
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
    """Poll `predicate` until it holds; fail after `timeout` seconds (a deadline, not a measurement)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


class JournalHooks:
    """What a bot does for reconciliation, reduced to the journal: adopted fills go into the book and the journal
    with their position and balance changes, adopted orders into the journal."""

    def __init__(self, journal: Journal, settle: Callable[[], Awaitable[None]] | None = None) -> None:
        self.journal = journal
        self.book = Book()
        self._settle = settle
        self.halted: str | None = None

    async def settle(self) -> None:
        if self._settle is not None:
            await self._settle()

    async def adopt_fill(self, fill: VenueFill) -> bool:
        return await self.record_fill(fill)

    async def record_fill(self, fill: VenueFill, adjustment: bool = False) -> bool:
        realized = self.book.apply_fill(
            fill.symbol, fill.side.sign * fill.quantity, fill.price, fill.fee, fill.executed_at
        )
        h = self.book.holding(fill.symbol)
        changes = None if adjustment else balance_changes(fill)
        return await self.journal.call(
            self.journal.fill, fill, (h.quantity, h.average_price, h.realized_pnl), changes, realized
        )

    async def adopt_order(self, order: VenueOrder) -> None:
        await self.journal.call(self.journal.upsert_order, order, "external")

    async def adjust_position(self, symbol: str, quantity: Decimal, reference: str) -> None:
        from trading_ops.bot.broker import Side

        fill = VenueFill(
            trade_id=reference[:64],
            client_order_id=None,
            venue_order_id="reconciliation",
            symbol=symbol,
            side=Side.BUY if quantity > 0 else Side.SELL,
            quantity=abs(quantity),
            price=Decimal(0),
            fee=Decimal(0),
            fee_asset="USD",
            liquidity=ADJUSTMENT_LIQUIDITY,
            executed_at=utcnow(),
        )
        await self.record_fill(fill, adjustment=True)

    async def fills_changed(self, symbols: list[str]) -> None:
        await self.journal.call(self.journal.rebuild_positions, symbols)

    async def halt(self, reason: str) -> None:
        self.halted = reason
