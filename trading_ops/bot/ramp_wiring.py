"""The ramp wired into a bot: its stage narrows the risk limits, it falls back by itself, it widens on a decision."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trading_ops.bot.control import CommandError, ControlPlane
from trading_ops.bot.decision_gate import DecisionGate
from trading_ops.bot.journal import Journal
from trading_ops.bot.metrics import BotMetrics
from trading_ops.bot.ramp import PromotionRefused, Ramp
from trading_ops.bot.ramp_watch import RampWatch
from trading_ops.bot.recovery_store import RecoveryStore
from trading_ops.bot.risk import RiskEngine, RiskLimits
from trading_ops.bot.state import StateMachine
from trading_ops.config import RampConfig
from trading_ops.decisions import RAMP_PROMOTE
from trading_ops.scopes import DESTRUCTIVE


class RampWiring:
    """The Ramp (ramp.py) and its RampWatch (ramp_watch.py) wired into the runtime: the current stage narrows
    `base_limits` in the RiskEngine it builds; a loss-limit breach falls back a stage at once, and so do a crash loop
    (judged at start, `after_crash`) and a channel down too long (`connection`, `check` from the loop); the next stage
    is taken only on the `ramp_promote` command with a decision the reconciler signed (`register`)."""

    def __init__(self, config: RampConfig, data_dir: Path, metrics: BotMetrics, base_limits: RiskLimits) -> None:
        self.ramp = Ramp(config.stages, data_dir, metrics)
        self.watch = RampWatch(self.ramp, config)
        self.base_limits = base_limits

    def risk_engine(self, state: StateMachine, metrics: BotMetrics, on_halt: Callable[[str], None]) -> RiskEngine:
        """The RiskEngine under the ramp: the current stage's limits, set again at every change of stage."""
        risk = RiskEngine(
            self.ramp.limits(self.base_limits), state, metrics, on_halt=on_halt, on_loss_limit=self.ramp.demote
        )
        self.ramp.on_change = lambda: risk.set_limits(self.ramp.limits(self.base_limits))
        return risk

    async def after_crash(self, journal: Journal, store: RecoveryStore, run_id: int | None) -> None:
        """The start found a crash: a crash loop (this one, those before it within the window since the stage was
        taken, the run live then included) falls back a stage before anything trades."""
        if not self.ramp.stages:
            return
        wall_now = self.ramp.wall()
        since = datetime.fromtimestamp(self.watch.crash_loop_since(wall_now), UTC)
        taken = self.watch.crash_loop_live_at(wall_now)
        live_at = None if taken is None else datetime.fromtimestamp(taken, UTC)
        recent = await journal.call(store.crashed_runs_since, run_id, since, live_at)
        self.watch.after_start(recent)

    def register(self, control: ControlPlane, decisions: DecisionGate) -> None:
        """The decisions the ramp was promoted on are spent; with stages, the `ramp_promote` command (wider limits:
        the destructive scope, as the reconciler's `ramp-promote` rule sends it, and a decision)."""
        for decision_id, expires_at in self.ramp.decisions.items():  # promoted on: spent
            decisions.remember(decision_id, expires_at)

        async def ramp_promote(args: dict[str, Any]) -> dict[str, Any]:
            return await self.promote(decisions, args)

        if self.ramp.stages:
            control.register("ramp_promote", ramp_promote, scope=DESTRUCTIVE)

    async def promote(self, decisions: DecisionGate, args: dict[str, Any]) -> dict[str, Any]:
        """`ramp_promote` {"stage": NAME, "decision": SIGNED}: take the next stage of the ramp on a decision the
        reconciler signed once people approved it (its `ramp-promote` rule): refused (403) without one that verifies
        for this bot and this stage, now, unspent; refused (400) when it is not the next stage or the current one's
        minimum time has not passed. An `approval` field is a comment; the decision's approvers are who decided."""
        stage = args.get("stage")
        if not isinstance(stage, str) or not stage:
            raise CommandError(
                'ramp_promote takes {"stage": the next stage\'s name, "decision": a decision the reconciler signed}'
            )
        decision = decisions.check(args.get("decision"), RAMP_PROMOTE, stage)
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
        decisions.kept_elsewhere(decision)
        return {"ramp": self.ramp.status(), "decision": decision.id}
