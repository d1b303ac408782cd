"""The equity peak over a rolling window, which the drawdown limit measures from (never from the day's start)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trading_ops.bot.journal import Journal

# The window is kept as this many buckets, each holding the highest equity seen in it: memory and journal rows stay
# bounded whatever the loop rate, and a peak leaves the window at most one bucket (1/240: 6 minutes of 24 h) late.
BUCKETS = 240


class EquityPeak:
    """The highest equity seen within the last `window` seconds (wall clock: the buckets are journaled, so the peak
    survives a restart).

    Equity is whatever the owner observes (the runtime: realized P&L since the positions were opened plus unrealized
    P&L at the mark); only its changes matter. A bucket is keyed by its index (`start // width`); `dirty` holds the
    buckets whose highest value rose since `take_dirty`, for the owner to journal.
    """

    def __init__(self, window: float, buckets: int = BUCKETS) -> None:
        if window <= 0 or buckets < 1:
            raise ValueError("the window must be positive and the buckets at least 1")
        self.window = float(window)
        self.width = self.window / buckets
        self._highest: dict[int, Decimal] = {}
        self.dirty: set[int] = set()

    def bucket(self, now: float) -> int:
        return math.floor(now / self.width)

    def start_of(self, bucket: int) -> float:
        """When a bucket starts (seconds since the epoch)."""
        return bucket * self.width

    def observe(self, equity: Decimal, now: float) -> None:
        key = self.bucket(now)
        highest = self._highest.get(key)
        if highest is None or equity > highest:
            self._highest[key] = equity
            self.dirty.add(key)
        self._expire(now)

    def peak(self, now: float) -> Decimal | None:
        """The highest equity of the window ending now, or None before any observation in it."""
        self._expire(now)
        return max(self._highest.values(), default=None)

    def drawdown(self, equity: Decimal, now: float) -> Decimal:
        """How far `equity` is below the window's peak (0 at or above it, or with no peak yet)."""
        peak = self.peak(now)
        return max(peak - equity, Decimal(0)) if peak is not None else Decimal(0)

    def restore(self, buckets: dict[int, Decimal], now: float) -> None:
        """Take buckets as journaled (at a start); a higher value already observed in a bucket wins."""
        for key, value in buckets.items():
            if value > self._highest.get(key, value - 1):
                self._highest[key] = value
        self._expire(now)

    def take_dirty(self) -> dict[int, Decimal]:
        """The buckets to journal (still in the window), and none dirty from now on."""
        dirty = {key: self._highest[key] for key in sorted(self.dirty) if key in self._highest}
        self.dirty.clear()
        return dirty

    def oldest_kept(self, now: float) -> int:
        """The oldest bucket still in the window: older ones can be deleted from the journal."""
        return self.bucket(now - self.window)

    def _expire(self, now: float) -> None:
        # A bucket leaves once all of it is older than the window (so a peak is kept at least `window` seconds).
        oldest = self.oldest_kept(now)
        for key in [k for k in self._highest if k < oldest]:
            del self._highest[key]


class PeakJournal:
    """Keeps an EquityPeak's buckets in the bot's journal: loaded at a start, saved when they rose (the owner calls
    `save` every few seconds and at shutdown; a crash loses at most the rise since the last save)."""

    def __init__(self, peak: EquityPeak, journal: Journal) -> None:
        self.peak = peak
        self.journal = journal

    async def load(self, now: float) -> None:
        stored = await self.journal.call(self.journal.equity_peaks)
        width = self.peak.width
        # A bucket's start is a whole multiple of the width: round, not floor (the stored time is to the microsecond).
        self.peak.restore({round(start.timestamp() / width): equity for start, equity in stored.items()}, now)

    async def save(self, now: float) -> None:
        dirty = self.peak.take_dirty()
        if not dirty:
            return
        oldest = self._start(self.peak.oldest_kept(now))
        try:
            await self.journal.call(
                self.journal.save_equity_peaks, {self._start(k): v for k, v in dirty.items()}, oldest
            )
        except Exception:
            self.peak.dirty.update(dirty)  # saved with the next rise or the next attempt
            raise

    def _start(self, bucket: int) -> datetime:
        return datetime.fromtimestamp(self.peak.start_of(bucket), UTC)
