"""One step of a rule executed, in its attempt (`AttemptRun`): recorded in the ledger when it starts, its outcome
written before anything else."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

from trading_ops.config import ReconcilerConfig
from trading_ops.db.base import utcnow
from trading_ops.reconciler.actions import ACTIONS
from trading_ops.reconciler.actions.base import ActionContext, Refused, Result, truncate
from trading_ops.reconciler.ledger import FENCED, MISSING, Fenced, Gone, Written
from trading_ops.reconciler.ledger.rollback import OUTCOME, STEP
from trading_ops.reconciler.playbook import Rule, StepSpec
from trading_ops.reconciler.processes import ProcessId
from trading_ops.reconciler.runs import (
    ENGINE_LOGGER,
    OUTCOME_RETRY_INITIAL_SECONDS,
    OUTCOME_RETRY_MAX_SECONDS,
    Claim,
    LedgerWentBack,
    LostClaim,
    RunHolder,
    RunPart,
    ledger_unreachable,
)
from trading_ops.reconciler.spool import OutcomeSpool, SpooledOutcome

log = logging.getLogger(ENGINE_LOGGER)


@dataclass(frozen=True)
class AttemptRun:
    """The attempt a run makes at a rule on an episode: what the parts of the engine that act in it are handed."""

    episode: dict[str, Any]
    rule: Rule
    ctx: ActionContext
    attempt_id: int
    number: int

    def note(self, text: str) -> None:
        """A line of the attempt's history (the page's "Tried: ...")."""
        self.ctx.history.append(f"attempt {self.number}: {text}")

    def step_name(self, step: StepSpec) -> str:
        """The step's name as the ledger, the history, the console and the status line show it: its ${label}s filled
        in from the alert where its action fills them in (not exec's literal argv)."""
        return self.ctx.filled(step.name) if ACTIONS[step.action].templates else step.name

    def refusal(self, step: StepSpec) -> str | None:
        """Why the rule may not run `step` at all (destructive, and the rule does not allow_destructive), or None."""
        if step.risk == "destructive" and not self.rule.allow_destructive:
            name, rule = self.step_name(step), self.rule.name
            return f"refused: {name} is destructive and rule {rule} does not allow_destructive"
        return None

    def step_record(self, position: int, step: StepSpec) -> tuple[Any, ...]:
        """What the ledger records of a step when it starts (Ledger.start_step's arguments)."""
        action = ACTIONS[step.action]
        name = self.step_name(step)
        return (self.attempt_id, position, step.action, name, step.risk, self.episode["target"], action.budgeted)


class Steps(RunPart):
    """Owns executing a step: its ledger row, the action run under its timeout (an exception is a `failure`, never a
    crash), the process group it starts (recorded, for a reconciler that restarts), its counters, and its outcome,
    spooled and then written to the ledger until it lands. Also the rule's on_recovery steps, run the same way. Which
    steps run, and in which order, is the attempt's (`Attempts`)."""

    def __init__(self, holder: RunHolder, rc: ReconcilerConfig, spool: OutcomeSpool) -> None:
        super().__init__(holder)
        self.rc = rc
        self.spool = spool

    async def run_step(self, run: AttemptRun, record: tuple[Any, ...], step: StepSpec) -> Result:
        """Execute one step, recorded in the ledger (its process too, for a reconciler that restarts) and counted."""
        step_id = await self._start(record, run.episode["id"])
        run.ctx.process_started = functools.partial(self._record_process, step_id)
        started = time.monotonic()
        result = await self._execute(run.ctx, step.action, step.params, step.timeout)
        self.metrics.action_duration.labels(step.action).observe(time.monotonic() - started)
        self.metrics.actions.labels(step.action, result.outcome).inc()
        await self._record_outcome(run.episode["id"], step_id, result, run.attempt_id)
        run.note(f"{run.step_name(step)} -> {result.outcome} ({result.output[:200]})")
        return result

    async def on_recovery(self, run: AttemptRun, done: frozenset[int] = frozenset()) -> str:
        """Run the rule's on_recovery steps (recorded after its steps, in the same attempt; those in `done` succeeded
        in a run that stopped, and are not run again); what failed, or ""."""
        rule = run.rule
        for position, step in enumerate(rule.on_recovery, start=len(rule.steps)):
            if position in done:
                continue
            record = run.step_record(position, step)
            reason = run.refusal(step)
            if reason is not None:
                await self.db(self.ledger.start_step, *record, outcome="refused", output=reason)
                return reason
            step_id = await self._start(record, run.episode["id"])
            run.ctx.process_started = functools.partial(self._record_process, step_id)
            result = await self._execute(run.ctx, step.action, step.params, step.timeout)
            self.metrics.actions.labels(step.action, result.outcome).inc()
            await self._record_outcome(run.episode["id"], step_id, result, run.attempt_id)
            run.note(f"on recovery: {run.step_name(step)} -> {result.outcome} ({result.output[:200]})")
            if not result.ok:
                return f"{run.step_name(step)}: {result.outcome}: {result.output[:300]}"
        return ""

    async def _start(self, record: tuple[Any, ...], episode_id: int) -> int:
        """The step's row, written only while the run still holds its episode and target (the fence: its lease is
        renewed in the same transaction); a run taken over meanwhile stops here, before it acts (LostClaim). The row
        is remembered (`RunHolder.wrote`): a failover that loses it is noticed, and the step is not run again."""
        try:
            step_id = await self.db(self.ledger.start_step, *record, owner=self.owner, lease=self.rc.lease_seconds)
            self.holder.wrote(Written(STEP, episode_id, step_id, record[3], parent=record[0]))
            return step_id
        except Gone as exc:
            raise LedgerWentBack(f"{exc}: the database lost commits it had acknowledged (a failover?)") from exc
        except Fenced as exc:
            log.warning("step %s of attempt %s not started: %s", record[1] + 1, record[0], exc)
            raise LostClaim from exc

    async def _record_outcome(self, episode_id: int, step_id: int, result: Result, attempt_id: int) -> None:
        """What a step did, written before anything else, and never given up on: first to the local spool (it
        survives the process), then to the ledger, tried again with backoff while the database is away and the run
        holds its claim (the lease renewer keeps renewing it meanwhile), and at once when any ledger call answers
        again. A claim lost meanwhile does not stop the write (the outcome is a fact, whoever runs the episode next),
        only the run after it. Should the process stop first, the spool is replayed at its next start, before any
        sweep."""
        spooled = SpooledOutcome(step_id, result.outcome, result.output, utcnow(), episode_id)
        self.spool.hold(step_id)  # before it is spooled: a replay between the two would write it beside us
        claim = self.holder.claims.get(episode_id)
        if claim is not None:
            claim.recording = True
        try:
            try:
                await self.db(self.spool.put, spooled)  # the ledger's threads: asyncio's default pool may be stuck
            except OSError as exc:  # the ledger is the record; the spool only outlives the process when it is away
                log.error("step %s: its outcome could not be spooled (%s): %s", step_id, self.spool.directory, exc)
            try:
                written = await self._write_outcome(step_id, result, spooled, claim)
            except LedgerWentBack:
                # The step's row is gone: its outcome has no row to go to, now or at any replay, and the ledger never
                # took it, so it is no write the failover lost (the row is, and the check reports it). Its file goes
                # now (the run's log line names the outcome): left, a next life would count it as a lost outcome.
                await self.db(self.spool.remove, step_id)
                raise
            if written:
                self.holder.wrote(Written(OUTCOME, episode_id, step_id, result.outcome, parent=attempt_id))
            await self.db(self.spool.remove, step_id)
        finally:
            if claim is not None:
                claim.recording = False
            self.spool.release(step_id)
        if not written:
            log.warning(
                "step %s: its outcome (%s) is not written: another replica took the run over while the ledger was "
                "away from this one, and found the step unknown; this run stops",
                step_id,
                result.outcome,
            )
            if claim is not None:
                claim.lost = True
        if claim is not None and claim.lost:
            raise LostClaim

    async def _write_outcome(self, step_id: int, result: Result, spooled: SpooledOutcome, claim: Claim | None) -> bool:
        """Whether the outcome is the step's in the ledger (False: fenced, the run was taken over). A step row that is
        gone while its run still holds it means the ledger went back in time (a failover to a standby that had not
        received the last commits): LedgerWentBack; the run stops, and the check of this replica's recent writes
        escalates the episode (trading_ops.reconciler.rollback), never acted on blindly."""
        delay = OUTCOME_RETRY_INITIAL_SECONDS
        while True:
            try:
                found = await self.db(
                    self.ledger.finish_step, step_id, result.outcome, result.output, spooled.finished_at
                )
                if found == MISSING:
                    raise LedgerWentBack(
                        f"step {step_id} (outcome {result.outcome}) is gone from the ledger while its run still held "
                        "it: the database lost commits it had acknowledged (a failover to a standby behind it?)"
                    )
                return found != FENCED
            except Exception as exc:
                if not ledger_unreachable(exc) or claim is None or claim.lost:
                    raise  # left in the spool: replayed before the next sweep
                log.warning(
                    "step %s: its outcome (%s) is not in the ledger yet; written again in %gs: %s",
                    step_id,
                    result.outcome,
                    delay,
                    exc,
                )
            await self.holder.ledger_back(delay)
            delay = min(delay * 2, OUTCOME_RETRY_MAX_SECONDS)

    async def _execute(self, ctx: ActionContext, kind: str, params: dict[str, Any], timeout: float) -> Result:
        try:
            async with asyncio.timeout(timeout + 5):
                return await ACTIONS[kind].run(ctx, params, timeout)
        except Refused as exc:
            return Result("refused", str(exc))
        except TimeoutError:
            return Result("timeout", f"no result within {timeout:g}s")
        except Exception as exc:
            log.exception("action %s failed", kind)
            return Result("failure", truncate(f"{type(exc).__name__}: {exc}", self.rc.output_limit_bytes))

    async def _record_process(self, step_id: int, pid: int) -> None:
        """A step started a process group: recorded so that a crash of ours never leaves it running unseen."""
        process = await asyncio.to_thread(ProcessId.of, pid)
        if process is not None:
            await self.db(self.ledger.set_step_process, step_id, process.token())
