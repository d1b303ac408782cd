"""A bot's shutdown: its steps in order, under one deadline (the runner is shutdown.ShutdownSequence)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from trading_ops.bot.broker import Broker
from trading_ops.bot.dead_man_switch import DeadMansSwitch
from trading_ops.bot.drawdown import PeakJournal
from trading_ops.bot.gate import OrderGate
from trading_ops.bot.heartbeat import Heartbeat
from trading_ops.bot.instance_lock import InstanceLock
from trading_ops.bot.journal import Journal
from trading_ops.bot.journal_writes import JournalWrites
from trading_ops.bot.metrics import BotMetrics
from trading_ops.bot.orders import OrderEngine
from trading_ops.bot.risk import RiskEngine
from trading_ops.bot.sdnotify import SystemdNotifier
from trading_ops.bot.shutdown import ShutdownDeadlineExceeded, ShutdownSequence
from trading_ops.bot.trade_lock import TradeLock
from trading_ops.config import RecoveryConfig
from trading_ops.tasks import stop_tasks

log = logging.getLogger(__name__)

EXIT_FORCED = 1
# Past the shutdown deadline plus this, a thread ends the process even if the event loop is blocked.
FORCED_EXIT_GRACE_SECONDS = 2.0
# After a missed shutdown deadline (in-process, no forced exit): how long releasing what can be released may take.
ABANDON_SECONDS = 1.0
# A shutdown waits this part of its deadline for the trading step in progress (a reconciliation that waits on the
# venue's rate limit holds the trade lock), then cancels it.
STOP_TRADING_SHARE = 0.2
# The names of the run's tasks the shutdown stops by name: the trading ones first, the simulated venue's at the
# disconnect.
TRADING_TASKS = ("trading-loop", "reconciliation")
VENUE_TASK = "venue"


class Stopping:
    """Stops a bot in order under `recovery.shutdown_deadline_seconds`: new orders stopped (the step in progress
    finishes, bounded), open orders canceled (confirmed at the venue) or kept by policy, the venue's switch disarmed or
    left armed, the venue disconnected, the journal flushed (the background writes, the equity peak), the final
    heartbeat (the clean-shutdown marker when stopping and flushing worked), the background tasks and the HTTP server
    stopped, the journal closed, the single-instance lock released last. `tasks` are the run's tasks (TRADING_TASKS,
    VENUE_TASK and the rest); `on_stop` callbacks run once they stop. After a run whose cancel could not be confirmed,
    `orders_left_open` says so (what the runtime's `run` raises)."""

    def __init__(
        self,
        *,
        bot: str,
        recovery: RecoveryConfig,
        stop: asyncio.Event,
        tasks: list[asyncio.Task[Any]],
        trading_began: Callable[[], bool],
        gate: OrderGate,
        metrics: BotMetrics,
        systemd: SystemdNotifier,
        trade_lock: TradeLock,
        broker: Broker,
        order_engine: OrderEngine,
        journal: Journal,
        writes: JournalWrites,
        peak_journal: PeakJournal,
        risk: RiskEngine,
        heartbeat: Heartbeat,
        dead_man: DeadMansSwitch,
        stop_server: Callable[[], Awaitable[None]],
        instance_lock: InstanceLock,
    ) -> None:
        self.bot = bot
        self.recovery = recovery
        self.stop = stop
        self.tasks = tasks
        self.trading_began = trading_began
        self.gate = gate
        self.metrics = metrics
        self.systemd = systemd
        self.trade_lock = trade_lock
        self.broker = broker
        self.order_engine = order_engine
        self.journal = journal
        self.writes = writes
        self.peak_journal = peak_journal
        self.risk = risk
        self.heartbeat = heartbeat
        self.dead_man = dead_man
        self.stop_server = stop_server
        self.instance_lock = instance_lock
        self.on_stop: list[Callable[[], None]] = []
        self.stopped = False
        # Set by a shutdown whose cancel of the open orders could not be confirmed: what `run` raises (OrdersLeftOpen).
        self.orders_left_open = ""
        self._cancel_error = ""

    async def run(self, reason: str = "stop", *, force_exit: bool = False) -> None:
        """The shutdown (BotRuntime.shutdown says what it does); once only."""
        if self.stopped:
            return
        self.stopped = True
        self.gate.stopping = True
        self.metrics.phase("stopping")
        self.stop.set()
        self.systemd.stopping(f"shutting down ({reason})")
        rec = self.recovery
        policy = rec.open_orders_on_shutdown
        orders_step = f"open orders: {policy}"
        switch_step = "the dead man's switch"
        needed_for_clean = ("stop new orders", "flush the journal")
        venue_steps = frozenset({orders_step, switch_step} if policy == "cancel" else {switch_step})
        sequence = ShutdownSequence([], rec.shutdown_deadline_seconds, venue_steps)

        async def final_heartbeat() -> None:
            failed = [name for name in needed_for_clean if name in sequence.failed]
            unconfirmed = [name for name in venue_steps if name in sequence.failed]
            if failed:
                log.error(
                    "shutdown: no clean-shutdown marker, %s failed: the next start treats this run as a crash",
                    ", ".join(failed),
                )
            why = f"{reason}; failed: {', '.join(failed)}" if failed else reason
            if unconfirmed:
                why += f"; unconfirmed at the venue: {', '.join(sorted(unconfirmed))}"
            await self.heartbeat.stop(clean=not failed, reason=why)

        async def flush() -> None:
            await self.peak_journal.save(self.risk.wall())
            await self.writes.wait()
            await self.journal.call(self.journal.flush)

        async def end_dead_man() -> None:
            await self.dead_man.end(canceled=policy == "cancel" and orders_step not in sequence.failed)

        sequence.steps = [
            ("stop new orders", self._stop_trading),
            (orders_step, self._cancel_open_orders if policy == "cancel" else self._keep_open_orders),
            (switch_step, end_dead_man),
            ("disconnect from the venue", self._disconnect),
            ("flush the journal", flush),
            ("final heartbeat with the clean-shutdown marker", final_heartbeat),
            ("stop background tasks", self._stop_background),
            ("stop the HTTP server", self.stop_server),
            ("close the journal", lambda: asyncio.to_thread(self.journal.close)),
            ("release the single-instance lock", self._release_instance_lock),
        ]
        if force_exit:
            sequence.arm_forced_exit(FORCED_EXIT_GRACE_SECONDS, EXIT_FORCED)
        try:
            failed = await sequence.run()
        except ShutdownDeadlineExceeded:
            if not force_exit:
                await self.abandon()
            raise
        if policy == "cancel" and orders_step in sequence.cut_off:
            share = rec.shutdown_deadline_seconds * sequence.venue_share
            self._cancel_error = (
                f"cut off after the venue steps' {share:g} s of the {rec.shutdown_deadline_seconds:g} s deadline"
            )
        if switch_step in failed and self.dead_man.armed:
            log.warning(
                "shutdown: the dead man's switch could not be disarmed: the venue cancels every open order of the "
                "account at %s (the next start arms it again)",
                self.dead_man.trigger.isoformat() if self.dead_man.trigger else "its trigger",
            )
        if policy == "cancel" and orders_step in failed:
            self.orders_left_open = (
                f"shutdown could not confirm the cancel of its open orders ({self._cancel_error}); they may rest at "
                f"the venue{self.dead_man.left_to_it()}"
            )
        (log.error if failed else log.info)(
            "bot %s stopped (%s)%s",
            self.bot,
            reason,
            f"; failed steps: {', '.join(failed)}" if failed else "",
        )

    async def _stop_trading(self) -> None:
        """No new order from here on: the step in progress finishes (bounded: a reconciliation waiting on the venue's
        rate limit holds the trade lock) and none starts after it."""
        self.gate.accepting = False
        bound = asyncio.timeout(self.recovery.shutdown_deadline_seconds * STOP_TRADING_SHARE)
        try:
            async with bound, self.trade_lock.hold():
                self._cancel_trading()
        except TimeoutError:
            if not bound.expired():
                raise
            log.warning("shutdown: the step in progress did not end in time (it waits on the venue): cancelled")
        self._cancel_trading()

    def _cancel_trading(self) -> None:
        for task in self.tasks:
            if task.get_name() in TRADING_TASKS:
                task.cancel()

    async def _cancel_open_orders(self) -> None:
        """Every working order of the bot, adopted ones included, confirmed by a look at the venue (its calls wait
        for room in the venue's rate limit, within the shutdown's deadline); raises when some are left working or the
        venue could not confirm it."""
        if await self._nothing_to_cancel():
            log.info("shutdown: no open order to cancel (the start was interrupted before any; the journal holds none)")
            return
        budget = self.recovery.shutdown_deadline_seconds / 2
        try:
            async with self.broker.patient(), self.broker.protective():
                canceled, left = await self.order_engine.cancel_everything(budget)
        except Exception as exc:
            self._cancel_error = f"{type(exc).__name__}: {exc}"[:300]
            raise
        if left:
            self._cancel_error = f"{len(left)} still open: {', '.join(left[:5])}"
            raise RuntimeError(f"{len(left)} open orders could not be canceled: {', '.join(left[:5])}")
        log.info("shutdown: %d open orders canceled", canceled)

    async def _nothing_to_cancel(self) -> bool:
        """A start interrupted before trading (a SIGTERM while it waits for the venue's call budget) that sent no order,
        adopted none, and whose journal holds none open has nothing at the venue to cancel: every order the bot ever
        sent is journaled before it leaves. The venue is not asked then; its spent budget would only hold the stop
        back until the venue steps' share of the deadline, and the exit would say an unconfirmed cancel."""
        if self.trading_began() or self.order_engine.open_order_count():
            return False
        try:
            return not await self.journal.call(self.journal.open_orders)
        except Exception as exc:  # the journal cannot say: ask the venue as usual
            log.warning("shutdown: the journal's open orders could not be read (%s): asking the venue", exc)
            return False

    async def _keep_open_orders(self) -> None:
        log.info(
            "shutdown: %d open orders kept on the venue (reconciled at the next start)", len(self.order_engine.orders)
        )

    async def _disconnect(self) -> None:
        """Let the venue hand over what it already produced, then close it: no event after the flush."""
        await self.broker.drain_events()
        await self.broker.close()
        await stop_tasks([t for t in self.tasks if t.get_name() == VENUE_TASK])

    def _released(self) -> None:
        for callback in self.on_stop:
            try:
                callback()
            except Exception:
                log.exception("a stop callback failed")

    async def _stop_background(self) -> None:
        await stop_tasks(self.tasks)
        self.tasks.clear()
        self._released()
        await self.systemd.close()

    async def abandon(self) -> None:
        """The deadline passed (in-process): release what can be released without waiting on what is stuck."""
        try:
            async with asyncio.timeout(ABANDON_SECONDS):
                await self.heartbeat.stop_beating()
                await stop_tasks(self.tasks, timeout=ABANDON_SECONDS)
                self._released()
                await self.systemd.close()
                await self.broker.close()
                await self.stop_server()
        except TimeoutError:
            log.error("shutdown: releasing after the deadline took over %g s; left behind", ABANDON_SECONDS)
        self.journal.close(wait=False)
        self.instance_lock.release()

    async def _release_instance_lock(self) -> None:
        """Last: after it, another process may start this bot (the journal is closed, the venue file final)."""
        await asyncio.to_thread(self.instance_lock.release)
