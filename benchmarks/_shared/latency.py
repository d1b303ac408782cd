"""Latencies as the benchmarks print them: a percentile of a sample, and p50/p99 in milliseconds with the count."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def pct(values: Sequence[float], q: float) -> float:
    """The `q` quantile of `values` (nearest rank, no interpolation: a value that was measured)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary_ms(values: Sequence[float]) -> dict[str, float]:
    """p50 and p99 of `values` (seconds) in milliseconds, and how many there were."""
    return {
        "p50_ms": round(statistics.median(values) * 1000, 4),
        "p99_ms": round(pct(values, 0.99) * 1000, 4),
        "n": len(values),
    }
