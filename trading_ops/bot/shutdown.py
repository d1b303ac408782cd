"""A graceful shutdown: named steps run in order within one deadline; what the deadline cut off is logged."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Step = tuple[str, Callable[[], Awaitable[Any]]]


class ShutdownDeadlineExceeded(Exception):
    """The graceful steps did not finish in time; `unfinished` names the step cut off and those never begun."""

    def __init__(self, deadline: float, unfinished: list[str]) -> None:
        super().__init__(f"shutdown deadline of {deadline:g} s passed; unfinished: {', '.join(unfinished)}")
        self.unfinished = unfinished


async def run_steps(steps: list[Step], deadline: float) -> list[str]:
    """Run `steps` in order within `deadline` seconds; a failing step is logged and the next one runs.

    Returns the names of the steps that failed. Raises ShutdownDeadlineExceeded when the deadline passes.
    """
    current = 0
    failed: list[str] = []
    started = time.monotonic()

    async def sequence() -> None:
        nonlocal current
        for index, (name, step) in enumerate(steps):
            current = index
            try:
                await step()
                log.info("shutdown: %s done (%.0f ms)", name, (time.monotonic() - started) * 1000)
            except Exception:
                log.exception("shutdown: %s failed", name)
                failed.append(name)
        current = len(steps)

    try:
        async with asyncio.timeout(deadline):
            await sequence()
    except TimeoutError:
        unfinished = [name for name, _ in steps[current:]]
        log.error("shutdown deadline of %g s passed; unfinished: %s", deadline, ", ".join(unfinished))
        raise ShutdownDeadlineExceeded(deadline, unfinished) from None
    return failed
