"""The bot's view of its streams' health, as pure state: what each message is checked against (each channel's silence
against its cadence, a private channel's sequence, each book against its checksum at the pair's precision). The one
home of stream health: every streaming client (trading_ops.venues.ccxt, trading_ops.paper) checks with these."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from trading_ops.bot.streams.checksum import Book

HEARTBEAT_SECONDS = 1.0  # Kraken's heartbeat on an idle subscribed socket
# A channel (or socket) is silent after this many of its cadences (or heartbeats) without a message.
MISSED_BEATS = 3.0


def silence_timeout(cadence: float | None, heartbeat: float = HEARTBEAT_SECONDS) -> float | None:
    """A channel's silence timeout: MISSED_BEATS of its cadence, never under the socket's (MISSED_BEATS
    heartbeats); None for a channel with no cadence (trades, executions: quiet markets are legitimate)."""
    if cadence is None:
        return None
    return MISSED_BEATS * max(cadence, heartbeat)


@dataclass
class ChannelClock:
    """The last message of one channel and symbol, and how long it may stay quiet; `since` when it was subscribed.
    `owed`: by when (monotonic) it owes a message, the caller's REST having found what it should carry (Silence.owe):
    past that with nothing of it heard, it is silent, though a channel with no cadence has no timeout to say so."""

    channel: str
    symbol: str
    timeout: float | None
    last: float
    since: float = 0.0
    owed: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.channel, self.symbol)

    @property
    def lost(self) -> bool:
        """Whether it owes what REST found (so what it lost is REST's to find again once it is healed)."""
        return self.owed is not None

    def silent(self, now: float) -> bool:
        if self.owed is not None and now > self.owed:
            return True
        return self.timeout is not None and now - self.last > self.timeout


class Silence:
    """Each subscribed channel's clock, and the socket's own (any message, heartbeats included)."""

    def __init__(self, heartbeat: float = HEARTBEAT_SECONDS) -> None:
        self.socket_timeout = MISSED_BEATS * heartbeat
        self.socket_last = 0.0
        self.clocks: dict[tuple[str, str], ChannelClock] = {}

    def watch(self, channel: str, symbol: str, cadence: float | None, now: float) -> None:
        """Start (or restart: a subscription's ack) the clock of one channel."""
        self.clocks[(channel, symbol)] = ChannelClock(channel, symbol, silence_timeout(cadence), now, since=now)

    def seen(self, channel: str, symbol: str, now: float) -> None:
        self.socket_last = now
        clock = self.clocks.get((channel, symbol))
        if clock is not None:
            clock.last = now
            clock.owed = None

    def owe(self, channel: str, by: float, symbol: str = "") -> None:
        """What the channel should carry came by REST first: it is silent unless a message of it comes by `by`
        (monotonic; the stream's watch then subscribes it again, and replaces the connection when it owes again
        after that)."""
        clock = self.clocks.get((channel, symbol))
        if clock is not None:
            clock.owed = by if clock.owed is None else min(clock.owed, by)

    def subscribed_for(self, channel: str, now: float, symbol: str = "") -> float | None:
        """Seconds since the channel was (last) subscribed; None when it is not."""
        clock = self.clocks.get((channel, symbol))
        return None if clock is None else now - clock.since

    def quiet_for(self, channel: str, now: float, symbol: str = "") -> float | None:
        """Seconds since the channel's last message (or its subscription); None when it is not subscribed."""
        clock = self.clocks.get((channel, symbol))
        return None if clock is None else now - clock.last

    def heard(self, now: float) -> None:
        """Anything arrived (a heartbeat, a pong, an answer): the socket is alive."""
        self.socket_last = now

    def silent_channels(self, now: float) -> list[ChannelClock]:
        return [c for c in self.clocks.values() if c.silent(now)]

    def socket_silent(self, now: float) -> bool:
        return now - self.socket_last > self.socket_timeout


class Sequences:
    """A private channel's `sequence`: one more per message; a jump is that many messages lost."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def check(self, channel: str, sequence: int, *, snapshot: bool) -> int:
        """The messages missing before this one (0 when none); a subscription's first snapshot starts at its own."""
        previous = self.last.get(channel)
        self.last[channel] = sequence
        if previous is None or (snapshot and sequence == 1):
            return 0
        return max(0, sequence - previous - 1)

    def reset(self, channel: str) -> None:
        self.last.pop(channel, None)


def _levels(side: Iterable[Mapping[str, Any]]) -> list[tuple[Decimal, Decimal]]:
    return [(Decimal(str(level["price"])), Decimal(str(level["qty"]))) for level in side]


class Books:
    """Each pair's book kept from its snapshot and updates; `apply` says whether the checksum agrees."""

    def __init__(self, precision: Mapping[str, tuple[int, int]]) -> None:
        self.precision = dict(precision)  # symbol (BTC/USD) -> (price decimals, qty decimals)
        self.books: dict[str, Book] = {}
        self.in_sync: dict[str, bool] = {}

    def apply(self, data: Mapping[str, Any], depth: int, *, snapshot: bool) -> bool:
        """Apply one book message's data; True when the book's checksum is the message's (a book out of sync stays
        out of sync, whatever its updates say, until a snapshot)."""
        symbol = str(data["symbol"])
        book = self.books.get(symbol)
        if snapshot or book is None:
            prices, qtys = self.precision[symbol]
            book = self.books[symbol] = Book(depth, prices, qtys)
            snapshot = True
        elif not self.in_sync.get(symbol, False):
            return False
        ok = book.apply(_levels(data.get("asks", [])), _levels(data.get("bids", [])), snapshot=snapshot)
        self.in_sync[symbol] = ok == int(data["checksum"])
        return self.in_sync[symbol]
