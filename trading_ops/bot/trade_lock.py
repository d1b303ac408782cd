"""The trade lock: a strategy step, a reconciliation and a restricting command never run at the same time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any


class TradeLock:
    """An asyncio lock that the task holding it may take again (a halt from within a reconciliation)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None

    @contextlib.asynccontextmanager
    async def hold(self, timeout: float | None = None) -> AsyncIterator[bool]:
        """Hold the lock: no strategy step, reconciliation or restricting command runs meanwhile. Re-entrant for the
        task that holds it. Yields False, not holding it, when `timeout` passed first."""
        task = asyncio.current_task()
        if task is not None and self._owner is task:
            yield True
            return
        try:
            async with asyncio.timeout(timeout):
                await self.lock.acquire()
        except TimeoutError:
            yield False
            return
        self._owner = task
        try:
            yield True
        finally:
            self._owner = None
            self.lock.release()
