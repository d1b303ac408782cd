"""The gate of a step marked `approval: required`: asked for, waited on, spent once, or ended on a rejection."""

from __future__ import annotations

import functools
import json
import logging
from datetime import datetime, timedelta
from typing import Any

from trading_ops.config import ReconcilerConfig
from trading_ops.db.base import utcnow
from trading_ops.reconciler.actions.escalate import APPROVAL_REQUESTED, FAILED, escalation_alert
from trading_ops.reconciler.approvals import (
    APPROVED,
    AWAITING,
    EXECUTED,
    EXPIRED,
    PENDING,
    REJECTED,
    SELF_APPROVED,
    ApprovalStore,
    approvers_of,
    attribution,
    kind_of,
    requester_of,
    required_for,
    self_approved,
)
from trading_ops.reconciler.escalation import Escalation
from trading_ops.reconciler.playbook import Playbook, StepSpec
from trading_ops.reconciler.requests import REQUEST_LABEL, RequestStore
from trading_ops.reconciler.runs import ENGINE_LOGGER, LostClaim, RunHolder, RunPart
from trading_ops.reconciler.steps import AttemptRun

log = logging.getLogger(ENGINE_LOGGER)
# The outcome of a step an expired approval skipped (on_timeout: skip): done, as a success is.
SKIPPED = "skipped"
# What `gate` returns for a step an earlier step's approval covered (one decision for the steps in a row that each
# need one, e.g. cancel_all then flatten): it runs without asking again; that approval was spent by the first step.
COVERED = "covered"
# How a step name of a covering approval joins the names of its steps.
THEN = ", then "


def approved_by(row: dict[str, Any]) -> str:
    """Who approved, as the episode's history says it: the deciding principal (its comment beside it), every approver
    when several were needed, and "approved by its requester (allowed by configuration)" when that is what it was."""
    who = attribution(row["decided_by"], row.get("decided_token"))
    if self_approved(row):
        return f"{who} ({SELF_APPROVED})"
    if len(approvers_of(row)) > 1:
        return f"{', '.join(approvers_of(row))} (last: {who})"
    return who


class ApprovalGate(RunPart):
    """Owns the engine's side of a person's decision on a step (the ledger's side is `ApprovalStore`): the approval
    asked for with its page and the episode parked until the deadline, the decision or the deadline found when the
    run comes back, an approval spent before its step runs (once), a rejection or an expiry ending the run escalated,
    and the decision counted. The reconciler never approves itself."""

    def __init__(
        self,
        holder: RunHolder,
        rc: ReconcilerConfig,
        playbook: Playbook,
        approvals: ApprovalStore,
        escalation: Escalation,
        instance: str,
    ) -> None:
        super().__init__(holder)
        self.rc = rc
        self.playbook = playbook
        self.approvals = approvals
        self.escalation = escalation
        self.instance = instance

    async def gate(self, run: AttemptRun, position: int, step: StepSpec) -> int | str | None:
        """A step that needs a person's decision: the approval's id when approved (the step runs), SKIPPED when it
        expired and the step says on_timeout: skip, None when the run ends here (the episode parked until the
        decision or the deadline, or closed escalated: rejected, expired with on_timeout: escalate).

        The approval is bound to this attempt, the step's position, its exact arguments and the playbook's version:
        one asked under another playbook (the reconciler restarted with a changed one) no longer stands, and the
        step is asked for again."""
        episode, rule, ctx = run.episode, run.rule, run.ctx
        now = utcnow()
        covered = await self._covered(run, position, step)
        if covered is not None:
            return covered
        row = await self._standing(run, position, step, now)
        if row is None or row["status"] not in (PENDING, APPROVED, REJECTED, EXPIRED):
            await self._ask(run, position, step, now)
            return None
        approval_id = row["id"]
        if row["status"] == PENDING and row["deadline"] > now:
            await self._await_decision(run, row, step)  # woken early (a resume): wait on
            return None
        if row["status"] == PENDING:
            if not await self.db(self.approvals.expire, approval_id, now):
                row = await self.db(self.approvals.latest, episode["id"], position)  # decided this very moment
                if row is None or row["id"] != approval_id:
                    raise LostClaim
            else:
                self.metrics.approval_decisions.labels("expired").inc()
                row = {**row, "status": EXPIRED}
        record = run.step_record(position, step)
        if row["status"] == APPROVED:
            run.note(
                f"{run.step_name(step)} approved by {approved_by(row)}, asked by {requester_of(row)} (approval "
                f"{approval_id}: {row['reason'] or 'no reason given'})"
            )
            return int(approval_id)
        if row["status"] == EXPIRED and step.on_timeout == "skip":
            why = f"approval {approval_id} expired unanswered at {row['deadline'].isoformat()}: skipped (on_timeout)"
            await self.db(self.ledger.start_step, *record, outcome=SKIPPED, output=why)
            run.note(f"{run.step_name(step)}: {why}")
            log.info("episode %s: step %s (%s): %s", episode["id"], position + 1, run.step_name(step), why)
            return SKIPPED
        if row["status"] == REJECTED:
            self._count_decision(row)
            outcome = "refused"
            who = attribution(row["decided_by"], row.get("decided_token"))
            why = f"{run.step_name(step)} rejected by {who} (approval {approval_id}): {row['reason'] or '-'}"
        else:
            outcome = EXPIRED
            why = (
                f"{run.step_name(step)}: approval {approval_id} expired unanswered at {row['deadline'].isoformat()} "
                "(on_timeout: escalate)"
            )
        await self.db(self.ledger.start_step, *record, outcome=outcome, output=why)
        await self.db(self.ledger.finish_attempt, run.attempt_id, "failure", why)
        run.note(why)
        description = (
            f"Rule {rule.name} did not act on {episode['alertname']} on {episode['target']} (episode {episode['id']}): "
            f"{why}. Nothing more is done automatically. Tried: " + "; ".join(ctx.history)
        )
        await self.escalation.close_escalated(episode, FAILED, ctx, description, why)
        return None

    async def spend(self, approval_id: int | str) -> dict[str, Any]:
        """Spent before the step starts: an approval runs its step once, whatever happens next. Returns its row (who
        decided: what a step that needs a signed decision signs)."""
        approval = await self.db(self.approvals.use, approval_id, utcnow())
        if approval is None:
            raise LostClaim
        self._count_decision(approval)
        full = await self.db(self.approvals.get, approval_id)  # with every approver's decision
        return {**approval, "decision_list": (full or {}).get("decision_list", [])}

    def covers(self, run: AttemptRun, position: int) -> list[StepSpec]:
        """The steps one approval asked at `position` covers: that step and every step right after it that needs an
        approval too (the loss limit's cancel_all and flatten: one decision, its steps listed)."""
        steps = run.rule.steps
        covered = [steps[position]]
        for later in steps[position + 1 :]:
            if not run.rule.needs_approval(later, run.ctx.labels):
                break
            covered.append(later)
        return covered

    def _arguments(self, run: AttemptRun, position: int) -> str:
        """The exact arguments an approval asked at `position` binds: its step's, or with more steps covered, each
        one's in order."""
        covered = self.covers(run, position)
        if len(covered) == 1:
            return covered[0].arguments()
        return json.dumps({"steps": [json.loads(s.arguments()) for s in covered]}, sort_keys=True)

    async def _covered(self, run: AttemptRun, position: int, step: StepSpec) -> str | None:
        """COVERED when an approval of this attempt asked at an earlier step covers this one and was spent (approved:
        the step runs), SKIPPED when it expired with on_timeout: skip (recorded skipped); None: this step asks."""
        rows = await self.db(self.approvals.of_episode, run.episode["id"])
        for row in rows:
            if row["attempt_id"] != run.attempt_id or row["position"] >= position:
                continue
            try:
                bound = json.loads(row["arguments"])
            except ValueError:
                continue
            count = len(bound["steps"]) if isinstance(bound, dict) and isinstance(bound.get("steps"), list) else 1
            if position >= row["position"] + count:
                continue
            if row["status"] == EXECUTED:
                run.note(f"{run.step_name(step)} approved with step {row['position'] + 1} (approval {row['id']})")
                return COVERED
            if row["status"] == EXPIRED and step.on_timeout == "skip":
                why = f"approval {row['id']} expired unanswered at {row['deadline'].isoformat()}: skipped (on_timeout)"
                await self.db(self.ledger.start_step, *run.step_record(position, step), outcome=SKIPPED, output=why)
                run.note(f"{run.step_name(step)}: {why}")
                return SKIPPED
        return None

    async def _standing(self, run: AttemptRun, position: int, step: StepSpec, now: datetime) -> dict[str, Any] | None:
        """The latest approval of the step that still stands for this attempt (None: none does, ask again): one asked
        for an earlier attempt, or under another playbook or other arguments while undecided or approved, is
        superseded."""
        row = await self.db(self.approvals.latest, run.episode["id"], position)
        if row is not None and row["attempt_id"] != run.attempt_id:
            if row["status"] in (PENDING, APPROVED):
                await self.db(self.approvals.supersede, row["id"], now)
            return None  # asked for an earlier attempt: this one asks again (an approval runs its step once)
        bound = self._arguments(run, position)
        if row is not None and (row["playbook_version"], row["arguments"]) != (self.playbook.version, bound):
            if row["status"] in (PENDING, APPROVED):
                await self.db(self.approvals.supersede, row["id"], now)
                run.note(f"approval {row['id']} superseded (the playbook changed)")
                return None
        return row

    def _count_decision(self, row: dict[str, Any]) -> None:
        """A person's decision, counted when the reconciler acts on it (once: the run holding the episode does, by the
        CLI or the API, on whichever replica), with how long the approval waited for it."""
        self.metrics.approval_decisions.labels(row["status"]).inc()
        waited = (row["decided_at"] - row["requested_at"]).total_seconds()
        self.metrics.approval_decision_seconds.observe(max(0.0, waited))

    async def _ask(self, run: AttemptRun, position: int, step: StepSpec, now: datetime) -> None:
        """Store a pending approval for the step, its page and the episode parked until the deadline, in one
        transaction: the run's claim and its target are given back, so nothing else waits for the person."""
        episode = run.episode
        deadline = now + timedelta(seconds=step.approval_timeout)
        values = {
            "position": position,
            "action": step.action,
            "step_name": THEN.join(run.step_name(s) for s in self.covers(run, position)),
            "arguments": self._arguments(run, position),
            "playbook_version": self.playbook.version,
            "rule": run.rule.name,
            "target": episode["target"],
            "on_timeout": step.on_timeout,
            "requested_by": self.instance,
            "deadline": deadline,
            **await self._requester(run, step),
        }
        page = functools.partial(self._page, run, position, step, deadline)

        def why(approval_id: int) -> str:
            return f"{AWAITING} {approval_id} for {run.step_name(step)} until {deadline.isoformat()}"

        self.holder.end_claim(episode)
        asked = await self.db(self.approvals.request, episode["id"], self.owner, run.attempt_id, values, page, why, now)
        if asked is None:
            raise LostClaim
        approval_id, state = asked
        if state == "resolved":
            self.metrics.episodes_total.labels("resolved").inc()
            log.info("episode %s: resolved while held: no approval asked", episode["id"])
            return
        self.escalation.escalations.set()
        log.info(
            "episode %s (%s on %s): step %s (%s) waits for approval %s until %s",
            episode["id"],
            episode["alertname"],
            episode["target"],
            position + 1,
            run.step_name(step),
            approval_id,
            deadline.isoformat(),
        )

    async def _requester(self, run: AttemptRun, step: StepSpec) -> dict[str, Any]:
        """The approval's kind, how many others approve it, and its requester: the principal of the authenticated
        request the alert names (its `request` label: a row the reconciler recorded, for this bot and stage, still
        standing), else none (the reconciler asked: any person but the reconciler decides; a ramp promotion without
        one is refused to every approver)."""
        kind = kind_of(step.action, step.params)
        found: dict[str, Any] = {"kind": kind, "required": required_for(self.rc.approvals, kind)}
        raw = run.ctx.labels.get(REQUEST_LABEL, "")
        if raw.isascii() and raw.isdigit() and len(raw) < 12:
            request = await self.db(RequestStore(self.approvals.ledger).get, int(raw))
            labels = run.ctx.labels
            if (
                request is not None
                and request["kind"] == kind
                and request["instance"] == labels.get("instance")
                and request["stage"] == labels.get("stage", request["stage"])
                and request["expires_at"] > utcnow()
            ):
                found.update(requester=request["principal"], request_id=request["id"])
        return found

    async def _await_decision(self, run: AttemptRun, row: dict[str, Any], step: StepSpec) -> None:
        """Hand the attempt and the episode back (waiting) until the approval's deadline; a decision makes it due at
        once (ApprovalStore.decide), and the next run carries the attempt on from this step."""
        why = f"{AWAITING} {row['id']} for {run.step_name(step)} until {row['deadline'].isoformat()}"
        self.holder.end_claim(run.episode)
        now = utcnow()
        written = await self.db(
            self.approvals.park, run.episode["id"], self.owner, run.attempt_id, row["id"], row["deadline"], why, now
        )
        if written is None:
            raise LostClaim
        if written == "resolved":
            self.metrics.episodes_total.labels("resolved").inc()

    def _what(self, run: AttemptRun, position: int) -> str:
        """What an approval asked at `position` lets run, for the page: its step or steps, each with its risk."""
        covered = self.covers(run, position)
        listed = THEN.join(f"{run.step_name(s)} [{s.risk}]" for s in covered)
        if len(covered) == 1:
            return f"step {position + 1}, {listed}"
        return f"steps {position + 1} to {position + len(covered)} on one approval: {listed}"

    def _page(
        self, run: AttemptRun, position: int, step: StepSpec, deadline: datetime, approval_id: int
    ) -> dict[str, Any]:
        """The page an approval posts: what the reconciler wants to do, until when, and how to answer."""
        episode, ctx = run.episode, run.ctx
        listen = self.rc.listen
        url = f"http://{listen.host}:{listen.port}/api/v1/approvals/{approval_id}"
        then = "the episode is escalated" if step.on_timeout == "escalate" else "the step is skipped"
        description = (
            f"Rule {run.rule.name} wants to run {self._what(run, position)}, on "
            f"{episode['target']} "
            f"for {episode['alertname']} (episode {episode['id']}). Decided with your own token (--token-file or "
            "$TRADING_OPS_TOKEN_FILE; never the requester's). Approve: trading-ops reconciler approve "
            f"{approval_id} --reason '...'; reject: trading-ops reconciler reject {approval_id} --reason '...'; or "
            f'POST {url} {{"decision": "approve"|"reject", "reason": "..."}}. Unanswered by '
            f"{deadline.isoformat()}: {then}."
        )
        alert = escalation_alert(APPROVAL_REQUESTED, ctx.labels, ctx.target, description, episode=episode["id"])
        alert["labels"]["approval"] = str(approval_id)
        alert["annotations"]["approve_command"] = f"trading-ops reconciler approve {approval_id} --reason '...'"
        alert["annotations"]["reject_command"] = f"trading-ops reconciler reject {approval_id} --reason '...'"
        alert["annotations"]["approval_url"] = url
        if self.rc.external_url:
            alert["annotations"]["console_url"] = (
                f"{self.rc.external_url.rstrip('/')}/ui/approvals#approval-{approval_id}"
            )
        return alert
