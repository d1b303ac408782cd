"""The bot runtime: one object a bot author creates around a strategy and a Broker, which wires everything else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from trading_ops import logsetup
from trading_ops.bot.broker import Broker
from trading_ops.bot.control import SOURCE_RISK
from trading_ops.bot.control_commands import ControlCommands, guard_clear_halt
from trading_ops.bot.control_journal import serve_control_events
from trading_ops.bot.crash_report import RETRY_SECONDS, CrashReporter
from trading_ops.bot.dead_man_switch import DeadMansSwitch
from trading_ops.bot.decision_gate import DecisionGate, trusted_keys
from trading_ops.bot.drawdown import PeakJournal
from trading_ops.bot.gate import OrderGate
from trading_ops.bot.heartbeat import CrashFound, Heartbeat
from trading_ops.bot.instance_lock import InstanceLock
from trading_ops.bot.instrumentation import Instrumentation
from trading_ops.bot.journal import Journal
from trading_ops.bot.journal_health import JournalHealth
from trading_ops.bot.journal_writes import JournalWrites, journal_commands, journal_transitions
from trading_ops.bot.kill_switch import KillSwitch
from trading_ops.bot.live_gate import check_live_start
from trading_ops.bot.lock_keeper import LockKeeper
from trading_ops.bot.log_metrics import LogCollector
from trading_ops.bot.loop import TradingLoop
from trading_ops.bot.orders import OrderEngine
from trading_ops.bot.ramp_wiring import RampWiring
from trading_ops.bot.readiness_checks import register_checks
from trading_ops.bot.reconciliation import CONFIRM_DELAY_SECONDS, Reconciler, Trigger
from trading_ops.bot.reconciliation_metrics import ReconciliationMetrics
from trading_ops.bot.recovery_store import RecoveryStore
from trading_ops.bot.risk import RiskLimits
from trading_ops.bot.schedule import ReconciliationSchedule
from trading_ops.bot.sdnotify import SystemdNotifier
from trading_ops.bot.shutdown import OrdersLeftOpen, ShutdownDeadlineExceeded, exit_now
from trading_ops.bot.startup import Startup, start_unless_stopped
from trading_ops.bot.state import TradingState
from trading_ops.bot.stopping import EXIT_FORCED, TRADING_TASKS, VENUE_TASK, Stopping
from trading_ops.bot.strategy import Context, Strategy, StrategyWithStart
from trading_ops.bot.trade_lock import TradeLock
from trading_ops.config import Config, ConfigError, bot_order_id_prefix, resolve_tokens
from trading_ops.db.base import make_engine
from trading_ops.db.revisions import schema_problem
from trading_ops.durations import parse_duration
from trading_ops.scopes import TokenSet
from trading_ops.webconfig import server_web_config

log = logging.getLogger(__name__)

BrokerFactory = Callable[[], Broker]


def control_tokens(config: Config) -> TokenSet:
    """The tokens of the bot's control API (bot.control_tokens, and bot.control_token with every right); ConfigError
    when none is configured or one cannot be read."""
    tokens = resolve_tokens(config, config.bot, "control_token", "control_tokens", "bot")
    if not tokens:
        raise ConfigError(
            "bot.control_token", "no token: give control_tokens, or control_token_file or TRADING_OPS_CONTROL_TOKEN"
        )
    return tokens


def risk_limits(config: Config, daily_loss_default: float = 0.0) -> RiskLimits:
    """The limits of `bot.risk`. An unset daily loss limit is `daily_loss_default`: no limit (0) for a bot on the
    runtime; the paper bot passes `paper.daily_loss_limit`, where its limit used to live."""
    r = config.bot.risk
    return RiskLimits(
        daily_loss=daily_loss_default if r.daily_loss_limit is None else r.daily_loss_limit,
        max_position_notional=r.max_position_notional,
        max_open_orders=r.max_open_orders,
        max_order_notional=r.max_order_notional,
        max_orders_per_second=r.max_orders_per_second,
        max_orders_per_minute=r.max_orders_per_minute,
        max_open_positions=r.max_open_positions,
        max_drawdown=r.max_drawdown,
        drawdown_window=parse_duration(r.drawdown_window),
    )


class BotRuntime:
    """Runs a strategy against a Broker with everything that makes a bot recoverable, wired once.

    >>> runtime = BotRuntime(config, broker, MyStrategy(), symbols=["BTC-USD"])
    >>> await runtime.run()   # until SIGTERM/SIGINT; or start() ... shutdown()

    It builds the parts, wires them to each other through their constructors and starts them in order, as
    NautilusTrader's TradingNode does its engines; each part owns one concern and none reaches into another's state:
    the Instrumentation (metrics, state machine, control API, /healthz, /readyz with readiness_checks), the Journal
    and its background writes, the Heartbeat (crash detection), the OrderEngine (orders, fills, positions, P&L,
    flatten) behind the OrderGate and its RiskEngine under the ramp (RampWiring), the KillSwitch, the venue's
    DeadMansSwitch, the ReconciliationSchedule (the safe-start gate; runs at start, on a schedule, after every
    reconnect), the control commands (ControlCommands, commands.py), Startup (start-up and restore), the TradingLoop,
    the LockKeeper (the single-instance lock), Stopping (the shutdown under one deadline), sd_notify and the TradeLock.
    The strategy sees only a StrategyContext; the venue only BrokerEvents.

    Over 400 lines: __init__ refuses a database without this version's schema, a live start without its decision and
    a second instance before anything is built, and the set-up then hands each of about twenty parts what it needs by
    name, one keyword a line. Over 20 public names: besides run, start and shutdown, the delegating properties and
    methods (orders, book, submit, reconcile, status, hang, ...) are what a bot author, the paper bot and the tests
    read; each is a line or two over the part that owns it.
    """

    def __init__(
        self,
        config: Config,
        broker: Broker | BrokerFactory,
        strategy: Strategy,
        *,
        symbols: Sequence[str],
        quote_asset: str = "USD",
        loop_interval: float | None = None,
        token: str | TokenSet | None = None,
        registry: CollectorRegistry | None = None,
        engine: Any = None,
        venue_task: Callable[[], Coroutine[Any, Any, None]] | None = None,
        confirm_delay_seconds: float = CONFIRM_DELAY_SECONDS,
        own_process: bool = False,
        limits: RiskLimits | None = None,
    ) -> None:
        """`broker` may be a factory, called once this process holds the bot's single-instance lock (a broker
        that reads state of its own, as the paper venue does). `venue_task` runs beside the bot until it
        disconnects (a simulated venue's clock). `own_process`: the bot owns its process, so the library may
        tune process-wide settings (see Instrumentation). `limits`: the risk limits, by default `bot.risk`'s;
        `loop_interval`: the strategy's period, by default `bot.loop_interval_seconds`."""
        self.config = config
        bot = config.bot
        if bot.log_file:  # the bot's own log file, rotated (the log_rotation criterion)
            logging_level = logging.getLevelName(logging.getLogger().level) if logging.getLogger().handlers else ""
            logsetup.setup(
                logging_level or config.logging.level,
                config.logging.format,
                bot.log_file,
                bot.log_file_max_bytes,
                bot.log_file_backups,
            )
        elif not logging.getLogger().handlers:  # the author set up no logging: lines with their time and level
            logsetup.setup(config.logging.level, config.logging.format)
        token = token if token is not None else control_tokens(config)
        if not token:
            raise ConfigError("bot.control_token", "the control API needs a non-empty token")
        # TLS and basic auth of the bot's server: a bad web_config_file is a configuration error before anything runs.
        self.web_config = server_web_config(bot.listen, "bot.listen")
        self.symbols = list(symbols)
        self.quote_asset = quote_asset
        self.loop_interval = bot.loop_interval_seconds if loop_interval is None else loop_interval
        self.strategy = strategy
        self._venue_task = venue_task
        self.data_dir = Path(bot.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = (
            engine
            if engine is not None
            else make_engine(config.database_url(), sqlite_synchronous=config.database.sqlite_synchronous)
        )
        # A database without this version's tables is one line saying what to do (not the first query's traceback).
        # The runtime does not migrate it itself: the schema is shared (the reconciler, upkeep, every bot of a fleet),
        # so migrating is the operator's one deliberate step (`db upgrade`, ExecStartPre in the packaged units), not
        # something each bot's start races to do, or a newer bot does under an older reconciler.
        try:
            problem = schema_problem(self.engine)
        except BaseException:
            if engine is None:
                self.engine.dispose()
            raise
        if problem is not None:
            if engine is None:
                self.engine.dispose()
            raise ConfigError("database.url", problem)
        # Paper to live: a live venue with a ramp needs a passing paper verdict, or a person's approval, recorded in
        # the ledger (this database, shared with the reconciler); an unreachable ledger refuses too, in one line.
        try:
            self.decision_keys = trusted_keys(config)
            self.live_decision = check_live_start(config, self.engine, self.decision_keys, self.data_dir)
        except BaseException:
            if engine is None:
                self.engine.dispose()
            raise
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
            self._set_up(config, token, broker, registry, confirm_delay_seconds, own_process, limits)
        except BaseException:
            self.instance_lock.release()
            raise

    def _set_up(
        self,
        config: Config,
        token: str | TokenSet,
        broker: Broker | BrokerFactory,
        registry: CollectorRegistry | None,
        confirm_delay_seconds: float,
        own_process: bool,
        limits: RiskLimits | None,
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
            memory_budget=bot.resources.memory_budget_bytes,
            data_dir_budget=bot.resources.data_dir_budget_bytes,
            # A backup catalog kept in the data directory (the default layout of `make run`) has its own retention
            # and metrics; the bot's budget is for what the bot writes.
            data_dir_exclude=[Path(config.backup.directory)],
            lag_interval=bot.event_loop_lag_interval_seconds,
            # A bot that is a whole process of its own may tune process-wide settings: a 0.5 ms GIL switch
            # interval keeps a scrape from stalling the event loop, and no `_created` series.
            tune_switch_interval=own_process,
            disable_created_series=own_process,
        )
        self.metrics = self.inst.metrics
        self.metrics.phase("starting")  # until the trading loop runs (start)
        self.broker: Broker = broker if isinstance(broker, Broker) or not callable(broker) else broker()
        self.broker.register_metrics(self.inst.registry)
        LogCollector(self.inst.registry, config.bot.log_rotated_by)  # the log_size and log_rotation criteria
        self.journal = Journal(
            self.engine, bot.name, bot.venue, JournalHealth(venue=bot.venue, registry=self.inst.registry, settle=True)
        )
        self.trade_lock = TradeLock()
        limits = risk_limits(config) if limits is None else limits
        if not limits.daily_loss:
            log.warning("bot %s trades without a daily loss limit: set bot.risk.daily_loss_limit", bot.name)
        # The RiskEngine under the ramp: the current stage narrows bot.risk; a loss-limit breach falls back a stage,
        # at once, and so do a crash loop and a channel down too long (RampWiring).
        self.ramp_wiring = RampWiring(bot.ramp, self.data_dir, self.metrics, limits)
        self.ramp, self.ramp_watch, self.base_limits = self.ramp_wiring.ramp, self.ramp_wiring.watch, limits
        self.risk = self.ramp_wiring.risk_engine(self.inst.state, self.metrics, on_halt=self._halted_by_risk)
        self.gate = OrderGate(
            self.inst.state,
            self.metrics,
            self.risk,
            self.market_data_stale,
            self.instance_lock.problem,
            order_headroom=self.broker_order_headroom,
        )
        self.peak_journal = PeakJournal(self.risk.peak, self.journal)
        self.order_engine = OrderEngine(
            self.broker,
            self.journal,
            self.metrics,
            self.gate,
            order_id_prefix=bot_order_id_prefix(config),
            strategy=bot.strategy,
            symbols=self.symbols,
            quote_asset=self.quote_asset,
            on_outcome_unknown=lambda: self.schedule.lost_reply(),  # noqa: PLW0108 (built below)
            on_halt=self.halt,
            on_applied=lambda: self.loop.end_flatten_when_flat(),  # noqa: PLW0108 (built below)
        )
        self.context = Context(self.order_engine, self.inst.state, self.symbols, bot.market_data_stale_seconds)
        self.metrics.known_symbols(self.symbols)
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
            self.order_engine,
            policies=rec.policies,
            fills_lookback_seconds=rec.fills_lookback_seconds,
            confirm_delay_seconds=confirm_delay_seconds,
            split=self.order_engine.split_symbol,
        )
        self.systemd = SystemdNotifier()
        self.crash: CrashFound | None = None
        self.crash_report_retry_seconds = RETRY_SECONDS  # first retry of an unsent crash report; doubles from there
        self.crash_reporter: CrashReporter | None = None
        self.kill_switch = KillSwitch(self.inst.state, self.order_engine, self.trade_lock)
        self.dead_man = DeadMansSwitch(
            self.broker, self.inst.state, bot.dead_man_switch, venue=bot.venue, registry=self.inst.registry
        )
        self.schedule = ReconciliationSchedule(
            self.reconciler,
            self.broker,
            self.order_engine,
            self.gate,
            self.inst.state,
            self.kill_switch,
            self.trade_lock,
            self.metrics,
            rec,
        )
        self.journal.health.add_listener(self.schedule.journal_changed)
        self.schedule.on_journal_settled = self.journal.health.settled
        self._trade_lock = self.trade_lock.lock  # held by a strategy step, a reconciliation, a restricting command
        self._set_up_run(config)
        self.commands = ControlCommands(
            bot=bot.name,
            venue=bot.venue,
            symbols=self.symbols,
            broker=self.broker,
            state=self.inst.state,
            gate=self.gate,
            risk=self.risk,
            order_engine=self.order_engine,
            schedule=self.schedule,
            reconciler=self.reconciler,
            kill_switch=self.kill_switch,
            trade_lock=self.trade_lock,
            dead_man=self.dead_man,
            ramp=self.ramp,
            journal=self.journal,
            stopping=lambda: self.stopping,
        )
        self.commands.register(self.inst.control)
        # What widens risk needs a decision the reconciler signed (docs/readiness.md, "Signed decisions").
        self.decisions = DecisionGate(self.decision_keys, self.data_dir, self.metrics, bot.name)
        if self.live_decision is not None:
            self.decisions.record(self.live_decision)
        self.ramp_wiring.register(self.inst.control, self.decisions)
        guard_clear_halt(self.inst.control, self.inst.state, self.decisions)
        register_checks(
            self.inst,
            broker=self.broker,
            symbols=self.symbols,
            market_data_stale=self.market_data_stale,
            reconciler=self.reconciler,
            gate=self.gate,
            journal=self.journal,
            journal_failure_timeout=bot.journal_failure_timeout_seconds,
            instance_lock=self.instance_lock,
        )

    def _set_up_run(self, config: Config) -> None:
        """The parts of a run: its stop, its tasks, its background journal writes, the loop, the start, the stop."""
        self._stop_reason = "stop"
        self._stop = asyncio.Event()
        self._trading_began = False  # the start finished: the loop may have sent orders
        self._tasks: list[asyncio.Task[Any]] = []
        self.journal_writes = JournalWrites()
        journal_transitions(
            self.inst.state, self.journal_writes, self.journal, self.recovery_store, lambda: self.heartbeat.run_id
        )
        journal_commands(
            self.inst.control, self.journal_writes, self.journal, self.recovery_store, lambda: self.heartbeat.run_id
        )
        serve_control_events(self.inst.control, self.journal, self.recovery_store)
        self.lock_keeper = LockKeeper(
            self.instance_lock,
            self.journal,
            self.journal_writes,
            bot=config.bot.name,
            check_interval=config.recovery.heartbeat_interval_seconds,
            halt=self.halt,
            stopping=lambda: self.stopping,
        )
        self.loop = TradingLoop(
            stop=self._stop,
            interval=self.loop_interval,
            strategy=lambda: self.strategy,
            context=self.context,
            symbols=self.symbols,
            state=self.inst.state,
            trade_lock=self.trade_lock,
            gate=self.gate,
            order_engine=self.order_engine,
            broker=self.broker,
            metrics=self.metrics,
            journal=self.journal,
            heartbeat=self.heartbeat,
            writes=self.journal_writes,
            ramp_watch=self.ramp_watch,
            lock_keeper=self.lock_keeper,
            dead_man=self.dead_man,
            kill_switch=self.kill_switch,
            peak_journal=self.peak_journal,
            risk=self.risk,
            held_progress=self._reconciliation_progress,
        )
        self.startup = Startup(
            config=config,
            heartbeat=self.heartbeat,
            journal=self.journal,
            recovery_store=self.recovery_store,
            metrics=self.metrics,
            state=self.inst.state,
            order_engine=self.order_engine,
            peak_journal=self.peak_journal,
            risk=self.risk,
            kill_switch=self.kill_switch,
            ramp=self.ramp_wiring,
            broker=self.broker,
            reconciler=self.reconciler,
            schedule=self.schedule,
            dead_man=self.dead_man,
        )
        self.stopper = Stopping(
            bot=config.bot.name,
            recovery=config.recovery,
            stop=self._stop,
            tasks=self._tasks,
            trading_began=lambda: self._trading_began,
            gate=self.gate,
            metrics=self.metrics,
            systemd=self.systemd,
            trade_lock=self.trade_lock,
            broker=self.broker,
            order_engine=self.order_engine,
            journal=self.journal,
            writes=self.journal_writes,
            peak_journal=self.peak_journal,
            risk=self.risk,
            heartbeat=self.heartbeat,
            dead_man=self.dead_man,
            stop_server=self._stop_server,
            instance_lock=self.instance_lock,
        )

    async def _stop_server(self) -> None:
        """The HTTP server's stop as `self.inst` has it when the shutdown comes (not as it was when wired)."""
        await self.inst.stop()

    # -- running --------------------------------------------------------------------------------------
    async def run(
        self, host: str | None = None, port: int | None = None, install_signals: bool = True, force_exit: bool = False
    ) -> None:
        """Trade until SIGTERM/SIGINT (or request_stop), then shut down gracefully within the deadline.

        With `force_exit` (a CLI) a shutdown past its deadline ends the process with exit status 1, even when a
        step is stuck in a thread (a hung database write) or blocks the event loop.
        """
        listen = self.config.bot.listen
        loop = asyncio.get_running_loop()
        if install_signals:  # before start: a signal while starting still shuts down gracefully
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop, sig.name)
        try:
            start = self.start(host or listen.host, listen.port if port is None else port)
            await start_unless_stopped(start, self._stop, lambda: self._stop_reason)
            await self._stop.wait()
        finally:
            try:
                await self.shutdown(self._stop_reason, force_exit=force_exit)
            except ShutdownDeadlineExceeded:
                if not force_exit:
                    raise
                exit_now(EXIT_FORCED)
        if self.orders_left_open:
            raise OrdersLeftOpen(self.orders_left_open)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Detect a crash, restore the book and a standing loss-limit halt, know the day's loss and the drawdown
        (past a loss limit: halted), reconcile (the safe-start gate), then trade. Returns the bound port of the HTTP
        server."""
        self.crash = await self.startup.restore()
        bound = await self.inst.start(host, port, self.web_config)
        await self.startup.connect()
        await self.startup.record_crash()
        self.crash_reporter = self.startup.crash_reporter(self.crash_report_retry_seconds)
        self._tasks.append(asyncio.create_task(self.crash_reporter.run(), name="crash-report"))
        if self._venue_task is not None:
            self._tasks.append(asyncio.create_task(self._venue_task(), name=VENUE_TASK))
        if isinstance(self.strategy, StrategyWithStart):
            await self.strategy.on_start(self.context)
        self.inst.loop_starting()
        self.order_engine.export_pnl()  # again with the marks the venue gave since: unrealized P&L, the drawdown
        self.metrics.phase("trading")
        self._trading_began = True
        loop_task, reconciliation_task = TRADING_TASKS
        self._tasks.append(asyncio.create_task(self.loop.run(), name=loop_task))
        self._tasks.append(asyncio.create_task(self.schedule.run(), name=reconciliation_task))
        self.heartbeat.start()
        self.systemd.start_watchdog(self.loop_progressing)
        self.systemd.ready(f"trading {', '.join(self.symbols)} on {self.config.bot.venue}")
        log.info("bot %s trading %s on %s", self.config.bot.name, ", ".join(self.symbols), self.config.bot.venue)
        return bound

    def request_stop(self, reason: str = "stop") -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            log.warning("shutdown requested (%s)", reason)
        self._stop.set()

    async def stop(self) -> None:
        await self.shutdown("stop")

    async def shutdown(self, reason: str = "stop", *, force_exit: bool = False) -> None:
        """Stop new orders, cancel or keep open orders by policy, disconnect, flush the journal, write the final
        heartbeat, then release everything: all of it within `recovery.shutdown_deadline_seconds` (Stopping).

        The venue steps (the cancel of the open orders, disarming the dead man's switch) share a bounded part of the
        deadline (shutdown.VENUE_SHARE); one the venue keeps waiting is cut off there, unconfirmed, and the local steps
        still run. The final heartbeat carries the clean-shutdown marker when stopping the orders and the flush
        succeeded (the process stopped in order; a venue step it could not confirm is named in its reason, and the
        process exits 1 saying which); otherwise it records which failed, and the next start treats the run as a
        crash. Raises ShutdownDeadlineExceeded (after releasing what can be released quickly) when the deadline
        passes; with `force_exit`, a thread also ends the process shortly after the deadline whatever the loop is
        doing.
        """
        await self.stopper.run(reason, force_exit=force_exit)

    async def _abandon(self) -> None:
        """The deadline passed (in-process): release what can be released without waiting on what is stuck."""
        await self.stopper.abandon()

    @property
    def orders_left_open(self) -> str:
        """Set by a shutdown whose cancel of the open orders could not be confirmed: what `run` raises."""
        return self.stopper.orders_left_open

    @property
    def stopping(self) -> bool:
        return self.stopper.stopped

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call `callback()` when the background tasks stop (a fault injector releasing what it holds)."""
        self.stopper.on_stop.append(callback)

    # -- what other parts call ------------------------------------------------------------------------
    async def halt(self, reason: str) -> None:
        """The kill switch, engaged by the bot itself (a reconciliation's halt policy, a lost instance lock)."""
        if self.inst.state.state is not TradingState.HALTED:
            self.metrics.control_command("halt", SOURCE_RISK)
        await self.kill_switch.halt(reason)

    def _halted_by_risk(self, reason: str) -> None:
        """A risk limit halted the bot (the gate already refuses): its open orders go at the end of the step."""
        self.kill_switch.sweep_after_step = True

    def market_data_stale(self, symbol: str) -> bool:
        age = self.metrics.market_data_age(symbol)
        if age is None or age > self.config.bot.market_data_stale_seconds:
            return True
        return not self.broker.market_data_in_sync(symbol)  # a book out of sync is never traded on

    def broker_order_headroom(self) -> float | None:
        """The venue's room for new orders (Broker.order_count_headroom), asked of the broker the runtime holds now."""
        return self.broker.order_count_headroom()

    def loop_progressing(self) -> bool:
        """What /healthz checks first (and the heartbeat and systemd's watchdog only): the trading loop completed an
        iteration within the heartbeat timeout, or the bot started less than that ago (the first iteration may still
        be under way: not a stall)."""
        return self.inst.loop_health()[0]

    def _reconciliation_progress(self) -> float | None:
        """When the reconciliation under way last completed a step (time.monotonic()), or None when none runs: what
        the trading loop, waiting for the trade lock that run holds, counts as its heartbeat."""
        return self.reconciler.progress_at if self.reconciler.running else None

    # -- what a bot author and the tests read, each from the part that owns it ---------------------------
    @property
    def book(self) -> Any:
        return self.order_engine.book

    @property
    def orders(self) -> dict[str, Any]:
        return self.order_engine.orders

    @property
    def external_orders(self) -> set[str]:
        return self.order_engine.external_orders

    @property
    def trading_allowed(self) -> bool:
        return self.gate.trading_allowed

    @property
    def reconnect_reconciliation_pending(self) -> bool:
        return self.gate.reconnect_pending

    @property
    def startup_failures(self) -> int:
        return self.schedule.startup_failures

    @property
    def cancel_pending(self) -> bool:
        return self.kill_switch.cancel_pending

    def order_refusal(self, symbol: str, reduce_only: bool) -> str | None:
        return self.order_engine.order_refusal(symbol, reduce_only)

    async def submit(self, *args: Any, **kwargs: Any) -> Any:
        return await self.order_engine.submit(*args, **kwargs)

    async def cancel_all(self) -> int:
        return await self.order_engine.cancel_all()

    async def reconcile(self, trigger: Trigger) -> dict[str, Any]:
        """One reconciliation with trading held (ReconciliationSchedule.reconcile)."""
        return await self.schedule.reconcile(trigger)

    def hold_trading(self, timeout: float | None = None) -> contextlib.AbstractAsyncContextManager[bool]:
        """Hold the trade lock (TradeLock.hold): no strategy step, reconciliation or restricting command runs."""
        return self.trade_lock.hold(timeout)

    def next_reconciliation_delay(self) -> float | None:
        return self.schedule.next_delay()

    def status(self) -> dict[str, Any]:
        """What `status` answers beyond the trading state (ControlCommands.status, with why it may not trade)."""
        return self.commands.status()

    def hang(self, seconds: float) -> None:
        """Fault injection: the trading loop makes no progress for `seconds` (TradingLoop.hang)."""
        self.loop.hang(seconds)

    def hanging(self) -> bool:
        return self.loop.hanging()
