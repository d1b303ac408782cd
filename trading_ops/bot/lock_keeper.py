"""The single-instance lock kept confirmed on the database the journal writes to, from the trading loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from trading_ops.bot.instance_lock import AnotherInstanceRunning, InstanceLock
from trading_ops.bot.journal import Journal
from trading_ops.bot.journal_writes import JournalWrites

log = logging.getLogger(__name__)

# While another instance holds the single-instance lock, this one (halted) asks for it again this often: once that
# instance is gone it holds the lock again, and an operator's resume lets it trade.
INSTANCE_LOCK_RETRY_SECONDS = 5.0


class LockKeeper:
    """After the database reconnected (a new session: a restart, a failover to a promoted standby), the
    single-instance advisory lock is confirmed on the server the journal writes to, or taken again there; the order
    gate lets nothing out until then (InstanceLock.problem). Its session is also looked at every heartbeat interval, a
    reconnect or not: a session ended on its own (pg_terminate_backend, a pooler, a timeout) takes the lock with it and
    nothing else says so. Another process holding the lock halts this one (`halt`), which asks for it again every
    INSTANCE_LOCK_RETRY_SECONDS. In the background, one at a time, on the journal's thread, and not while the journal
    cannot be written (its return is when to try) or the bot stops (`stopping`)."""

    def __init__(
        self,
        lock: InstanceLock,
        journal: Journal,
        writes: JournalWrites,
        *,
        bot: str,
        check_interval: float,
        halt: Callable[[str], Awaitable[None]],
        stopping: Callable[[], bool],
    ) -> None:
        self.lock = lock
        self.journal = journal
        self.writes = writes
        self.bot = bot
        self.check_interval = check_interval
        self.halt = halt
        self.stopping = stopping
        self._check: asyncio.Task[None] | None = None
        self._retry_at = 0.0  # while another instance holds the lock: when to ask for it again
        self._check_due = 0.0  # when the lock's session is next looked at, a reconnect or not

    def confirm(self) -> None:
        """After each trading step: start a confirmation when one is due (see the class docstring)."""
        lock = self.lock
        now = time.monotonic()
        if lock.engine is None or self.stopping() or self.journal.health.failing:
            return
        if lock.confirmed and now < self._check_due:
            return
        if self._check is not None and not self._check.done():
            return
        if lock.holder and now < self._retry_at:
            return
        self._check_due = now + self.check_interval
        self._check = self.writes.spawn(self._keep(), name="instance-lock")

    async def _keep(self) -> None:
        held_elsewhere = bool(self.lock.holder)
        try:
            await self.journal.call(self.lock.keep_database_lock)
        except AnotherInstanceRunning as exc:
            self._retry_at = time.monotonic() + INSTANCE_LOCK_RETRY_SECONDS
            if not held_elsewhere:
                log.error("%s: halting, two instances must not trade one account", exc)
                await self.halt(f"single-instance lock lost: {exc}"[:200])
        except Exception as exc:  # the database went away again: the next step tries again
            log.warning("confirming the single-instance lock failed: %s", exc)
        else:
            if held_elsewhere:
                log.warning("bot %s holds its single-instance lock again (a halt stays until resumed)", self.bot)
