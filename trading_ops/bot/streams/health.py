"""What a stream's messages are checked against, as pure state: each channel's silence against its cadence and a
private channel's sequence (each book against Kraken's checksum: trading_ops.venues.ccxt.books)."""

from __future__ import annotations

from dataclasses import dataclass

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
