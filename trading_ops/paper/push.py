"""The paper venue's push channel: what a PaperVenue tells (order updates, fills, quotes) framed as a stream's
messages, as a venue's WebSocket frames them. Two endpoints, as Kraken's: `public` carries `ticker` (a quote per
symbol), `private` carries `executions` (order updates and fills). Each subscription starts with a snapshot and
counts its messages' `sequence` from 1; an idle subscribed connection gets a heartbeat each second. Messages go
into each connection's own queue, so a bot reads them after the venue has moved on, as from a socket.

Faults on demand (the paper bot's `drop_stream`, `silent_stream`, `stream_gap`): a connection closed (and new ones
refused for a while), a channel acknowledged and then silent while heartbeats flow (public `ticker` or private
`executions`; persistently: across resubscribes and reconnects until cleared), messages lost with their sequence
numbers. While the venue's own channel is down (`drop_connection`), its endpoint is closed too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from trading_ops.bot.broker import BrokerEvents, Channel, Quote, VenueFill, VenueOrder
from trading_ops.paper.venue import PaperVenue

PUBLIC = "public"
PRIVATE = "private"
ENDPOINTS = (PUBLIC, PRIVATE)
CHANNEL_ENDPOINTS = {"ticker": PUBLIC, "executions": PRIVATE}
VENUE_CHANNELS = {PUBLIC: Channel.MARKET_DATA, PRIVATE: Channel.ORDERS}
HEARTBEAT_SECONDS = 1.0
QUEUE_LIMIT = 10_000  # a reader this far behind is closed (as the gateway closes a slow reader), never waited for
MAX_GAP = 1_000
MAX_DROP_SECONDS = 3600.0


class StreamClosed(Exception):
    """The connection ended (or was refused); `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Message:
    """One frame: `kind` is snapshot, update or heartbeat; `data` the venue's objects (Quote, VenueOrder,
    VenueFill); `sequence` per subscription (private channels)."""

    channel: str
    kind: str
    data: tuple[Any, ...] = ()
    symbol: str = ""
    sequence: int = 0


HEARTBEAT = Message("heartbeat", "heartbeat")


@dataclass(eq=False)
class PushConnection:
    """One connection to an endpoint: its subscriptions, their sequences, and the queue of what it was sent."""

    endpoint: str
    push: PushChannel
    queue: asyncio.Queue[Message | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT + 1))
    subscribed: dict[str, set[str]] = field(default_factory=dict)  # channel -> symbols ("" for a private channel)
    sequence: dict[str, int] = field(default_factory=dict)
    closed: str = ""
    last_sent: float = field(default_factory=time.monotonic)

    async def receive(self, timeout: float) -> Message | None:
        """The next message within `timeout`, a heartbeat when the subscribed connection has had nothing for
        HEARTBEAT_SECONDS, else None. Raises StreamClosed when the connection ended."""
        if self.closed and self.queue.empty():
            raise StreamClosed(self.closed)
        try:
            async with asyncio.timeout(timeout):
                message = await self.queue.get()
        except TimeoutError:
            if self.closed:
                raise StreamClosed(self.closed) from None
            now = time.monotonic()
            if self.subscribed and now - self.last_sent >= HEARTBEAT_SECONDS:
                self.last_sent = now
                return HEARTBEAT
            return None
        if message is None:
            self.queue.task_done()
            raise StreamClosed(self.closed or "closed")
        return message

    async def subscribe(self, channel: str, symbols: Iterable[str] = ()) -> None:
        """Subscribe (again: a fresh snapshot, a silent subscription's silence ended, the sequence from 1)."""
        if CHANNEL_ENDPOINTS.get(channel) != self.endpoint:
            raise ValueError(f"channel {channel!r} is not on the {self.endpoint} endpoint")
        if self.closed:
            raise StreamClosed(self.closed)
        wanted = set(symbols) if channel == "ticker" else {""}
        self.subscribed.setdefault(channel, set()).update(wanted)
        self.push.silent.difference_update({(channel, s) for s in wanted} | {(channel, "*")})
        self.sequence[channel] = 0
        venue = self.push.venue
        if channel == "executions":
            self.send(channel, "snapshot", tuple(await venue.open_orders()))
        else:
            # What a subscription does on a venue: a snapshot of each pair (an end to its stale market data).
            await venue.resubscribe(sorted(wanted))

    def send(self, channel: str, kind: str, data: tuple[Any, ...], symbol: str = "") -> None:
        if self.closed or channel not in self.subscribed:
            return
        if channel == "ticker" and symbol not in self.subscribed[channel]:
            return
        if self.push.silenced(channel, symbol):
            return
        self.sequence[channel] = self.sequence.get(channel, 0) + 1
        if channel == "executions" and self.push.gap > 0:
            self.push.gap -= 1  # lost on the way, its sequence number with it
            return
        if self.queue.qsize() >= QUEUE_LIMIT:
            self.close("slow reader")
            return
        self.last_sent = time.monotonic()
        self.queue.put_nowait(Message(channel, kind, data, symbol, self.sequence[channel]))

    def close(self, reason: str) -> None:
        if not self.closed:
            self.closed = reason
            self.queue.put_nowait(None)
            self.push.connections.discard(self)


class PushChannel:
    """The venue side: connect it to the venue (`venue_events`), and bots connect to its endpoints."""

    def __init__(self, venue: PaperVenue) -> None:
        self.venue = venue
        self.connections: set[PushConnection] = set()
        self.silent: set[tuple[str, str]] = set()  # (channel, symbol or "*") acked and then silent
        self.persistent: set[tuple[str, str]] = set()  # the same, its new subscriptions too (until `clear`)
        self.gap = 0  # executions messages still to lose
        self.refused_until: dict[str, float] = {}  # endpoint -> monotonic time new connections are refused until

    def venue_events(self, bot: BrokerEvents) -> BrokerEvents:
        """The callbacks the venue is connected with: its order updates, fills and quotes go out on the stream;
        connection changes, errors and requests go to the bot as they are."""

        async def on_order(order: VenueOrder) -> None:
            self.publish("executions", "update", (order,))

        async def on_fill(fill: VenueFill) -> None:
            self.publish("executions", "update", (fill,))

        async def on_quote(quote: Quote) -> None:
            self.publish("ticker", "update", (quote,), quote.symbol)

        async def on_connection(channel: Channel, up: bool) -> None:
            if not up:
                for endpoint, venue_channel in VENUE_CHANNELS.items():
                    if venue_channel is channel:
                        self._close(endpoint, "venue unreachable")
            if bot.on_connection is not None:
                await bot.on_connection(channel, up)

        return BrokerEvents(
            on_order=on_order,
            on_fill=on_fill,
            on_quote=on_quote,
            on_connection=on_connection,
            on_venue_error=bot.on_venue_error,
            on_venue_request=bot.on_venue_request,
            extra=bot.extra,
        )

    def connect(self, endpoint: str) -> PushConnection:
        """A new connection; StreamClosed("refused") while the endpoint refuses or the venue's channel is down."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}")
        if time.monotonic() < self.refused_until.get(endpoint, 0.0) or not self.venue.is_connected(
            VENUE_CHANNELS[endpoint]
        ):
            raise StreamClosed("refused")
        conn = PushConnection(endpoint, self)
        self.connections.add(conn)
        return conn

    def publish(self, channel: str, kind: str, data: tuple[Any, ...], symbol: str = "") -> None:
        for conn in list(self.connections):
            conn.send(channel, kind, data, symbol)

    def _close(self, endpoint: str, reason: str) -> int:
        closing = [c for c in self.connections if endpoint in ("all", c.endpoint)]
        for conn in closing:
            conn.close(reason)
        return len(closing)

    # -- faults -----------------------------------------------------------------------------------------------
    def drop(self, endpoint: str = "all", seconds: float = 0.0) -> int:
        """Close the endpoint's connections (`all`: both), refusing new ones for `seconds`; how many were closed."""
        if endpoint not in (*ENDPOINTS, "all"):
            raise ValueError(f"endpoint must be public, private or all, not {endpoint!r}")
        if not 0 <= seconds <= MAX_DROP_SECONDS:
            raise ValueError(f"seconds must be between 0 and {MAX_DROP_SECONDS:g}")
        until = time.monotonic() + seconds
        for name in ENDPOINTS if endpoint == "all" else (endpoint,):
            self.refused_until[name] = until
        return self._close(endpoint, "dropped")

    def silence(self, channel: str, symbol: str = "*", *, persistent: bool = False) -> None:
        """The channel's subscriptions (of `symbol`, or every symbol) send nothing more until subscribed again
        (`persistent`: new subscriptions too, on any connection, until `clear`: a venue that neither a resubscribe nor
        a reconnect heals); the connection stays up and heartbeats flow."""
        if channel not in CHANNEL_ENDPOINTS:
            raise ValueError(f"channel must be one of {', '.join(CHANNEL_ENDPOINTS)}, not {channel!r}")
        key = (channel, symbol if channel == "ticker" else "*")
        self.silent.add(key)
        if persistent:
            self.persistent.add(key)

    def silenced(self, channel: str, symbol: str) -> bool:
        """Whether what `channel` sends of `symbol` is held back (a silent channel)."""
        return any(k in self.silent or k in self.persistent for k in ((channel, symbol), (channel, "*")))

    def lose(self, count: int) -> None:
        """The next `count` executions messages are lost; the next one's sequence jumps."""
        if not 1 <= count <= MAX_GAP:
            raise ValueError(f"count must be between 1 and {MAX_GAP}")
        self.gap += count

    def clear(self) -> None:
        self.silent.clear()
        self.persistent.clear()
        self.gap = 0
        self.refused_until.clear()

    def faults(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "refused": sorted(e for e, until in self.refused_until.items() if until > now),
            "silent": sorted(f"{c}:{s}" for c, s in self.silent | self.persistent),
            "persistent": sorted(f"{c}:{s}" for c, s in self.persistent),
            "gap": self.gap,
            "connections": len(self.connections),
        }
