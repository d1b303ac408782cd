"""The staged ramp: the current stage's limits on top of bot.risk, kept in the data directory, demoted by a breach."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge

from trading_ops.bot.metrics import PREFIX, BotMetrics
from trading_ops.bot.risk import RiskLimits
from trading_ops.config import RampStageConfig
from trading_ops.decisions import USED_KEEP_SECONDS, Decision
from trading_ops.durations import parse_duration

log = logging.getLogger(__name__)

# The ramp's state, beside the journal in bot.data_dir: the current stage and every change with its reason.
STATE_FILE = "ramp-state.json"
# Changes kept in the state file (the newest).
HISTORY_MAX = 200
STAGE_HELP = "The bot's current stage of its ramp (bot.ramp.stages), 1 the first (the narrowest); 0: no ramp."
DEMOTIONS_HELP = (
    "Times the bot fell back a stage of its ramp by itself, by cause (a loss-limit breach, a crash loop, a channel to "
    "the venue down too long)."
)
# Why a ramp falls back by itself: the `cause` label of tradingbot_ramp_demotions_total.
CAUSES = ("loss_limit", "crash_loop", "stream_down")


class PromotionRefused(Exception):
    """Why the ramp does not take the next stage now (one line)."""


def _tighter(base: float, stage: float) -> float:
    """The narrower of two limits, 0 meaning none."""
    if not stage:
        return base
    return stage if not base else min(base, stage)


class Ramp:
    """The bot's place on its ramp. The stage is durable (STATE_FILE, written atomically before it takes effect):
    a restart keeps it, and a state file naming a stage the configuration no longer has starts at the first (the
    narrowest). `on_change` is called after every change so the owner re-applies `limits()` to its RiskEngine at once.
    """

    def __init__(
        self,
        stages: list[RampStageConfig],
        data_dir: Path,
        metrics: BotMetrics,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.stages = stages
        self.path = Path(data_dir) / STATE_FILE
        self.wall = wall
        self.on_change: Callable[[], None] | None = None
        self.index = 0
        self.since = wall()
        self.history: list[dict[str, Any]] = []
        # The ids of the decisions the ramp was promoted on (id -> its expiry), kept in the state file with the stage
        # they allowed: one durable write for both, so a decision widens the limits once (the runtime's DecisionGate
        # refuses an id found here).
        self.decisions: dict[str, float] = {}
        if stages:
            self._load()
        registry = metrics.registry
        labels = ["venue", "strategy"]
        self._stage_gauge = (
            Gauge(f"{PREFIX}_ramp_stage", STAGE_HELP, labels, registry=registry)
            .labels(metrics.venue, metrics.strategy)
            .set
        )
        demotions = Counter(f"{PREFIX}_ramp_demotions", DEMOTIONS_HELP, [*labels, "cause"], registry=registry)
        self._demotions = {c: demotions.labels(metrics.venue, metrics.strategy, c).inc for c in CAUSES}
        self._stage_gauge(self.number)

    # -- reading ----------------------------------------------------------------------------------------
    @property
    def number(self) -> int:
        """The current stage, 1 the first; 0 without a ramp."""
        return self.index + 1 if self.stages else 0

    @property
    def stage(self) -> RampStageConfig | None:
        return self.stages[self.index] if self.stages else None

    def limits(self, base: RiskLimits) -> RiskLimits:
        """`base` (bot.risk) narrowed by the current stage."""
        stage = self.stage
        if stage is None:
            return base
        return replace(
            base,
            daily_loss=_tighter(base.daily_loss, stage.daily_loss_limit),
            max_position_notional=_tighter(base.max_position_notional, stage.max_position_notional),
            symbols=self.symbols(),
        )

    def symbols(self) -> frozenset[str] | None:
        """The symbols the bot may add risk in at this stage; None: every one."""
        stage = self.stage
        return frozenset(stage.symbols) if stage is not None and stage.symbols else None

    def status(self) -> dict[str, Any]:
        stage = self.stage
        return {
            "stage": self.number,
            "name": stage.name if stage else None,
            "stages": [s.name for s in self.stages],
            "since": self.since,
            "history": self.history[-10:],
        }

    # -- changes ----------------------------------------------------------------------------------------
    def demote(self, why: str, cause: str = "loss_limit") -> bool:
        """Fall back one stage by itself (`cause`, one of CAUSES): recorded with `why` and its cause, counted by
        cause, applied at once. False at the first stage (nothing to fall back to) or without a ramp."""
        if cause not in CAUSES:
            raise ValueError(f"unknown demotion cause {cause!r}")
        if self.index == 0 or not self.stages:
            return False
        self._move(self.index - 1, why=why, by="risk", cause=cause)
        self._demotions[cause]()
        log.error("ramp: fell back to stage %d (%s) on %s: %s", self.number, self.stages[self.index].name, cause, why)
        return True

    def promotion_problem(self, to: str) -> str | None:
        """Why the bot may not take stage `to` now (it must be the next, after the current stage's min_time); None
        when it may. Readiness over the stage's window is judged by whoever asks (trading-ops ramp)."""
        if not self.stages:
            return "the bot has no ramp (bot.ramp.stages)"
        if self.index + 1 >= len(self.stages):
            return f"the bot is at its last stage ({self.stages[self.index].name})"
        nxt = self.stages[self.index + 1]
        if to != nxt.name:
            return f"the next stage is {nxt.name!r}, not {to[:64]!r}"
        needed = parse_duration(self.stages[self.index].min_time)
        spent = self.wall() - self.since
        if spent < needed:
            return (
                f"stage {self.stages[self.index].name!r} lasts at least {self.stages[self.index].min_time}; "
                f"{spent / 3600:.1f} h spent"
            )
        return None

    def promote(self, to: str, by: str, why: str, decision: Decision | None = None) -> None:
        """Take stage `to` (the next) on people's approval `by` (the runtime's control API: the approvers of the signed
        `decision`, kept in the history with its requester, rule and id); PromotionRefused with the reason otherwise."""
        problem = self.promotion_problem(to)
        if problem is not None:
            raise PromotionRefused(problem)
        self._move(self.index + 1, why=why, by=by, decision=decision)
        rule = f" ({decision.rule}, decision {decision.id})" if decision is not None else ""
        log.warning("ramp: promoted to stage %d (%s), approved by %s%s", self.number, to, by, rule)

    def _move(
        self, index: int, *, why: str, by: str, cause: str = "promotion", decision: Decision | None = None
    ) -> None:
        before = self.stages[self.index].name
        now = self.wall()
        entry: dict[str, Any] = {
            "at": now,
            "from": before,
            "to": self.stages[index].name,
            "by": by,
            "cause": cause,
            "why": why[:500],
        }
        decisions = {k: v for k, v in self.decisions.items() if v + USED_KEEP_SECONDS > now}
        if decision is not None:
            entry.update(
                requested_by=decision.requested_by,
                approvers=list(decision.approvers),
                rule=decision.rule,
                decision=decision.id,
            )
            decisions[decision.id] = decision.expires_at
        self._save(index, now, [*self.history, entry][-HISTORY_MAX:], decisions)  # durable first
        self.index, self.since, self.history = index, now, [*self.history, entry][-HISTORY_MAX:]
        self.decisions = decisions
        self._stage_gauge(self.number)
        if self.on_change is not None:
            self.on_change()

    # -- the state file ---------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("ramp: %s unreadable (%s): starting at the first stage", self.path, exc)
            return
        names = [s.name for s in self.stages]
        name = data.get("stage") if isinstance(data, dict) else None
        if name not in names:
            log.error("ramp: %s names stage %r, not configured: starting at the first stage", self.path, name)
            return
        self.index = names.index(name)
        self.since = float(data.get("since", self.since))
        history = data.get("history")
        self.history = history if isinstance(history, list) else []
        decisions = data.get("decisions")
        if isinstance(decisions, dict):
            self.decisions = {str(k): float(v) for k, v in decisions.items() if isinstance(v, int | float)}

    def _save(self, index: int, since: float, history: list[dict[str, Any]], decisions: dict[str, float]) -> None:
        tmp = self.path.with_suffix(".tmp")
        state = {"stage": self.stages[index].name, "since": since, "history": history, "decisions": decisions}
        body = json.dumps(state)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
