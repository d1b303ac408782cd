"""The durable store behind the reconciler: batched intake, episode claims with a lease, the run record."""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, and_, bindparam, delete, exists, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from trading_ops.db.base import utcnow
from trading_ops.db.models.ledger import (
    Approval,
    Attempt,
    AuditEntry,
    Episode,
    Escalation,
    Notification,
    Setting,
    Step,
    Target,
)
from trading_ops.reconciler.processes import owner_is_dead
from trading_ops.reconciler.states import ACTIVE_STATES, CLAIMED_STATES, CLOSED_STATES, OPEN_STATES, RUNNABLE_STATES

GLOBAL_TARGET = "*"
# The operator's pause (every replica), and the detail of the episodes it parked (woken on resume).
PAUSE_KEY = "paused"
PAUSED_DETAIL = "reconciler paused"
# Episode keys the intake knows are stored: a resend of one (most of what Alertmanager sends) is a duplicate
# without asking the database. Episodes are only ever added, so a key once stored stays true; bounded, LRU.
KNOWN_EPISODES_MAX = 20_000
# Step outcomes that mean something was actually done (they count against budgets).
EXECUTED_OUTCOMES = ("running", "success", "failure", "timeout", "interrupted", "unknown")
# A step found `running` by a sweep (its run died) or by its own run after a lost claim: it may have acted or not,
# and nobody saw its result. Its attempt says so too. The rule's on_unknown decides what comes next.
UNKNOWN = "unknown"
UNKNOWN_DETAIL = "a step was still running: its outcome is unknown"
# A run died while its step's process group may still run: no run of that target starts anywhere until a
# reconciler on the process's host (same boot and pid namespace, processes.host_token) has killed what is left of
# the group, which it does on its next poll. No other host can see that process, let alone kill it: if no
# reconciler ever comes back on that host, the fence lapses after this long. It is generous, as acting beside a
# restart script still running is worse than acting late, and the dead host's reconciler usually returns long
# before (systemd restarts it in seconds); a host that died altogether took its processes with it.
LEFTOVER_FENCE_SECONDS = 600.0
# Attempt rows an operator's command records (`reconciler ack`, `reconciler retry`): nothing was executed.
OPERATOR_OUTCOMES = ("acknowledged", "retry")
# Closed episodes `reconciler retry` may run once more (an alert still firing after a run that gave up).
RETRYABLE_STATES = ("escalated", "failed")
# Notifications searched for the one that carried an episode's alert (`reconciler history ID --payload`).
NOTIFICATION_SEARCH_LIMIT = 200
# What retention deletes, by table (tradingops_ledger_pruned_rows_total{table}).
PRUNED_TABLES = ("notifications", "episodes", "attempts", "steps")

# A notification's columns as the intake writes them (notification_rows), and psycopg's statement for one.
NOTIFICATION_COLUMNS = ("received_at", "receiver", "status", "group_key", "alert_count", "payload")
NOTIFICATION_INSERT = (
    f"INSERT INTO {Notification.__tablename__} ({', '.join(NOTIFICATION_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(NOTIFICATION_COLUMNS))})"
)
# What `later` gives for a time past the calendar's end (both databases store it).
END_OF_TIME = datetime.max.replace(tzinfo=UTC)

E = cast(Table, Episode.__table__)
A = cast(Table, Attempt.__table__)
S = cast(Table, Step.__table__)
T = cast(Table, Target.__table__)
N = cast(Table, Notification.__table__)
SET = cast(Table, Setting.__table__)
AUDIT = cast(Table, AuditEntry.__table__)
ESC = cast(Table, Escalation.__table__)
APPROVALS = cast(Table, Approval.__table__)
CIRCUIT_RESET = "circuit_reset"


@dataclass
class AlertIn:
    """One alert of a notification, validated, with the playbook's decision for it."""

    status: str
    fingerprint: str
    starts_at: datetime
    alertname: str
    labels: dict[str, str]
    annotations: dict[str, str]
    generator_url: str
    rule: str | None
    target: str
    wait_for: float = 0.0


@dataclass
class NotificationIn:
    receiver: str
    status: str
    group_key: str
    payload: str
    alerts: list[AlertIn]


@dataclass
class LedgerCounts:
    """Open episodes by state, the due queue, open circuits and the pause, as of one poll."""

    states: dict[str, int]
    queue_depth: int
    open_circuits: list[str]
    paused: bool


@dataclass
class SweepResult:
    """Runs found dead by a sweep, and how many of their steps had started a process group (now fenced)."""

    interrupted: list[int] = field(default_factory=list)
    fenced: int = 0


@dataclass
class StoreResult:
    new_episodes: int = 0
    deduplicated: int = 0
    resolved_ids: list[int] = field(default_factory=list)
    # Episodes closed at intake, by outcome (resolved before a run, skipped for want of a rule).
    closed: dict[str, int] = field(default_factory=dict)


def notification_rows(batch: list[NotificationIn], now: datetime) -> list[tuple[Any, ...]]:
    """The notifications' rows, NOTIFICATION_COLUMNS in order, received `now`."""
    return [(now, n.receiver[:255], n.status, n.group_key, len(n.alerts), n.payload) for n in batch]


class Ledger:
    def __init__(self, engine: Engine, retention: timedelta | None = None) -> None:
        """`retention`: how long closed episodes are kept (reconciler.retention_days). A firing alert that started
        longer ago than that is not acted on: its episode may have been pruned, and it must not run twice."""
        self.engine = engine
        self.dialect = engine.dialect.name
        self.retention = retention
        # Intake statements built once, parameters bound per call: building a statement from literal values costs
        # more than executing it (SQLAlchemy then compiles it once and reuses the compiled form).
        key = and_(E.c.fingerprint == bindparam("key_fingerprint"), E.c.starts_at == bindparam("key_starts_at"))
        self._add_notifications = insert(N)
        # RETURNING tells whether the row was inserted: on PostgreSQL the rowcount of an INSERT is always -1.
        self._add_episode = (
            self._insert(E).on_conflict_do_nothing(index_elements=["fingerprint", "starts_at"]).returning(E.c.id)
        )
        self._find_episode = select(E.c.id, E.c.state, E.c.resolved_at).where(key)
        # Both conditional on what the episode is when they run, not on what the intake read before: a replica
        # may claim it in between.
        self._close_resolved = update(E).where(
            E.c.id == bindparam("key_id"), E.c.state.in_(RUNNABLE_STATES), E.c.resolved_at.is_(None)
        )
        self._flag_resolved = update(E).where(
            E.c.id == bindparam("key_id"), E.c.state.in_(CLAIMED_STATES), E.c.resolved_at.is_(None)
        )
        self._known: OrderedDict[tuple[str, datetime], None] = OrderedDict()

    @contextlib.contextmanager
    def tx(self) -> Iterator[Connection]:
        """A write transaction (BEGIN IMMEDIATE on SQLite, so concurrent writers queue instead of failing)."""
        with self.engine.connect() as conn, self.tx_on(conn):
            yield conn

    @contextlib.contextmanager
    def tx_on(self, conn: Connection) -> Iterator[Connection]:
        """A write transaction, as `tx`, on a connection the caller holds."""
        conn.info["immediate"] = True
        try:
            with conn.begin():
                yield conn
        finally:
            conn.info["immediate"] = False

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    # ---- intake -------------------------------------------------------------------------------------

    def store(self, batch: list[NotificationIn], conn: Connection | None = None) -> StoreResult:
        """Store notifications and their episodes in one transaction (group commit); returns what changed. `conn`: a
        connection the caller holds (the intake's writer keeps one), else one of the pool's."""
        now = utcnow()
        result = StoreResult()
        stored: list[tuple[str, datetime]] = []
        with self.tx() if conn is None else self.tx_on(conn) as tx:
            self._add_notifications_of(tx, batch, now)
            for n in batch:
                for alert in n.alerts:
                    self._store_alert(tx, alert, now, result, stored)
        # Only what was committed becomes known.
        for key in stored:
            self._known[key] = None
            self._known.move_to_end(key)
        while len(self._known) > KNOWN_EPISODES_MAX:
            self._known.popitem(last=False)
        return result

    def _add_notifications_of(self, conn: Connection, batch: list[NotificationIn], now: datetime) -> None:
        rows = notification_rows(batch, now)
        conn.execute(self._add_notifications, [dict(zip(NOTIFICATION_COLUMNS, row, strict=True)) for row in rows])

    def only_known_resends(self, batch: list[NotificationIn]) -> bool:
        """Whether storing `batch` is appending its notifications and nothing else: every alert a firing resend of an
        episode stored before (what `store` would count as deduplicated without asking the database)."""
        known = self._known
        return all(a.status == "firing" and (a.fingerprint[:64], a.starts_at) in known for n in batch for a in n.alerts)

    def _store_alert(
        self, conn: Connection, a: AlertIn, now: datetime, result: StoreResult, stored: list[tuple[str, datetime]]
    ) -> None:
        key = (a.fingerprint[:64], a.starts_at)
        if a.status == "firing" and key in self._known:
            result.deduplicated += 1  # what the INSERT below would find, without the round trip
            return
        stored.append(key)
        if a.status == "resolved":
            self._store_resolved(conn, a, now, result)
            return
        if a.rule is None:
            state, detail, closed = "skipped", "no playbook rule matches", True
        elif self.retention is not None and a.starts_at < now - self.retention:
            days = self.retention.total_seconds() / 86400
            why = f"started more than {days:g} days ago, beyond the ledger's retention (reconciler.retention_days)"
            state, detail, closed = "skipped", f"{why}: not acted on", True
        else:
            state, detail, closed = ("waiting" if a.wait_for > 0 else "pending"), "", False
        if self._insert_episode(conn, a, now, state, detail, closed=closed):
            if closed:
                result.closed[state] = result.closed.get(state, 0) + 1
            else:
                result.new_episodes += 1
        else:
            result.deduplicated += 1

    def _store_resolved(self, conn: Connection, a: AlertIn, now: datetime, result: StoreResult) -> None:
        params = {"key_fingerprint": a.fingerprint[:64], "key_starts_at": a.starts_at}
        row = conn.execute(self._find_episode, params).first()
        if row is None:
            # Resolved before we saw it fire: record the closed episode so a late firing starts nothing.
            if self._insert_episode(conn, a, now, "resolved", "resolved before any action", closed=True):
                result.closed["resolved"] = result.closed.get("resolved", 0) + 1
                return
            # Another replica stored its firing meanwhile (on PostgreSQL our insert waited for its commit): that
            # episode is the one to resolve.
            row = conn.execute(self._find_episode, params).first()
            if row is None:
                result.deduplicated += 1
                return
        if row.resolved_at is not None or row.state in CLOSED_STATES:
            result.deduplicated += 1
            return
        flag = {"key_id": row.id, "resolved_at": now, "updated_at": now}
        close = {
            **flag,
            "state": "resolved",
            "closed_at": now,
            "owner": None,
            "detail": "resolved; pending work cancelled",
        }
        # Not claimed (pending, waiting, interrupted): closed here, its pending work cancelled. Claimed (running,
        # verifying): never closed behind its run's back, which would leave its attempt `running`; only flagged, and
        # the run stops between steps, cancels its verification, and closes it rather than hand it back to wait
        # (Ledger.defer). Each statement judges the row as it is then (on PostgreSQL another replica may claim or
        # hand it back between them): a claim taken after the close is flagged, a run handed back after the flag
        # missed is closed by the last try.
        if conn.execute(self._close_resolved, close).rowcount:
            result.closed["resolved"] = result.closed.get("resolved", 0) + 1
        elif conn.execute(self._flag_resolved, flag).rowcount:
            pass
        elif conn.execute(self._close_resolved, close).rowcount:
            result.closed["resolved"] = result.closed.get("resolved", 0) + 1
        else:
            result.deduplicated += 1  # closed or resolved by someone else since we read it
            return
        result.resolved_ids.append(row.id)

    def _insert_episode(
        self, conn: Connection, a: AlertIn, now: datetime, state: str, detail: str, closed: bool
    ) -> bool:
        values = {
            "fingerprint": a.fingerprint[:64],
            "starts_at": a.starts_at,
            "alertname": a.alertname[:255],
            "target": a.target[:255],
            "rule": a.rule,
            "labels": json.dumps(a.labels, sort_keys=True),
            "annotations": json.dumps(a.annotations, sort_keys=True),
            "generator_url": a.generator_url,
            "state": state,
            "detail": detail,
            "attempts": 0,
            "next_run_at": None if closed else max(now, later(a.starts_at, a.wait_for)),
            "received_at": now,
            "updated_at": now,
            "closed_at": now if closed else None,
            "resolved_at": now if state == "resolved" else None,
        }
        return conn.execute(self._add_episode, values).first() is not None

    # ---- claims -------------------------------------------------------------------------------------

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
        with self.engine.connect() as conn:
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
        with self.tx() as conn:
            conn.execute(self._insert(T).values(name=target).on_conflict_do_nothing(index_elements=["name"]))
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
        with self.tx() as conn:
            episode = conn.execute(
                update(E).where(E.c.id == episode_id, E.c.owner == owner).values(lease_until=until)
            ).rowcount
            held = conn.execute(update(T).where(T.c.name == target, T.c.owner == owner).values(lease_until=until))
        return bool(episode and held.rowcount)

    def release_target(self, target: str, owner: str) -> None:
        with self.tx() as conn:
            conn.execute(update(T).where(T.c.name == target, T.c.owner == owner).values(owner=None, lease_until=None))

    def sweep(
        self,
        now: datetime,
        owner: str,
        live: Collection[int] = (),
        is_dead: Callable[[str | None], bool] = owner_is_dead,
    ) -> SweepResult:
        """Mark runs whose owner died interrupted: its lease expired, or its process is provably gone (our own
        previous life after a restart, say), and free the targets such owners held. A step of theirs still `running`
        is `unknown` (it may have acted or not; the rule's on_unknown decides), and so is its attempt; an outcome
        the run saw is already recorded (written before anything else, or replayed from the spool before a sweep).
        A live owner renewing its lease is never touched, whatever its name; `live` are the caller's own runs in
        progress (left alone, with their targets, even if a slow renewal let their lease lapse). A run's steps that
        had started a process group fence its target (see LEFTOVER_FENCE_SECONDS) in the same commit that frees it.

        What was read outside the transaction is only a candidate: each takeover re-checks, in its UPDATE, the
        owner and lease it read, so a renewal landing in between keeps the run (no second, concurrent run)."""
        result = SweepResult()
        with self.engine.connect() as conn:  # read first: an idle sweep must not take the write lock
            rows = conn.execute(
                select(E.c.id, E.c.target, E.c.owner, E.c.lease_until).where(E.c.state.in_(ACTIVE_STATES))
            ).all()
            holders = conn.execute(select(T.c.name, T.c.owner, T.c.lease_until).where(T.c.owner.is_not(None))).all()
        live_targets = {r.target for r in rows if r.id in live}
        dead_runs = [
            r
            for r in rows
            if r.id not in live and (_lapsed(r.lease_until, now) or (r.owner != owner and is_dead(r.owner)))
        ]
        dead_targets = [
            t
            for t in holders
            if (t.owner != owner and (_lapsed(t.lease_until, now) or is_dead(t.owner)))
            # Ours, but no run of ours holds it any more (its release failed): stale once its lease lapsed.
            or (t.owner == owner and t.name not in live_targets and _lapsed(t.lease_until, now))
        ]
        if not dead_runs and not dead_targets:
            return result
        fence_until = now + timedelta(seconds=LEFTOVER_FENCE_SECONDS)
        with self.tx() as conn:
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
                # A step still `running` may have acted or not: its outcome is unknown (never "interrupted", which
                # would let a retry run it again as if it had not). An outcome its run saw was written before
                # anything else (or spooled, and replayed before this sweep), so it is not among these.
                attempt_ids = select(A.c.id).where(A.c.episode_id == row.id).scalar_subquery()
                running = and_(S.c.attempt_id.in_(attempt_ids), S.c.outcome == "running")
                self._attempts_stopped(conn, A.c.episode_id == row.id, now, "the reconciler stopped during this run")
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
        with self.engine.connect() as conn:
            rows = conn.execute(select(S.c.id, S.c.process).where(S.c.fenced_until > now).order_by(S.c.id)).all()
        return [(r.id, r.process or "") for r in rows]

    def unfence(self, step_id: int, note: str) -> bool:
        """Nothing of the step's process group runs any more (killed, or found gone): lift its fence, say so."""
        with self.tx() as conn:
            return bool(
                conn.execute(
                    update(S)
                    .where(S.c.id == step_id, S.c.fenced_until.is_not(None))
                    .values(fenced_until=None, output=S.c.output + "\n" + note)
                ).rowcount
            )

    # ---- the run record ------------------------------------------------------------------------------

    def episode(self, episode_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
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
        with self.tx() as conn:
            return bool(conn.execute(update(E).where(*cond).values(**values)).rowcount)

    def defer(self, episode_id: int, holder: str, state: str, next_run_at: datetime, detail: str) -> str | None:
        """Hand a claimed episode back to run again at `next_run_at` (`state` pending or waiting: a retry, a
        cooldown, a gate), or, when its alert resolved while it was claimed (the intake only flags a claimed
        episode), close it resolved: nothing is left waiting for an alert that is over. The state written, or None
        when `holder` no longer held it."""
        now = utcnow()
        held = [E.c.id == episode_id, E.c.owner == holder]
        free = {"owner": None, "lease_until": None, "updated_at": now}
        with self.tx() as conn:
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
        with self.tx() as conn:
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
        with self.tx() as conn:
            self._close_running(conn, episode_id, owner, "failure", detail, utcnow())

    def abandon_run(self, episode_id: int, owner: str, detail: str) -> None:
        """`owner`'s run lost its claim and stopped: its attempt and steps still `running` are interrupted, and the
        episode, if it is still `owner`'s (the target was lost, not the episode), is handed back as interrupted,
        for its retry policy to decide."""
        now = utcnow()
        with self.tx() as conn:
            self._attempts_stopped(conn, and_(A.c.episode_id == episode_id, A.c.owner == owner), now, detail)
            self._close_running(conn, episode_id, owner, UNKNOWN, detail, now)
            conn.execute(
                update(E)
                .where(E.c.id == episode_id, E.c.owner == owner, E.c.state.in_(ACTIVE_STATES))
                .values(
                    state="interrupted", owner=None, lease_until=None, next_run_at=now, updated_at=now, detail=detail
                )
            )

    @staticmethod
    def _attempts_stopped(conn: Connection, which: Any, now: datetime, detail: str) -> None:
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
        with self.tx() as conn:
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
    ) -> int:
        now = utcnow()
        with self.tx() as conn:
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
        with self.tx() as conn:
            conn.execute(update(S).where(S.c.id == step_id).values(process=process))

    def note_step(self, step_id: int, note: str) -> None:
        """Append a line to a step's output (what the reconciler found after a restart, say)."""
        with self.tx() as conn:
            conn.execute(update(S).where(S.c.id == step_id).values(output=S.c.output + "\n" + note))

    def finish_step(self, step_id: int, outcome: str, output: str, finished_at: datetime | None = None) -> None:
        """Record what a step did (written again as is when retried or replayed from the spool: idempotent). It
        replaces an `unknown` a sweep wrote meanwhile: the outcome was seen, it is not unknown."""
        with self.tx() as conn:
            conn.execute(
                update(S)
                .where(S.c.id == step_id)
                .values(outcome=outcome, output=output, finished_at=finished_at or utcnow())
            )

    def last_run(self, episode_id: int) -> dict[str, Any] | None:
        """The episode's last attempt that ran steps (not a gate's record, nor an acknowledgement), with its steps
        (`steps`, by position); None when it has none, or when an operator's `reconciler retry` came after it (the
        steps are to run once more, whatever that attempt did)."""
        with self.engine.connect() as conn:
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
        with self.tx() as conn:
            conn.execute(
                update(A)
                .where(A.c.id == attempt_id)
                .values(outcome="running", owner=owner, finished_at=None, detail=detail)
            )

    # ---- cooldown, budgets, circuits, pause ---------------------------------------------------------

    def cooldown_until(
        self, rule: str, target: str, episode_id: int, cooldown: float, now: datetime
    ) -> datetime | None:
        """When the last run of `rule` on `target` (another episode) is at least `cooldown` old, else None."""
        with self.engine.connect() as conn:
            last = conn.execute(
                select(func.max(A.c.started_at))
                .select_from(A.join(E, A.c.episode_id == E.c.id))
                .where(
                    E.c.rule == rule,
                    E.c.target == target,
                    E.c.id != episode_id,
                    A.c.outcome.notin_(("skipped", "dry_run", *OPERATOR_OUTCOMES)),
                )
            ).scalar()
        if last is None:
            return None
        until = later(last, cooldown)
        return until if until > now else None

    def actions_last_hour(self, now: datetime, target: str | None = None) -> int:
        """Budgeted actions on `target` (every target when None) in the last hour, or since its circuit was reset."""
        since = now - timedelta(hours=1)
        with self.engine.connect() as conn:
            reset = conn.execute(
                select(T.c.budget_reset_at).where(T.c.name == (GLOBAL_TARGET if target is None else target))
            ).scalar()
            if reset is not None and reset > since:
                since = reset
            cond = [S.c.budgeted.is_(True), S.c.started_at > since, S.c.outcome.in_(EXECUTED_OUTCOMES)]
            if target is not None:
                cond.append(S.c.target == target)
            return int(conn.execute(select(func.count()).select_from(S).where(*cond)).scalar_one())

    def circuit_open_until(self, target: str, now: datetime) -> datetime | None:
        with self.engine.connect() as conn:
            until = conn.execute(select(T.c.circuit_open_until).where(T.c.name == target)).scalar()
        return until if until is not None and until > now else None

    def open_circuit(self, target: str, until: datetime) -> bool:
        """Open the circuit; True only for the caller that opened it (so one escalation is posted)."""
        now = utcnow()
        with self.tx() as conn:
            conn.execute(self._insert(T).values(name=target).on_conflict_do_nothing(index_elements=["name"]))
            return bool(
                conn.execute(
                    update(T)
                    .where(T.c.name == target, or_(T.c.circuit_open_until.is_(None), T.c.circuit_open_until <= now))
                    .values(circuit_open_until=until)
                ).rowcount
            )

    def open_circuits(self, now: datetime) -> list[dict[str, Any]]:
        """Every open circuit: target, open_until, and its budgeted actions in the last hour."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(T.c.name, T.c.circuit_open_until).where(T.c.circuit_open_until > now).order_by(T.c.name)
            ).all()
        return [
            {
                "target": name,
                "open_until": until,
                "actions_last_hour": self.actions_last_hour(now, None if name == GLOBAL_TARGET else name),
            }
            for name, until in rows
        ]

    def reset_circuit(self, target: str, actor: str, now: datetime) -> datetime | None:
        """Close `target`'s open circuit and restart its action budget from now, with an audit entry; the time it
        would have stayed open until, or None when it was not open (nothing is changed or recorded then)."""
        with self.tx() as conn:
            until = conn.execute(
                select(T.c.circuit_open_until).where(T.c.name == target, T.c.circuit_open_until > now)
            ).scalar()
            if until is None:
                return None
            conn.execute(update(T).where(T.c.name == target).values(circuit_open_until=None, budget_reset_at=now))
            conn.execute(
                insert(AUDIT).values(
                    at=now,
                    action=CIRCUIT_RESET,
                    target=target,
                    actor=actor,
                    detail=f"circuit was open until {until.isoformat()}; action budget restarted",
                )
            )
        return cast(datetime, until)

    def audit_entries(self, limit: int = 50, target: str | None = None) -> list[dict[str, Any]]:
        stmt = select(AUDIT).order_by(AUDIT.c.id.desc()).limit(limit)
        if target is not None:
            stmt = stmt.where(AUDIT.c.target == target)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def get_setting(self, key: str, default: str = "") -> str:
        with self.engine.connect() as conn:
            value = conn.execute(select(SET.c.value).where(SET.c.key == key)).scalar()
        return default if value is None else str(value)

    def set_setting(self, key: str, value: str) -> None:
        now = utcnow()
        with self.tx() as conn:
            stmt = self._insert(SET).values(key=key, value=value, updated_at=now)
            conn.execute(stmt.on_conflict_do_update(index_elements=["key"], set_={"value": value, "updated_at": now}))

    def set_paused(self, paused: bool) -> int:
        """Switch the pause of every replica; resuming makes the episodes it parked due at once (their number)."""
        now = utcnow()
        value = "1" if paused else "0"
        with self.tx() as conn:
            stmt = self._insert(SET).values(key=PAUSE_KEY, value=value, updated_at=now)
            conn.execute(stmt.on_conflict_do_update(index_elements=["key"], set_={"value": value, "updated_at": now}))
            if paused:
                return 0
            return int(
                conn.execute(
                    update(E)
                    .where(E.c.state == "waiting", E.c.detail.startswith(PAUSED_DETAIL, autoescape=True))
                    .values(next_run_at=now, updated_at=now)
                ).rowcount
            )

    # ---- reading ------------------------------------------------------------------------------------

    def snapshot(self, now: datetime) -> LedgerCounts:
        """What the engine exports after each poll, read in one connection (one thread hop, not four)."""
        with self.engine.connect() as conn:
            states = conn.execute(
                select(E.c.state, func.count()).where(E.c.state.in_(OPEN_STATES)).group_by(E.c.state)
            ).all()
            due = conn.execute(
                select(func.count()).select_from(E).where(E.c.state.in_(RUNNABLE_STATES), E.c.next_run_at <= now)
            ).scalar_one()
            circuits = conn.execute(select(T.c.name).where(T.c.circuit_open_until > now)).scalars().all()
            paused = conn.execute(select(SET.c.value).where(SET.c.key == PAUSE_KEY)).scalar()
        return LedgerCounts({r[0]: int(r[1]) for r in states}, int(due), list(circuits), paused == "1")

    def list_episodes(
        self, limit: int = 50, state: str | None = None, target: str | None = None
    ) -> list[dict[str, Any]]:
        stmt = select(E).order_by(E.c.id.desc()).limit(limit)
        if state:
            stmt = stmt.where(E.c.state == state)
        if target is not None:
            stmt = stmt.where(E.c.target == target)
        with self.engine.connect() as conn:
            episodes = [dict(r) for r in conn.execute(stmt).mappings()]
            ids = [e["id"] for e in episodes]
            attempts = (
                [
                    dict(r)
                    for r in conn.execute(select(A).where(A.c.episode_id.in_(ids)).order_by(A.c.number)).mappings()
                ]
                if ids
                else []
            )
            aids = [a["id"] for a in attempts]
            steps = (
                [
                    dict(r)
                    for r in conn.execute(select(S).where(S.c.attempt_id.in_(aids)).order_by(S.c.position)).mappings()
                ]
                if aids
                else []
            )
        by_attempt: dict[int, list[dict[str, Any]]] = {}
        for s in steps:
            by_attempt.setdefault(s["attempt_id"], []).append(s)
        by_episode: dict[int, list[dict[str, Any]]] = {}
        for a in attempts:
            a["steps"] = by_attempt.get(a["id"], [])
            by_episode.setdefault(a["episode_id"], []).append(a)
        for e in episodes:
            e["attempt_list"] = by_episode.get(e["id"], [])
        return episodes

    def open_episodes_by_target(self) -> dict[str, int]:
        """How many episodes are open (not closed yet) per target: the operator console's fleet."""
        stmt = select(E.c.target, func.count()).where(E.c.state.in_(OPEN_STATES)).group_by(E.c.target)
        with self.engine.connect() as conn:
            return {str(target): int(count) for target, count in conn.execute(stmt).all()}

    def get_episode_full(self, episode_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(E).where(E.c.id == episode_id)).mappings().first()
            if row is None:
                return None
            episode = dict(row)
            attempts = [
                dict(r)
                for r in conn.execute(select(A).where(A.c.episode_id == episode_id).order_by(A.c.number)).mappings()
            ]
            aids = [a["id"] for a in attempts]
            steps = (
                [
                    dict(r)
                    for r in conn.execute(select(S).where(S.c.attempt_id.in_(aids)).order_by(S.c.position)).mappings()
                ]
                if aids
                else []
            )
            pages = conn.execute(select(ESC).where(ESC.c.episode_id == episode_id).order_by(ESC.c.id)).mappings()
            episode["escalation_list"] = [dict(p) for p in pages]
        for a in attempts:
            a["steps"] = [s for s in steps if s["attempt_id"] == a["id"]]
        episode["attempt_list"] = attempts
        return episode

    def notification_for(self, fingerprint: str, starts_at: datetime) -> str | None:
        """The first stored notification (the payload exactly as received) that carried this episode's alert."""
        stmt = (
            select(N.c.payload)
            .where(N.c.payload.contains(fingerprint, autoescape=True))
            .order_by(N.c.received_at, N.c.id)
            .limit(NOTIFICATION_SEARCH_LIMIT)
        )
        with self.engine.connect() as conn:
            payloads = list(conn.execute(stmt).scalars())
        for payload in payloads:
            try:
                alerts = json.loads(payload).get("alerts") or []
            except (ValueError, AttributeError):
                continue
            for alert in alerts:
                if not isinstance(alert, dict) or alert.get("fingerprint") != fingerprint:
                    continue
                try:
                    started = datetime.fromisoformat(str(alert.get("startsAt")).replace("Z", "+00:00"))
                except ValueError:
                    continue
                if abs((started - starts_at).total_seconds()) < 1:
                    return str(payload)
        return None

    # ---- an operator's commands ---------------------------------------------------------------------

    def _record_operator(self, conn: Connection, episode_id: int, who: str, outcome: str, detail: str) -> None:
        """An attempt row that executed nothing: who did what to the episode, in its history."""
        now = utcnow()
        last = conn.execute(
            select(func.coalesce(func.max(A.c.number), 0)).where(A.c.episode_id == episode_id)
        ).scalar_one()
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

    def acknowledge(self, episode_id: int, who: str, note: str) -> bool:
        """Record that `who` has taken the episode (any state); it changes nothing the engine does. False: no such
        episode."""
        with self.tx() as conn:
            if conn.execute(select(E.c.id).where(E.c.id == episode_id)).first() is None:
                return False
            self._record_operator(conn, episode_id, who, "acknowledged", note or "acknowledged")
        return True

    def retry(self, episode_id: int, who: str) -> str | None:
        """Re-queue an escalated or failed episode whose alert has not resolved for one more run: it becomes
        `waiting`, due now, so the engine first asks Alertmanager whether the alert still fires (resolved: closed,
        nothing executed), then runs the rule's steps once more (its attempts are spent, so a failure escalates
        again). None when done, else why not."""
        now = utcnow()
        detail = f"retry requested by {who}: one more run if the alert still fires"
        with self.tx() as conn:
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
            self._record_operator(conn, episode_id, who, "retry", detail)
        return None

    def notification_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(N)).scalar_one())

    # ---- retention ----------------------------------------------------------------------------------

    def prune_notifications(self, cutoff: datetime, limit: int) -> int:
        """Delete up to `limit` of the notifications received before `cutoff` (one short transaction)."""
        oldest = select(N.c.id).where(N.c.received_at < cutoff).order_by(N.c.received_at).limit(limit)
        with self.tx() as conn:
            return int(conn.execute(delete(N).where(N.c.id.in_(oldest))).rowcount)

    def prune_episodes(self, cutoff: datetime, limit: int) -> dict[str, int]:
        """Delete up to `limit` episodes closed before `cutoff`, with their attempts and steps (one short
        transaction); rows deleted by table. Open episodes are never touched, however old."""
        with self.tx() as conn:
            ids = list(
                conn.execute(
                    select(E.c.id)
                    .where(E.c.state.in_(CLOSED_STATES), E.c.closed_at < cutoff)
                    .order_by(E.c.closed_at)
                    .limit(limit)
                ).scalars()
            )
            if not ids:
                return {"episodes": 0, "attempts": 0, "steps": 0}
            attempt_ids = select(A.c.id).where(A.c.episode_id.in_(ids))
            steps = conn.execute(delete(S).where(S.c.attempt_id.in_(attempt_ids))).rowcount
            attempts = conn.execute(delete(A).where(A.c.episode_id.in_(ids))).rowcount
            conn.execute(delete(ESC).where(ESC.c.episode_id.in_(ids)))  # their pages (SQLite enforces no cascade)
            conn.execute(delete(APPROVALS).where(APPROVALS.c.episode_id.in_(ids)))  # and their approvals
            episodes = conn.execute(delete(E).where(E.c.id.in_(ids), E.c.state.in_(CLOSED_STATES))).rowcount
        return {"episodes": int(episodes), "attempts": int(attempts), "steps": int(steps)}


def later(when: datetime, seconds: float) -> datetime:
    """`when` plus `seconds`, the end of the calendar when that is past it (never OverflowError, which would fail
    the whole batch of notifications being stored: a 503 that Alertmanager retries forever)."""
    try:
        return when + timedelta(seconds=seconds)
    except OverflowError:
        return END_OF_TIME


def _lapsed(until: datetime | None, now: datetime) -> bool:
    return until is None or until < now


class _NotClaimed(Exception):
    """Rolls a claim's transaction back: another run holds the episode or its target."""


def episode_json(e: dict[str, Any]) -> dict[str, Any]:
    """The API's view of an episode (DESIGN.md: id, fingerprint, starts_at, alertname, labels, state, attempts)."""

    def ts(v: datetime | None) -> str | None:
        return v.isoformat() if v else None

    attempts = []
    for a in e.get("attempt_list", []):
        steps = [
            {
                "position": s["position"],
                "action": s["action"],
                "description": s["description"],
                "risk": s["risk"],
                "outcome": s["outcome"],
                "started_at": ts(s["started_at"]),
                "finished_at": ts(s["finished_at"]),
                "duration_seconds": (s["finished_at"] - s["started_at"]).total_seconds() if s["finished_at"] else None,
                "output": s["output"],
            }
            for s in a.get("steps", [])
        ]
        attempts.append(
            {
                "number": a["number"],
                "action": ", ".join(s["action"] for s in steps) or "-",
                "outcome": a["outcome"],
                "started_at": ts(a["started_at"]),
                "finished_at": ts(a["finished_at"]),
                "detail": a["detail"],
                "owner": a["owner"],
                "steps": steps,
            }
        )
    shown = {
        "id": e["id"],
        "fingerprint": e["fingerprint"],
        "starts_at": ts(e["starts_at"]),
        "alertname": e["alertname"],
        "labels": json.loads(e["labels"]),
        "annotations": json.loads(e["annotations"]),
        "target": e["target"],
        "rule": e["rule"],
        "state": e["state"],
        "detail": e["detail"],
        "received_at": ts(e["received_at"]),
        "next_run_at": ts(e["next_run_at"]),
        "resolved_at": ts(e["resolved_at"]),
        "closed_at": ts(e["closed_at"]),
        "attempts": attempts,
    }
    if "escalation_list" in e:  # one episode's view: the pages it owes (the escalation outbox) and how far they got
        shown["escalations"] = [
            {
                "alertname": p["alertname"],
                "labels": json.loads(p["labels"]),
                "starts_at": ts(p["starts_at"]),
                "created_at": ts(p["created_at"]),
                "attempts": p["attempts"],
                "next_attempt_at": ts(p["next_attempt_at"]) if p["posted_at"] is None else None,
                "posted_at": ts(p["posted_at"]),
                "notified_at": ts(p["notified_at"]),
                "last_error": p["last_error"],
            }
            for p in e["escalation_list"]
        ]
    return shown
