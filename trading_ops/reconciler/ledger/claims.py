"""The ledger's claims: which episodes are due, who runs them (a lease on the episode and its target), and the sweep
that frees what dead runs held."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update

from trading_ops.db.base import utcnow
from trading_ops.db.states import ACTIVE_STATES, RUNNABLE_STATES
from trading_ops.reconciler.ledger.db import A, E, LedgerDB, S, T
from trading_ops.reconciler.ledger.runs import UNKNOWN, attempts_stopped
from trading_ops.reconciler.processes import owner_is_dead

# A run died while its step's process group may still run: no run of that target starts anywhere until a
# reconciler on the process's host (same boot and pid namespace, processes.host_token) has killed what is left of
# the group, which it does on its next poll. No other host can see that process, let alone kill it: if no
# reconciler ever comes back on that host, the fence lapses after this long. It is generous, as acting beside a
# restart script still running is worse than acting late, and the dead host's reconciler usually returns long
# before (systemd restarts it in seconds); a host that died altogether took its processes with it.
LEFTOVER_FENCE_SECONDS = 600.0
# Why a sweep freed a claim of its own caller's that no run of the caller holds: not a takeover from a live owner.
OWN_CLAIM_FREED = (
    "no run of ours holds it (a claim whose answer was lost with the database, or a run whose last write failed)"
)


@dataclass
class SweepResult:
    """Runs found dead by a sweep, and how many of their steps had started a process group (now fenced)."""

    interrupted: list[int] = field(default_factory=list)
    fenced: int = 0
    # Why each run was taken for dead (its owner, and whether its lease lapsed or its process is gone): for the log.
    why: dict[int, str] = field(default_factory=dict)


class Claims:
    """Owns who runs what: the due queue, claims and leases on episodes and targets, the sweep of dead runs, and the
    fences their leftover processes put on a target."""

    def __init__(self, db: LedgerDB) -> None:
        self.db = db

    def due(self, now: datetime, limit: int) -> list[tuple[int, str]]:
        """Due episodes, the oldest of each target that a claim could take (see `claim`), oldest first.

        Many due episodes of one busy target must not fill the batch and starve every other target."""
        busy = exists().where(T.c.name == E.c.target, T.c.owner.is_not(None))
        ranked = (
            select(
                E.c.id,
                E.c.target,
                E.c.next_run_at,
                func.row_number().over(partition_by=E.c.target, order_by=(E.c.next_run_at, E.c.id)).label("rank"),
            )
            .where(
                E.c.state.in_(RUNNABLE_STATES),
                E.c.next_run_at <= now,
                or_(E.c.owner.is_(None), E.c.lease_until < now),
                ~busy,
                ~self._fenced(E.c.target, now),
            )
            .subquery()
        )
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                select(ranked.c.id, ranked.c.target)
                .where(ranked.c.rank == 1)
                .order_by(ranked.c.next_run_at, ranked.c.id)
                .limit(limit)
            ).all()
        return [(r.id, r.target) for r in rows]

    def claim(self, episode_id: int, target: str, owner: str, now: datetime, lease: float) -> dict[str, Any] | None:
        """Take the episode and its target for `lease` seconds; None when a run holds either, or a leftover
        process of a dead run fences the target.

        Both are conditional UPDATEs: on PostgreSQL the second of two concurrent claims waits for the
        first's row lock, re-checks the condition and matches nothing. A target is taken only when nobody holds
        it, whatever the lease says: a lapsed hold is freed by the sweep, in the transaction that interrupts the
        dead run and fences the target when that run left a process behind, never by a claim (which would race
        that fence). A target held by the claimer itself is busy too: one run at a time per target, and a run
        of ours whose renewals were late is still running."""
        until = now + timedelta(seconds=lease)
        try:
            return self._claim(episode_id, target, owner, now, until)
        except _NotClaimed:
            return None

    def _claim(self, episode_id: int, target: str, owner: str, now: datetime, until: datetime) -> dict[str, Any]:
        with self.db.tx() as conn:
            conn.execute(self.db.insert(T).values(name=target).on_conflict_do_nothing(index_elements=["name"]))
            got_target = conn.execute(
                update(T).where(T.c.name == target, T.c.owner.is_(None)).values(owner=owner, lease_until=until)
            ).rowcount
            if not got_target or conn.execute(select(self._fenced(target, now))).scalar():
                raise _NotClaimed
            previous = conn.execute(select(E.c.state).where(E.c.id == episode_id)).scalar()
            got = conn.execute(
                update(E)
                .where(
                    E.c.id == episode_id,
                    E.c.state.in_(RUNNABLE_STATES),
                    E.c.next_run_at <= now,
                    or_(E.c.owner.is_(None), E.c.lease_until < now),
                )
                .values(owner=owner, lease_until=until, updated_at=now, state="running")
            ).rowcount
            if not got:
                raise _NotClaimed
            row = dict(conn.execute(select(E).where(E.c.id == episode_id)).mappings().one())
        # The state the run was claimed from: "interrupted" tells the engine to apply the retry policy.
        row["state"] = previous
        return row

    @staticmethod
    def _fenced(target: Any, now: datetime) -> Any:
        """Whether a step of a dead run, whose process may still run, fences `target` (see LEFTOVER_FENCE_SECONDS)."""
        return exists().where(S.c.target == target, S.c.fenced_until > now)

    def renew(self, episode_id: int, target: str, owner: str, lease: float) -> bool:
        """Extend the run's claim; False when it lost the episode or its target (a sweep took a lapsed lease)."""
        until = utcnow() + timedelta(seconds=lease)
        with self.db.tx() as conn:
            episode = conn.execute(
                update(E).where(E.c.id == episode_id, E.c.owner == owner).values(lease_until=until)
            ).rowcount
            held = conn.execute(update(T).where(T.c.name == target, T.c.owner == owner).values(lease_until=until))
        return bool(episode and held.rowcount)

    def release_target(self, target: str, owner: str) -> None:
        with self.db.tx() as conn:
            conn.execute(update(T).where(T.c.name == target, T.c.owner == owner).values(owner=None, lease_until=None))

    def sweep(
        self,
        now: datetime,
        owner: str,
        live: Collection[int] = (),
        is_dead: Callable[[str | None], bool] = owner_is_dead,
        lapsed_is_dead: bool = True,
        every_run_of_ours: bool = False,
    ) -> SweepResult:
        """Mark runs whose owner died interrupted: its lease expired, or its process is provably gone (our own
        previous life after a restart, say), and free the targets such owners held. A step of theirs still `running`
        is `unknown` (it may have acted or not; the rule's on_unknown decides), and so is its attempt; an outcome
        the run saw is already recorded (written before anything else, or replayed from the spool before a sweep).
        A live owner renewing its lease is never touched, whatever its name; `live` are the caller's own runs in
        progress (left alone, with their targets, even if a slow renewal let their lease lapse). A run's steps that
        had started a process group fence its target (see LEFTOVER_FENCE_SECONDS) in the same commit that frees it.

        What was read outside the transaction is only a candidate: each takeover re-checks, in its UPDATE, the
        owner and lease it read, so a renewal landing in between keeps the run (no second, concurrent run).

        `lapsed_is_dead` False (the caller has not seen the database writable for a whole lease: it may have been
        away for everyone, and a lease that lapsed then says nothing of its owner) takes over only runs and targets
        whose owner is provably gone. `every_run_of_ours` (`live` is every run the caller has): a run of `owner`'s
        not in `live` is over at once."""
        result = SweepResult()
        with self.db.engine.connect() as conn:  # read first: an idle sweep must not take the write lock
            rows = conn.execute(
                select(E.c.id, E.c.target, E.c.owner, E.c.lease_until).where(E.c.state.in_(ACTIVE_STATES))
            ).all()
            holders = conn.execute(select(T.c.name, T.c.owner, T.c.lease_until).where(T.c.owner.is_not(None))).all()
        live_targets = {r.target for r in rows if r.id in live}
        # Ours but no run of ours holds it (when the caller knows every run it has): a claim whose commit landed while
        # its answer was lost with the database (a failover), or a run whose last write failed. Over at once.
        dead_runs = [
            r
            for r in rows
            if r.id not in live
            and (
                (lapsed_is_dead and _lapsed(r.lease_until, now))
                or (r.owner == owner and every_run_of_ours)
                or (r.owner != owner and is_dead(r.owner))
            )
        ]
        dead_targets = [
            t
            for t in holders
            if (t.owner != owner and ((lapsed_is_dead and _lapsed(t.lease_until, now)) or is_dead(t.owner)))
            # Ours, but no run of ours holds it any more (its release failed): stale once its lease lapsed.
            or (t.owner == owner and t.name not in live_targets and _lapsed(t.lease_until, now))
        ]
        if not dead_runs and not dead_targets:
            return result
        fence_until = now + timedelta(seconds=LEFTOVER_FENCE_SECONDS)
        with self.db.tx() as conn:
            for row in dead_runs:
                took = conn.execute(
                    update(E)
                    .where(
                        E.c.id == row.id,
                        E.c.owner.is_not_distinct_from(row.owner),
                        E.c.lease_until.is_not_distinct_from(row.lease_until),
                        E.c.state.in_(ACTIVE_STATES),
                    )
                    .values(
                        state="interrupted",
                        owner=None,
                        lease_until=None,
                        next_run_at=now,
                        updated_at=now,
                        detail=f"run of {row.owner} interrupted",
                    )
                ).rowcount
                if not took:
                    continue
                result.interrupted.append(row.id)
                lapsed_for = (now - row.lease_until).total_seconds() if row.lease_until is not None else None
                if row.owner == owner and every_run_of_ours:
                    # Not a takeover: our own claim, that no run of ours holds (see dead_runs above).
                    result.why[row.id] = f"owner {owner} (this replica): {OWN_CLAIM_FREED}"
                else:
                    result.why[row.id] = (
                        f"owner {row.owner}: "
                        + ("its process is gone" if row.owner != owner and is_dead(row.owner) else "")
                        + (f"; lease lapsed {lapsed_for:.1f}s ago" if lapsed_for is not None and lapsed_for > 0 else "")
                    ).replace(": ;", ":")
                # A step still `running` may have acted or not: its outcome is unknown (never "interrupted", which
                # would let a retry run it again as if it had not). An outcome its run saw was written before
                # anything else (or spooled, and replayed before this sweep), so it is not among these.
                attempt_ids = select(A.c.id).where(A.c.episode_id == row.id).scalar_subquery()
                running = and_(S.c.attempt_id.in_(attempt_ids), S.c.outcome == "running")
                attempts_stopped(conn, A.c.episode_id == row.id, now, "the reconciler stopped during this run")
                result.fenced += conn.execute(
                    update(S)
                    .where(running, S.c.process.is_not(None))
                    .values(outcome=UNKNOWN, finished_at=now, fenced_until=fence_until)
                ).rowcount
                conn.execute(update(S).where(running).values(outcome=UNKNOWN, finished_at=now))
            for target in dead_targets:
                conn.execute(
                    update(T)
                    .where(
                        T.c.name == target.name,
                        T.c.owner == target.owner,
                        T.c.lease_until.is_not_distinct_from(target.lease_until),
                    )
                    .values(owner=None, lease_until=None)
                )
        return result

    def fenced_steps(self, now: datetime) -> list[tuple[int, str]]:
        """(step id, process token) of the steps whose leftover process group still fences their target."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(S.c.id, S.c.process).where(S.c.fenced_until > now).order_by(S.c.id)).all()
        return [(r.id, r.process or "") for r in rows]

    def unfence(self, step_id: int, note: str) -> bool:
        """Nothing of the step's process group runs any more (killed, or found gone): lift its fence, say so."""
        with self.db.tx() as conn:
            return bool(
                conn.execute(
                    update(S)
                    .where(S.c.id == step_id, S.c.fenced_until.is_not(None))
                    .values(fenced_until=None, output=S.c.output + "\n" + note)
                ).rowcount
            )


def _lapsed(until: datetime | None, now: datetime) -> bool:
    return until is None or until < now


class _NotClaimed(Exception):
    """Rolls a claim's transaction back: another run holds the episode or its target."""
