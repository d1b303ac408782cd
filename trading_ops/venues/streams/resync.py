"""The policy on a stream's trouble: how long to wait before the next attempt (exponential backoff with a cap,
jittered, reset by a success), so a reconnect or a resubscribe never storms the venue."""

from __future__ import annotations

import random

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
