"""The paper venue's clock: the local clock plus the skew a fault injects (persisted with the venue's state)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta


def utcnow() -> datetime:
    return datetime.now(UTC)


class VenueClock:
    """The venue's time: `clock()` moved by `skew` seconds (positive: the venue runs ahead of the local clock)."""

    def __init__(self, clock: Callable[[], datetime] = utcnow, skew: float = 0.0) -> None:
        self.local = clock
        self.skew = float(skew)

    def now(self) -> datetime:
        return self.local() + timedelta(seconds=self.skew)
