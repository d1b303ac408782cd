"""Verification: query the alert's condition in Prometheus until the alert's own series clear or a deadline passes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from trading_ops.clients.prometheus import PrometheusClient, PrometheusError


@dataclass
class Verdict:
    outcome: str  # clear, deadline, resolved
    detail: str


def belongs_to(series: Mapping[str, Any], alert_labels: Mapping[str, str]) -> bool:
    """Whether a result series is the alert's own: none of its labels contradicts the alert's.

    An alert carries its series' labels (plus the rule's and external ones), so another bot's or symbol's
    series differs in at least one label; an aggregated series with fewer labels still counts."""
    metric = series.get("metric") or {}
    return all(alert_labels.get(name, value) == value for name, value in metric.items() if name != "__name__")


async def verify(
    prometheus: PrometheusClient,
    expr: str,
    deadline: float,
    interval: float,
    resolved: Callable[[], Awaitable[bool]],
    alert_labels: Mapping[str, str] | None = None,
    wake: asyncio.Event | None = None,
) -> Verdict:
    """Poll `expr` (an alerting condition: a result means still failing) until the alert's series are gone.

    Only series that belong to the alert (`alert_labels`) count: another bot failing the same condition does
    not keep this one's recovery unverified. A resolved notification ends the verification: one last query
    tells a recovery (clear) from a condition that went away on its own while still matching here. `wake`,
    when set, cuts the wait between polls short (the resolved notification arrived)."""
    labels = alert_labels or {}
    end = time.monotonic() + deadline
    last = "not queried"
    while True:
        was_resolved = await resolved()
        try:
            result = [s for s in await prometheus.query(expr) if belongs_to(s, labels)]
        except PrometheusError as exc:
            last = f"query failed: {exc}"
        else:
            if not result:
                why = "; the alert resolved too" if was_resolved else ""
                return Verdict("clear", f"{expr} returned nothing for this alert{why}")
            last = f"{len(result)} series of this alert still match"
        if was_resolved:
            return Verdict("resolved", f"alert resolved during verification ({last})")
        remaining = end - time.monotonic()
        if remaining <= 0:
            return Verdict("deadline", f"not clear after {deadline:g}s ({last}): {expr}")
        if wake is None:
            await asyncio.sleep(min(interval, remaining))
            continue
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(interval, remaining)):
                await wake.wait()
