"""Stopping background tasks: cancel them and wait a bounded time, so a shutdown can never hang."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)

# A task that has not finished this long after its cancellation is left behind (and logged) rather than
# awaited forever: a stuck worker must not keep a bot or the reconciler from exiting.
STOP_TIMEOUT_SECONDS = 10.0


async def stop_tasks(tasks: Iterable[asyncio.Task[object] | None], timeout: float = STOP_TIMEOUT_SECONDS) -> bool:
    """Cancel `tasks` and wait up to `timeout` seconds for them; True when every one has finished."""
    pending = [t for t in tasks if t is not None and not t.done()]
    for task in pending:
        task.cancel()
    if not pending:
        return True
    _, still = await asyncio.wait(pending, timeout=timeout)
    for task in still:
        log.error("task %s did not stop within %gs of its cancellation; leaving it", task.get_name(), timeout)
    for task in pending:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("task %s ended with an error", task.get_name(), exc_info=task.exception())
    return not still
