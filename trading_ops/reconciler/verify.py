"""Verification: query the alert's condition in Prometheus until it clears or a deadline passes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from trading_ops.clients.prometheus import PrometheusClient, PrometheusError


@dataclass
class Verdict:
    outcome: str  # clear, deadline, resolved
    detail: str

    @property
    def ok(self) -> bool:
        return self.outcome in ("clear", "resolved")


async def verify(
    prometheus: PrometheusClient,
    expr: str,
    deadline: float,
    interval: float,
    resolved: Callable[[], Awaitable[bool]],
) -> Verdict:
    """Poll `expr` (an alerting condition: a result means still failing) until it returns nothing.

    `resolved()` is asked between polls: a resolved notification cancels the verification."""
    end = time.monotonic() + deadline
    last = "not queried"
    while True:
        if await resolved():
            return Verdict("resolved", "alert resolved during verification")
        try:
            result = await prometheus.query(expr)
        except PrometheusError as exc:
            last = f"query failed: {exc}"
        else:
            if not result:
                return Verdict("clear", f"{expr} returned nothing")
            last = f"{len(result)} series still match"
        remaining = end - time.monotonic()
        if remaining <= 0:
            return Verdict("deadline", f"not clear after {deadline:g}s ({last}): {expr}")
        await asyncio.sleep(min(interval, remaining))
