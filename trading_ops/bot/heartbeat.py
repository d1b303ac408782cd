"""The bot's heartbeat in the database, its clean-shutdown marker, and crash detection at start."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from trading_ops.bot.instance_lock import AnotherInstanceRunning
from trading_ops.bot.journal import Journal
from trading_ops.bot.metrics import PREFIX
from trading_ops.bot.recovery_store import RecoveryStore, RunRecord
from trading_ops.db.base import utcnow
from trading_ops.tasks import stop_tasks

log = logging.getLogger(__name__)

__all__ = ["AnotherInstanceRunning", "CrashFound", "Heartbeat"]

# While heartbeat writes keep failing, one line in this many is logged (the first, with its traceback, always).
LOG_EVERY_FAILURES = 60


@dataclass(frozen=True)
class CrashFound:
    """The previous run stopped without the clean marker: its heartbeat went older than the timeout, or it stopped
    with steps of its shutdown failed (`previous.stop_reason` says which)."""

    previous: RunRecord
    heartbeat_age_seconds: float


class Heartbeat:
    """Writes a heartbeat every `interval` while `progressing()` is true, on the journal's thread.

    `begin()` looks at the previous run first: without the clean marker and with a heartbeat older than
    `crash_timeout` it crashed. A younger heartbeat may belong to a bot that is still running, so `begin`
    waits until it is `crash_timeout` old and raises AnotherInstanceRunning if it moves meanwhile. A run that
    recorded its stop without the marker (a shutdown step failed) is treated as a crash at once.

    A failed heartbeat write (the database away for a moment) is logged and counted in
    `tradingbot_heartbeat_write_failures_total` (and, as every journal call, makes the journal failing: see
    JournalHealth); the heartbeat keeps beating.
    """

    def __init__(
        self,
        journal: Journal,
        store: RecoveryStore,
        *,
        interval: float,
        crash_timeout: float,
        progressing: Callable[[], bool],
        registry: CollectorRegistry | None = None,
        venue: str = "",
    ) -> None:
        self.journal = journal
        self.store = store
        self.interval = interval
        self.crash_timeout = crash_timeout
        self.progressing = progressing
        self.run_id: int | None = None
        self.beats = 0
        self.failures = 0
        self._failing = 0  # consecutive failed writes
        self._failures = Counter(
            f"{PREFIX}_heartbeat_write_failures",
            "Heartbeat writes to the database that failed (the bot keeps beating).",
            ["venue"],
            registry=registry,
        ).labels(venue)
        self._task: asyncio.Task[None] | None = None

    async def begin(self) -> CrashFound | None:
        previous = await self.journal.call(self.store.last_run)
        crash: CrashFound | None = None
        if previous is not None and not previous.clean_shutdown:
            age = (utcnow() - previous.last_heartbeat_at).total_seconds()
            if age < self.crash_timeout and previous.stopped_at is None:
                log.warning(
                    "previous run %d (pid %d on %s) has no clean-shutdown marker and beat %.1f s ago: waiting until "
                    "its heartbeat is %.1f s old",
                    previous.id,
                    previous.pid,
                    previous.hostname,
                    age,
                    self.crash_timeout,
                )
                await asyncio.sleep(self.crash_timeout - age)
                latest = await self.journal.call(self.store.get_run, previous.id)
                if latest is not None and (
                    latest.clean_shutdown or latest.last_heartbeat_at != previous.last_heartbeat_at
                ):
                    raise AnotherInstanceRunning(
                        f"bot {self.store.bot!r} is running elsewhere (run {previous.id}, pid {previous.pid} on "
                        f"{previous.hostname}): its heartbeat moved while this one waited to start"
                    )
                age = (utcnow() - previous.last_heartbeat_at).total_seconds()
            crash = CrashFound(previous, age)
            log.error(
                "previous run %d (pid %d on %s) crashed: no clean-shutdown marker (%s), last heartbeat %.1f s ago",
                previous.id,
                previous.pid,
                previous.hostname,
                f"stopped: {previous.stop_reason}" if previous.stopped_at is not None else "never stopped",
                age,
            )
        self.run_id = await self.journal.call(self.store.begin_run, os.getpid(), socket.gethostname())
        return crash

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._beat(), name="heartbeat")

    async def _beat(self) -> None:
        assert self.run_id is not None
        while True:
            await asyncio.sleep(self.interval)
            if self.progressing():
                await self._write(self.run_id)

    async def beat(self) -> None:
        """Write the heartbeat now (the trading loop's probe of the journal); a failure is counted, not raised."""
        if self.run_id is not None and self._task is not None:
            await self._write(self.run_id)

    async def _write(self, run_id: int) -> None:
        try:
            await self.journal.call(self.store.heartbeat, run_id, utcnow())
        except Exception as exc:
            self.failures += 1
            self._failing += 1
            self._failures.inc()
            if self._failing == 1:
                log.exception("heartbeat write failed; retrying every %g s", self.interval)
            elif self._failing % LOG_EVERY_FAILURES == 0:
                log.error("heartbeat writes failing: %d in a row, the last: %s", self._failing, exc)
            return
        if self._failing:
            log.warning("heartbeat writes work again after %d failures", self._failing)
            self._failing = 0
        self.beats += 1

    async def stop_beating(self) -> None:
        """Stop the heartbeat task, writing nothing more (the run then looks crashed to the next start)."""
        if self._task is not None:
            await stop_tasks([self._task])
            self._task = None

    async def stop(self, *, clean: bool, reason: str) -> None:
        """Stop beating and write the final heartbeat; `clean` is the clean-shutdown marker."""
        await self.stop_beating()
        if self.run_id is not None:
            await self.journal.call(self.store.mark_stopped, self.run_id, clean, reason)
