"""Wait until each child of the stack answers its health endpoint, or say which one did not and why."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import aiohttp

from trading_ops.stack.supervisor import Child, describe_exit

PROBE_TIMEOUT = aiohttp.ClientTimeout(total=2)
POLL_SECONDS = 0.25


async def probe(session: aiohttp.ClientSession, url: str) -> tuple[bool, str]:
    """(healthy, what was seen) for one GET of a health endpoint."""
    try:
        async with session.get(url, timeout=PROBE_TIMEOUT) as resp:
            return resp.status == 200, f"HTTP {resp.status}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return False, type(exc).__name__


class StartupFailed(Exception):
    """A child exited or stayed unhealthy while the stack was starting."""

    def __init__(self, child: Child, problem: str) -> None:
        super().__init__(f"{child.name} {problem}")
        self.child = child


async def wait_healthy(
    session: aiohttp.ClientSession, children: Sequence[Child], deadline: float, stop: asyncio.Event
) -> bool:
    """True once every child answers 200; False if `stop` is set first. Raises StartupFailed when a child
    exits or the deadline (seconds) passes."""
    end = time.monotonic() + deadline
    pending = {c.name: c for c in children}
    last: dict[str, str] = {}
    while pending:
        for child in list(pending.values()):
            if not child.running():
                raise StartupFailed(child, f"{describe_exit(child.returncode)} while starting")
        results = await asyncio.gather(*(probe(session, c.health_url) for c in pending.values()))
        for child, (ok, seen) in zip(list(pending.values()), results, strict=True):
            last[child.name] = seen
            if ok:
                del pending[child.name]
        if not pending:
            return True
        if time.monotonic() > end:
            child = next(iter(pending.values()))
            raise StartupFailed(
                child, f"not healthy within {deadline:g}s ({child.health_url}: {last.get(child.name, 'no answer')})"
            )
        try:
            async with asyncio.timeout(POLL_SECONDS):
                await stop.wait()
        except TimeoutError:
            continue
        return False
    return True
