"""A bot's start-up and restore: what a crash left, the book and a standing loss halt restored, the venue reconciled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from trading_ops.bot.broker import Broker, BrokerEvents, Channel
from trading_ops.bot.control import SOURCE_RISK
from trading_ops.bot.crash_report import CrashReporter
from trading_ops.bot.dead_man_switch import DeadMansSwitch
from trading_ops.bot.drawdown import PeakJournal
from trading_ops.bot.heartbeat import CrashFound, Heartbeat
from trading_ops.bot.journal import Journal
from trading_ops.bot.kill_switch import KillSwitch
from trading_ops.bot.metrics import BotMetrics
from trading_ops.bot.orders import OrderEngine
from trading_ops.bot.ramp_wiring import RampWiring
from trading_ops.bot.reconciliation import Reconciler, Trigger
from trading_ops.bot.recovery_store import RecoveryStore
from trading_ops.bot.risk import HALT_REASON_PREFIXES, RiskEngine
from trading_ops.bot.schedule import ReconciliationSchedule
from trading_ops.bot.state import StateMachine, TradingState
from trading_ops.config import Config, resolve_secret

log = logging.getLogger(__name__)


class Startup:
    """The start's steps before the bot trades, in order: `restore` (detect a crash, a crash loop falls back the ramp,
    what the journal held at the crash kept aside, the book and the equity peak restored, a standing loss-limit halt
    restored, the day's loss and the drawdown known: past a loss limit the bot halts before anything trades),
    `connect` (the venue's events wired, the startup reconciliation, the venue's open orders adopted and the dead
    man's switch armed, all waiting for room in the venue's rate limit), `record_crash` (what the crash left and what
    the reconciliation did), and `crash_reporter` (which sends it)."""

    def __init__(
        self,
        *,
        config: Config,
        heartbeat: Heartbeat,
        journal: Journal,
        recovery_store: RecoveryStore,
        metrics: BotMetrics,
        state: StateMachine,
        order_engine: OrderEngine,
        peak_journal: PeakJournal,
        risk: RiskEngine,
        kill_switch: KillSwitch,
        ramp: RampWiring,
        broker: Broker,
        reconciler: Reconciler,
        schedule: ReconciliationSchedule,
        dead_man: DeadMansSwitch,
    ) -> None:
        self.config = config
        self.heartbeat = heartbeat
        self.journal = journal
        self.recovery_store = recovery_store
        self.metrics = metrics
        self.state = state
        self.order_engine = order_engine
        self.peak_journal = peak_journal
        self.risk = risk
        self.kill_switch = kill_switch
        self.ramp = ramp
        self.broker = broker
        self.reconciler = reconciler
        self.schedule = schedule
        self.dead_man = dead_man
        self.crash: CrashFound | None = None
        # What the journal held at the crash, before the startup reconciliation changes it.
        self._crash_orders: list[dict[str, str]] = []
        self._crash_positions: dict[str, str] = {}

    async def restore(self) -> CrashFound | None:
        """Detect a crash, restore the book and a standing loss-limit halt, know the day's loss and the drawdown (past
        a loss limit: halted). The crash found, if any."""
        self.crash = crash = await self.heartbeat.begin()
        # Before the server's first scrape: the crash count is carried over restarts, never seen jumping from 0.
        self.metrics.crashes(await self.journal.call(self.recovery_store.crashed_runs, self.heartbeat.run_id))
        if crash is not None:  # a crash loop falls back a stage before anything trades
            await self.ramp.after_crash(self.journal, self.recovery_store, self.heartbeat.run_id)
            self._crash_orders = await self._journal_open_orders()
            positions = await self.journal.call(self.journal.positions)
            self._crash_positions = {s: str(p.quantity) for s, p in sorted(positions.items())}
        await self.order_engine.restore_book()
        await self.peak_journal.load(self.risk.wall())
        await self._restore_loss_halt()
        # The day's loss and the drawdown as the journal knows them, before anything may trade: past a loss limit the
        # bot halts here (whatever was saved, cleared or resumed before the restart) and the gate refuses new risk.
        self.order_engine.export_pnl()
        return crash

    async def connect(self) -> None:
        """Connect the venue's events to the parts, then, before the venue ticks on and before the loop may trade,
        make the journal agree with the venue."""
        oe = self.order_engine
        events = BrokerEvents(
            on_order=oe.on_order,
            on_fill=oe.on_fill,
            on_quote=oe.on_quote,
            on_connection=self._on_connection,
            on_venue_error=self.metrics.venue_error,  # what the broker handled itself (retried, resolved, polled)
            on_venue_request=self.metrics.venue_request,
        )
        await self.broker.connect(events)
        # Nothing else runs yet: these wait for room in the venue's rate limit rather than fail (a bot restarted after
        # its host died finds the counter spent by its own reconciliation, and must not exit for want of it).
        async with self.broker.patient():
            await self.schedule.reconcile(Trigger.STARTUP)
            await oe.adopt_open_orders()
            # What the venue holds is known now: from here on, a dead host or a hung loop leaves no order resting.
            await self.dead_man.arm()

    async def _on_connection(self, channel: Channel, connected: bool) -> None:
        self.ramp.watch.connection(channel.value, connected)
        await self.schedule.on_connection(channel, connected)

    async def _restore_loss_halt(self) -> None:
        """A halt for a loss limit (the day's loss, the drawdown) never clears by itself: when it is the last
        journaled state, start halted."""
        last = await self.journal.call(self.recovery_store.last_transition)
        if (
            last
            and last.get("after") == TradingState.HALTED
            and str(last.get("reason", "")).startswith(HALT_REASON_PREFIXES)
        ):
            self.state.apply("halt", reason=str(last["reason"]))
            self.metrics.control_command("halt", SOURCE_RISK)
            self.kill_switch.sweep_after_step = True
            log.error("still halted by the loss limit (%s): clear_halt needs an operator", last["reason"])

    async def _journal_open_orders(self) -> list[dict[str, str]]:
        return [
            {
                "client_order_id": o.client_order_id,
                "symbol": o.symbol,
                "status": o.status,
                "filled": str(o.filled_quantity),
            }
            for o in await self.journal.call(self.journal.open_orders)
        ]

    async def record_crash(self) -> None:
        """Store what the crash left (the journal as it was before the startup reconciliation) and what that
        reconciliation did; the crash reporter sends it through apprise. Nothing without a crash."""
        crash = self.crash
        if crash is None:
            return
        assert self.heartbeat.run_id is not None
        detail: dict[str, Any] = {
            "previous_run": crash.previous.to_dict(),
            "heartbeat_age_seconds": crash.heartbeat_age_seconds,
            "journal_open_orders": self._crash_orders,
            "journal_positions": self._crash_positions,
            "reconciliation": self.reconciler.last,
            "state": self.state.state.value,
        }
        await self.journal.call(
            self.recovery_store.record_event, self.heartbeat.run_id, "crash", crash.previous, detail
        )

    def crash_reporter(self, retry_seconds: float) -> CrashReporter:
        """The reporter of crashes not yet sent (notifications.urls; `retry_seconds` the first retry's delay)."""
        urls = resolve_secret(self.config, self.config.notifications, "urls", "notifications.urls").split()
        return CrashReporter(
            self.journal,
            self.recovery_store,
            urls,
            bot=self.config.bot.name,
            venue=self.config.bot.venue,
            retry_seconds=retry_seconds,
        )


async def start_unless_stopped(start: Coroutine[Any, Any, Any], stop: asyncio.Event, reason: Callable[[], str]) -> None:
    """`start`, unless a stop is asked first: a SIGTERM while the bot starts (its startup reconciliation waiting for
    room in the venue's rate limit, a venue that does not answer) interrupts the start's waits, and the shutdown runs
    at once, every local step included, rather than after the start."""
    started = asyncio.create_task(start, name="start")
    asked = asyncio.create_task(stop.wait(), name="stop-asked")
    try:
        await asyncio.wait({started, asked}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        started.cancel()
        raise
    finally:
        asked.cancel()
    if started.done():
        started.result()  # what the start raised, raised here
        return
    log.warning("start interrupted (%s): shutting down", reason())
    started.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await started
