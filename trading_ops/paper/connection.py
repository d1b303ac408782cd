"""The paper venue's connection to its bot: the channels' state, the bot's callbacks, and the delivery of events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator

from trading_ops.bot.broker import BrokerError, BrokerEvents, Channel, Quote, VenueFill
from trading_ops.paper.book import Notification

LOG = logging.getLogger(__name__)
DRAIN_TIMEOUT_SECONDS = 5.0


class VenueConnection:
    """Which channels are up, what the bot is told and in what order; `drain` waits until every notification of a
    change already made has been delivered.

    Nothing here is persisted: a connection belongs to this process. `muted(symbol)` says a symbol's quotes are not
    sent (stale market data injected); `silent(venue_order_id)` says an order's events are lost (its fills were
    injected unnotified).
    """

    def __init__(self, venue: str, *, muted: Callable[[str], bool], silent: Callable[[str], bool]) -> None:
        self.venue = venue
        self.events = BrokerEvents()
        self.connected = dict.fromkeys(Channel, False)
        self.closed = asyncio.Event()
        self._muted = muted
        self._silent = silent
        self.busy = 0  # operations between a state change and the end of its event delivery
        self._idle = asyncio.Event()
        self._idle.set()

    def is_up(self, channel: Channel) -> bool:
        return self.connected[channel]

    def require(self, channel: Channel) -> None:
        """BrokerError("network") unless `channel` is up: a request that cannot be sent."""
        if not self.connected[channel]:
            # Nothing was sent: a definite failure, unlike a connection lost while a submit waits for its answer.
            raise BrokerError(
                "network", f"{self.venue}: {channel.value} channel is not connected", outcome_unknown=False
            )

    async def bring_up(self, channel: Channel) -> bool:
        """The channel comes up (told to the bot); False when it already was."""
        if self.connected[channel]:
            return False
        self.connected[channel] = True
        await self.notify_connection(channel, True)
        return True

    async def drop(self) -> None:
        """Every channel that is up goes down, each drop told as a "network" venue error and a connection change."""
        for channel in Channel:
            if self.connected[channel]:
                self.connected[channel] = False
                if self.events.on_venue_error is not None:
                    self.events.on_venue_error("network")
                await self.notify_connection(channel, False)

    def close(self) -> None:
        for channel in Channel:
            self.connected[channel] = False
        self.closed.set()

    def request_done(self, channel: Channel, seconds: float) -> None:
        """One request to the venue ended (answered or failed) after `seconds`."""
        report = self.events.on_venue_request
        if report is not None:
            report(channel.value, seconds)

    @contextlib.contextmanager
    def delivering(self) -> Iterator[None]:
        """Marks an operation that changes state and then delivers its events: drain() waits for it."""
        self.busy += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.busy -= 1
            if self.busy == 0:
                self._idle.set()

    async def drain(self) -> None:
        """Wait (up to DRAIN_TIMEOUT_SECONDS) until no operation is between its state change and its last event."""
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_SECONDS):
                await self._idle.wait()
        except TimeoutError:
            LOG.warning("%s: events still being delivered after %g s", self.venue, DRAIN_TIMEOUT_SECONDS)

    async def notify_connection(self, channel: Channel, up: bool) -> None:
        if self.events.on_connection is not None:
            await self.events.on_connection(channel, up)

    async def publish_quote(self, symbol: str, quote: Quote) -> None:
        """A quote, sent while market data is up and the symbol's quotes are not muted."""
        if self.connected[Channel.MARKET_DATA] and self.events.on_quote is not None and not self._muted(symbol):
            await self.events.on_quote(quote)

    async def send_snapshots(self, quotes: Iterable[tuple[str, Quote]]) -> None:
        for symbol, quote in quotes:
            await self.publish_quote(symbol, quote)

    async def deliver(self, notifications: list[Notification]) -> None:
        """Hand order updates and fills to the bot, in order; lost while the orders channel is down."""
        for item in notifications:
            if not self.connected[Channel.ORDERS] or self._silent(item.venue_order_id):
                continue
            if isinstance(item, VenueFill):
                if self.events.on_fill is not None:
                    await self.events.on_fill(item)
            elif self.events.on_order is not None:
                await self.events.on_order(item)
