"""What the control commands ask of a bot's runtime, over its parts: the commands' side of the runtime."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from trading_ops.bot.broker import Broker, Channel
from trading_ops.bot.commands import register_commands
from trading_ops.bot.control import ControlPlane
from trading_ops.bot.dead_man_switch import DeadMansSwitch
from trading_ops.bot.decision_gate import DecisionGate
from trading_ops.bot.gate import OrderGate
from trading_ops.bot.journal import Journal
from trading_ops.bot.kill_switch import KillSwitch
from trading_ops.bot.orders import OrderEngine
from trading_ops.bot.ramp import Ramp
from trading_ops.bot.reconciliation import Reconciler, Trigger
from trading_ops.bot.risk import HALT_REASON_PREFIXES, LIMITS, RiskEngine
from trading_ops.bot.schedule import ReconciliationSchedule
from trading_ops.bot.state import StateMachine, TradingState
from trading_ops.bot.trade_lock import TradeLock
from trading_ops.decisions import CLEAR_HALT

CENT = Decimal("0.01")


class ControlCommands:
    """The runtime as the control commands see it (commands.CommandRuntime; the commands themselves are in
    trading_ops.bot.commands): a reconciliation with trading held, the kill switch's sweep, the trade lock, and what
    `status` answers beyond the trading state, read from the parts that own each value."""

    def __init__(
        self,
        *,
        bot: str,
        venue: str,
        symbols: Sequence[str],
        broker: Broker,
        state: StateMachine,
        gate: OrderGate,
        risk: RiskEngine,
        order_engine: OrderEngine,
        schedule: ReconciliationSchedule,
        reconciler: Reconciler,
        kill_switch: KillSwitch,
        trade_lock: TradeLock,
        dead_man: DeadMansSwitch,
        ramp: Ramp,
        journal: Journal,
        stopping: Callable[[], bool],
    ) -> None:
        self.bot = bot
        self.venue = venue
        self.symbols = symbols
        self.broker = broker
        self.state = state
        self.gate = gate
        self.risk = risk
        self.order_engine = order_engine
        self.schedule = schedule
        self.reconciler = reconciler
        self.kill_switch = kill_switch
        self.trade_lock = trade_lock
        self.dead_man = dead_man
        self.ramp = ramp
        self.journal = journal
        self._stopping = stopping

    def register(self, control: ControlPlane) -> None:
        """The commands every bot on the runtime answers, and the status fields."""
        register_commands(control, self.broker, self)

    @property
    def stopping(self) -> bool:
        return self._stopping()

    @property
    def trading_allowed(self) -> bool:
        return self.gate.trading_allowed

    async def cancel_all(self) -> int:
        return await self.order_engine.cancel_all()

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

    def trading_blocked(self) -> list[str]:
        """Why the bot would send no order that adds risk now (empty: it trades): its trading state, the safe-start
        gate, a loss limit it is past (refused orders then halt it again)."""
        blocked = []
        state = self.state.state
        if not state.may_open_positions:
            blocked.append(f"state {state.value}")
        if not self.gate.trading_allowed:
            blocked.append("the safe-start gate: no clean reconciliation yet")
        breach = self.risk.loss_breach()
        if breach is not None:
            blocked.append(f"risk limit {breach.limit}: {breach.message} (an order that adds risk halts it again)")
        return blocked

    def status(self) -> dict[str, Any]:
        """What `status` answers beyond the trading state (the control plane adds that)."""
        oe = self.order_engine
        book = oe.book
        health = self.journal.health
        return {
            "bot": self.bot,
            "venue": self.venue,
            "pid": os.getpid(),
            "positions": {s: str(book.position(s)) for s in self.symbols},
            # Each position valued at its mark, in the quote asset (what the operator console shows at stake).
            "position_values": {s: str(book.notional(s).quantize(CENT)) for s in self.symbols},
            # Every order working, those sent and not yet answered included: the venue may hold an order whose
            # answer has not come, so a bot with one in flight is never reported flat or idle.
            "open_orders": oe.open_order_count(),
            "orders_in_flight": len(oe.in_flight()),
            "orders_outcome_unknown": sum(not o.venue_order_id for o in oe.orders.values()),
            "adopted_orders": len(oe.external_orders),
            "cancel_pending": self.kill_switch.owes_cancels,
            "dead_man_switch": self.dead_man.status(),
            "realized_pnl_today": str(book.realized_today.quantize(CENT)),
            "unrealized_pnl": str(book.unrealized_pnl().quantize(CENT)),
            "connected": {ch.value: self.broker.is_connected(ch) for ch in Channel},
            "risk_limits": {name: self.risk.limits.value(name) for name in LIMITS if self.risk.limits.value(name)},
            # The ramp's current stage and its latest changes (with why and by whom); null without stages.
            "ramp": self.ramp.status() if self.ramp.stages else None,
            # Whether it may send an order that adds risk now, and if not, every reason why (a halted bot, or one
            # resumed with the day's loss still past its limit, reads false).
            "trading_allowed": not self.trading_blocked(),
            "trading_blocked_by": self.trading_blocked(),
            "reconnect_reconciliation_pending": self.gate.reconnect_pending,
            "journal": {
                "writable": not health.failing,
                "reason": health.reason,
                "failing_seconds": round(health.failing_for(), 3),
                "reconciliation_pending": self.gate.journal_reconcile_pending,
            },
            "next_reconciliation_seconds": self.schedule.next_delay(),
            "reconciliation": {
                k: v
                for k, v in (self.reconciler.last or {}).items()
                if k in ("run_id", "trigger", "result", "finished_at")
            },
        }


def guard_clear_halt(control: ControlPlane, state: StateMachine, decisions: DecisionGate) -> None:
    """A halt a loss limit set (the day's loss, the drawdown) is cleared only on a signed clear_halt decision
    ({"decision": SIGNED}: people approved the bot trading again); any other halt clears in one step. The decisions
    the bot holds are in `status`."""

    async def clear_halt(args: dict[str, Any]) -> None:
        if state.state is not TradingState.HALTED or not state.reason.startswith(HALT_REASON_PREFIXES):
            return None
        decisions.spend(decisions.check(args.get("decision"), CLEAR_HALT))
        return None

    control.guard("clear_halt", clear_halt)
    control.add_status(lambda: {"decisions": decisions.status()})
