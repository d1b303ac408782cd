"""One attempt at a rule: its steps run in order, verified, then retried after a backoff or given up on."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from trading_ops.config import ReconcilerConfig
from trading_ops.db.base import utcnow
from trading_ops.reconciler.actions import ACTIONS
from trading_ops.reconciler.actions.base import ActionContext
from trading_ops.reconciler.approval_gate import COVERED, SKIPPED, ApprovalGate
from trading_ops.reconciler.escalation import Escalation
from trading_ops.reconciler.ledger import Written
from trading_ops.reconciler.ledger.rollback import ATTEMPT
from trading_ops.reconciler.playbook import Rule
from trading_ops.reconciler.resume import AWAITING_COOLDOWN, Resume
from trading_ops.reconciler.runs import RunHolder, RunPart
from trading_ops.reconciler.steps import AttemptRun, Steps
from trading_ops.reconciler.verification import Verification


class Attempts(RunPart):
    """Owns an attempt from its start to its end: opened (or carried on from a stopped run), the rule's steps run in
    order until one fails (the alert resolving between steps ends the run; a destructive step without
    allow_destructive is refused; dry-run records the plan; a step needing approval passes `ApprovalGate` first),
    verified, and on failure the episode deferred to its retry (backoff) or given up on (`Escalation.give_up`)."""

    def __init__(
        self,
        holder: RunHolder,
        rc: ReconcilerConfig,
        rng: random.Random,
        steps: Steps,
        approval_gate: ApprovalGate,
        verification: Verification,
        escalation: Escalation,
    ) -> None:
        super().__init__(holder)
        self.rc = rc
        self.rng = rng
        self.steps = steps
        self.approval_gate = approval_gate
        self.verification = verification
        self.escalation = escalation

    async def attempt(
        self, episode: dict[str, Any], rule: Rule, ctx: ActionContext, resume: Resume | None = None
    ) -> None:
        start, done = (resume.start, resume.done) if resume is not None else (0, frozenset[int]())
        number, attempt_id = await self._open(episode, resume, start)
        run = AttemptRun(episode, rule, ctx, attempt_id, number)
        ran = await self._run_steps(run, start, done)
        if ran is None:
            return
        failure, refused = ran
        if self.rc.dry_run:
            await self.db(self.ledger.finish_attempt, attempt_id, "dry_run", "dry run: nothing executed")
            await self.holder.close(episode, "dry_run", f"dry run: would run {len(rule.steps)} step(s) of {rule.name}")
            return
        if not failure:
            verified = await self.verification.verify_attempt(run, done)
            if verified is None:
                return
            failure = verified
        await self.db(self.ledger.finish_attempt, attempt_id, "failure", failure)
        # A refused step would be refused again: no retry, straight to the failure policy. Nor when every step had
        # succeeded in a run that stopped: its verification failing is escalated, the steps are never run again.
        verify_only = resume is not None and resume.verify_only
        if number < rule.max_attempts and not refused and not verify_only:
            delay = rule.backoff.delay(number, self.rng)
            retry_at = utcnow() + timedelta(seconds=delay)
            await self.holder.defer(
                episode, "pending", retry_at, f"attempt {number} failed ({failure[:200]}); retry at {retry_at}"
            )
            return
        await self.escalation.give_up(episode, rule, ctx, failure)

    async def _open(self, episode: dict[str, Any], resume: Resume | None, start: int) -> tuple[int, int]:
        """The attempt this run makes, carried on or new: its number and id."""
        if resume is not None and resume.attempt_id is not None:
            number, attempt_id = resume.number, resume.attempt_id
            await self.db(self.ledger.resume_attempt, attempt_id, self.owner, f"carried on from step {start + 1}")
        else:
            number = episode["attempts"] + 1
            attempt_id = await self.db(self.ledger.start_attempt, episode["id"], self.owner)
            self.holder.wrote(Written(ATTEMPT, episode["id"], attempt_id, f"attempt {number}"))
        if number == 1 and not episode["first_action_at"]:
            self.metrics.time_to_first_action.observe(max(0.0, (utcnow() - episode["starts_at"]).total_seconds()))
        return number, attempt_id

    async def protective_first(self, episode: dict[str, Any], rule: Rule, ctx: ActionContext, until: datetime) -> None:
        """The rule's cooldown holds it until `until`, but some of its steps are protective: those (and its pages) run
        now, in order, in an attempt of their own; the others wait for the cooldown, when the same attempt carries on
        with them (`Resumption`: the steps that succeeded are not run again). The history, which the pages quote, says
        which ran and which wait."""
        now_positions = rule.protective_positions
        ran = [s.name for p, s in enumerate(rule.steps) if p in now_positions]
        wait = [s.name for p, s in enumerate(rule.steps) if p not in now_positions]
        ctx.history.append(
            f"cooldown of rule {rule.name} until {until.isoformat()}: its protective steps run now ({', '.join(ran)}); "
            f"the others wait for the cooldown ({', '.join(wait)})"
        )
        number, attempt_id = await self._open(episode, None, 0)
        run = AttemptRun(episode, rule, ctx, attempt_id, number)
        skip = frozenset(p for p in range(len(rule.steps)) if p not in now_positions)
        result = await self._run_steps(run, 0, skip)
        if result is None:
            return
        failure, _refused = result
        detail = (
            f"cooldown of rule {rule.name} on {episode['target']} until {until}: protective steps run "
            f"({failure[:200] if failure else 'done'}); {', '.join(wait)} wait"
        )
        await self.db(self.ledger.finish_attempt, attempt_id, AWAITING_COOLDOWN, detail)
        await self.holder.defer(episode, "waiting", until, detail)

    async def _run_steps(
        self, run: AttemptRun, start: int, done: frozenset[int] = frozenset()
    ) -> tuple[str, bool] | None:
        """Run the rule's steps from `start` but those in `done`, in order, until one fails: returns the failure (""
        when none did) and whether the step was refused (it would be again: no retry). None when the run ended on the
        way (the alert resolved between steps; a step waits for an approval, or its approval was rejected or
        expired)."""
        episode, rule, ctx = run.episode, run.rule, run.ctx
        for position, step in enumerate(rule.steps):
            if position < start or position in done:
                continue  # succeeded in the run that stopped (or, protective, before the cooldown): never run twice
            if await self.holder.is_resolved(episode["id"]):
                await self.db(self.ledger.finish_attempt, run.attempt_id, "resolved", "resolved between steps")
                await self.holder.close(episode, "resolved", "resolved during the run; remaining steps cancelled")
                return None
            record = run.step_record(position, step)
            reason = run.refusal(step)
            if reason is not None:
                await self.db(self.ledger.start_step, *record, outcome="refused", output=reason)
                self.metrics.actions.labels(step.action, "refused").inc()
                run.note(reason)  # the page says why nothing was done
                return reason, True
            if self.rc.dry_run:
                after = " (after an approval)" if rule.needs_approval(step, ctx.labels) else ""
                would = f"would run: {run.step_name(step)}{after}"
                await self.db(self.ledger.start_step, *record, outcome="dry_run", output=would)
                self.metrics.actions.labels(step.action, "dry_run").inc()
                continue
            needless = await ACTIONS[step.action].needless(ctx, step.params)
            if needless is not None:  # nobody is asked (nor paged) for what has nothing to do
                await self.db(self.ledger.start_step, *record, outcome=SKIPPED, output=needless)
                self.metrics.actions.labels(step.action, SKIPPED).inc()
                run.note(f"{run.step_name(step)}: skipped: {needless}")
                continue
            if rule.needs_approval(step, ctx.labels):
                gate = await self.approval_gate.gate(run, position, step)
                if gate is None:
                    return None  # waits for the decision (the episode parked), or ended (rejected, expired: escalated)
                if gate == SKIPPED:
                    continue
                if gate != COVERED:  # an earlier step's approval, spent then, covers this one
                    ctx.approval = await self.approval_gate.spend(gate)
            result = await self.steps.run_step(run, record, step)
            ctx.results.append((step.action, result))
            if not result.ok:
                return f"{run.step_name(step)}: {result.outcome}: {result.output[:300]}", result.outcome == "refused"
        return "", False
