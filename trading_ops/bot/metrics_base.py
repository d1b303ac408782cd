"""What every part of BotMetrics shares: the prefix, the labels each family carries first, and how a family is made."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from trading_ops.bot.cardinality import ChildCache, LabelGuard

PREFIX = "tradingbot"
# The labels every bot family carries first (the scrape config adds no target labels).
VS = ("venue", "strategy")


def slots_of(*parts: type) -> tuple[str, ...]:
    """The attributes the parts declare (their own annotations): the slots of the one object they make up."""
    return tuple(name for part in parts for name in part.__dict__.get("__annotations__", {}))


class MetricsBase:
    """The state the parts of BotMetrics share, and the helpers that make a family whose record calls resolve their
    child through the cardinality guard (ChildCache). A part declares its attributes as annotations and keeps
    `__slots__` empty: BotMetrics, the one object they make up, holds every part's attributes in its own slots."""

    if not TYPE_CHECKING:  # mypy would hold the part to an empty __slots__; BotMetrics holds its attributes
        __slots__ = ()

    venue: str
    strategy: str
    registry: CollectorRegistry | None
    guard: LabelGuard
    _clock: Callable[[], float]
    _monotonic: Callable[[], float]

    def _counter(self, name: str, doc: str, labels: tuple[str, ...], fixed: tuple[str, ...] = VS) -> ChildCache:
        metric = Counter(f"{PREFIX}_{name}", doc, [*fixed, *labels], registry=self.registry)
        return ChildCache(metric, labels, self._fixed(fixed), self.guard, "inc")

    def _gauge(self, name: str, doc: str, labels: tuple[str, ...], fixed: tuple[str, ...] = ("venue",)) -> ChildCache:
        metric = Gauge(f"{PREFIX}_{name}", doc, [*fixed, *labels], registry=self.registry)
        return ChildCache(metric, labels, self._fixed(fixed), self.guard, "set")

    def _histogram(self, name: str, doc: str, label: str, buckets: tuple[float, ...]) -> ChildCache:
        """A histogram by venue and one more label, its children's `observe` cached."""
        metric = Histogram(f"{PREFIX}_{name}", doc, ["venue", label], buckets=buckets, registry=self.registry)
        return ChildCache(metric, (label,), (self.venue,), self.guard, "observe")

    def _fixed(self, names: tuple[str, ...]) -> tuple[str, ...]:
        values = {"venue": self.venue, "strategy": self.strategy}
        return tuple(values[n] for n in names)
