"""When the bot reconciles: at start until it passes (the safe-start gate), on a schedule, after every reconnect
of the orders channel, after a lost reply, when the journal can be written again and when asked; and what a
passing run unblocks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from trading_ops.bot.broker import Broker, Channel
from trading_ops.bot.gate import OrderGate
from trading_ops.bot.kill_switch import KillSwitch
from trading_ops.bot.metrics import BotMetrics
from trading_ops.bot.orders import OrderEngine
from trading_ops.bot.reconciliation import Reconciler, Result, Trigger
from trading_ops.bot.state import StateMachine, TradingState
from trading_ops.bot.trade_lock import TradeLock
from trading_ops.config import RecoveryConfig

log = logging.getLogger(__name__)

# A startup reconciliation that did not pass is retried after reconcile_retry_seconds, doubling up to this.
MAX_STARTUP_RETRY_SECONDS = 300.0


def startup_retry_delay(failures: int, base: float, cap: float = MAX_STARTUP_RETRY_SECONDS) -> float:
    """Seconds before retrying a startup reconciliation that did not pass `failures` times in a row: `base`,
    doubling with each failure, at most `cap`."""
    return min(cap, base * 2 ** min(failures, 32))


class ReconciliationSchedule:
    """Runs the Reconciler with trading held and opens what a passing run allows: the safe-start gate
    (`gate.trading_allowed`) and, after the orders channel dropped or the journal could not be written, new risk
    again (`gate.reconnect_pending`, `gate.journal_reconcile_pending`)."""

    def __init__(
        self,
        reconciler: Reconciler,
        broker: Broker,
        orders: OrderEngine,
        gate: OrderGate,
        state: StateMachine,
        kill_switch: KillSwitch,
        trade_lock: TradeLock,
        metrics: BotMetrics,
        recovery: RecoveryConfig,
    ) -> None:
        self.reconciler = reconciler
        self.broker = broker
        self.orders = orders
        self.gate = gate
        self.state = state
        self.kill_switch = kill_switch
        self.trade_lock = trade_lock
        self.metrics = metrics
        self.recovery = recovery
        self.startup_failures = 0  # startup reconciliations in a row that did not pass
        self.reconnect_failures = 0  # reconciliations in a row that did not clear gate.reconnect_pending
        self.journal_reconcile_failures = 0  # runs in a row that did not clear gate.journal_reconcile_pending
        self._outages = 0  # drops of the orders channel so far
        self._journal_outages = 0  # times the journal became unwritable so far
        # Called once a reconciliation after the journal's return passed (JournalHealth.settled).
        self.on_journal_settled: Callable[[], None] | None = None
        self._wake = asyncio.Event()  # wakes the task: a run was requested, or its timing changed
        self._requested: Trigger | None = None  # what the run it was woken for is (reconnect, startup retry)
        self._channel_lost: set[Channel] = set()

    async def reconcile(self, trigger: Trigger) -> dict[str, Any]:
        """One reconciliation with trading held: no strategy step runs and venue events wait until it ends. On a
        venue whose rate limit the broker budgets, it first waits (trading not held) for the room its calls need
        (Broker.reconciliation_room), and a call past that room waits for the decay too (Broker.patient: trading
        held meanwhile; a run that needs more than the room it waited for, a day's trade history on Kraken's Starter
        tier, finishes late rather than failing and spending its calls again): it never fails for want of the bot's
        own budget."""
        async with self.broker.reconciliation_room(), self.trade_lock.hold(), self.broker.patient():
            outages = self._outages
            journal_outages = self._journal_outages
            connected = self.broker.is_connected(Channel.ORDERS)
            self.orders.reconciling = True
            try:
                summary = await self.reconciler.run(trigger)
            finally:
                try:
                    await self.orders.apply_deferred()  # in arrival order; what the run adopted counts once
                finally:
                    self.orders.reconciling = False
        passed = summary["result"] in (Result.CLEAN, Result.RESOLVED)
        if self.gate.reconnect_pending:
            if passed and connected and outages == self._outages:
                # Its snapshots were taken with the channel up, after the last drop: the book holds what the venue
                # did meanwhile.
                self.gate.reconnect_pending = False
                self.reconnect_failures = 0
                log.info(
                    "reconciliation %d after the reconnect %s: new risk allowed again",
                    summary["run_id"],
                    summary["result"],
                )
            elif connected:
                self.reconnect_failures += 1
        if self.gate.journal_reconcile_pending:
            if passed and journal_outages == self._journal_outages and self.gate.journal_failing is None:
                # It looked at the venue after the journal stopped, every write it made landed (its own record
                # included) and none failed since it started: the journal holds what the venue did meanwhile.
                self.gate.journal_reconcile_pending = False
                self.journal_reconcile_failures = 0
                if self.on_journal_settled is not None:
                    self.on_journal_settled()
                log.info(
                    "reconciliation %d after the journal came back %s: new risk allowed again",
                    summary["run_id"],
                    summary["result"],
                )
            elif self.gate.journal_failing is None:
                self.journal_reconcile_failures += 1
        if passed:
            self.startup_failures = 0
            if not self.gate.trading_allowed:
                self.gate.trading_allowed = True
                log.info("safe-start gate open: reconciliation %d %s", summary["run_id"], summary["result"])
                self._wake.set()  # the task's timing changes: scheduled runs from now on
        elif not self.gate.trading_allowed:
            self.startup_failures += 1
        return summary

    def request(self, trigger: Trigger) -> None:
        if trigger is Trigger.JOURNAL and self._requested is not None:
            return  # any run that passes from now on serves the journal's return
        if self._requested is not Trigger.RECONNECT:  # a reconnect run also serves as a startup retry
            self._requested = trigger
        self._wake.set()

    def journal_changed(self, reason: str | None) -> None:
        """JournalHealth's listener: no order while the journal cannot be written (`reason`); once it can again
        (None), a reconciliation runs at once, and new risk waits until one passes."""
        self.gate.journal_failing = reason
        if reason is not None:
            self._journal_outages += 1
            self.gate.journal_reconcile_pending = True
            self.journal_reconcile_failures = 0
        elif not self.reconciler.running:  # a run under way (its writes brought the journal back) serves, if it passes
            self.request(Trigger.JOURNAL)

    def lost_reply(self) -> None:
        """A submission's answer was lost: the venue is asked (the run after a reconnect does it if it is down)."""
        if self.broker.is_connected(Channel.ORDERS):
            self.request(Trigger.LOST_REPLY)

    def next_delay(self) -> float | None:
        """Seconds until the task runs by itself (None: only when asked). Scheduled runs once the safe-start gate is
        open; before that, startup retries backing off exponentially, and none while halted (a `reconcile` command,
        a reconnect or `clear_halt` tries again)."""
        rec = self.recovery
        halted = self.state.state is TradingState.HALTED
        if self.gate.trading_allowed:
            interval = rec.reconcile_interval_seconds or None
            if self.gate.reconnect_pending and not halted and self.broker.is_connected(Channel.ORDERS):
                # The run after a reconnect did not pass: new risk waits for one, so retry soon (backing off).
                retry = startup_retry_delay(self.reconnect_failures, rec.reconcile_retry_seconds)
                return retry if interval is None else min(interval, retry)
            if self.gate.journal_reconcile_pending and not halted and self.gate.journal_failing is None:
                # The same after the journal came back.
                retry = startup_retry_delay(self.journal_reconcile_failures, rec.reconcile_retry_seconds)
                return retry if interval is None else min(interval, retry)
            return interval
        if halted:
            return None
        return startup_retry_delay(self.startup_failures, rec.reconcile_retry_seconds)

    def _own_trigger(self) -> Trigger:
        """What a run the task starts on its own timing is: a startup retry until the safe-start gate opens; while
        the reconciliation after a reconnect has not passed (the channel up), that reconciliation again (its retry:
        the run that clears `gate.reconnect_pending` is the reconnect's, in tradingbot_reconciliation_runs_total too,
        and TradingBotReconciliationFailing's minute is for that retry; as `schedule`, a reconnect whose first run
        failed never showed a passed reconnect reconciliation, although new risk was allowed again); else a scheduled
        run."""
        if not self.gate.trading_allowed:
            return Trigger.STARTUP
        if self.gate.reconnect_pending and self.broker.is_connected(Channel.ORDERS):
            return Trigger.RECONNECT
        return Trigger.SCHEDULE

    async def run(self) -> None:
        """The background task."""
        while True:
            delay = self.next_delay()
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
            woken = self._wake.is_set()
            self._wake.clear()
            requested, self._requested = self._requested, None
            if woken and requested is None:
                continue  # only the timing changed
            if requested is not None:
                self.startup_failures = 0  # asked for: the back-off starts over
                trigger = requested
            else:
                trigger = self._own_trigger()
            if trigger is Trigger.SCHEDULE and not self.broker.is_connected(Channel.ORDERS):
                # It could only fail (TradingBotReconciliationFailing for its 15 minutes after a 3-second drop), and
                # the reconnect asks for a run of its own: what happened while the channel was down is read then.
                log.info("scheduled reconciliation skipped: the orders channel is down")
                continue
            if trigger is Trigger.SCHEDULE and self.gate.journal_failing is not None:
                # It could not be stored; the journal's return asks for a run of its own.
                log.info("scheduled reconciliation skipped: the journal cannot be written")
                continue
            try:
                if trigger is Trigger.RECONNECT:
                    await self.kill_switch.after_reconnect()
                await self.reconcile(trigger)
            except Exception:
                log.exception("reconciliation (%s) raised", trigger.value)

    async def on_connection(self, channel: Channel, connected: bool) -> None:
        """The broker's connection events: a drop of the orders channel holds new risk back until a reconciliation
        after the reconnect passes."""
        self.metrics.broker_connection(channel.value, connected)
        if connected and channel is Channel.ORDERS and channel in self._channel_lost:
            self.request(Trigger.RECONNECT)  # what happened while the channel was down
        if connected:
            self._channel_lost.discard(channel)
        else:
            self._channel_lost.add(channel)
            if channel is Channel.ORDERS:
                self._outages += 1
                if self.gate.trading_allowed and not self.gate.reconnect_pending:
                    log.warning("orders channel down: no order that adds risk until a reconciliation after it is back")
                self.gate.reconnect_pending = True
        if not connected:  # the error that dropped it is the broker's to report (raised, or on_venue_error)
            log.warning("broker channel %s disconnected", channel.value)
        else:
            log.info("broker channel %s connected", channel.value)
