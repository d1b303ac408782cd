"""The paper venue's request rate limit: a token bucket on the local clock, as a venue's API limit counts calls."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from trading_ops.bot.broker import BrokerError


class RequestBucket:
    """`burst` tokens refilled at `per_second`; each order request (submit, cancel) spends one."""

    def __init__(self, venue: str, per_second: float, burst: float, clock: Callable[[], datetime]) -> None:
        self.venue = venue
        self.per_second = per_second
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def headroom(self) -> float:
        """Share of the request budget left, 0..1."""
        self._refill()
        return max(0.0, min(1.0, self._tokens / self.burst))

    def spend(self) -> None:
        """One token, or BrokerError("rate_limit") when none is left."""
        self._refill()
        if self._tokens < 1:
            raise BrokerError("rate_limit", f"{self.venue}: more than {self.per_second:g} requests/s")
        self._tokens -= 1

    def _refill(self) -> None:
        now = self._clock()
        elapsed = (now - self._at).total_seconds()
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.per_second)
        self._at = now
