"""The paper-trading bot: the demo strategy on the simulated venue, instrumented only through the library."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import signal
import time
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
)
from trading_ops.bot.control import CommandError
from trading_ops.bot.crash_report import format_report, send_report
from trading_ops.bot.heartbeat import CrashFound, Heartbeat
from trading_ops.bot.instrumentation import Instrumentation
from trading_ops.bot.journal import Journal
from trading_ops.bot.reconciliation import Reconciler, Result, Trigger, balance_changes, split_symbol
from trading_ops.bot.reconciliation_metrics import ReconciliationMetrics
from trading_ops.bot.recovery_store import RecoveryStore
from trading_ops.bot.sdnotify import SystemdNotifier
from trading_ops.bot.shutdown import ShutdownDeadlineExceeded, Step, run_steps
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
ADJUSTMENT_LIQUIDITY = "adjust"  # liquidity of a journaled position adjustment (no venue fill behind it)


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
        token = token if token is not None else resolve_secret(config, bot, "control_token", "bot.control_token")
        if not token:
            raise ConfigError("bot.control_token", "no token: set control_token_file or TRADING_OPS_CONTROL_TOKEN")
        self.data_dir = config.path(bot.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.venue_state_path = self.data_dir / f"{bot.name}-{VENUE_STATE_FILE}"
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
        )
        self.metrics = self.inst.metrics
        self.broker: PaperVenue = venue if venue is not None else self._load_or_make_venue()
        self.engine = (
            engine
            if engine is not None
            else make_engine(config.database_url(), sqlite_synchronous=config.database.sqlite_synchronous)
        )
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
        )
        self.reconciler = Reconciler(
            self.broker,
            self.journal,
            self.recovery_store,
            ReconciliationMetrics(self.metrics),
            self,
            policies=rec.policies,
            fills_lookback_seconds=rec.fills_lookback_seconds,
            split=self._split_symbol,
        )
        self.systemd = SystemdNotifier()
        self.crash: CrashFound | None = None
        self.trading_allowed = False  # the safe-start gate: opened by the first clean or resolved reconciliation
        self._accepting = True  # False once shutting down: no new orders
        self._reconciling = False
        self._deferred: list[VenueFill | VenueOrder] = []  # venue events that arrived during a reconciliation
        self._trade_lock = asyncio.Lock()  # held by a strategy step and by a reconciliation
        self._reconnected = asyncio.Event()
        self._channel_lost: set[Channel] = set()
        self._stop_reason = "stop"
        self._stopped = False
        self.orders: dict[str, VenueOrder] = {}  # working orders by client order id
        self.order_sent_at: dict[str, float] = {}
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
        stale = self.config.bot.market_data_stale_seconds

        def broker() -> tuple[bool, str]:
            down = [ch.value for ch in Channel if not self.broker.is_connected(ch)]
            return (not down, "connected" if not down else "down: " + ", ".join(down))

        def market_data() -> tuple[bool, str]:
            stale_symbols = [
                s for s in self.config.paper.symbols if (age := self.metrics.market_data_age(s)) is None or age > stale
            ]
            return (not stale_symbols, "fresh" if not stale_symbols else "stale: " + ", ".join(stale_symbols))

        def reconciliation() -> tuple[bool, str]:
            last = self.reconciler.last
            if last is None:
                return False, "not run yet"
            if not self.trading_allowed:
                return False, f"startup reconciliation not passed: {last['result']}"
            if last["result"] in (Result.FAILED, Result.HALTED):
                return False, f"last run {last['run_id']} {last['result']}"
            return True, f"run {last['run_id']} {last['result']} at {last['finished_at']}"

        self.inst.add_readiness_check("broker", broker)
        self.inst.add_readiness_check("market_data", market_data)
        self.inst.add_readiness_check("reconciliation", reconciliation)

    def next_client_order_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    # -- running --------------------------------------------------------------------------------------
    async def run(
        self, host: str | None = None, port: int | None = None, install_signals: bool = True, force_exit: bool = False
    ) -> None:
        """Trade until SIGTERM/SIGINT (or request_stop), then shut down gracefully within the deadline.

        With `force_exit` (the CLI) a shutdown past its deadline ends the process with exit status 1.
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
                await self.shutdown(self._stop_reason)
            except ShutdownDeadlineExceeded:
                if not force_exit:
                    raise
                logging.shutdown()
                os._exit(EXIT_FORCED)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Detect a crash, restore the book, reconcile (the safe-start gate), then trade."""
        self.crash = await self.heartbeat.begin()
        crash_orders = await self._journal_open_orders() if self.crash is not None else []
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
            await self._record_crash(self.crash, crash_orders)
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

    async def shutdown(self, reason: str = "stop") -> None:
        """Stop new orders, cancel or keep open orders by policy, flush the journal, write the final heartbeat
        with the clean-shutdown marker, all within `recovery.shutdown_deadline_seconds`; then close everything.

        Raises ShutdownDeadlineExceeded (after closing what can be closed) when the deadline passes.
        """
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        self.systemd.stopping(f"shutting down ({reason})")
        rec = self.config.recovery
        policy = rec.open_orders_on_shutdown
        steps: list[Step] = [
            ("stop new orders", self._stop_trading),
            (f"open orders: {policy}", self._cancel_open_orders if policy == "cancel" else self._keep_open_orders),
            ("flush the journal", lambda: self.journal.call(self.journal.flush)),
            ("final heartbeat with the clean-shutdown marker", lambda: self.heartbeat.stop(clean=True, reason=reason)),
        ]
        try:
            failed = await run_steps(steps, rec.shutdown_deadline_seconds)
        except ShutdownDeadlineExceeded:
            await self._teardown(wait_for_journal=False)
            raise
        await self._teardown(wait_for_journal=True)
        log.info(
            "paper bot %s stopped (%s)%s",
            self.config.bot.name,
            reason,
            f"; failed steps: {', '.join(failed)}" if failed else "",
        )

    async def _stop_trading(self) -> None:
        self._accepting = False
        async with self._trade_lock:  # the step in progress finishes; none starts after it
            for task in self._tasks:
                if task.get_name() in ("trading-loop", "reconciliation"):
                    task.cancel()

    async def _cancel_open_orders(self) -> None:
        canceled = await self.cancel_all()
        log.info("shutdown: %d open orders canceled", canceled)

    async def _keep_open_orders(self) -> None:
        log.info("shutdown: %d open orders kept on the venue (reconciled at the next start)", len(self.orders))

    async def _teardown(self, wait_for_journal: bool) -> None:
        await stop_tasks(self._tasks)
        self._tasks.clear()
        if self.chaos is not None:
            self.chaos.clear()
        await self.systemd.close()
        await self.broker.close()
        await self.inst.stop()
        if wait_for_journal:
            self.journal.close()
        else:
            self.journal._executor.shutdown(wait=False, cancel_futures=True)

    async def _restore_book(self) -> None:
        """Rebuild positions and P&L from the journal, so a restart continues where the bot stopped."""
        fills = await self.journal.call(self.journal.fills)
        for fill in fills:
            side = Side(fill.side)
            self.book.apply_fill(fill.symbol, side.sign * fill.quantity, fill.price, fill.fee, fill.executed_at)
        for symbol in self.config.paper.symbols:
            self.metrics.position(symbol, float(self.book.position(symbol)), 0.0)

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

    async def _record_crash(self, crash: CrashFound, open_orders: list[dict[str, str]]) -> None:
        """Store what the crash left and what the startup reconciliation did, and report it through apprise."""
        assert self.heartbeat.run_id is not None
        detail: dict[str, Any] = {
            "previous_run": crash.previous.to_dict(),
            "heartbeat_age_seconds": crash.heartbeat_age_seconds,
            "journal_open_orders": open_orders,
            "journal_positions": {s: str(self.book.position(s)) for s in sorted(self.book.holdings)},
            "reconciliation": self.reconciler.last,
            "state": self.inst.state.state.value,
        }
        event_id = await self.journal.call(
            self.recovery_store.record_event, self.heartbeat.run_id, "crash", crash.previous, detail
        )
        raw = resolve_secret(self.config, self.config.notifications, "urls", "notifications.urls")
        title, body = format_report(self.config.bot.name, self.config.bot.venue, detail)

        async def report() -> None:
            if await send_report(raw.split(), title, body):
                await self.journal.call(self.recovery_store.mark_notified, event_id)

        self._tasks.append(asyncio.create_task(report(), name="crash-report"))

    async def _adopt_open_orders(self) -> None:
        """Journaled orders the venue still works are this bot's again (their ages restart now)."""
        venue_open = {o.client_order_id: o for o in await self.broker.open_orders()}
        for order in await self.journal.call(self.journal.open_orders):
            if order.client_order_id in venue_open:
                self.orders[order.client_order_id] = venue_open[order.client_order_id]
                self.order_sent_at[order.client_order_id] = time.monotonic()

    async def _trading_loop(self) -> None:
        interval = self.config.paper.loop_interval_seconds
        while not self._stop.is_set():
            while time.monotonic() < self._hang_until:  # chaos: a hung loop makes no progress
                await asyncio.sleep(min(0.1, self._hang_until - time.monotonic()))
            started = time.monotonic()
            try:
                async with self._trade_lock:
                    if self.trading_allowed and self._accepting:
                        await self.strategy.step(self)
                    await self._after_step()
            except Exception:
                log.exception("trading loop iteration failed")
            self.metrics.loop_iteration(time.monotonic() - started)
            await asyncio.sleep(interval)

    async def _after_step(self) -> None:
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
    async def submit(
        self,
        symbol: str,
        side: Side,
        order_type: OrderType,
        quantity: Decimal,
        price: Decimal | None = None,
        reduce_only: bool = False,
    ) -> VenueOrder | None:
        if not (self.trading_allowed and self._accepting):
            log.warning(
                "order for %s refused: %s", symbol, "shutting down" if not self._accepting else "not reconciled"
            )
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
        self.order_sent_at[request.client_order_id] = time.monotonic()
        self.metrics.order_submitted(symbol, side.value, order_type.value, request.client_order_id)
        try:
            return await self.broker.submit(request)
        except BrokerError as exc:
            self.metrics.venue_error(exc.error_class)
            self.metrics.order_rejected(symbol, exc.error_class, request.client_order_id)
            self.order_sent_at.pop(request.client_order_id, None)
            await self.journal.call(self.journal.order_failed, request.client_order_id, exc.error_class)
            log.info("order %s not placed: %s (%s)", request.client_order_id, exc, exc.error_class)
            return None

    async def cancel(self, client_order_id: str) -> bool:
        try:
            await self.broker.cancel(client_order_id)
            return True
        except BrokerError as exc:
            self.metrics.venue_error(exc.error_class)
            log.info("cancel %s failed: %s", client_order_id, exc)
            return False

    async def cancel_all(self) -> int:
        canceled = 0
        for order in await self.broker.open_orders():
            if order.client_order_id in self.orders and await self.cancel(order.client_order_id):
                canceled += 1
        return canceled

    # -- venue events ---------------------------------------------------------------------------------
    async def _on_order(self, order: VenueOrder) -> None:
        if self._reconciling:
            self._deferred.append(order)
            return
        await self._apply_order(order)

    async def _apply_order(self, order: VenueOrder) -> None:
        coid = order.client_order_id
        known = coid in self.orders or coid in self.order_sent_at
        if not known:
            log.warning("order update for an order this bot did not place: %s", coid)
            return
        m = self.metrics
        if order.status is OrderStatus.REJECTED:
            m.order_rejected(order.symbol, order.reject_reason or "unknown", coid)
            self.orders.pop(coid, None)
        elif order.status is OrderStatus.CANCELED:
            m.order_canceled(order.symbol, coid)
            self.orders.pop(coid, None)
        elif order.status is OrderStatus.ACKNOWLEDGED and coid not in self.orders:
            m.order_acknowledged(order.symbol, order.side.value, order.order_type.value, coid)
            self.orders[coid] = order
        elif order.status.is_open:
            self.orders[coid] = order
        else:
            self.orders.pop(coid, None)
        if not order.status.is_open:
            self.order_sent_at.pop(coid, None)
        await self.journal.call(self.journal.order_update, order)

    async def _on_fill(self, fill: VenueFill) -> None:
        if self._reconciling:
            self._deferred.append(fill)
            return
        await self._apply_fill(fill)

    async def _apply_fill(self, fill: VenueFill, adjustment: bool = False) -> bool:
        """Book and journal a fill (with its position and balance changes, in one transaction) and export it;
        False when its trade id is already journaled (a fill delivered twice counts once)."""
        holding_before = self.book.holding(fill.symbol)
        snapshot = (holding_before.quantity, holding_before.average_price, holding_before.realized_pnl)
        realized_before = self.book.realized_today
        self.book.apply_fill(fill.symbol, fill.side.sign * fill.quantity, fill.price, fill.fee, fill.executed_at)
        h = self.book.holding(fill.symbol)
        changes = None if adjustment else balance_changes(fill, self._split_symbol)
        stored = await self.journal.call(
            self.journal.fill, fill, (h.quantity, h.average_price, h.realized_pnl), changes
        )
        if not stored:  # the same trade id twice: undo, count nothing
            h.quantity, h.average_price, h.realized_pnl = snapshot
            self.book.realized_today = realized_before
            return False
        if adjustment:
            self._export_pnl()
            return True
        order = self.orders.get(fill.client_order_id or "")
        done = order is not None and order.filled_quantity + fill.quantity >= order.quantity
        if order is not None:
            order.filled_quantity += fill.quantity
            if done:
                self.orders.pop(order.client_order_id, None)
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
        self.metrics.position(fill.symbol, float(h.quantity), float(self.book.notional(fill.symbol)))
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
            self._reconnected.set()  # what happened while the orders channel was down: reconcile
        if connected:
            self._channel_lost.discard(channel)
        else:
            self._channel_lost.add(channel)
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
        if command == "halt":
            canceled = await self.cancel_all()
            log.warning("kill switch engaged: %d open orders canceled", canceled)

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
        return await self.reconcile(Trigger.COMMAND)

    # -- reconciliation -------------------------------------------------------------------------------
    async def reconcile(self, trigger: Trigger) -> dict[str, Any]:
        """One reconciliation with trading held: no strategy step runs and venue events wait until it ends."""
        async with self._trade_lock:
            self._reconciling = True
            try:
                summary = await self.reconciler.run(trigger)
                while self._deferred:  # in arrival order; what the run adopted counts once
                    event = self._deferred.pop(0)
                    if isinstance(event, VenueFill):
                        await self._apply_fill(event)
                    else:
                        await self._apply_order(event)
            finally:
                self._reconciling = False
        if summary["result"] in (Result.CLEAN, Result.RESOLVED) and not self.trading_allowed:
            self.trading_allowed = True
            log.info("safe-start gate open: reconciliation %d %s", summary["run_id"], summary["result"])
        return summary

    async def _reconcile_on_schedule(self) -> None:
        rec = self.config.recovery
        while True:
            if not self.trading_allowed:
                timeout: float | None = rec.reconcile_retry_seconds
            else:
                timeout = rec.reconcile_interval_seconds or None
            try:
                async with asyncio.timeout(timeout):
                    await self._reconnected.wait()
                self._reconnected.clear()
                trigger = Trigger.RECONNECT
            except TimeoutError:
                trigger = Trigger.SCHEDULE if self.trading_allowed else Trigger.STARTUP
            try:
                await self.reconcile(trigger)
            except Exception:
                log.exception("reconciliation (%s) raised", trigger.value)

    async def adopt_fill(self, fill: VenueFill) -> bool:
        return await self._apply_fill(fill)

    async def adopt_order(self, order: VenueOrder) -> None:
        coid = order.client_order_id
        await self.journal.call(self.journal.upsert_order, order, EXTERNAL_STRATEGY)
        if order.status.is_open:
            self.orders[coid] = order
            self.order_sent_at.setdefault(coid, time.monotonic())
        else:
            self.orders.pop(coid, None)
            self.order_sent_at.pop(coid, None)
            self.metrics.order_closed(coid)

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

    async def fills_changed(self) -> None:
        self.book = Book()
        await self._restore_book()
        for symbol, h in self.book.holdings.items():
            await self.journal.call(self.journal.set_position, symbol, h.quantity, h.average_price, h.realized_pnl)

    async def halt(self, reason: str) -> None:
        if self.inst.state.state is not TradingState.HALTED:
            self.inst.state.apply("halt", reason=reason[:200])
            canceled = await self.cancel_all()
            log.error("kill switch engaged by %s; %d open orders canceled", reason, canceled)

    def _status(self) -> dict[str, Any]:
        return {
            "bot": self.config.bot.name,
            "venue": self.config.bot.venue,
            "pid": os.getpid(),
            "positions": {s: str(self.book.position(s)) for s in self.config.paper.symbols},
            "open_orders": len(self.orders),
            "realized_pnl_today": str(self.book.realized_today.quantize(CENT)),
            "unrealized_pnl": str(self.book.unrealized_pnl().quantize(CENT)),
            "connected": {ch.value: self.broker.is_connected(ch) for ch in Channel},
            "chaos": self.chaos.status() if self.chaos is not None else None,
            "trading_allowed": self.trading_allowed,
            "reconciliation": {
                k: v
                for k, v in (self.reconciler.last or {}).items()
                if k in ("run_id", "trigger", "result", "finished_at")
            },
        }


def data_path(config: Config) -> Path:
    return config.path(config.bot.data_dir)


__all__ = ["Broker", "PaperBot", "make_venue"]
