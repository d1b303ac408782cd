"""Waiting for a condition in a test: poll until it holds, fail naming it (and the last error) at a deadline. `until`
for a test's own thread, `until_async` for a coroutine (its event loop keeps serving while it waits)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

DEADLINE_SECONDS = 90.0
POLL_SECONDS = 0.2
# A coroutine's probe mostly reads state of its own process (a service's state, the ledger): cheap to read often.
ASYNC_POLL_SECONDS = 0.05


class _Deadline:
    """What `until` and `until_async` share: when to give up, and the failure that names what never held."""

    def __init__(self, what: str, deadline: float) -> None:
        self.what, self.deadline = what, deadline
        self.end = time.monotonic() + deadline
        self.last = ""

    def tolerated(self, exc: Exception) -> None:
        """An error waited out: the probe's answer is none, and the failure will name the error."""
        self.last = f" (last error: {type(exc).__name__}: {exc})"

    def done(self, result: Any) -> bool:
        """Whether `result` is the one waited for; past the deadline a failure, naming the last answer when it says
        more than false or nothing."""
        if result:
            return True
        if time.monotonic() > self.end:
            answer = "" if self.last or result is None or isinstance(result, bool) else f" (last answer: {result!r})"
            raise AssertionError(f"{self.what}: not within {self.deadline:g}s{self.last}{answer}")
        return False


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
    wait = _Deadline(what, deadline)
    while True:
        try:
            result = probe()
        except tolerate as exc:
            result = None
            wait.tolerated(exc)
        if wait.done(result):
            return result
        time.sleep(interval)


async def until_async(
    what: str,
    probe: Callable[[], Any],
    deadline: float = DEADLINE_SECONDS,
    interval: float = ASYNC_POLL_SECONDS,
    tolerate: tuple[type[Exception], ...] = (OSError,),
    in_thread: bool = False,
) -> Any:
    """`until` in a coroutine: it sleeps with asyncio.sleep, so the event loop (the app under test) keeps serving.
    `probe` may return an awaitable (an async probe), whose result is what counts; `in_thread` runs a probe that
    blocks (a database query, a synchronous HTTP request) in a thread."""
    wait = _Deadline(what, deadline)
    while True:
        try:
            result = await asyncio.to_thread(probe) if in_thread else probe()
            if inspect.isawaitable(result):
                result = await result
        except tolerate as exc:
            result = None
            wait.tolerated(exc)
        if wait.done(result):
            return result
        await asyncio.sleep(interval)
