"""Cardinality guard: caps the distinct values of each label and folds the overflow into `other`."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter

OTHER = "other"
MAX_LABEL_VALUE_LENGTH = 64


class LabelGuard:
    """Keeps at most `limit` distinct values per label name; later values become `other` and are counted.

    Enumerated labels (side, order type, ...) accept only their known values. A value is checked once,
    when a record call first meets it; the hot path never reaches the guard again for that value.
    """

    def __init__(self, limit: int, registry: CollectorRegistry | None, prefix: str = "tradingbot") -> None:
        if limit < 1:
            raise ValueError("cardinality limit must be at least 1")
        self.limit = limit
        self._seen: dict[str, set[str]] = {}
        self._allowed: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()
        self.folded = Counter(
            f"{prefix}_label_values_folded_total",
            "Label values replaced by 'other' because the label reached its cardinality limit "
            "or the value is not one the label allows.",
            ["label"],
            registry=registry,
        )

    def allow_only(self, label: str, values: Iterable[str]) -> None:
        """Restrict `label` to a fixed set of values (plus `other`)."""
        self._allowed[label] = frozenset(values) | {OTHER}

    def peek(self, label: str, value: str) -> str:
        """The value already admitted for `label`, or `other`; admits and counts nothing."""
        allowed = self._allowed.get(label)
        if allowed is not None:
            return value if value in allowed else OTHER
        return value if value in self._seen.get(label, ()) else OTHER

    def admit(self, label: str, value: str) -> tuple[str, bool]:
        """The value to record for `label`, and whether it may be cached (False when it was folded)."""
        value = str(value)
        allowed = self._allowed.get(label)
        if allowed is not None:
            if value in allowed:
                return value, True
            self.folded.labels(label).inc()
            return OTHER, False
        with self._lock:
            seen = self._seen.setdefault(label, set())
            if value in seen:
                return value, True
            if len(seen) < self.limit and value and len(value) <= MAX_LABEL_VALUE_LENGTH:
                seen.add(value)
                return value, True
        self.folded.labels(label).inc()
        return OTHER, False


class ChildCache(dict):  # type: ignore[type-arg]
    """Maps a tuple of raw label values to the metric child; a miss goes through the guard once.

    Record calls index this dict directly, so the common case costs one C-level dict lookup on top of
    the prometheus_client child operation. With `method` (e.g. "inc"), the cache holds that bound method
    of the child instead of the child, which saves the attribute lookup on every call; the operation
    itself is prometheus_client's own, checks included. Folded values are not cached, which bounds the
    dict's size.
    """

    __slots__ = ("_metric", "_labels", "_fixed", "_guard", "_method")

    def __init__(
        self,
        metric: object,
        labels: tuple[str, ...],
        fixed: tuple[str, ...],
        guard: LabelGuard,
        method: str | None = None,
    ):
        super().__init__()
        self._metric = metric
        self._labels = labels
        self._fixed = fixed
        self._guard = guard
        self._method = method

    def __missing__(self, key: tuple[str, ...]) -> object:
        values = []
        cacheable = True
        for label, raw in zip(self._labels, key, strict=True):
            value, ok = self._guard.admit(label, raw)
            values.append(value)
            cacheable = cacheable and ok
        child = self._metric.labels(*self._fixed, *values)  # type: ignore[attr-defined]
        target = child if self._method is None else getattr(child, self._method)
        if cacheable:
            self[key] = target
        return target
