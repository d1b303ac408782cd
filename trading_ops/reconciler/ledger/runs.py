"""The ledger's run record: an episode's state, its attempts and their steps, as a run (or an operator) writes them."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, exists, func, insert, select, update

from trading_ops.db.base import utcnow
from trading_ops.db.states import ACTIVE_STATES, CLOSED_STATES
from trading_ops.reconciler.ledger.db import A, E, LedgerDB, S, T

# A step found `running` by a sweep (its run died) or by its own run after a lost claim: it may have acted or not,
# and nobody saw its result. Its attempt says so too. The rule's on_unknown decides what comes next.
UNKNOWN = "unknown"
UNKNOWN_DETAIL = "a step was still running: its outcome is unknown"
# Attempt rows an operator's command records (`reconciler ack`, `reconciler retry`), and a recovered episode reopened
# (its condition returned while its alert kept firing: ledger.reopening): nothing was executed.
# A reopening's row executed nothing either: no budget spent, no attempt max_attempts counts, no cooldown started.
REOPENED = "reopened"
OPERATOR_OUTCOMES = ("acknowledged", "retry", REOPENED)
# Closed episodes `reconciler retry` may run once more (an alert still firing after a run that gave up).
RETRYABLE_STATES = ("escalated", "failed")


# What finish_step found (see there).
WRITTEN, FENCED, MISSING = "written", "fenced", "missing"


def record_history(conn: Connection, episode_id: int, who: str, outcome: str, detail: str) -> None:
    """An attempt row that executed nothing (an operator's acknowledgement or retry, a reopening): who did what to the
    episode, in its history, numbered after its last attempt."""
    now = utcnow()
    last = conn.execute(select(func.coalesce(func.max(A.c.number), 0)).where(A.c.episode_id == episode_id)).scalar_one()
    conn.execute(
        insert(A).values(
            episode_id=episode_id,
            number=int(last) + 1,
            owner=who,
            started_at=now,
            finished_at=now,
            outcome=outcome,
            detail=detail,
        )
    )


class Fenced(Exception):
    """A run's write refused: the episode is no longer its own (another replica took it over while it could not
    reach the ledger). The run writes nothing more and acts on nothing."""


class Gone(Fenced):
    """A row the run wrote is not in the ledger any more: the database went back in time (a failover to a standby
    that had not received the last commits). Not a takeover: escalated, never acted on blindly."""


def attempts_stopped(conn: Connection, which: Any, now: datetime, detail: str) -> None:
    """The `running` attempts `which` selects stopped: `unknown` when a step of theirs was still running (it may
    have acted), else `interrupted` (between steps: every outcome they saw is recorded)."""
    step_running = exists().where(S.c.attempt_id == A.c.id, S.c.outcome == "running")
    running = and_(which, A.c.outcome == "running")
    conn.execute(
        update(A)
        .where(running, step_running)
        .values(outcome=UNKNOWN, finished_at=now, detail=f"{detail}: {UNKNOWN_DETAIL}"[:1000])
    )
    conn.execute(update(A).where(running).values(outcome="interrupted", finished_at=now, detail=detail))


class RunRecord:
    """Owns what a run records while it holds an episode (its state, attempts, steps and their outcomes, handing it
    back), and what an operator's commands record on it (acknowledge, retry)."""

    def __init__(self, db: LedgerDB) -> None:
        self.db = db

    def episode(self, episode_id: int) -> dict[str, Any] | None:
        with self.db.engine.connect() as conn:
            row = conn.execute(select(E).where(E.c.id == episode_id)).mappings().first()
        return dict(row) if row else None

    def set_episode(self, episode_id: int, holder: str | None = None, **values: Any) -> bool:
        """Update the episode (only while `holder` still holds it, when given)."""
        values["updated_at"] = utcnow()
        if values.get("state") in CLOSED_STATES:
            values.setdefault("closed_at", values["updated_at"])
            values.setdefault("owner", None)
            values.setdefault("lease_until", None)
        cond = [E.c.id == episode_id]
        if holder is not None:
            cond.append(E.c.owner == holder)
        with self.db.tx() as conn:
            return bool(conn.execute(update(E).where(*cond).values(**values)).rowcount)

    def defer(self, episode_id: int, holder: str, state: str, next_run_at: datetime, detail: str) -> str | None:
        """Hand a claimed episode back to run again at `next_run_at` (`state` pending or waiting: a retry, a
        cooldown, a gate), or, when its alert resolved while it was claimed (the intake only flags a claimed
        episode), close it resolved: nothing is left waiting for an alert that is over. The state written, or None
        when `holder` no longer held it."""
        now = utcnow()
        held = [E.c.id == episode_id, E.c.owner == holder]
        free = {"owner": None, "lease_until": None, "updated_at": now}
        with self.db.tx() as conn:
            deferred = update(E).where(*held, E.c.resolved_at.is_(None))
            if conn.execute(deferred.values(state=state, next_run_at=next_run_at, detail=detail, **free)).rowcount:
                return state
            closed = (
                update(E)
                .where(*held)
                .values(
                    state="resolved",
                    closed_at=now,
                    detail=f"resolved while claimed; not deferred ({detail})"[:1000],
                    **free,
                )
            )
            return "resolved" if conn.execute(closed).rowcount else None

    def start_attempt(self, episode_id: int, owner: str, counted: bool = True) -> int:
        """A new attempt row, numbered after the episode's last. A `counted` attempt executes steps: it raises the
        episode's attempt count (which max_attempts limits) and sets its first action time; the record of a gate
        that executed nothing (pause, maintenance) does neither."""
        now = utcnow()
        with self.db.tx() as conn:
            last = conn.execute(
                select(func.coalesce(func.max(A.c.number), 0)).where(A.c.episode_id == episode_id)
            ).scalar_one()
            attempt_id = conn.execute(
                insert(A)
                .values(episode_id=episode_id, number=int(last) + 1, owner=owner, started_at=now, outcome="running")
                .returning(A.c.id)
            ).scalar_one()
            if counted:
                conn.execute(
                    update(E)
                    .where(E.c.id == episode_id)
                    .values(
                        attempts=E.c.attempts + 1,
                        first_action_at=func.coalesce(E.c.first_action_at, now),
                        updated_at=now,
                    )
                )
        return int(attempt_id)

    def fail_running(self, episode_id: int, owner: str, detail: str) -> None:
        """Close the attempt and steps `owner`'s aborted run left `running` (an internal error mid-run); another
        replica's run of the episode, after a takeover, is not ours to touch."""
        with self.db.tx() as conn:
            self._close_running(conn, episode_id, owner, "failure", detail, utcnow())

    def abandon_run(self, episode_id: int, owner: str, detail: str) -> None:
        """`owner`'s run lost its claim and stopped: its attempt and steps still `running` are interrupted, and the
        episode, if it is still `owner`'s (the target was lost, not the episode), is handed back as interrupted,
        for its retry policy to decide."""
        now = utcnow()
        with self.db.tx() as conn:
            attempts_stopped(conn, and_(A.c.episode_id == episode_id, A.c.owner == owner), now, detail)
            self._close_running(conn, episode_id, owner, UNKNOWN, detail, now)
            conn.execute(
                update(E)
                .where(E.c.id == episode_id, E.c.owner == owner, E.c.state.in_(ACTIVE_STATES))
                .values(
                    state="interrupted", owner=None, lease_until=None, next_run_at=now, updated_at=now, detail=detail
                )
            )

    @staticmethod
    def _close_running(conn: Connection, episode_id: int, owner: str, outcome: str, detail: str, now: datetime) -> None:
        attempt_ids = select(A.c.id).where(A.c.episode_id == episode_id, A.c.owner == owner).scalar_subquery()
        conn.execute(
            update(S)
            .where(S.c.attempt_id.in_(attempt_ids), S.c.outcome == "running")
            .values(outcome=outcome, finished_at=now)
        )
        conn.execute(
            update(A)
            .where(A.c.episode_id == episode_id, A.c.owner == owner, A.c.outcome == "running")
            .values(outcome=outcome, finished_at=now, detail=detail)
        )

    def finish_attempt(self, attempt_id: int, outcome: str, detail: str = "") -> None:
        with self.db.tx() as conn:
            conn.execute(
                update(A).where(A.c.id == attempt_id).values(outcome=outcome, detail=detail, finished_at=utcnow())
            )

    def start_step(
        self,
        attempt_id: int,
        position: int,
        action: str,
        description: str,
        risk: str,
        target: str,
        budgeted: bool,
        outcome: str = "running",
        output: str = "",
        owner: str | None = None,
        lease: float | None = None,
    ) -> int:
        """A step's row, written before it acts. With `owner` (a run about to act), the fence: in the same
        transaction the run's claim on the episode and on its target is confirmed and its lease renewed for `lease`
        seconds, and Fenced is raised when either is no longer `owner`'s: a run taken over while it could not reach
        the ledger never acts again. A sweep taking the episode meanwhile waits for this transaction's row lock and
        then finds the lease it read renewed."""
        now = utcnow()
        with self.db.tx() as conn:
            if owner is not None:
                until = now + timedelta(seconds=lease or 0.0)
                episode_id = select(A.c.episode_id).where(A.c.id == attempt_id).scalar_subquery()
                held = conn.execute(
                    update(E)
                    .where(E.c.id == episode_id, E.c.owner == owner, E.c.state.in_(ACTIVE_STATES))
                    .values(lease_until=until)
                ).rowcount
                held = (
                    held
                    and conn.execute(
                        update(T).where(T.c.name == target, T.c.owner == owner).values(lease_until=until)
                    ).rowcount
                )
                if not held:
                    if conn.execute(select(A.c.id).where(A.c.id == attempt_id)).first() is None:
                        raise Gone(f"attempt {attempt_id} is gone from the ledger while its run still held it")
                    raise Fenced(f"the episode of attempt {attempt_id} is no longer {owner}'s")
            return int(
                conn.execute(
                    insert(S)
                    .values(
                        attempt_id=attempt_id,
                        position=position,
                        action=action,
                        description=description,
                        risk=risk,
                        target=target,
                        budgeted=budgeted,
                        started_at=now,
                        outcome=outcome,
                        output=output,
                        finished_at=None if outcome == "running" else now,
                    )
                    .returning(S.c.id)
                ).scalar_one()
            )

    def set_step_process(self, step_id: int, process: str) -> None:
        """Record the process group a running step started (killed after a crash before any retry)."""
        with self.db.tx() as conn:
            conn.execute(update(S).where(S.c.id == step_id).values(process=process))

    def note_step(self, step_id: int, note: str) -> None:
        """Append a line to a step's output (what the reconciler found after a restart, say)."""
        with self.db.tx() as conn:
            conn.execute(update(S).where(S.c.id == step_id).values(output=S.c.output + "\n" + note))

    def finish_step(self, step_id: int, outcome: str, output: str, finished_at: datetime | None = None) -> str:
        """Record what a step did (written again as is when retried or replayed from the spool: idempotent): WRITTEN
        when the step holds that outcome now. Only a step still `running` takes it: one a sweep found `unknown`
        meanwhile belongs to a run taken over, whose taker decided on that `unknown` (run again or escalate), and a
        late outcome of the run it took the episode from changes nothing of it (FENCED). MISSING: no such step (a
        spool file older than retention, or a ledger that went back in time: a failover that lost commits)."""
        with self.db.tx() as conn:
            if conn.execute(
                update(S)
                .where(S.c.id == step_id, S.c.outcome == "running")
                .values(outcome=outcome, output=output, finished_at=finished_at or utcnow())
            ).rowcount:
                return WRITTEN
            found = conn.execute(select(S.c.outcome, S.c.output).where(S.c.id == step_id)).first()
        if found is None:
            return MISSING
        # Written already (the first write's commit landed, its answer did not)?
        return WRITTEN if (found.outcome, found.output) == (outcome, output) else FENCED

    def last_run(self, episode_id: int) -> dict[str, Any] | None:
        """The episode's last attempt that ran steps (not a gate's record, nor an acknowledgement), with its steps
        (`steps`, by position); None when it has none, or when an operator's `reconciler retry` came after it (the
        steps are to run once more, whatever that attempt did)."""
        with self.db.engine.connect() as conn:
            row = (
                conn.execute(
                    select(A)
                    .where(A.c.episode_id == episode_id, A.c.outcome.notin_(("skipped", "acknowledged")))
                    .order_by(A.c.number.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
            if row is None or row["outcome"] in OPERATOR_OUTCOMES:
                return None
            attempt = dict(row)
            steps = conn.execute(select(S).where(S.c.attempt_id == attempt["id"]).order_by(S.c.position)).mappings()
            attempt["steps"] = [dict(s) for s in steps]
        return attempt

    def resume_attempt(self, attempt_id: int, owner: str, detail: str) -> None:
        """An attempt a dead run left is carried on by `owner`'s run (its steps that succeeded are not run again)."""
        with self.db.tx() as conn:
            conn.execute(
                update(A)
                .where(A.c.id == attempt_id)
                .values(outcome="running", owner=owner, finished_at=None, detail=detail)
            )

    def acknowledge(self, episode_id: int, who: str, note: str) -> bool:
        """Record that `who` has taken the episode (any state); it changes nothing the engine does. False: no such
        episode."""
        with self.db.tx() as conn:
            if conn.execute(select(E.c.id).where(E.c.id == episode_id)).first() is None:
                return False
            record_history(conn, episode_id, who, "acknowledged", note or "acknowledged")
        return True

    def retry(self, episode_id: int, who: str) -> str | None:
        """Re-queue an escalated or failed episode whose alert has not resolved for one more run: it becomes
        `waiting`, due now, so the engine first asks Alertmanager whether the alert still fires (resolved: closed,
        nothing executed), then runs the rule's steps once more (its attempts are spent, so a failure escalates
        again). None when done, else why not."""
        now = utcnow()
        detail = f"retry requested by {who}: one more run if the alert still fires"
        with self.db.tx() as conn:
            row = conn.execute(select(E.c.state, E.c.resolved_at).where(E.c.id == episode_id)).first()
            if row is None:
                return f"no episode {episode_id}"
            if row.resolved_at is not None:
                return f"episode {episode_id} is over (its alert resolved at {row.resolved_at.isoformat()})"
            if row.state not in RETRYABLE_STATES:
                return f"episode {episode_id} is {row.state}; only {' or '.join(RETRYABLE_STATES)} episodes are retried"
            changed = conn.execute(
                update(E)
                .where(E.c.id == episode_id, E.c.state.in_(RETRYABLE_STATES), E.c.resolved_at.is_(None))
                .values(
                    state="waiting",
                    next_run_at=now,
                    closed_at=None,
                    owner=None,
                    lease_until=None,
                    updated_at=now,
                    detail=detail,
                )
            ).rowcount
            if not changed:
                return f"episode {episode_id} changed meanwhile; look again"
            record_history(conn, episode_id, who, "retry", detail)
        return None
