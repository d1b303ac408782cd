"""The paper-trading bot: the demo strategy on the simulated venue, instrumented only through the library."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from trading_ops.bot.book import Book
from trading_ops.bot.broker import (
    Broker,
    BrokerError,
    BrokerEvents,
    Channel,
    OrderRequest,
    OrderStatus,
    OrderType,
    Quote,
    Side,
    VenueFill,
    VenueOrder,
    order_key,
)
from trading_ops.bot.control import CommandError
from trading_ops.bot.crash_report import RETRY_SECONDS, CrashReporter
from trading_ops.bot.heartbeat import CrashFound, Heartbeat
from trading_ops.bot.instance_lock import InstanceLock
from trading_ops.bot.instrumentation import Instrumentation
from trading_ops.bot.journal import Journal, OrderUpdate
from trading_ops.bot.reconciliation import (
    ADJUSTMENT_LIQUIDITY,
    Reconciler,
    Result,
    Trigger,
    balance_changes,
    split_symbol,
)
from trading_ops.bot.reconciliation_metrics import ReconciliationMetrics
from trading_ops.bot.recovery_store import RecoveryStore
from trading_ops.bot.sdnotify import SystemdNotifier
from trading_ops.bot.shutdown import ShutdownDeadlineExceeded, ShutdownSequence, exit_now
from trading_ops.bot.state import TradingState
from trading_ops.config import Config, ConfigError, resolve_secret
from trading_ops.db.base import make_engine, utcnow
from trading_ops.paper.strategy import DemoStrategy
from trading_ops.paper.venue import PaperVenue
from trading_ops.tasks import stop_tasks

log = logging.getLogger(__name__)

VENUE_STATE_FILE = "paper-venue.json"
CENT = Decimal("0.01")
EXIT_FORCED = 1
EXTERNAL_STRATEGY = "external"  # strategy recorded for orders adopted from the venue
# The paper venue drains its events exactly before each snapshot (Broker.drain_events), so the confirmation
# snapshot of a reconciliation needs only a moment; a real venue's stream needs the engine's default.
CONFIRM_DELAY_SECONDS = 0.05
# Rounds of "drain the venue, journal what was held back" before a reconciliation snapshot.
SETTLE_ROUNDS = 5
# A startup reconciliation that did not pass is retried after reconcile_retry_seconds, doubling up to this.
MAX_STARTUP_RETRY_SECONDS = 300.0
# Past the shutdown deadline plus this, a thread ends the process even if the event loop is blocked.
FORCED_EXIT_GRACE_SECONDS = 2.0
# After a missed shutdown deadline (in-process, no forced exit): how long releasing what can be released may take.
ABANDON_SECONDS = 1.0
# Cancels the venue refused (rate limit) are retried this often, for up to KILL_SWITCH_CANCEL_SECONDS on a halt and
# half the shutdown deadline at shutdown.
CANCEL_RETRY_SECONDS = 0.1
KILL_SWITCH_CANCEL_SECONDS = 2.0
# A pause, reduce_only, flatten or halt waits this long for the strategy step in progress (it may be sending an
# order) before it answers; a step stuck longer (a hung journal) is refused at the order gate when it gets going
# again, and a halt sweeps the venue once more right after that step.
STEP_WAIT_SECONDS = 2.0
# Commands after which fewer orders may go out than before: they wait for the step in progress.
RESTRICTING_COMMANDS = ("pause", "reduce_only", "flatten", "halt")
# Why the bot itself kept an order from the venue (the `reason` of tradingbot_orders_refused_total).
REFUSED_SHUTTING_DOWN = "shutting_down"
REFUSED_STARTUP = "startup_reconciliation"
REFUSED_STATE = "trading_state"
REFUSED_RECONNECT = "reconnect_reconciliation"
REFUSED_STALE = "stale_market_data"


def make_venue(config: Config, autosave_path: Path | None = None) -> PaperVenue:
    p = config.paper
    return PaperVenue(
        list(p.symbols),
        quote_asset=p.quote_asset,
        starting_balance=Decimal(str(p.starting_balance)),
        seed=p.seed or secrets.randbits(32),
        volatility=p.volatility,
        order_latency=p.order_latency_seconds,
        reject_probability=p.reject_probability,
        partial_fill_probability=p.partial_fill_probability,
        maker_fee=Decimal(str(p.maker_fee_rate)),
        taker_fee=Decimal(str(p.taker_fee_rate)),
        tick_interval=p.tick_interval_seconds,
        venue=config.bot.venue,
        autosave_path=autosave_path,
    )


def control_token(config: Config) -> str:
    """The bearer token of the bot's control API; ConfigError when none is configured."""
    token = resolve_secret(config, config.bot, "control_token", "bot.control_token")
    if not token:
        raise ConfigError("bot.control_token", "no token: set control_token_file or TRADING_OPS_CONTROL_TOKEN")
    return token


def startup_retry_delay(failures: int, base: float, cap: float = MAX_STARTUP_RETRY_SECONDS) -> float:
    """Seconds before retrying a startup reconciliation that did not pass `failures` times in a row: `base`,
    doubling with each failure, at most `cap`."""
    return min(cap, base * 2 ** min(failures, 32))


class PaperBot:
    """Runs the demo strategy against a broker, journals every event and exports it through the library."""

    def __init__(
        self,
        config: Config,
        *,
        token: str | None = None,
        venue: PaperVenue | None = None,
        registry: CollectorRegistry | None = None,
        engine: Any = None,
        chaos: bool = False,
    ) -> None:
        self.config = config
        bot = config.bot
        token = token if token is not None else control_token(config)
        if not token:
            raise ConfigError("bot.control_token", "the control API needs a non-empty token")
        self.data_dir = config.path(bot.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.venue_state_path = self.data_dir / f"{bot.name}-{VENUE_STATE_FILE}"
        self.engine = (
            engine
            if engine is not None
            else make_engine(config.database_url(), sqlite_synchronous=config.database.sqlite_synchronous)
        )
        # One process per bot, before anything reads or writes its state (the venue file, the journal): raises
        # AnotherInstanceRunning naming the holder. Held until the shutdown's last step (or the process's end).
        self.instance_lock = InstanceLock(self.data_dir, bot.name, self.engine)
        try:
            self.instance_lock.acquire()
        except BaseException:
            if engine is None:
                self.engine.dispose()
            raise
        try:
            self._set_up(config, token, venue, registry, chaos)
        except BaseException:
            self.instance_lock.release()
            raise

    def _set_up(
        self, config: Config, token: str, venue: PaperVenue | None, registry: CollectorRegistry | None, chaos: bool
    ) -> None:
        bot = config.bot
        self.inst = Instrumentation(
            venue=bot.venue,
            token=token,
            strategy=bot.strategy,
            registry=registry,
            data_dir=self.data_dir,
            cardinality_limit=bot.cardinality_limit,
            heartbeat_timeout=bot.heartbeat_timeout_seconds,
            memory_limit=bot.memory_limit_bytes,
            lag_interval=bot.event_loop_lag_interval_seconds,
            daily_loss_limit=config.paper.daily_loss_limit,
            # The paper bot is a whole process of its own, so it may tune process-wide settings: a 0.5 ms GIL
            # switch interval keeps a scrape from stalling the event loop, and no `_created` series.
            tune_switch_interval=True,
            disable_created_series=True,
        )
        self.metrics = self.inst.metrics
        self.broker: PaperVenue = venue if venue is not None else self._load_or_make_venue()
        self.journal = Journal(self.engine, bot.name, bot.venue)
        self.book = Book()
        self.strategy = DemoStrategy(config.paper, seed=config.paper.seed or None)
        rec = config.recovery
        self.recovery_store = RecoveryStore(self.engine, bot.name, bot.venue)
        self.heartbeat = Heartbeat(
            self.journal,
            self.recovery_store,
            interval=rec.heartbeat_interval_seconds,
            crash_timeout=rec.crash_timeout_seconds,
            progressing=self.loop_progressing,
            registry=self.inst.registry,
            venue=bot.venue,
        )
        self.reconciler = Reconciler(
            self.broker,
            self.journal,
            self.recovery_store,
            ReconciliationMetrics(self.metrics, started_at=time.time()),
            self,
            policies=rec.policies,
            fills_lookback_seconds=rec.fills_lookback_seconds,
            confirm_delay_seconds=CONFIRM_DELAY_SECONDS,
            split=self._split_symbol,
        )
        self.systemd = SystemdNotifier()
        self.crash: CrashFound | None = None
        self.crash_report_retry_seconds = RETRY_SECONDS  # first retry of an unsent crash report; doubles from there
        self.crash_reporter: CrashReporter | None = None
        self.trading_allowed = False  # the safe-start gate: opened by the first clean or resolved reconciliation
        self.startup_failures = 0  # startup reconciliations in a row that did not pass
        self.cancel_pending = False  # the kill switch could not cancel (venue unreachable): cancel after reconnect
        # The orders channel dropped: fills may have been missed, so the book may be stale. No order that can add
        # risk goes out until a reconciliation that started after the reconnect passes.
        self.reconnect_reconciliation_pending = False
        self._outages = 0  # drops of the orders channel so far
        self.reconnect_failures = 0  # reconciliations in a row that did not clear reconnect_reconciliation_pending
        self._accepting = True  # False once shutting down: no new orders
        self._reconciling = False
        self._deferred: list[VenueFill | VenueOrder] = []  # venue events that arrived during a reconciliation
        self._trade_lock = asyncio.Lock()  # held by a strategy step, a reconciliation and a restricting command
        self._trade_owner: asyncio.Task[Any] | None = None  # the task holding it (re-entry: a halt in a run)
        self._sweep_after_step = False  # a halt could not wait for the step in progress: sweep again after it
        self._fill_lock = asyncio.Lock()  # one fill at a time between the book and its journal write
        self._wake = asyncio.Event()  # wakes the reconciliation task: a run was requested, or its timing changed
        self._requested: Trigger | None = None  # what the run it was woken for is (reconnect, startup retry)
        self._channel_lost: set[Channel] = set()
        self._stop_reason = "stop"
        self._stopped = False
        self.orders: dict[str, VenueOrder] = {}  # working orders by key (the client order id, if they have one)
        self.order_sent_at: dict[str, float] = {}  # sent and not known closed: in flight until acknowledged
        self.external_orders: set[str] = set()  # keys of working orders adopted from the venue (placed by hand)
        self._filled_seen: dict[str, Decimal] = {}  # quantity of the fills seen per working order (see _apply_fill)
        self.quotes: dict[str, Quote] = {}
        self._ids = itertools.count(1)
        self._id_prefix = f"{bot.name[:16]}-{int(time.time() * 1000):x}"
        self._stop = asyncio.Event()
        self._hang_until = 0.0
        self._tasks: list[asyncio.Task[Any]] = []
        self.chaos = None
        self._register_commands()
        self._register_readiness()
        if chaos:
            from trading_ops.paper.chaos import Chaos

            self.chaos = Chaos(self)

    # -- set-up ---------------------------------------------------------------------------------------
    def _load_or_make_venue(self) -> PaperVenue:
        """The venue outlives the bot (as a real one does): reload its state and let it catch up on the time
        the bot was away, filling resting orders that crossed meanwhile."""
        venue = make_venue(self.config, autosave_path=self.venue_state_path)
        if self.venue_state_path.exists():
            saved_at = venue.load_state(self.venue_state_path)
            away = max(0.0, (datetime.now(UTC) - saved_at).total_seconds())
            fills = venue.advance(away)
            log.info(
                "paper venue state loaded from %s; %.1f s caught up, %d fills meanwhile",
                self.venue_state_path,
                away,
                len(fills),
            )
        return venue

    def _register_commands(self) -> None:
        c = self.inst.control
        c.register("cancel_all", self._cmd_cancel_all)
        c.register("reconnect", self._cmd_reconnect)
        c.register("resubscribe", self._cmd_resubscribe)
        c.register("reconcile", self._cmd_reconcile)
        c.on_transition(self._on_transition)
        c.add_status(self._status)

    def _register_readiness(self) -> None:
        def broker() -> tuple[bool, str]:
            down = [ch.value for ch in Channel if not self.broker.is_connected(ch)]
            return (not down, "connected" if not down else "down: " + ", ".join(down))

        def market_data() -> tuple[bool, str]:
            stale_symbols = [s for s in self.config.paper.symbols if self.market_data_stale(s)]
            return (not stale_symbols, "fresh" if not stale_symbols else "stale: " + ", ".join(stale_symbols))

        def reconciliation() -> tuple[bool, str]:
            last = self.reconciler.last
            if last is None:
                return False, "not run yet"
            if not self.trading_allowed:
                return False, f"startup reconciliation not passed: {last['result']}"
            if self.reconnect_reconciliation_pending:
                return False, f"no reconciliation passed since the orders channel reconnected (last: {last['result']})"
            if last["result"] in (Result.FAILED, Result.HALTED):
                return False, f"last run {last['run_id']} {last['result']}"
            return True, f"run {last['run_id']} {last['result']} at {last['finished_at']}"

        self.inst.add_readiness_check("broker", broker)
        self.inst.add_readiness_check("market_data", market_data)
        self.inst.add_readiness_check("reconciliation", reconciliation)

    def next_client_order_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    def market_data_stale(self, symbol: str) -> bool:
        age = self.metrics.market_data_age(symbol)
        return age is None or age > self.config.bot.market_data_stale_seconds

    # -- running --------------------------------------------------------------------------------------
    async def run(
        self, host: str | None = None, port: int | None = None, install_signals: bool = True, force_exit: bool = False
    ) -> None:
        """Trade until SIGTERM/SIGINT (or request_stop), then shut down gracefully within the deadline.

        With `force_exit` (the CLI) a shutdown past its deadline ends the process with exit status 1, even when a
        step is stuck in a thread (a hung database write) or blocks the event loop.
        """
        listen = self.config.bot.listen
        loop = asyncio.get_running_loop()
        if install_signals:  # before start: a signal while starting still shuts down gracefully
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop, sig.name)
        try:
            await self.start(host or listen.host, listen.port if port is None else port)
            await self._stop.wait()
        finally:
            try:
                await self.shutdown(self._stop_reason, force_exit=force_exit)
            except ShutdownDeadlineExceeded:
                if not force_exit:
                    raise
                exit_now(EXIT_FORCED)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Detect a crash, restore the book, reconcile (the safe-start gate), then trade."""
        self.crash = await self.heartbeat.begin()
        crash_orders: list[dict[str, str]] = []
        crash_positions: dict[str, str] = {}
        if self.crash is not None:  # what the journal held at the crash, before reconciliation changes it
            crash_orders = await self._journal_open_orders()
            positions = await self.journal.call(self.journal.positions)
            crash_positions = {s: str(p.quantity) for s, p in sorted(positions.items())}
        await self._restore_book()
        bound = await self.inst.start(host, port)
        events = BrokerEvents(
            on_order=self._on_order, on_fill=self._on_fill, on_quote=self._on_quote, on_connection=self._on_connection
        )
        await self.broker.connect(events)
        # Before the venue ticks on and before the loop may trade: the journal must agree with the venue.
        await self.reconcile(Trigger.STARTUP)
        await self._adopt_open_orders()
        if self.crash is not None:
            await self._record_crash(self.crash, crash_orders, crash_positions)
        urls = resolve_secret(self.config, self.config.notifications, "urls", "notifications.urls").split()
        self.crash_reporter = CrashReporter(
            self.journal,
            self.recovery_store,
            urls,
            bot=self.config.bot.name,
            venue=self.config.bot.venue,
            retry_seconds=self.crash_report_retry_seconds,
        )
        self._tasks.append(asyncio.create_task(self.crash_reporter.run(), name="crash-report"))
        self._tasks.append(asyncio.create_task(self.broker.run(self.config.paper.tick_interval_seconds), name="venue"))
        self._tasks.append(asyncio.create_task(self._trading_loop(), name="trading-loop"))
        self._tasks.append(asyncio.create_task(self._reconcile_on_schedule(), name="reconciliation"))
        self.heartbeat.start()
        self.systemd.start_watchdog(self.loop_progressing)
        self.systemd.ready(f"trading {', '.join(self.config.paper.symbols)} on {self.config.bot.venue}")
        log.info(
            "paper bot %s trading %s on %s",
            self.config.bot.name,
            ", ".join(self.config.paper.symbols),
            self.config.bot.venue,
        )
        return bound

    def request_stop(self, reason: str = "stop") -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            log.warning("shutdown requested (%s)", reason)
        self._stop.set()

    def loop_progressing(self) -> bool:
        """The trading loop completed an iteration within the heartbeat timeout (what /healthz checks)."""
        age = self.metrics.heartbeat_age()
        return age is not None and age <= self.config.bot.heartbeat_timeout_seconds

    async def stop(self) -> None:
        await self.shutdown("stop")

    async def shutdown(self, reason: str = "stop", *, force_exit: bool = False) -> None:
        """Stop new orders, cancel or keep open orders by policy, disconnect, flush the journal, write the final
        heartbeat, then release everything: all of it within `recovery.shutdown_deadline_seconds`.

        The final heartbeat carries the clean-shutdown marker only when stopping the orders, the open-orders policy
        and the flush succeeded; otherwise it records which failed, and the next start treats the run as a crash.
        Raises ShutdownDeadlineExceeded (after releasing what can be released quickly) when the deadline passes;
        with `force_exit`, a thread also ends the process shortly after the deadline whatever the loop is doing.
        """
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        self.systemd.stopping(f"shutting down ({reason})")
        rec = self.config.recovery
        policy = rec.open_orders_on_shutdown
        orders_step = f"open orders: {policy}"
        needed_for_clean = ("stop new orders", orders_step, "flush the journal")
        sequence = ShutdownSequence([], rec.shutdown_deadline_seconds)

        async def final_heartbeat() -> None:
            failed = [name for name in needed_for_clean if name in sequence.failed]
            if failed:
                log.error(
                    "shutdown: no clean-shutdown marker, %s failed: the next start treats this run as a crash",
                    ", ".join(failed),
                )
            why = f"{reason}; failed: {', '.join(failed)}" if failed else reason
            await self.heartbeat.stop(clean=not failed, reason=why)

        sequence.steps = [
            ("stop new orders", self._stop_trading),
            (orders_step, self._cancel_open_orders if policy == "cancel" else self._keep_open_orders),
            ("disconnect from the venue", self._disconnect),
            ("flush the journal", lambda: self.journal.call(self.journal.flush)),
            ("final heartbeat with the clean-shutdown marker", final_heartbeat),
            ("stop background tasks", self._stop_background),
            ("stop the HTTP server", self.inst.stop),
            ("close the journal", lambda: asyncio.to_thread(self.journal.close)),
            ("release the single-instance lock", self._release_instance_lock),
        ]
        if force_exit:
            sequence.arm_forced_exit(FORCED_EXIT_GRACE_SECONDS, EXIT_FORCED)
        try:
            failed = await sequence.run()
        except ShutdownDeadlineExceeded:
            if not force_exit:
                await self._abandon()
            raise
        log.info(
            "paper bot %s stopped (%s)%s",
            self.config.bot.name,
            reason,
            f"; failed steps: {', '.join(failed)}" if failed else "",
        )

    async def _stop_trading(self) -> None:
        self._accepting = False
        async with self._holding_trade_lock():  # the step in progress finishes; none starts after it
            for task in self._tasks:
                if task.get_name() in ("trading-loop", "reconciliation"):
                    task.cancel()

    async def _cancel_open_orders(self) -> None:
        """Every working order of the bot, adopted ones included; raises when some are left working."""
        canceled, left = await self.cancel_everything(self.config.recovery.shutdown_deadline_seconds / 2)
        if left:
            raise RuntimeError(f"{len(left)} open orders could not be canceled: {', '.join(left[:5])}")
        log.info("shutdown: %d open orders canceled", canceled)

    async def _keep_open_orders(self) -> None:
        log.info("shutdown: %d open orders kept on the venue (reconciled at the next start)", len(self.orders))

    async def _disconnect(self) -> None:
        """Let the venue hand over what it already produced, then close it: no event after the flush."""
        await self.broker.drain_events()
        await self.broker.close()
        await stop_tasks([t for t in self._tasks if t.get_name() == "venue"])

    async def _stop_background(self) -> None:
        await stop_tasks(self._tasks)
        self._tasks.clear()
        if self.chaos is not None:
            self.chaos.clear()
        await self.systemd.close()

    async def _abandon(self) -> None:
        """The deadline passed (in-process): release what can be released without waiting on what is stuck."""
        try:
            async with asyncio.timeout(ABANDON_SECONDS):
                await self.heartbeat.stop_beating()
                await stop_tasks(self._tasks, timeout=ABANDON_SECONDS)
                if self.chaos is not None:
                    self.chaos.clear()
                await self.systemd.close()
                await self.broker.close()
                await self.inst.stop()
        except TimeoutError:
            log.error("shutdown: releasing after the deadline took over %g s; left behind", ABANDON_SECONDS)
        self.journal.close(wait=False)
        self.instance_lock.release()

    async def _release_instance_lock(self) -> None:
        """Last: after it, another process may start this bot (the journal is closed, the venue file final)."""
        await asyncio.to_thread(self.instance_lock.release)

    async def _restore_book(self) -> None:
        """Take positions and today's realized P&L from the journal, so a restart continues where the bot stopped:
        the positions table (written with every fill) and the last day's fills, never the whole history."""
        state = await self.journal.call(self.journal.book_state)
        if state.realized_on_day is None:  # fills journaled before their realized P&L was: computed once, here
            symbols = await self.journal.call(self.journal.rebuild_positions, None)
            log.warning("realized P&L of the journaled fills computed from their history (%s)", ", ".join(symbols))
            state = await self.journal.call(self.journal.book_state)
        self.book.restore(state.holdings, state.day, state.realized_on_day or Decimal(0))
        for symbol in self.config.paper.symbols:
            self.metrics.position(symbol, float(self.book.position(symbol)), float(self.book.notional(symbol)))

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

    async def _record_crash(
        self, crash: CrashFound, open_orders: list[dict[str, str]], positions: dict[str, str]
    ) -> None:
        """Store what the crash left (the journal as it was before the startup reconciliation) and what that
        reconciliation did; the crash reporter sends it through apprise."""
        assert self.heartbeat.run_id is not None
        detail: dict[str, Any] = {
            "previous_run": crash.previous.to_dict(),
            "heartbeat_age_seconds": crash.heartbeat_age_seconds,
            "journal_open_orders": open_orders,
            "journal_positions": positions,
            "reconciliation": self.reconciler.last,
            "state": self.inst.state.state.value,
        }
        await self.journal.call(
            self.recovery_store.record_event, self.heartbeat.run_id, "crash", crash.previous, detail
        )

    async def _adopt_open_orders(self) -> None:
        """Journaled orders the venue still works are this bot's again (their ages restart now)."""
        venue_open = {o.key: o for o in await self.broker.open_orders()}
        for order in await self.journal.call(self.journal.open_orders):
            key = order.client_order_id
            if key in venue_open:
                self.orders[key] = venue_open[key]
                self.order_sent_at[key] = time.monotonic()
                if order.strategy == EXTERNAL_STRATEGY:
                    self.external_orders.add(key)

    async def _trading_loop(self) -> None:
        interval = self.config.paper.loop_interval_seconds
        while not self._stop.is_set():
            while time.monotonic() < self._hang_until:  # chaos: a hung loop makes no progress
                await asyncio.sleep(min(0.1, self._hang_until - time.monotonic()))
            started = time.monotonic()
            try:
                async with self._holding_trade_lock():
                    if self.trading_allowed and self._accepting:
                        await self.strategy.step(self)
                    await self._after_step()
            except Exception:
                log.exception("trading loop iteration failed")
            self.metrics.loop_iteration(time.monotonic() - started)
            await asyncio.sleep(interval)

    async def _after_step(self) -> None:
        if self._sweep_after_step and self.inst.state.state is TradingState.HALTED:
            # A halt came in while this step was stuck: whatever the step sent before the gate closed goes now.
            self._sweep_after_step = False
            canceled = await self._cancel_for_kill_switch(raise_unreachable=False)
            log.warning("kill switch: %d open orders canceled after the step in progress ended", canceled)
        self.metrics.rate_limit_headroom(self.broker.rate_limit_headroom())
        if self.broker.is_connected(Channel.ORDERS):
            skew = (datetime.now(UTC) - await self.broker.server_time()).total_seconds()
            self.metrics.clock_skew(skew)
        self._export_pnl()
        if (
            self.inst.state.state is TradingState.FLATTENING
            and not any(self.book.position(s) for s in self.config.paper.symbols)
            and not self.orders
        ):
            self.inst.state.apply("flatten_done", reason="all positions closed")

    def hang(self, seconds: float) -> None:
        self._hang_until = time.monotonic() + seconds

    # -- orders ---------------------------------------------------------------------------------------
    def order_refusal(self, symbol: str, reduce_only: bool) -> str | None:
        """Why an order may not go out now, or None: the last gate before the venue.

        Nothing goes out while shutting down or before a startup reconciliation passed (the journal may not know
        what the bot holds). The trading state decides next (`TradingState.may_submit`: nothing while paused or
        halted, only reduce-only orders while reduce_only or flattening). An order that can add risk also needs a
        book the bot can trust (after the orders channel dropped, the reconciliation that follows the reconnect
        must pass first: fills may have been missed meanwhile) and fresh market data for its symbol. A reduce-only
        order needs neither (the venue lets it only shrink a position, and flattening during a market-data outage
        is exactly what an operator may need).
        """
        refusal = self._refusal(symbol, reduce_only)
        return None if refusal is None else refusal[1]

    def _refusal(self, symbol: str, reduce_only: bool) -> tuple[str, str] | None:
        """(reason label, message) of order_refusal."""
        if not self._accepting:
            return REFUSED_SHUTTING_DOWN, "shutting down"
        if not self.trading_allowed:
            return REFUSED_STARTUP, "the startup reconciliation has not passed"
        state_refusal = self.inst.state.order_refusal(reduce_only)
        if state_refusal is not None:
            return REFUSED_STATE, state_refusal
        if reduce_only:
            return None
        if self.reconnect_reconciliation_pending:
            return REFUSED_RECONNECT, "the reconciliation after the orders channel reconnected has not passed"
        if self.market_data_stale(symbol):
            return REFUSED_STALE, f"market data for {symbol} is stale"
        return None

    def _refuse(self, symbol: str, refusal: tuple[str, str]) -> None:
        self.metrics.order_refused(symbol, refusal[0])
        log.log(logging.INFO if self._stopped else logging.WARNING, "order for %s refused: %s", symbol, refusal[1])

    async def submit(
        self,
        symbol: str,
        side: Side,
        order_type: OrderType,
        quantity: Decimal,
        price: Decimal | None = None,
        reduce_only: bool = False,
    ) -> VenueOrder | None:
        """Journal and send an order; None when it was refused (`order_refusal`), the venue did not take it, or its
        answer was lost (the order is then tracked as in flight until reconciliation says what became of it)."""
        refusal = self._refusal(symbol, reduce_only)
        if refusal is not None:
            self._refuse(symbol, refusal)
            return None
        request = OrderRequest(
            client_order_id=self.next_client_order_id(),
            symbol=symbol,
            side=side,
            order_type=order_type,
            quantity=quantity,
            price=price,
            reduce_only=reduce_only,
        )
        await self.journal.call(self.journal.order_submitted, request, self.config.bot.strategy)
        # The gate again, after the last await before sending: a halt or pause may have come in meanwhile.
        refusal = self._refusal(symbol, reduce_only)
        if refusal is not None:
            await self.journal.call(self.journal.order_failed, request.client_order_id, f"refused: {refusal[0]}")
            self._refuse(symbol, refusal)
            return None
        self.order_sent_at[request.client_order_id] = time.monotonic()
        self.metrics.order_submitted(symbol, side.value, order_type.value, request.client_order_id)
        try:
            return await self.broker.submit(request)
        except BrokerError as exc:
            self.metrics.venue_error(exc.error_class)
            if exc.outcome_unknown:
                self._outcome_unknown(request, f"{exc.error_class}: {exc}")
                return None
            self.metrics.order_rejected(symbol, exc.error_class, request.client_order_id)
            self.order_sent_at.pop(request.client_order_id, None)
            await self.journal.call(self.journal.order_failed, request.client_order_id, exc.error_class)
            log.info("order %s not placed: %s (%s)", request.client_order_id, exc, exc.error_class)
            return None
        except Exception as exc:  # our own event handling failed while the venue took the order (a journal write)
            log.exception("order %s: handling the venue's answer failed", request.client_order_id)
            self._outcome_unknown(request, f"{type(exc).__name__}: {exc}")
            return None
        except BaseException:  # cancelled while the request was out: it may have reached the venue
            self._outcome_unknown(request, "cancelled while in flight")
            raise

    def _outcome_unknown(self, request: OrderRequest, why: str) -> None:
        """A submission that may have reached the venue: its journal row stays open (new), the bot keeps tracking
        it (its symbol counts as working, cancel_all and the kill switch cancel it) and asks for a reconciliation,
        which adopts the venue's view of it or closes it as vanished."""
        key = request.client_order_id
        self.metrics.order_outcome_unknown(request.symbol)
        log.warning("order %s: outcome unknown (%s); tracked until reconciliation settles it", key, why)
        if key not in self.order_sent_at:
            return  # an event closed it meanwhile: nothing is unknown any more
        if key not in self.orders:
            self.orders[key] = VenueOrder(
                client_order_id=key,
                venue_order_id="",
                symbol=request.symbol,
                side=request.side,
                order_type=request.order_type,
                quantity=request.quantity,
                price=request.price,
                filled_quantity=Decimal(0),
                status=OrderStatus.NEW,
            )
        if self.broker.is_connected(Channel.ORDERS):
            self._request_reconciliation(Trigger.LOST_REPLY)
        # Otherwise the reconciliation after the reconnect settles it.

    async def cancel(self, key: str, order: VenueOrder | None = None) -> bool:
        """Cancel a working order by its key (by venue order id for one placed without a client order id); `order`
        is the venue's view of one the bot does not track (yet)."""
        answer = await self._cancel_at_venue(key, order)
        if answer is None:
            return False
        # The answer is the venue's word on the order: it counts even when no event follows (a venue may send
        # none for an order placed by hand); when the event came first, it changes nothing.
        await self._apply_order(answer)
        return True

    async def _cancel_at_venue(self, key: str, order: VenueOrder | None = None) -> VenueOrder | None:
        order = self.orders.get(key) or order
        try:
            if order is not None and not order.client_order_id:
                return await self.broker.cancel(venue_order_id=order.venue_order_id)
            return await self.broker.cancel(key)
        except BrokerError as exc:
            self.metrics.venue_error(exc.error_class)
            log.info("cancel %s failed: %s", key, exc)
            return None

    def _placed_by_this_run(self, key: str) -> bool:
        """Tracked, in flight (sent, its answer not applied yet) or carrying this run's client order id prefix."""
        return key in self.orders or key in self.order_sent_at or key.startswith(f"{self._id_prefix}-")

    async def own_open_orders(self) -> list[VenueOrder]:
        """The venue's open orders that are this bot's: those this run placed (tracked, in flight, or answered by
        nothing), adopted ones, and any the journal holds as the bot's (a previous run's, kept at its shutdown or
        placed just before a crash). Orders placed by hand and never adopted are not: reconciliation's
        unknown_order policy decides about those. Raises BrokerError when the venue cannot be reached."""
        listed = await self.broker.open_orders()
        mine = [o for o in listed if self._placed_by_this_run(o.key)]
        others = [o for o in listed if not self._placed_by_this_run(o.key)]
        if others:
            rows = await self.journal.call(self.journal.orders_by_client_id, [o.key for o in others])
            journaled = {row.client_order_id for row in rows}
            mine.extend(o for o in others if o.key in journaled)
        return mine

    async def cancel_all(self) -> int:
        """Cancel every open order of the bot on the venue once (`own_open_orders`: in flight and journaled ones
        too, not only those it tracks); raises BrokerError when the venue cannot be reached. A cancel the venue
        refuses (rate limit) is logged and left. The cancels go out first, their answers are journaled after."""
        answers = [await self._cancel_at_venue(o.key, o) for o in await self.own_open_orders()]
        for answer in answers:
            if answer is not None:
                await self._apply_order(answer)
        return sum(answer is not None for answer in answers)

    async def cancel_everything(self, budget: float) -> tuple[int, list[str]]:
        """cancel_all, then look at the venue again: while it still lists some of the bot's orders open (refused
        cancels, an order that landed meanwhile), cancel again every CANCEL_RETRY_SECONDS for up to `budget`
        seconds; returns (canceled, keys still open). Raises BrokerError when unreachable."""
        deadline = time.monotonic() + budget
        canceled = await self.cancel_all()
        while True:
            left = sorted(o.key for o in await self.own_open_orders())
            if not left or time.monotonic() >= deadline:
                return canceled, left
            await asyncio.sleep(CANCEL_RETRY_SECONDS)
            canceled += await self.cancel_all()

    # -- venue events ---------------------------------------------------------------------------------
    async def _on_order(self, order: VenueOrder) -> None:
        if self._reconciling:
            self._deferred.append(order)
            return
        await self._apply_order(order)

    async def _apply_order(self, order: VenueOrder) -> None:
        key = order.key
        # The journal decides whether the update is news: one it already holds (the event and the request's answer
        # both tell it) or one older than what it holds (events arrive out of order; reconciliation may have
        # adopted a later state) changes nothing, here either.
        outcome = await self.journal.call(self.journal.order_update, order)
        if outcome is OrderUpdate.UNKNOWN:
            log.warning("order update for an order this bot did not place: %s", key)
            return
        if outcome is not OrderUpdate.APPLIED or (key not in self.orders and key not in self.order_sent_at):
            return
        m = self.metrics
        if order.status is OrderStatus.REJECTED:
            m.order_rejected(order.symbol, order.reject_reason or "unknown", key)
        elif order.status is OrderStatus.CANCELED:
            m.order_canceled(order.symbol, key)
        elif order.status is OrderStatus.ACKNOWLEDGED and (
            key not in self.orders or not self.orders[key].venue_order_id
        ):
            m.order_acknowledged(order.symbol, order.side.value, order.order_type.value, key)
        if order.status.is_open:
            # The venue's view, with the largest filled quantity known (a fill may have been seen before it).
            order.filled_quantity = max(order.filled_quantity, self._filled_seen.get(key, Decimal(0)))
            self.orders[key] = order
        else:
            self._forget(key)

    def _forget(self, key: str) -> None:
        """The order is closed: no longer working, in flight or adopted."""
        self.orders.pop(key, None)
        self.order_sent_at.pop(key, None)
        self.external_orders.discard(key)
        self._filled_seen.pop(key, None)

    async def _on_fill(self, fill: VenueFill) -> None:
        if self._reconciling:
            self._deferred.append(fill)
            return
        await self._apply_fill(fill)

    async def _apply_fill(self, fill: VenueFill, adjustment: bool = False) -> bool:
        """Book and journal a fill (with its position, balance changes and realized P&L, in one transaction) and
        export it; False when its trade id is already journaled (a fill delivered twice counts once).

        One fill at a time: the book changes, the journal write, and the book is put back as it was when the write
        fails (a duplicate, or a database error: then the fill is in neither, and reconciliation adopts it once).
        """
        async with self._fill_lock:
            checkpoint = self.book.checkpoint(fill.symbol)
            realized = self.book.apply_fill(
                fill.symbol, fill.side.sign * fill.quantity, fill.price, fill.fee, fill.executed_at
            )
            h = self.book.holding(fill.symbol)
            changes = None if adjustment else balance_changes(fill, self._split_symbol)
            try:
                stored = await self.journal.call(
                    self.journal.fill, fill, (h.quantity, h.average_price, h.realized_pnl), changes, realized
                )
            except BaseException:
                self.book.rollback(checkpoint)
                raise
            if not stored:  # the same trade id twice: undo, count nothing
                self.book.rollback(checkpoint)
                return False
        if adjustment:
            self._export_pnl()
            return True
        key = order_key(fill.client_order_id, fill.venue_order_id)
        order = self.orders.get(key)
        done = False
        if order is not None or key in self.order_sent_at:
            self._filled_seen[key] = self._filled_seen.get(key, Decimal(0)) + fill.quantity
        if order is not None:
            # Fills add up; an order update carries the venue's cumulative quantity, and may come before the fill
            # it reports: the larger of the two is what is known to be filled, never their sum.
            order.filled_quantity = max(order.filled_quantity, self._filled_seen[key])
            done = order.filled_quantity >= order.quantity
            if done:
                self._forget(key)
        self.metrics.order_filled(
            fill.symbol,
            fill.side.value,
            float(fill.quantity),
            float(fill.price),
            float(fill.fee),
            fill.liquidity,
            order_type=order.order_type.value if order else "limit",
            client_order_id=fill.client_order_id,
            order_done=done or order is None,
        )
        self.metrics.position(
            fill.symbol, float(self.book.position(fill.symbol)), float(self.book.notional(fill.symbol))
        )
        if self.broker.is_connected(Channel.ORDERS):
            for asset, total in (await self.broker.balances()).items():
                self.metrics.balance(asset, float(total))
        self._export_pnl()
        return True

    def _split_symbol(self, symbol: str) -> tuple[str, str]:
        base, quote = split_symbol(symbol)
        return self.broker.base_asset(symbol), quote or self.config.paper.quote_asset

    async def _on_quote(self, quote: Quote) -> None:
        self.quotes[quote.symbol] = quote
        self.book.mark(quote.symbol, quote.mid)
        self.metrics.market_data(quote.symbol)

    async def _on_connection(self, channel: Channel, connected: bool) -> None:
        self.metrics.broker_connection(channel.value, connected)
        if connected and channel is Channel.ORDERS and channel in self._channel_lost:
            self._request_reconciliation(Trigger.RECONNECT)  # what happened while the channel was down
        if connected:
            self._channel_lost.discard(channel)
        else:
            self._channel_lost.add(channel)
            if channel is Channel.ORDERS:
                self._outages += 1
                if self.trading_allowed and not self.reconnect_reconciliation_pending:
                    log.warning("orders channel down: no order that adds risk until a reconciliation after it is back")
                self.reconnect_reconciliation_pending = True
        if not connected:
            self.metrics.venue_error("network")
            log.warning("broker channel %s disconnected", channel.value)
        else:
            log.info("broker channel %s connected", channel.value)

    def _export_pnl(self) -> None:
        for symbol in self.config.paper.symbols:
            self.metrics.position(symbol, float(self.book.position(symbol)), float(self.book.notional(symbol)))
        self.metrics.pnl(float(self.book.realized_today), float(self.book.unrealized_pnl()))
        loss = -(self.book.realized_today + self.book.unrealized_pnl())
        limit = Decimal(str(self.config.paper.daily_loss_limit))
        if (
            limit
            and loss >= limit
            and self.inst.state.state not in (TradingState.HALTED, TradingState.PAUSED, TradingState.FLATTENING)
        ):
            self.inst.state.apply("reduce_only", reason=f"daily loss {loss:.2f} reached the limit {limit}")

    # -- control commands -----------------------------------------------------------------------------
    async def _on_transition(self, command: str, before: TradingState, after: TradingState) -> None:
        if command in RESTRICTING_COMMANDS:
            # The state is set: the order gate refuses from now on. Wait for the step in progress (it may be sending
            # an order right now) so that, once the command answers, nothing it forbids is still on its way; a
            # halt then cancels with trading held.
            async with self._holding_trade_lock(STEP_WAIT_SECONDS) as held:
                if not held:
                    log.warning("%s: the step in progress did not finish within %g s", command, STEP_WAIT_SECONDS)
                if command == "halt":
                    self._sweep_after_step = not held
                    canceled = await self._cancel_for_kill_switch(raise_unreachable=True)
                    log.warning("kill switch engaged: %d open orders canceled", canceled)
        elif command == "clear_halt" and not self.trading_allowed:
            self._request_reconciliation(Trigger.STARTUP)  # the startup run may pass now

    async def _cancel_for_kill_switch(self, raise_unreachable: bool) -> int:
        """Cancel every working order for the kill switch. When the venue cannot be reached the halt stands and
        the cancel is pending: it happens after the next reconnect (`raise_unreachable` reports it to the caller
        as a BrokerError carrying `cancel_pending`)."""
        try:
            canceled, left = await self.cancel_everything(KILL_SWITCH_CANCEL_SECONDS)
        except BrokerError as exc:
            self.cancel_pending = True
            log.error(
                "kill switch engaged but %d open orders could not be canceled (%s): they are canceled after the "
                "next reconnect",
                len(self.orders),
                exc,
            )
            if raise_unreachable:
                detail = {"cancel_pending": True, "open_orders": len(self.orders)}
                raise BrokerError(exc.error_class, str(exc), detail=detail) from exc
            return 0
        if left:
            log.error("kill switch engaged but %d open orders are still working: %s", len(left), ", ".join(left[:5]))
        self.cancel_pending = False
        return canceled

    async def _cancel_after_reconnect(self) -> None:
        if not self.cancel_pending:
            return
        if self.inst.state.state is not TradingState.HALTED:
            self.cancel_pending = False
            log.warning("pending kill-switch cancel dropped: the halt was cleared before the venue came back")
            return
        canceled = await self._cancel_for_kill_switch(raise_unreachable=False)
        if not self.cancel_pending:
            log.warning("venue reachable again: %d open orders canceled for the kill switch", canceled)

    async def _cmd_cancel_all(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"canceled": await self.cancel_all()}

    async def _cmd_reconnect(self, _args: dict[str, Any]) -> dict[str, Any]:
        await self.broker.reconnect()
        return {"connected": {ch.value: self.broker.is_connected(ch) for ch in Channel}}

    async def _cmd_resubscribe(self, args: dict[str, Any]) -> dict[str, Any]:
        symbol = args.get("symbol")
        if symbol is not None and symbol not in self.config.paper.symbols:
            raise CommandError(f"unknown symbol {str(symbol)[:32]!r}")
        await self.broker.resubscribe([symbol] if symbol else None)
        return {"resubscribed": [symbol] if symbol else list(self.config.paper.symbols)}

    async def _cmd_reconcile(self, args: dict[str, Any]) -> dict[str, Any]:
        if args:
            raise CommandError(f"reconcile takes no arguments, got {', '.join(sorted(map(str, args)))[:64]}")
        if self._stopped:
            raise CommandError("the bot is shutting down: it reconciles at its next start")
        summary = await self.reconcile(Trigger.COMMAND)
        if summary["result"] == Result.FAILED and not self.broker.is_connected(Channel.ORDERS):
            detail = {"run_id": summary["run_id"], "result": summary["result"]}
            raise BrokerError("network", summary["error"] or "orders channel down", detail=detail)
        return summary

    # -- reconciliation -------------------------------------------------------------------------------
    async def reconcile(self, trigger: Trigger) -> dict[str, Any]:
        """One reconciliation with trading held: no strategy step runs and venue events wait until it ends."""
        async with self._holding_trade_lock():
            outages = self._outages
            connected = self.broker.is_connected(Channel.ORDERS)
            self._reconciling = True
            try:
                summary = await self.reconciler.run(trigger)
            finally:
                try:
                    await self._apply_deferred()  # in arrival order; what the run adopted counts once
                finally:
                    self._reconciling = False
        passed = summary["result"] in (Result.CLEAN, Result.RESOLVED)
        if self.reconnect_reconciliation_pending:
            if passed and connected and outages == self._outages:
                # Its snapshots were taken with the channel up, after the last drop: the book holds what the venue
                # did meanwhile.
                self.reconnect_reconciliation_pending = False
                self.reconnect_failures = 0
                log.info(
                    "reconciliation %d after the reconnect %s: new risk allowed again",
                    summary["run_id"],
                    summary["result"],
                )
            elif connected:
                self.reconnect_failures += 1
        if passed:
            self.startup_failures = 0
            if not self.trading_allowed:
                self.trading_allowed = True
                log.info("safe-start gate open: reconciliation %d %s", summary["run_id"], summary["result"])
                self._wake.set()  # the reconciliation task's timing changes: scheduled runs from now on
        elif not self.trading_allowed:
            self.startup_failures += 1
        return summary

    @contextlib.asynccontextmanager
    async def _holding_trade_lock(self, timeout: float | None = None) -> AsyncIterator[bool]:
        """Hold the trade lock: no strategy step, reconciliation or restricting command runs meanwhile. Re-entrant
        for the task that holds it (a halt from within a reconciliation). Yields False, not holding it, when
        `timeout` passed first."""
        task = asyncio.current_task()
        if task is not None and self._trade_owner is task:
            yield True
            return
        try:
            async with asyncio.timeout(timeout):
                await self._trade_lock.acquire()
        except TimeoutError:
            yield False
            return
        self._trade_owner = task
        try:
            yield True
        finally:
            self._trade_owner = None
            self._trade_lock.release()

    async def settle(self) -> None:
        """Before a snapshot: let the venue hand over every event it produced, and journal those held back."""
        for _ in range(SETTLE_ROUNDS):
            await self.broker.drain_events()
            if not self._deferred:
                return
            await self._apply_deferred()
        log.warning("venue events kept arriving while settling for a reconciliation snapshot")

    async def _apply_deferred(self) -> None:
        while self._deferred:
            event = self._deferred.pop(0)
            if isinstance(event, VenueFill):
                await self._apply_fill(event)
            else:
                await self._apply_order(event)

    def _request_reconciliation(self, trigger: Trigger) -> None:
        if self._requested is not Trigger.RECONNECT:  # a reconnect run also serves as a startup retry
            self._requested = trigger
        self._wake.set()

    def next_reconciliation_delay(self) -> float | None:
        """Seconds until the reconciliation task runs by itself (None: only when asked). Scheduled runs once the
        safe-start gate is open; before that, startup retries backing off exponentially, and none while halted
        (a `reconcile` command, a reconnect or `clear_halt` tries again)."""
        rec = self.config.recovery
        halted = self.inst.state.state is TradingState.HALTED
        if self.trading_allowed:
            interval = rec.reconcile_interval_seconds or None
            if self.reconnect_reconciliation_pending and not halted and self.broker.is_connected(Channel.ORDERS):
                # The run after a reconnect did not pass: new risk waits for one, so retry soon (backing off).
                retry = startup_retry_delay(self.reconnect_failures, rec.reconcile_retry_seconds)
                return retry if interval is None else min(interval, retry)
            return interval
        if halted:
            return None
        return startup_retry_delay(self.startup_failures, rec.reconcile_retry_seconds)

    async def _reconcile_on_schedule(self) -> None:
        while True:
            delay = self.next_reconciliation_delay()
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
                trigger = Trigger.SCHEDULE if self.trading_allowed else Trigger.STARTUP
            try:
                if trigger is Trigger.RECONNECT:
                    await self._cancel_after_reconnect()
                await self.reconcile(trigger)
            except Exception:
                log.exception("reconciliation (%s) raised", trigger.value)

    async def adopt_fill(self, fill: VenueFill) -> bool:
        return await self._apply_fill(fill)

    async def adopt_order(self, order: VenueOrder) -> None:
        """An order the bot did not place (or whose state it missed) takes the venue's state. One adopted from the
        venue is the bot's responsibility from now on: cancel_all, the kill switch, flatten and the shutdown's
        cancel policy cancel it; the strategy neither expires nor counts it (see DemoStrategy)."""
        key = order.key
        row = await self.journal.call(self.journal.upsert_order, order, EXTERNAL_STRATEGY)
        if order.status.is_open:
            self.orders[key] = order
            self.order_sent_at.setdefault(key, time.monotonic())
            if row.strategy == EXTERNAL_STRATEGY:
                self.external_orders.add(key)
        else:
            self.orders.pop(key, None)
            self.order_sent_at.pop(key, None)
            self.external_orders.discard(key)
            self.metrics.order_closed(key)

    async def adjust_position(self, symbol: str, quantity: Decimal, reference: str) -> None:
        holding = self.book.holding(symbol)
        price = holding.average_price or self.book.marks.get(symbol) or Decimal(0)
        fill = VenueFill(
            trade_id=reference[:64],
            client_order_id=None,
            venue_order_id="reconciliation",
            symbol=symbol,
            side=Side.BUY if quantity > 0 else Side.SELL,
            quantity=abs(quantity),
            price=price,
            fee=Decimal(0),
            fee_asset=self.config.paper.quote_asset,
            liquidity=ADJUSTMENT_LIQUIDITY,
            executed_at=utcnow(),
        )
        await self._apply_fill(fill, adjustment=True)

    async def fills_changed(self, symbols: list[str]) -> None:
        """Fill rows of `symbols` were removed from the journal: replay those symbols' fills into their positions
        (and each fill's realized P&L), then take the book from the journal again."""
        async with self._fill_lock:
            await self.journal.call(self.journal.rebuild_positions, symbols)
            await self._restore_book()

    async def halt(self, reason: str) -> None:
        """The kill switch, engaged by the bot itself (a reconciliation's halt policy): as the `halt` command does,
        the state first, then the cancel sweep with trading held."""
        if self.inst.state.state is not TradingState.HALTED:
            self.inst.state.apply("halt", reason=reason[:200])
            async with self._holding_trade_lock(STEP_WAIT_SECONDS) as held:
                self._sweep_after_step = not held
                canceled = await self._cancel_for_kill_switch(raise_unreachable=False)
            log.error("kill switch engaged by %s; %d open orders canceled", reason, canceled)

    def _status(self) -> dict[str, Any]:
        return {
            "bot": self.config.bot.name,
            "venue": self.config.bot.venue,
            "pid": os.getpid(),
            "positions": {s: str(self.book.position(s)) for s in self.config.paper.symbols},
            "open_orders": len(self.orders),
            "orders_outcome_unknown": sum(not o.venue_order_id for o in self.orders.values()),
            "adopted_orders": len(self.external_orders),
            "cancel_pending": self.cancel_pending,
            "realized_pnl_today": str(self.book.realized_today.quantize(CENT)),
            "unrealized_pnl": str(self.book.unrealized_pnl().quantize(CENT)),
            "connected": {ch.value: self.broker.is_connected(ch) for ch in Channel},
            "chaos": self.chaos.status() if self.chaos is not None else None,
            "trading_allowed": self.trading_allowed,
            "reconnect_reconciliation_pending": self.reconnect_reconciliation_pending,
            "next_reconciliation_seconds": self.next_reconciliation_delay(),
            "reconciliation": {
                k: v
                for k, v in (self.reconciler.last or {}).items()
                if k in ("run_id", "trigger", "result", "finished_at")
            },
        }


def data_path(config: Config) -> Path:
    return config.path(config.bot.data_dir)


__all__ = ["Broker", "PaperBot", "make_venue"]
