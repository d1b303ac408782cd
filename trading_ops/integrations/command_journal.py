"""The control commands a bot we don't write received (freqtrade behind its sidecar, a NautilusTrader node under its
controller), journaled as a bot on the runtime journals its own and served back with the same `control_events`: the
reconciler's audit pulls them as it pulls a bot's (trading_ops.reconciler.control_audit).

The journal is the bot's (trading_ops.bot.journal, recovery_store): a run of the integration's process (a `bot_runs`
row, its heartbeat kept, its stop marked clean), each command an authenticated caller sent a `control` event of that
run (the command, the token's name, the source it was counted under, the peer, the outcome, the state before and
after, the signed decision it acted on), at the database's time. The reads (`status`, `control_events`) are never
journaled: the reconciler polls them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Coroutine
from typing import Any

from sqlalchemy import Engine

from trading_ops.bot.control import CommandHandler
from trading_ops.bot.control_journal import control_events_handler
from trading_ops.bot.journal import Journal
from trading_ops.bot.journal_writes import command_event
from trading_ops.bot.recovery_store import RecoveryStore
from trading_ops.db.base import make_engine, utcnow
from trading_ops.db.revisions import schema_problem

log = logging.getLogger(__name__)

# The run's heartbeat (bot_runs.last_heartbeat_at): the daily report's uptime and the backup's "in use" check read it.
HEARTBEAT_SECONDS = 15.0
# A stop waits this long for the commands still being written.
STOP_SECONDS = 10.0


class SchemaProblem(ValueError):
    """The database cannot hold the journal (not migrated to this version's head): one line, what to do."""


def open_engine(url: str, sqlite_synchronous: str = "FULL") -> Engine:
    """An engine on `url`, whose schema is this version's (SchemaProblem otherwise: `trading-ops db upgrade`)."""
    engine = make_engine(url, sqlite_synchronous=sqlite_synchronous)
    try:
        problem = schema_problem(engine)
    except BaseException:
        engine.dispose()
        raise
    if problem is not None:
        engine.dispose()
        raise SchemaProblem(problem)
    return engine


class CommandJournal:
    """One integration target's journal of control commands: `begin` at start (its run), `record` each command,
    `handler` answers `control_events`, `end` at a clean stop. Writes run on the journal's one worker thread, in order;
    `record` may be called from any event loop (the sidecar's, the NautilusTrader controller's server thread)."""

    def __init__(self, engine: Engine, bot: str, venue: str) -> None:
        self.engine = engine
        self.bot = bot
        self.journal = Journal(engine, bot, venue[:32])
        self.store = RecoveryStore(engine, bot, venue[:32])
        self.run_id: int | None = None
        self._beat_at = 0.0
        self._absent = False  # the run ended because the bot did not answer (`absent`); `answered` begins the next
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def handler(self) -> CommandHandler:
        """The `control_events` command (scope read), as a bot on the runtime answers it."""
        return control_events_handler(self.journal, self.store)

    def begin(self) -> int:
        """The run of this process (blocking: at start, before the control API serves)."""
        self.run_id = self.store.begin_run(os.getpid(), socket.gethostname())
        self._beat_at = time.monotonic()
        log.info("control commands of %s journaled as run %d", self.bot, self.run_id)
        return self.run_id

    def record(self, command: str, caller: Any, outcome: str, detail: dict[str, Any]) -> asyncio.Task[None] | None:
        """Journal one command (a control plane's recorder: trading_ops.bot.control.CommandRecorder), in the
        background: the write is returned, and the control API answers once it is done. Outside an event loop it is
        written before this returns. A write that fails is logged; the command stands."""
        run = self.run_id
        if run is None:
            log.warning("control %s by %s not journaled: the journal is not open", command, caller)
            return None
        fields = command_event(command, caller, outcome, detail)

        async def write() -> None:
            try:
                await self.journal.call(self.store.record_command, run, fields)
            except Exception:
                log.exception("journaling the control command %s by %s failed", command, caller)

        return self._spawn(write())

    def answered(self) -> None:
        """The bot this journal speaks for answered (freqtrade's API, at each of the sidecar's polls): a run its
        absence ended begins again, and the run's heartbeat is kept. The daily report's uptime and the backup's "in use"
        check read these runs: they are the bot's, not the sidecar's, whose process may outlive freqtrade's."""
        if self._absent and self.run_id is not None:
            self._absent = False
            self._spawn(self._begin_again())
            return
        self.beat()

    def absent(self, reason: str) -> None:
        """The bot did not answer: its run ends here, not clean (`reason`), once; `answered` begins the next. A command
        sent meanwhile is journaled under the run that ended."""
        run = self.run_id
        if self._absent or run is None:
            return
        self._absent = True

        async def write() -> None:
            try:
                await self.journal.call(self.store.mark_stopped, run, False, reason)
            except Exception as exc:
                log.warning("the end of %s's run %d was not written: %s", self.bot, run, type(exc).__name__)

        self._spawn(write())

    async def _begin_again(self) -> None:
        try:
            run = await self.journal.call(self.store.begin_run, os.getpid(), socket.gethostname())
        except Exception as exc:
            self._absent = True  # the next answer tries again
            log.warning("a new run of %s was not begun: %s", self.bot, type(exc).__name__)
            return
        self.run_id, self._beat_at = run, time.monotonic()
        log.info("%s answers again: its control commands journaled as run %d", self.bot, run)

    def beat(self) -> None:
        """The run's heartbeat, at most every HEARTBEAT_SECONDS (call it as often as convenient, from a loop)."""
        run = self.run_id
        if run is None or time.monotonic() - self._beat_at < HEARTBEAT_SECONDS:
            return
        self._beat_at = time.monotonic()

        async def write() -> None:
            try:
                await self.journal.call(self.store.heartbeat, run, utcnow())
            except Exception as exc:
                log.warning("the run's heartbeat of %s was not written: %s", self.bot, type(exc).__name__)

        self._spawn(write())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop runs here: written now, on a loop of its own
            asyncio.run(coro)
            return None
        task = loop.create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def wait(self) -> None:
        """Until every command recorded so far is written (or failed), and the runs begun or ended so far."""
        mine = [t for t in self._pending if t.get_loop() is asyncio.get_running_loop()]
        if mine:
            await asyncio.wait(mine)
        await self.journal.call(self.journal.flush)

    async def close(self, clean: bool = True, reason: str = "stopped") -> None:
        """`end`, from an event loop: the writes this loop started awaited first (STOP_SECONDS at most)."""
        mine = [t for t in self._pending if t.get_loop() is asyncio.get_running_loop()]
        if mine:
            await asyncio.wait(mine, timeout=STOP_SECONDS)
        await asyncio.to_thread(self.end, clean, reason)

    def end(self, clean: bool = True, reason: str = "stopped") -> None:
        """The run's last heartbeat and its stop marker, once what was recorded is written (blocking); the worker
        stopped. The engine is the caller's."""
        self.journal.close(wait=True)
        if self.run_id is not None and not self._absent:  # an absence ended its run already, when the bot went
            try:
                self.store.mark_stopped(self.run_id, clean, reason)
            except Exception:
                log.exception("the stop of %s's run %d was not journaled", self.bot, self.run_id)
