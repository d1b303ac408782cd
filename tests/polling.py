"""Waiting for a condition in a test: poll until it holds, fail naming it (and the last error) at a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

DEADLINE_SECONDS = 90.0
POLL_SECONDS = 0.2


def until(
    what: str,
    probe: Callable[[], Any],
    deadline: float = DEADLINE_SECONDS,
    interval: float = POLL_SECONDS,
    tolerate: tuple[type[Exception], ...] = (OSError,),
) -> Any:
    """Poll `probe` until it returns something truthy, and return that. An exception of `tolerate` (by default a
    connection refused or reset: a server restarting) counts as not yet; at the deadline an AssertionError names
    `what` and the last such error."""
    end = time.monotonic() + deadline
    last = ""
    while True:
        try:
            result = probe()
        except tolerate as exc:
            result, last = None, f" (last error: {type(exc).__name__}: {exc})"
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {deadline:g}s{last}")
        time.sleep(interval)
