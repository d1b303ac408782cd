"""The trading loop: one strategy step per interval under the trade lock, then what every step owes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from trading_ops.bot.broker import Broker, Channel
from trading_ops.bot.dead_man_switch import DeadMansSwitch
from trading_ops.bot.drawdown import PeakJournal
from trading_ops.bot.gate import OrderGate
from trading_ops.bot.heartbeat import Heartbeat
from trading_ops.bot.journal import Journal
from trading_ops.bot.journal_writes import JournalWrites
from trading_ops.bot.kill_switch import KillSwitch
from trading_ops.bot.lock_keeper import LockKeeper
from trading_ops.bot.metrics import BotMetrics
from trading_ops.bot.orders import OrderEngine
from trading_ops.bot.ramp_watch import RampWatch
from trading_ops.bot.risk import RiskEngine
from trading_ops.bot.state import StateMachine, TradingState
from trading_ops.bot.strategy import Context, Strategy
from trading_ops.bot.trade_lock import TradeLock

log = logging.getLogger(__name__)

# How often the loop reads the venue's clock for tradingbot_clock_skew_seconds (TradingBotClockSkew waits 2 m).
CLOCK_SKEW_INTERVAL_SECONDS = 30.0
# How often the trading loop journals a risen equity peak (and at shutdown): a crash loses at most this much of a rise.
PEAK_SAVE_INTERVAL_SECONDS = 5.0
# How often a loop waiting for the trade lock looks at the progress of the reconciliation that holds it.
HELD_CHECK_SECONDS = 0.1


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


class TradingLoop:
    """Steps the strategy (or, while a flatten is under way, the flatten) every `interval` under the trade lock while
    the safe-start gate is open and the gate accepts, until `stop` is set. After each step, trading or not: the journal
    probed, the ramp's channel watch, the single-instance lock confirmed, the venue's switch refreshed (from the loop
    itself: a loop that stops stops refreshing it), P&L exported (a loss limit the step breached halts here), the kill
    switch's sweep, the venue's rate-limit headroom and clock, the equity peak journaled, and a flatten ended once
    flat. `strategy` is read at each step (a bot may set it before it starts)."""

    def __init__(
        self,
        *,
        stop: asyncio.Event,
        interval: float,
        strategy: Callable[[], Strategy],
        context: Context,
        symbols: Sequence[str],
        state: StateMachine,
        trade_lock: TradeLock,
        gate: OrderGate,
        order_engine: OrderEngine,
        broker: Broker,
        metrics: BotMetrics,
        journal: Journal,
        heartbeat: Heartbeat,
        writes: JournalWrites,
        ramp_watch: RampWatch,
        lock_keeper: LockKeeper,
        dead_man: DeadMansSwitch,
        kill_switch: KillSwitch,
        peak_journal: PeakJournal,
        risk: RiskEngine,
        held_progress: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.stop = stop
        self.interval = interval
        self.strategy = strategy
        self.context = context
        self.symbols = symbols
        self.state = state
        self.trade_lock = trade_lock
        self.gate = gate
        self.order_engine = order_engine
        self.broker = broker
        self.metrics = metrics
        self.journal = journal
        self.heartbeat = heartbeat
        self.writes = writes
        self.ramp_watch = ramp_watch
        self.lock_keeper = lock_keeper
        self.dead_man = dead_man
        self.kill_switch = kill_switch
        self.peak_journal = peak_journal
        self.risk = risk
        self.held_progress = held_progress
        self._clock_skew_due = 0.0  # time.monotonic() of the next clock reading
        self._peak_save_due = 0.0
        self._journal_probe: asyncio.Task[None] | None = None
        self._hang_until = 0.0
        self._hanging = False  # the loop is inside an injected hang (the iteration it was in has finished)

    async def run(self) -> None:
        while not self.stop.is_set():
            while time.monotonic() < self._hang_until:  # fault injection: a hung loop makes no progress
                self._hanging = True
                await asyncio.sleep(min(0.1, self._hang_until - time.monotonic()))
            self._hanging = False
            started = time.monotonic()
            try:
                await self._iteration(started)
            except Exception:
                log.exception("trading loop iteration failed")
            self.metrics.loop_iteration(time.monotonic() - started)
            await asyncio.sleep(self.interval)

    async def _iteration(self, waiting_since: float) -> None:
        """One step under the trade lock. While a reconciliation holds the lock, each step that run completes after
        this wait began counts as the loop's heartbeat (`held_progress`, LoopMetrics.loop_held): a run that waits
        patiently for the venue's rate limit is not a stalled loop, and the watchdog kept killing the bot in it. A run
        that makes no step, stuck on one answer or on a stalled journal, leaves the heartbeat to age."""
        while True:
            async with self.trade_lock.hold(timeout=HELD_CHECK_SECONDS) as held:
                if held:
                    if self.gate.trading_allowed and self.gate.accepting:
                        if self.flattening:
                            await self.order_engine.flatten_step()  # flatten is the runtime's, for every bot
                        else:
                            await self.strategy().step(self.context)
                    await self._after_step()
                    return
            progress = self.held_progress()
            if progress is not None and progress > waiting_since:
                self.metrics.loop_held(progress)

    def hang(self, seconds: float) -> None:
        """Fault injection: the trading loop makes no progress for `seconds`."""
        self._hang_until = time.monotonic() + seconds

    def hanging(self) -> bool:
        """Fault injection: whether the trading loop is inside the hang (the iteration under way when `hang` was
        called has finished: no iteration completes until the hang ends)."""
        return self._hanging

    async def _after_step(self) -> None:
        self._probe_journal()
        self.ramp_watch.check()  # a channel down too long falls back a stage
        self.lock_keeper.confirm()
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
        self.end_flatten_when_flat()

    def end_flatten_when_flat(self) -> None:
        """A flatten under way ends once every position is closed and no order works: after each step, and at once
        when a venue event (or a reconciliation's adoption) closed the last one. A broker whose events arrive after
        the submit's answer (a stream, a poll) delivers the last fill after the step that sent its order; waiting for
        the next step left the flatten armed, and a position that came in meanwhile (a fill of no order, adopted by a
        reconciliation) was closed by the flatten given for the one before it, nobody asked. An order sent and not
        yet answered is working (OrderEngine.open_order_count): its fill may be booked (a poll of the trades) before
        its answer comes, and a flatten that ended there would let the next order go out beside it."""
        book = self.order_engine.book
        if (
            self.flattening
            and not any(book.position(s) for s in self.symbols)
            and not self.order_engine.open_order_count()
        ):
            if self.state.state is TradingState.FLATTENING:
                self.state.apply("flatten_done", reason="all positions closed")
            else:
                self.state.flatten_done_while_halted()

    @property
    def flattening(self) -> bool:
        """A flatten is under way: the state flattening, or a flatten given while halted (the halt stays)."""
        state = self.state
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
        if health.failing or age is None or age > self.interval:
            self._journal_probe = self.writes.spawn(self.heartbeat.beat(), name="journal-probe")
