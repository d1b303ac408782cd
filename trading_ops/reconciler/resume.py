"""After a run stopped before its end (the reconciler died, the ledger went away): what it left running is killed,
and its episode is carried on from what its steps did, never doing again what was done."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from trading_ops.config import ReconcilerConfig
from trading_ops.reconciler.actions.base import ActionContext
from trading_ops.reconciler.approval_gate import SKIPPED
from trading_ops.reconciler.approvals import AWAITING_OUTCOME
from trading_ops.reconciler.escalation import Escalation
from trading_ops.reconciler.ledger import LEFTOVER_FENCE_SECONDS, UNKNOWN
from trading_ops.reconciler.playbook import Rule
from trading_ops.reconciler.processes import ProcessId, host_token, kill_leftover_group
from trading_ops.reconciler.runs import ENGINE_LOGGER, LEDGER_AWAY, RunHolder, RunPart

log = logging.getLogger(ENGINE_LOGGER)
# Outcomes of an earlier step that a run which stopped saw (or may have seen: `interrupted` is what a sweep wrote
# before outcomes could be unknown) and which say nothing about what the step did.
UNSEEN_OUTCOMES = (UNKNOWN, "interrupted")
# An attempt handed back while a step waits for a person's decision (carried on from that step once it is decided
# or expired).
AWAITING_APPROVAL = AWAITING_OUTCOME
# A step's outcomes that count as done: never run again.
DONE_OUTCOMES = ("success", SKIPPED)
# An attempt that ran a rule's protective steps while its cooldown held the others (Attempts.protective_first): carried
# on once the cooldown ends.
AWAITING_COOLDOWN = "cooldown"


@dataclass(frozen=True)
class Resume:
    """How a run carries on what a stopped run of its episode began (`Resumption._resumption`)."""

    # The attempt carried on (None: a new attempt), and its number as the rule's max_attempts counts it.
    attempt_id: int | None
    number: int
    # The first step to run (the rule's steps before it succeeded), and every position that succeeded.
    start: int
    done: frozenset[int]
    # Every step had succeeded: only the verification is left, and its failure is escalated, never run again.
    verify_only: bool = False


class Resumption(RunPart):
    """Owns the decision a run makes about an earlier run of its episode that stopped before the end: carry its
    attempt on from the first step not done, run again a step whose outcome is unknown (the rule's on_unknown), only
    verify when every step succeeded, or escalate; or leave it to the usual retry policy."""

    def __init__(self, holder: RunHolder, rc: ReconcilerConfig, escalation: Escalation) -> None:
        super().__init__(holder)
        self.rc = rc
        self.escalation = escalation

    async def carry_on(
        self, episode: dict[str, Any], rule: Rule, ctx: ActionContext, interrupted: bool
    ) -> tuple[bool, Resume | None]:
        """What is left of an earlier run of the episode that stopped before the end (`_resumption`): whether this
        run is already handled (decided: escalated), and the plan to carry the earlier attempt on (None: the usual
        start; `verify_only`: only the verification is left)."""
        if not episode["attempts"] or self.rc.dry_run:
            return False, None
        last = await self.db(self.ledger.last_run, episode["id"])
        carried = (*UNSEEN_OUTCOMES, AWAITING_APPROVAL, AWAITING_COOLDOWN)
        if last is None or not (interrupted or last["outcome"] in carried):
            return False, None
        found = await self._resumption(episode, rule, ctx, last)
        if found is None:
            return True, None  # decided (escalated): nothing is run again
        return False, found if isinstance(found, Resume) else None

    async def _resumption(
        self, episode: dict[str, Any], rule: Rule, ctx: ActionContext, last: dict[str, Any]
    ) -> Resume | bool | None:
        """What a run does after a run of its episode stopped before the end (the reconciler died, or the ledger
        went away): what its steps did is in `last` (the last attempt that ran steps), and none of it is done again.

        A step whose outcome is unknown (it was running when its run stopped): the rule's on_unknown decides, run
        it again (a new attempt from that step) or escalate. Every step succeeded: only the verification is left,
        and its failure escalates. Some steps succeeded, the rest never started: the same attempt carries on with
        the next. Returns that plan; None when it decided alone (the episode is closed); False when the usual retry
        policy applies (a step failed, or nothing ran)."""
        steps = {s["position"]: s for s in last["steps"]}
        if last["outcome"] not in (*UNSEEN_OUTCOMES, "success", "resolved", AWAITING_APPROVAL, AWAITING_COOLDOWN):
            return False
        if not steps:
            # Nothing ran. A run that handed itself back for the database, or to wait for an approval of its first
            # step, carries on its attempt (costing no attempt); one that died is retried or escalated by
            # max_attempts, as always.
            handed_back = last["outcome"] == AWAITING_APPROVAL or (
                last["outcome"] == "interrupted" and last["detail"] == LEDGER_AWAY
            )
            return Resume(last["id"], episode["attempts"], 0, frozenset()) if handed_back else False
        done = frozenset(p for p, s in steps.items() if s["outcome"] in DONE_OUTCOMES)
        unseen = sorted(p for p, s in steps.items() if s["outcome"] in UNSEEN_OUTCOMES)
        number, count = last["number"], len(rule.steps)
        if unseen and unseen[0] < len(rule.steps + rule.on_recovery):
            return await self._resume_unknown(episode, rule, ctx, last, unseen[0], done)
        if any(s["outcome"] not in DONE_OUTCOMES for p, s in steps.items() if p < count):
            return False  # a step failed: the rule's retry policy, as after any failed attempt
        if all(p in done for p in range(count)):
            ctx.history.append(
                f"attempt {number}: every step succeeded before the run stopped: verified, not run again"
            )
            return Resume(last["id"], episode["attempts"], count, done, verify_only=True)
        start = min(p for p in range(count) if p not in done)
        ctx.history.append(f"attempt {number}: carried on from step {start + 1} (the steps before it succeeded)")
        return Resume(last["id"], episode["attempts"], start, done)

    async def _resume_unknown(
        self,
        episode: dict[str, Any],
        rule: Rule,
        ctx: ActionContext,
        last: dict[str, Any],
        position: int,
        done: frozenset[int],
    ) -> Resume | None:
        """The step at `position` was running when its run stopped: its rule's on_unknown runs it again (a new attempt
        from that step; an on_recovery step: the recovery verified again) or escalates. None when the episode was
        closed escalated."""
        spec = (rule.steps + rule.on_recovery)[position]
        number, count = last["number"], len(rule.steps)
        policy = rule.unknown_policy(spec)
        what = f"the outcome of step {position + 1} ({spec.name}) of attempt {number} is unknown"
        ctx.history.append(f"attempt {number}: {what} (the reconciler stopped while it ran); on_unknown: {policy}")
        log.warning("episode %s: %s; on_unknown: %s", episode["id"], what, policy)
        if policy == "escalate":
            await self.escalation.give_up(episode, rule, ctx, f"{what}: not run again (on_unknown: escalate)")
            return None
        if position >= count:  # an on_recovery step: the recovery is verified again, then it runs again
            return Resume(last["id"], episode["attempts"], count, done)
        if episode["attempts"] >= rule.max_attempts:
            await self.escalation.give_up(episode, rule, ctx, f"{what} and no attempts left (on_unknown: retry)")
            return None
        return Resume(None, episode["attempts"] + 1, position, done)


class Leftovers(RunPart):
    """Owns the process groups that steps of dead runs left: those of this host are killed and their targets unfenced
    (before any retry: one action at a time per target); those of another host are left to a reconciler there (or
    the fence's end), and said so once each."""

    def __init__(self, holder: RunHolder) -> None:
        super().__init__(holder)
        # Fenced steps of another host, logged once each (nothing here can see their processes).
        self.foreign_fences: set[int] = set()

    async def reap(self, now: datetime) -> None:
        fenced = await self.db(self.ledger.fenced_steps, now)
        self.foreign_fences &= {step_id for step_id, _ in fenced}
        here = host_token()
        for step_id, token in fenced:
            process = ProcessId.parse(token)
            if process is not None and process.host != here:
                if step_id not in self.foreign_fences:
                    self.foreign_fences.add(step_id)
                    log.warning(
                        "step %s: its process group %s ran on another host or pid namespace: its target stays "
                        "fenced until a reconciler there kills it, or for %gs at most",
                        step_id,
                        token,
                        LEFTOVER_FENCE_SECONDS,
                    )
                continue
            await self._kill(step_id, process)

    async def _kill(self, step_id: int, process: ProcessId | None) -> None:
        if process is None:
            note = "[the run was interrupted; its process group is unknown]"
        else:
            try:
                killed = await asyncio.to_thread(kill_leftover_group, process)
            except Exception:
                log.exception("step %s: killing what is left of process group %s failed", step_id, process.pid)
                return  # still fenced: tried again on the next poll
            if killed:
                self.metrics.leftover_processes_killed.inc(killed)
                note = f"[the reconciler restarted; {killed} process(es) of group {process.pid} still ran: killed]"
                log.warning("step %s: %s", step_id, note)
            else:
                note = f"[the run was interrupted; nothing of process group {process.pid} still ran]"
        await self.db(self.ledger.unfence, step_id, note)
