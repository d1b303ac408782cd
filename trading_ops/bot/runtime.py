"""The bot runtime: one object a bot author creates around a strategy and a Broker, which wires everything else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from trading_ops import logsetup
from trading_ops.bot.broker import Broker, BrokerEvents, Channel
from trading_ops.bot.commands import register_commands
from trading_ops.bot.control import SOURCE_RISK, CommandError
from trading_ops.bot.crash_report import RETRY_SECONDS, CrashReporter
from trading_ops.bot.dead_man_switch import DeadMansSwitch
from trading_ops.bot.decision_gate import DecisionGate, trusted_keys
from trading_ops.bot.drawdown import PeakJournal
from trading_ops.bot.gate import OrderGate
from trading_ops.bot.heartbeat import CrashFound, Heartbeat
from trading_ops.bot.instance_lock import AnotherInstanceRunning, InstanceLock
from trading_ops.bot.instrumentation import Instrumentation
from trading_ops.bot.journal import Journal
from trading_ops.bot.journal_health import JournalHealth
from trading_ops.bot.kill_switch import KillSwitch
from trading_ops.bot.live_gate import check_live_start
from trading_ops.bot.log_metrics import LogCollector
from trading_ops.bot.orders import OrderEngine
from trading_ops.bot.ramp import PromotionRefused, Ramp
from trading_ops.bot.ramp_watch import RampWatch
from trading_ops.bot.reconciliation import CONFIRM_DELAY_SECONDS, Reconciler, Result, Trigger
from trading_ops.bot.reconciliation_metrics import ReconciliationMetrics
from trading_ops.bot.recovery_store import RecoveryStore
from trading_ops.bot.risk import HALT_REASON_PREFIXES, LIMITS, RiskEngine, RiskLimits
from trading_ops.bot.schedule import ReconciliationSchedule
from trading_ops.bot.sdnotify import SystemdNotifier
from trading_ops.bot.shutdown import OrdersLeftOpen, ShutdownDeadlineExceeded, ShutdownSequence, exit_now
from trading_ops.bot.state import TradingState
from trading_ops.bot.strategy import Context, Strategy, StrategyWithStart
from trading_ops.bot.trade_lock import TradeLock
from trading_ops.config import (
    Config,
    ConfigError,
    RampConfig,
    bot_order_id_prefix,
    resolve_secret,
    resolve_tokens,
)
from trading_ops.db.base import make_engine
from trading_ops.db.revisions import schema_problem
from trading_ops.decisions import CLEAR_HALT, RAMP_PROMOTE, Decision
from trading_ops.durations import parse_duration
from trading_ops.scopes import DESTRUCTIVE, TokenSet
from trading_ops.tasks import stop_tasks
from trading_ops.webconfig import server_web_config

log = logging.getLogger(__name__)

EXIT_FORCED = 1
CENT = Decimal("0.01")
# Past the shutdown deadline plus this, a thread ends the process even if the event loop is blocked.
FORCED_EXIT_GRACE_SECONDS = 2.0
# After a missed shutdown deadline (in-process, no forced exit): how long releasing what can be released may take.
ABANDON_SECONDS = 1.0
# A shutdown waits this part of its deadline for the trading step in progress (a reconciliation that waits on the
# venue's rate limit holds the trade lock), then cancels it.
STOP_TRADING_SHARE = 0.2
VENUE_TASK = "venue"
# How often the loop reads the venue's clock for tradingbot_clock_skew_seconds (TradingBotClockSkew waits 2 m).
CLOCK_SKEW_INTERVAL_SECONDS = 30.0
# How often the trading loop journals a risen equity peak (and at shutdown): a crash loses at most this much of a rise.
PEAK_SAVE_INTERVAL_SECONDS = 5.0
# While another instance holds the single-instance lock, this one (halted) asks for it again this often: once that
# instance is gone it holds the lock again, and an operator's resume lets it trade.
INSTANCE_LOCK_RETRY_SECONDS = 5.0
BrokerFactory = Callable[[], Broker]


def clock_offset(sent: datetime, received: datetime, server: datetime, resolution: float = 0.0) -> float:
    """The local clock minus the venue's, as small as one reading allows: the venue read its clock at some local
    moment between `sent` and `received`, and its answer may be up to `resolution` seconds behind (truncated), so the
    offset lies in (sent - server - resolution, received - server]. 0 when the clocks may agree; else the bound
    nearest 0, so that a slow round trip or a whole-second venue clock never reads as skew (the alert's 0.5 s)."""
    low = (sent - server).total_seconds() - resolution
    high = (received - server).total_seconds()
    if low > 0:
        return low
    if high < 0:
        return high
    return 0.0


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

    It wires, and each part owns one concern: the Instrumentation (metrics, state machine, control API,
    /healthz, /readyz), the Journal, the Heartbeat (crash detection), the OrderEngine (orders, fills, positions,
    P&L, flatten) behind the OrderGate and its RiskEngine, the KillSwitch, the ReconciliationSchedule (the
    safe-start gate; runs at start, on a schedule, after every reconnect), the CrashReporter, sd_notify, the
    single-instance lock and the TradeLock. The strategy sees only a StrategyContext; the venue only
    BrokerEvents; the control commands are in trading_ops.bot.commands. What is left here is the wiring and the
    lifecycle: start, the trading loop, and the shutdown sequence under one deadline.

    Over 400 lines and 20 public names: the set-up wires about fifteen parts, the shutdown sequence must reach
    every one of them, and the few delegating properties (orders, book, submit, reconcile, ...) are what a bot
    author and the tests read; each concern itself lives in its own part.
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
        self._clock_skew_due = 0.0  # time.monotonic() of the next clock reading
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
        self.risk = self._ramped_risk(bot.ramp, limits)
        self.gate = OrderGate(
            self.inst.state, self.metrics, self.risk, self.market_data_stale, self.instance_lock.problem
        )
        self.peak_journal = PeakJournal(self.risk.peak, self.journal)
        self._peak_save_due = 0.0
        self.order_engine = OrderEngine(
            self.broker,
            self.journal,
            self.metrics,
            self.gate,
            order_id_prefix=bot_order_id_prefix(config),
            strategy=bot.strategy,
            symbols=self.symbols,
            quote_asset=self.quote_asset,
            on_outcome_unknown=self._lost_reply,
            on_halt=self.halt,
            on_applied=self._end_flatten_when_flat,
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
        self._init_run_state()
        self.inst.state.add_listener(self._journal_transition)
        register_commands(self.inst.control, self.broker, self)
        # What widens risk needs a decision the reconciler signed (docs/readiness.md, "Signed decisions").
        self.decisions = DecisionGate(self.decision_keys, self.data_dir, self.metrics, bot.name)
        if self.live_decision is not None:
            self.decisions.record(self.live_decision)
        for decision_id, expires_at in self.ramp.decisions.items():  # promoted on: spent
            self.decisions.remember(decision_id, expires_at)
        self.inst.control.guard("clear_halt", self._clear_halt_guard)
        self.inst.control.add_status(lambda: {"decisions": self.decisions.status()})
        if self.ramp.stages:
            # Wider limits: the destructive scope, as the reconciler's `ramp-promote` rule sends it, and a decision.
            self.inst.control.register("ramp_promote", self._ramp_promote, scope=DESTRUCTIVE)
        self._register_readiness()

    def _init_run_state(self) -> None:
        """What a run keeps of itself: its stop, its tasks, the lock's timers."""
        self._stop_reason = "stop"
        # Set by a shutdown whose cancel of the open orders could not be confirmed: what `run` raises (OrdersLeftOpen).
        self.orders_left_open = ""
        self._cancel_error = ""
        self._stopped = False
        self._trading_began = False  # the start finished: the loop may have sent orders
        self._stop = asyncio.Event()
        self._hang_until = 0.0
        self._hanging = False  # the loop is inside an injected hang (the iteration it was in has finished)
        self._tasks: list[asyncio.Task[Any]] = []
        self._journal_writes: set[asyncio.Task[None]] = set()
        self._journal_probe: asyncio.Task[None] | None = None
        self._lock_check: asyncio.Task[None] | None = None
        self._lock_retry_at = 0.0  # while another instance holds the lock: when to ask for it again
        self._lock_check_due = 0.0  # when the lock's session is next looked at, a reconnect or not
        self._on_stop: list[Callable[[], None]] = []

    def _ramped_risk(self, ramp: RampConfig, limits: RiskLimits) -> RiskEngine:
        """The RiskEngine under the ramp (self.ramp): the current stage narrows bot.risk; a loss-limit breach falls
        back a stage, at once, and so do a crash loop and a channel down too long (self.ramp_watch)."""
        self.ramp = Ramp(ramp.stages, self.data_dir, self.metrics)
        self.ramp_watch = RampWatch(self.ramp, ramp)
        self.base_limits = limits
        risk = RiskEngine(
            self.ramp.limits(limits),
            self.inst.state,
            self.metrics,
            on_halt=self._halted_by_risk,
            on_loss_limit=self.ramp.demote,
        )
        self.ramp.on_change = lambda: risk.set_limits(self.ramp.limits(self.base_limits))
        return risk

    async def _ramp_promote(self, args: dict[str, Any]) -> dict[str, Any]:
        """`ramp_promote` {"stage": NAME, "decision": SIGNED}: take the next stage of the ramp on a decision the
        reconciler signed once people approved it (its `ramp-promote` rule): refused (403) without one that verifies
        for this bot and this stage, now, unspent; refused (400) when it is not the next stage or the current one's
        minimum time has not passed. An `approval` field is a comment; the decision's approvers are who decided."""
        stage = args.get("stage")
        if not isinstance(stage, str) or not stage:
            raise CommandError(
                'ramp_promote takes {"stage": the next stage\'s name, "decision": a decision the reconciler signed}'
            )
        decision = self.decisions.check(args.get("decision"), RAMP_PROMOTE, stage)
        problem = self.ramp.promotion_problem(stage)
        if problem is not None:
            raise CommandError(f"ramp_promote: {problem}")
        try:
            # The decision's id is written with the stage it allows, in one durable write before the limits widen:
            # a decision widens them once.
            self.ramp.promote(
                stage, by=", ".join(decision.approvers), why=f"promoted to {stage[:64]}", decision=decision
            )
        except PromotionRefused as exc:
            raise CommandError(f"ramp_promote: {exc}") from None
        self.decisions.kept_elsewhere(decision)
        return {"ramp": self.ramp.status(), "decision": decision.id}

    async def _clear_halt_guard(self, args: dict[str, Any]) -> None:
        """A halt a loss limit set (the day's loss, the drawdown) is cleared only on a signed clear_halt decision
        ({"decision": SIGNED}: people approved the bot trading again); any other halt clears in one step."""
        state = self.inst.state
        if state.state is not TradingState.HALTED or not state.reason.startswith(HALT_REASON_PREFIXES):
            return None
        decision: Decision = self.decisions.check(args.get("decision"), CLEAR_HALT)
        self.decisions.spend(decision)
        return None

    # -- what the parts share -------------------------------------------------------------------------
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

    def order_refusal(self, symbol: str, reduce_only: bool) -> str | None:
        return self.order_engine.order_refusal(symbol, reduce_only)

    async def submit(self, *args: Any, **kwargs: Any) -> Any:
        return await self.order_engine.submit(*args, **kwargs)

    async def cancel_all(self) -> int:
        return await self.order_engine.cancel_all()

    @property
    def stopping(self) -> bool:
        return self._stopped

    def market_data_stale(self, symbol: str) -> bool:
        age = self.metrics.market_data_age(symbol)
        if age is None or age > self.config.bot.market_data_stale_seconds:
            return True
        return not self.broker.market_data_in_sync(symbol)  # a book out of sync is never traded on

    def loop_progressing(self) -> bool:
        """What /healthz checks first (and the heartbeat and systemd's watchdog only): the trading loop completed an
        iteration within the heartbeat timeout, or the bot started less than that ago (the first iteration may still
        be under way: not a stall)."""
        return self.inst.loop_health()[0]

    def hang(self, seconds: float) -> None:
        """Fault injection: the trading loop makes no progress for `seconds`."""
        self._hang_until = time.monotonic() + seconds

    def hanging(self) -> bool:
        """Fault injection: whether the trading loop is inside the hang (the iteration under way when `hang` was
        called has finished: no iteration completes until the hang ends)."""
        return self._hanging

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call `callback()` when the background tasks stop (a fault injector releasing what it holds)."""
        self._on_stop.append(callback)

    def _register_readiness(self) -> None:
        def broker() -> tuple[bool, str]:
            down = [ch.value for ch in Channel if not self.broker.is_connected(ch)]
            return (not down, "connected" if not down else "down: " + ", ".join(down))

        def market_data() -> tuple[bool, str]:
            stale_symbols = [s for s in self.symbols if self.market_data_stale(s)]
            return (not stale_symbols, "fresh" if not stale_symbols else "stale: " + ", ".join(stale_symbols))

        def reconciliation() -> tuple[bool, str]:
            last = self.reconciler.last
            if last is None:
                return False, "not run yet"
            if not self.trading_allowed:
                return False, f"startup reconciliation not passed: {last['result']}"
            if self.reconnect_reconciliation_pending:
                return False, f"no reconciliation passed since the orders channel reconnected (last: {last['result']})"
            if last["result"] in (Result.FAILED, Result.HALTED, Result.UNKNOWN):
                why = f": {last['error']}" if last["result"] == Result.UNKNOWN else ""
                return False, f"last run {last['run_id']} {last['result']}{why}"
            return True, f"run {last['run_id']} {last['result']} at {last['finished_at']}"

        def journal() -> tuple[bool, str]:
            health = self.journal.health
            if health.failing:
                return False, f"cannot be written for {health.failing_for():.1f} s ({health.reason}): {health.error}"
            if self.gate.journal_reconcile_pending:
                return False, "written again; no reconciliation passed since"
            return True, "writable"

        def journal_alive() -> tuple[bool, str]:
            health, timeout = self.journal.health, self.config.bot.journal_failure_timeout_seconds
            if health.failing_for() > timeout:
                return False, (
                    f"journal failing, or not reconciled since, for {health.failing_for():.1f} s (over {timeout:g} s)"
                )
            return True, "writable" if not health.failing else f"failing for {health.failing_for():.1f} s"

        def instance_lock() -> tuple[bool, str]:
            problem = self.instance_lock.problem()
            return problem is None, problem or "held"

        self.inst.add_readiness_check("broker", broker)
        self.inst.add_readiness_check("market_data", market_data)
        self.inst.add_readiness_check("reconciliation", reconciliation)
        self.inst.add_readiness_check("journal", journal)
        self.inst.add_readiness_check("instance_lock", instance_lock)
        self.inst.add_health_check("journal", journal_alive)

    def _journal_transition(self, before: TradingState, after: TradingState, reason: str, by: str) -> None:
        """Every change of trading state goes to the journal with its reason and, for a control command, who asked
        from where (a loss-limit halt is found there at the next start). Written in the background, in order with
        the journal's other writes."""
        run_id = self.heartbeat.run_id
        if run_id is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return

        async def write() -> None:
            try:
                await self.journal.call(
                    self.recovery_store.record_transition, run_id, before.value, after.value, reason, by
                )
            except Exception:
                log.exception("journaling the state transition %s -> %s failed", before.value, after.value)

        task = loop.create_task(write())
        self._journal_writes.add(task)
        task.add_done_callback(self._journal_writes.discard)

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
            await self._start_unless_stopped(host or listen.host, listen.port if port is None else port)
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

    async def _start_unless_stopped(self, host: str, port: int) -> None:
        """`start`, unless a stop is asked first: a SIGTERM while the bot starts (its startup reconciliation waiting
        for room in the venue's rate limit, a venue that does not answer) interrupts the start's waits, and the
        shutdown runs at once, every local step included, rather than after the start."""
        start = asyncio.create_task(self.start(host, port), name="start")
        asked = asyncio.create_task(self._stop.wait(), name="stop-asked")
        try:
            await asyncio.wait({start, asked}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            start.cancel()
            raise
        finally:
            asked.cancel()
        if start.done():
            start.result()  # what the start raised, raised here
            return
        log.warning("start interrupted (%s): shutting down", self._stop_reason)
        start.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await start

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Detect a crash, restore the book and a standing loss-limit halt, know the day's loss and the drawdown
        (past a loss limit: halted), reconcile (the safe-start gate), then trade. Returns the bound port of the HTTP
        server."""
        self.crash = await self.heartbeat.begin()
        # Before the server's first scrape: the crash count is carried over restarts, never seen jumping from 0.
        self.metrics.crashes(await self.journal.call(self.recovery_store.crashed_runs, self.heartbeat.run_id))
        if self.crash is not None and self.ramp.stages:  # a crash loop falls back a stage before anything trades
            wall_now = self.ramp.wall()
            since = datetime.fromtimestamp(self.ramp_watch.crash_loop_since(wall_now), UTC)
            taken = self.ramp_watch.crash_loop_live_at(wall_now)
            live_at = None if taken is None else datetime.fromtimestamp(taken, UTC)
            recent = await self.journal.call(
                self.recovery_store.crashed_runs_since, self.heartbeat.run_id, since, live_at
            )
            self.ramp_watch.after_start(recent)
        crash_orders: list[dict[str, str]] = []
        crash_positions: dict[str, str] = {}
        if self.crash is not None:  # what the journal held at the crash, before reconciliation changes it
            crash_orders = await self._journal_open_orders()
            positions = await self.journal.call(self.journal.positions)
            crash_positions = {s: str(p.quantity) for s, p in sorted(positions.items())}
        await self.order_engine.restore_book()
        await self.peak_journal.load(self.risk.wall())
        await self._restore_loss_halt()
        # The day's loss and the drawdown as the journal knows them, before anything may trade: past a loss limit the
        # bot halts here (whatever was saved, cleared or resumed before the restart) and the gate refuses new risk.
        self.order_engine.export_pnl()
        bound = await self.inst.start(host, port, self.web_config)
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
        # Before the venue ticks on and before the loop may trade: the journal must agree with the venue.
        # Nothing else runs yet: these wait for room in the venue's rate limit rather than fail (a bot restarted after
        # its host died finds the counter spent by its own reconciliation, and must not exit for want of it).
        async with self.broker.patient():
            await self.reconcile(Trigger.STARTUP)
            await oe.adopt_open_orders()
            # What the venue holds is known now: from here on, a dead host or a hung loop leaves no order resting.
            await self.dead_man.arm()
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
        if self._venue_task is not None:
            self._tasks.append(asyncio.create_task(self._venue_task(), name=VENUE_TASK))
        if isinstance(self.strategy, StrategyWithStart):
            await self.strategy.on_start(self.context)
        self.inst.loop_starting()
        self.order_engine.export_pnl()  # again with the marks the venue gave since: unrealized P&L, the drawdown
        self.metrics.phase("trading")
        self._trading_began = True
        self._tasks.append(asyncio.create_task(self._trading_loop(), name="trading-loop"))
        self._tasks.append(asyncio.create_task(self.schedule.run(), name="reconciliation"))
        self.heartbeat.start()
        self.systemd.start_watchdog(self.loop_progressing)
        self.systemd.ready(f"trading {', '.join(self.symbols)} on {self.config.bot.venue}")
        log.info("bot %s trading %s on %s", self.config.bot.name, ", ".join(self.symbols), self.config.bot.venue)
        return bound

    async def _restore_loss_halt(self) -> None:
        """A halt for a loss limit (the day's loss, the drawdown) never clears by itself: when it is the last
        journaled state, start halted."""
        last = await self.journal.call(self.recovery_store.last_transition)
        if (
            last
            and last.get("after") == TradingState.HALTED
            and str(last.get("reason", "")).startswith(HALT_REASON_PREFIXES)
        ):
            self.inst.state.apply("halt", reason=str(last["reason"]))
            self.metrics.control_command("halt", SOURCE_RISK)
            self.kill_switch.sweep_after_step = True
            log.error("still halted by the loss limit (%s): clear_halt needs an operator", last["reason"])

    def request_stop(self, reason: str = "stop") -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            log.warning("shutdown requested (%s)", reason)
        self._stop.set()

    async def stop(self) -> None:
        await self.shutdown("stop")

    async def shutdown(self, reason: str = "stop", *, force_exit: bool = False) -> None:
        """Stop new orders, cancel or keep open orders by policy, disconnect, flush the journal, write the final
        heartbeat, then release everything: all of it within `recovery.shutdown_deadline_seconds`.

        The venue steps (the cancel of the open orders, disarming the dead man's switch) share a bounded part of the
        deadline (shutdown.VENUE_SHARE); one the venue keeps waiting is cut off there, unconfirmed, and the local steps
        still run. The final heartbeat carries the clean-shutdown marker when stopping the orders and the flush
        succeeded (the process stopped in order; a venue step it could not confirm is named in its reason, and the
        process exits 1 saying which); otherwise it records which failed, and the next start treats the run as a
        crash. Raises ShutdownDeadlineExceeded (after releasing what can be released quickly) when the deadline
        passes; with `force_exit`, a thread also ends the process shortly after the deadline whatever the loop is
        doing.
        """
        if self._stopped:
            return
        self._stopped = True
        self.gate.stopping = True
        self.metrics.phase("stopping")
        self._stop.set()
        self.systemd.stopping(f"shutting down ({reason})")
        rec = self.config.recovery
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
            if self._journal_writes:
                await asyncio.gather(*self._journal_writes)
            await self.journal.call(self.journal.flush)

        sequence.steps = [
            ("stop new orders", self._stop_trading),
            (orders_step, self._cancel_open_orders if policy == "cancel" else self._keep_open_orders),
            (switch_step, lambda: self._end_dead_man(orders_step, sequence.failed)),
            ("disconnect from the venue", self._disconnect),
            ("flush the journal", flush),
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
                f"the venue{self._left_to_the_switch()}"
            )
        (log.error if failed else log.info)(
            "bot %s stopped (%s)%s",
            self.config.bot.name,
            reason,
            f"; failed steps: {', '.join(failed)}" if failed else "",
        )

    async def _stop_trading(self) -> None:
        """No new order from here on: the step in progress finishes (bounded: a reconciliation waiting on the venue's
        rate limit holds the trade lock) and none starts after it."""
        self.gate.accepting = False
        bound = asyncio.timeout(self.config.recovery.shutdown_deadline_seconds * STOP_TRADING_SHARE)
        try:
            async with bound, self.trade_lock.hold():
                self._cancel_trading()
        except TimeoutError:
            if not bound.expired():
                raise
            log.warning("shutdown: the step in progress did not end in time (it waits on the venue): cancelled")
        self._cancel_trading()

    def _cancel_trading(self) -> None:
        for task in self._tasks:
            if task.get_name() in ("trading-loop", "reconciliation"):
                task.cancel()

    async def _cancel_open_orders(self) -> None:
        """Every working order of the bot, adopted ones included, confirmed by a look at the venue (its calls wait
        for room in the venue's rate limit, within the shutdown's deadline); raises when some are left working or the
        venue could not confirm it."""
        if await self._nothing_to_cancel():
            log.info("shutdown: no open order to cancel (the start was interrupted before any; the journal holds none)")
            return
        budget = self.config.recovery.shutdown_deadline_seconds / 2
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
        if self._trading_began or self.order_engine.open_order_count():
            return False
        try:
            return not await self.journal.call(self.journal.open_orders)
        except Exception as exc:  # the journal cannot say: ask the venue as usual
            log.warning("shutdown: the journal's open orders could not be read (%s): asking the venue", exc)
            return False

    def _left_to_the_switch(self) -> str:
        if self.dead_man.armed and self.dead_man.trigger is not None:
            return f"; the venue's dead man's switch cancels them at {self.dead_man.trigger.isoformat()}"
        return ""

    async def _end_dead_man(self, orders_step: str, failed: list[str]) -> None:
        """Disarm the venue's switch as `bot.dead_man_switch.disarm_on_shutdown` says: after_cancel only when this
        shutdown canceled the open orders (else the venue cancels what is left at the trigger)."""
        when = self.config.bot.dead_man_switch.disarm_on_shutdown
        canceled = self.config.recovery.open_orders_on_shutdown == "cancel" and orders_step not in failed
        if not self.dead_man.active:
            return
        if when == "always" or (when == "after_cancel" and canceled):
            async with self.broker.patient(), self.broker.protective():  # within the venue steps' share
                await self.dead_man.disarm()
            return
        self.dead_man.stop()
        if self.dead_man.armed:
            log.warning(
                "shutdown: the dead man's switch stays armed: the venue cancels every open order of the account at %s",
                self.dead_man.trigger.isoformat() if self.dead_man.trigger else "its trigger",
            )

    async def _keep_open_orders(self) -> None:
        log.info("shutdown: %d open orders kept on the venue (reconciled at the next start)", len(self.orders))

    async def _disconnect(self) -> None:
        """Let the venue hand over what it already produced, then close it: no event after the flush."""
        await self.broker.drain_events()
        await self.broker.close()
        await stop_tasks([t for t in self._tasks if t.get_name() == VENUE_TASK])

    def _released(self) -> None:
        for callback in self._on_stop:
            try:
                callback()
            except Exception:
                log.exception("a stop callback failed")

    async def _stop_background(self) -> None:
        await stop_tasks(self._tasks)
        self._tasks.clear()
        self._released()
        await self.systemd.close()

    async def _abandon(self) -> None:
        """The deadline passed (in-process): release what can be released without waiting on what is stuck."""
        try:
            async with asyncio.timeout(ABANDON_SECONDS):
                await self.heartbeat.stop_beating()
                await stop_tasks(self._tasks, timeout=ABANDON_SECONDS)
                self._released()
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

    async def _trading_loop(self) -> None:
        while not self._stop.is_set():
            while time.monotonic() < self._hang_until:  # fault injection: a hung loop makes no progress
                self._hanging = True
                await asyncio.sleep(min(0.1, self._hang_until - time.monotonic()))
            self._hanging = False
            started = time.monotonic()
            try:
                async with self.trade_lock.hold():
                    if self.trading_allowed and self.gate.accepting:
                        if self._flattening:
                            await self.order_engine.flatten_step()  # flatten is the runtime's, for every bot
                        else:
                            await self.strategy.step(self.context)
                    await self._after_step()
            except Exception:
                log.exception("trading loop iteration failed")
            self.metrics.loop_iteration(time.monotonic() - started)
            await asyncio.sleep(self.loop_interval)

    async def _on_connection(self, channel: Channel, connected: bool) -> None:
        self.ramp_watch.connection(channel.value, connected)
        await self.schedule.on_connection(channel, connected)

    async def _after_step(self) -> None:
        self._probe_journal()
        self.ramp_watch.check()  # a channel down too long falls back a stage
        self._confirm_instance_lock()
        await self.dead_man.refresh()  # from the loop itself: a loop that stops stops refreshing it
        # P&L first: a loss limit the step breached halts here, and the sweep that halt owes runs at once below,
        # not a loop interval later.
        self.order_engine.export_pnl()
        await self.kill_switch.after_step()
        headroom = self.broker.rate_limit_headroom()
        if headroom is not None:
            self.metrics.rate_limit_headroom(headroom)
        if self.broker.is_connected(Channel.ORDERS) and time.monotonic() >= self._clock_skew_due:
            # A request to the venue: not every step (a real venue counts it against the rate limit).
            self._clock_skew_due = time.monotonic() + CLOCK_SKEW_INTERVAL_SECONDS
            sent = datetime.now(UTC)
            server = await self.broker.server_time()
            received = datetime.now(UTC)
            self.metrics.clock_skew(clock_offset(sent, received, server, self.broker.server_time_resolution()))
        if time.monotonic() >= self._peak_save_due:
            self._peak_save_due = time.monotonic() + PEAK_SAVE_INTERVAL_SECONDS
            try:
                await self.peak_journal.save(self.risk.wall())
            except Exception:  # kept dirty: saved at the next attempt
                log.exception("journaling the equity peak failed")
        self._end_flatten_when_flat()

    def _end_flatten_when_flat(self) -> None:
        """A flatten under way ends once every position is closed and no order works: after each step, and at once
        when a venue event (or a reconciliation's adoption) closed the last one. A broker whose events arrive after
        the submit's answer (a stream, a poll) delivers the last fill after the step that sent its order; waiting for
        the next step left the flatten armed, and a position that came in meanwhile (a fill of no order, adopted by a
        reconciliation) was closed by the flatten given for the one before it, nobody asked. An order sent and not
        yet answered is working: its fill may be booked (a poll of the trades) before its answer comes, and a flatten
        that ended there would let the next order go out beside it."""
        if self._flattening and not any(self.book.position(s) for s in self.symbols) and not self._working():
            if self.inst.state.state is TradingState.FLATTENING:
                self.inst.state.apply("flatten_done", reason="all positions closed")
            else:
                self.inst.state.flatten_done_while_halted()

    def _working(self) -> int:
        """The orders working: acknowledged, of unknown outcome, or sent and not yet answered (in flight)."""
        return self.order_engine.open_order_count()

    @property
    def _flattening(self) -> bool:
        """A flatten is under way: the state flattening, or a flatten given while halted (the halt stays)."""
        state = self.inst.state
        return state.state is TradingState.FLATTENING or (
            state.state is TradingState.HALTED and state.flatten_while_halted
        )

    def _probe_journal(self) -> None:
        """A step in which no journal write landed writes the heartbeat: a journal that cannot be written is known
        (/readyz, the gate) within one loop step whatever the strategy did, and known writable again as soon. In the
        background, one at a time: a slow or hung database never holds the loop up here."""
        if self._journal_probe is not None and not self._journal_probe.done():
            return
        health = self.journal.health
        age = health.last_write_age()
        if health.failing or age is None or age > self.loop_interval:
            self._journal_probe = asyncio.create_task(self.heartbeat.beat(), name="journal-probe")
            self._journal_writes.add(self._journal_probe)
            self._journal_probe.add_done_callback(self._journal_writes.discard)

    # -- what other parts call ------------------------------------------------------------------------
    async def halt(self, reason: str) -> None:
        """The kill switch, engaged by the bot itself (a reconciliation's halt policy)."""
        if self.inst.state.state is not TradingState.HALTED:
            self.metrics.control_command("halt", SOURCE_RISK)
        await self.kill_switch.halt(reason)

    def _confirm_instance_lock(self) -> None:
        """After the database reconnected (a new session: a restart, a failover to a promoted standby), the
        single-instance advisory lock is confirmed on the server the journal writes to, or taken again there; the
        order gate lets nothing out until then (InstanceLock.problem). Its session is also looked at every heartbeat
        interval, a reconnect or not: a session ended on its own (pg_terminate_backend, a pooler, a timeout) takes
        the lock with it and nothing else says so. Another process holding the lock halts this one, which asks for it
        again every INSTANCE_LOCK_RETRY_SECONDS. In the background, one at a time, on the journal's thread, and not
        while the journal cannot be written (its return is when to try)."""
        lock = self.instance_lock
        now = time.monotonic()
        if lock.engine is None or self._stopped or self.journal.health.failing:
            return
        if lock.confirmed and now < self._lock_check_due:
            return
        if self._lock_check is not None and not self._lock_check.done():
            return
        if lock.holder and now < self._lock_retry_at:
            return
        self._lock_check_due = now + self.config.recovery.heartbeat_interval_seconds
        self._lock_check = asyncio.create_task(self._keep_instance_lock(), name="instance-lock")
        self._journal_writes.add(self._lock_check)
        self._lock_check.add_done_callback(self._journal_writes.discard)

    async def _keep_instance_lock(self) -> None:
        held_elsewhere = bool(self.instance_lock.holder)
        try:
            await self.journal.call(self.instance_lock.keep_database_lock)
        except AnotherInstanceRunning as exc:
            self._lock_retry_at = time.monotonic() + INSTANCE_LOCK_RETRY_SECONDS
            if not held_elsewhere:
                log.error("%s: halting, two instances must not trade one account", exc)
                await self.halt(f"single-instance lock lost: {exc}"[:200])
        except Exception as exc:  # the database went away again: the next step tries again
            log.warning("confirming the single-instance lock failed: %s", exc)
        else:
            if held_elsewhere:
                log.warning(
                    "bot %s holds its single-instance lock again (a halt stays until resumed)", self.config.bot.name
                )

    def _lost_reply(self) -> None:
        self.schedule.lost_reply()

    def _halted_by_risk(self, reason: str) -> None:
        """A risk limit halted the bot (the gate already refuses): its open orders go at the end of the step."""
        self.kill_switch.sweep_after_step = True

    async def reconcile(self, trigger: Trigger) -> dict[str, Any]:
        """One reconciliation with trading held (ReconciliationSchedule.reconcile)."""
        return await self.schedule.reconcile(trigger)

    def request_reconciliation(self, trigger: Trigger) -> None:
        """Ask the schedule for a reconciliation soon (ReconciliationSchedule.request)."""
        self.schedule.request(trigger)

    def hold_trading(self, timeout: float | None = None) -> contextlib.AbstractAsyncContextManager[bool]:
        """Hold the trade lock (TradeLock.hold): no strategy step, reconciliation or restricting command runs."""
        return self.trade_lock.hold(timeout)

    async def sweep_for_halt(self, step_finished: bool) -> int:
        """The `halt` command's sweep (the state is halted already, trading held): every working order canceled, and
        again right after the step in progress when it had not finished; a venue that cannot be reached raises
        BrokerError (the cancel is then pending until the reconnect)."""
        self.kill_switch.sweep_after_step = not step_finished
        return await self.kill_switch.sweep(raise_unreachable=True)

    def next_reconciliation_delay(self) -> float | None:
        return self.schedule.next_delay()

    @property
    def startup_failures(self) -> int:
        return self.schedule.startup_failures

    @property
    def cancel_pending(self) -> bool:
        return self.kill_switch.cancel_pending

    # -- status ---------------------------------------------------------------------------------------
    def trading_blocked(self) -> list[str]:
        """Why the bot would send no order that adds risk now (empty: it trades): its trading state, the safe-start
        gate, a loss limit it is past (refused orders then halt it again)."""
        blocked = []
        state = self.inst.state.state
        if not state.may_open_positions:
            blocked.append(f"state {state.value}")
        if not self.trading_allowed:
            blocked.append("the safe-start gate: no clean reconciliation yet")
        breach = self.risk.loss_breach()
        if breach is not None:
            blocked.append(f"risk limit {breach.limit}: {breach.message} (an order that adds risk halts it again)")
        return blocked

    def status(self) -> dict[str, Any]:
        """What `status` answers beyond the trading state (the control plane adds that)."""
        oe = self.order_engine
        return {
            "bot": self.config.bot.name,
            "venue": self.config.bot.venue,
            "pid": os.getpid(),
            "positions": {s: str(self.book.position(s)) for s in self.symbols},
            # Each position valued at its mark, in the quote asset (what the operator console shows at stake).
            "position_values": {s: str(self.book.notional(s).quantize(CENT)) for s in self.symbols},
            # Every order working, those sent and not yet answered included: the venue may hold an order whose
            # answer has not come, so a bot with one in flight is never reported flat or idle.
            "open_orders": self._working(),
            "orders_in_flight": len(oe.in_flight()),
            "orders_outcome_unknown": sum(not o.venue_order_id for o in self.orders.values()),
            "adopted_orders": len(oe.external_orders),
            "cancel_pending": self.cancel_pending,
            "dead_man_switch": self.dead_man.status(),
            "realized_pnl_today": str(self.book.realized_today.quantize(CENT)),
            "unrealized_pnl": str(self.book.unrealized_pnl().quantize(CENT)),
            "connected": {ch.value: self.broker.is_connected(ch) for ch in Channel},
            "risk_limits": {name: self.risk.limits.value(name) for name in LIMITS if self.risk.limits.value(name)},
            # The ramp's current stage and its latest changes (with why and by whom); null without stages.
            "ramp": self.ramp.status() if self.ramp.stages else None,
            # Whether it may send an order that adds risk now, and if not, every reason why (a halted bot, or one
            # resumed with the day's loss still past its limit, reads false).
            "trading_allowed": not self.trading_blocked(),
            "trading_blocked_by": self.trading_blocked(),
            "reconnect_reconciliation_pending": self.reconnect_reconciliation_pending,
            "journal": {
                "writable": not self.journal.health.failing,
                "reason": self.journal.health.reason,
                "failing_seconds": round(self.journal.health.failing_for(), 3),
                "reconciliation_pending": self.gate.journal_reconcile_pending,
            },
            "next_reconciliation_seconds": self.next_reconciliation_delay(),
            "reconciliation": {
                k: v
                for k, v in (self.reconciler.last or {}).items()
                if k in ("run_id", "trigger", "result", "finished_at")
            },
        }
