"""The policy on a stream's trouble: how long to wait before the next attempt (exponential backoff with a cap,
jittered, reset by a success), so a reconnect or a resubscribe never storms the venue; and what to do about a silent
channel (subscribe it again, then replace the connection), the same for every stream."""

from __future__ import annotations

import random

from trading_ops.bot.streams.health import ChannelClock, Silence

FIRST_SECONDS = 0.1
MAX_SECONDS = 5.0
JITTER = 0.2  # each wait is up to this share shorter, so clients dropped together do not return together


class Backoff:
    def __init__(
        self, first: float = FIRST_SECONDS, cap: float = MAX_SECONDS, rng: random.Random | None = None
    ) -> None:
        self.first = first
        self.cap = cap
        self.attempts = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        """The wait before the next attempt (doubling from `first` up to `cap`)."""
        wait = min(self.cap, self.first * 2**self.attempts)
        self.attempts += 1
        return wait * (1 - JITTER * self._rng.random())

    def reset(self) -> None:
        self.attempts = 0


class SilentChannels:
    """The policy on a silent channel (its clock's timeout past, or lost: what it should have carried came by REST),
    one stream's: subscribe it again first; when it is silent again after that (its timeout past since, or lost again),
    replace the connection. A message newer than the resubscribe heals it."""

    def __init__(self, silence: Silence) -> None:
        self.silence = silence
        # (channel, symbol) subscribed again for silence at (monotonic), nothing heard of it since
        self.pending: dict[tuple[str, str], float] = {}

    def due(self, now: float) -> tuple[list[ChannelClock], ChannelClock | None]:
        """The silent channels to subscribe again, or the one whose resubscribe did not bring it back (the connection
        is to be replaced, nothing else done)."""
        for key, at in list(self.pending.items()):
            clock = self.silence.clocks.get(key)
            if clock is not None and clock.last > at:
                del self.pending[key]
        again = []
        for clock in self.silence.silent_channels(now):
            since = self.pending.get(clock.key)
            if since is None:
                again.append(clock)
            elif now - since > (clock.timeout or 0):
                self.pending.clear()
                return [], clock
        return again, None

    def resubscribed(self, clock: ChannelClock, at: float) -> None:
        """`clock`'s channel subscribed again at `at`, after the subscription restarted its clock: only a message
        newer than this heals it."""
        self.pending[clock.key] = at
