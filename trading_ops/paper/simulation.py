"""The paper venue's market running: its ticks, a market followed from elsewhere, and time passed unobserved."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal

from trading_ops.bot.broker import Quote, VenueFill
from trading_ops.paper.book import OrderBook
from trading_ops.paper.clock import VenueClock
from trading_ops.paper.connection import VenueConnection
from trading_ops.paper.dead_man import CancelAllAfter
from trading_ops.paper.market import RandomWalkMarket
from trading_ops.paper.persistence import VenueState

LOG = logging.getLogger(__name__)
MAX_ADVANCE_TICKS = 100_000  # past this, advance() takes coarser steps rather than running for minutes


class MarketRun:
    """Moves the market (a random-walk step per tick, or another venue's prices), fills the resting orders that then
    cross, and tells the bot: quotes first, then the orders' events, each after the state file holds the change."""

    def __init__(
        self,
        market: RandomWalkMarket,
        book: OrderBook,
        clock: VenueClock,
        connection: VenueConnection,
        persistence: VenueState,
        switch: CancelAllAfter,
        tick_interval: float,
    ) -> None:
        self.market = market
        self.book = book
        self.clock = clock
        self.connection = connection
        self.persistence = persistence
        self.switch = switch
        self.tick_interval = tick_interval

    async def tick(self) -> dict[str, Quote]:
        """Advance every price one random-walk step, fill resting orders that now cross, publish quotes (after the
        dead man's switch, when its time has come, canceled every open order)."""
        await self.switch.expire()
        connection = self.connection
        with connection.delivering():
            now = self.clock.now()
            quotes = self.market.step(now)
            notifications = self.book.match(now)
            if notifications:
                self.persistence.changed()
            for symbol, quote in quotes.items():
                await connection.publish_quote(symbol, quote)
            await self.persistence.persist()
            await connection.deliver(notifications)
        return quotes

    async def follow(self, prices: Mapping[str, Decimal]) -> None:
        """The market moved elsewhere: take these mid prices (another venue's `prices()`: an account of its own on
        the same market, as a sub-account is), fill the resting orders that now cross, publish quotes."""
        mid = self.market.mid
        moved = [s for s, price in prices.items() if s in mid and mid[s] != price]
        if not moved:
            return  # what did not cross at these prices does not cross now
        connection = self.connection
        with connection.delivering():
            now = self.clock.now()
            for symbol in moved:
                mid[symbol] = prices[symbol]
            notifications = self.book.match(now)
            if notifications:
                self.persistence.changed()
            for symbol in moved:
                await connection.publish_quote(symbol, self.market.quote(symbol, now))
            await self.persistence.persist()
            await connection.deliver(notifications)

    async def run(self, tick_interval: float | None = None) -> None:
        """Tick every `tick_interval` seconds (the constructor's by default) until the connection is closed."""
        interval = self.tick_interval if tick_interval is None else tick_interval
        closed = self.connection.closed
        while not closed.is_set():
            try:
                async with asyncio.timeout(interval):
                    await closed.wait()
            except TimeoutError:
                try:
                    await self.tick()
                except Exception:  # a failing callback is the bot's problem; the market goes on
                    LOG.exception("%s: an event callback failed during a tick", self.connection.venue)

    def advance(self, seconds: float) -> list[VenueFill]:
        """Simulate the venue running for `seconds` while nobody listened: ticks and fills, no events.

        Ticks are stamped in the past, ending now, so a bot restarted after `seconds` of downtime sees the
        fills at the times they would have happened. Returns the fills executed.
        """
        ticks = int(seconds // self.tick_interval)
        if ticks <= 0:
            return []
        step = self.tick_interval if ticks <= MAX_ADVANCE_TICKS else seconds / MAX_ADVANCE_TICKS
        ticks = min(ticks, MAX_ADVANCE_TICKS)
        start = self.clock.now() - timedelta(seconds=step * ticks)
        fills: list[VenueFill] = []
        for i in range(1, ticks + 1):
            at = start + timedelta(seconds=step * i)
            self.market.step(at)
            fills.extend(n for n in self.book.match(at) if isinstance(n, VenueFill))
        self.persistence.changed()
        self.persistence.save_now()
        return fills
