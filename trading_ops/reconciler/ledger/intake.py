"""The ledger's intake: notifications and the episodes they open or close, stored in one transaction."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, insert, select, update

from trading_ops.db.base import utcnow
from trading_ops.db.states import CLAIMED_STATES, CLOSED_STATES, RUNNABLE_STATES
from trading_ops.reconciler.ledger.db import E, LedgerDB, N, later

# Episode keys the intake knows are stored: a resend of one (most of what Alertmanager sends) is a duplicate
# without asking the database. Episodes are only ever added, so a key once stored stays true; bounded, LRU.
KNOWN_EPISODES_MAX = 20_000

# A notification's columns as the intake writes them (notification_rows), and psycopg's statement for one.
NOTIFICATION_COLUMNS = ("received_at", "receiver", "status", "group_key", "alert_count", "payload")
NOTIFICATION_INSERT = (
    f"INSERT INTO {N.name} ({', '.join(NOTIFICATION_COLUMNS)}) VALUES ({', '.join(['%s'] * len(NOTIFICATION_COLUMNS))})"
)


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
    # A resolved alert's end as Alertmanager gave it (its endsAt), when it could be read: the episode's resolved_at,
    # else the moment the ledger heard of the end.
    ended_at: datetime | None = None


@dataclass
class NotificationIn:
    receiver: str
    status: str
    group_key: str
    payload: str
    alerts: list[AlertIn]


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


class Intake:
    """Owns the intake's writes: the notifications as received (group commit) and the episodes they open or close,
    deduplicated by (fingerprint, startsAt), with an in-process LRU of the episode keys known stored."""

    def __init__(self, db: LedgerDB, retention: timedelta | None = None) -> None:
        """`retention`: how long closed episodes are kept (reconciler.retention_days). A firing alert that started
        longer ago than that is not acted on: its episode may have been pruned, and it must not run twice."""
        self.db = db
        self.retention = retention
        # Intake statements built once, parameters bound per call: building a statement from literal values costs
        # more than executing it (SQLAlchemy then compiles it once and reuses the compiled form).
        key = and_(E.c.fingerprint == bindparam("key_fingerprint"), E.c.starts_at == bindparam("key_starts_at"))
        self._add_notifications = insert(N)
        # RETURNING tells whether the row was inserted: on PostgreSQL the rowcount of an INSERT is always -1.
        self._add_episode = (
            self.db.insert(E).on_conflict_do_nothing(index_elements=["fingerprint", "starts_at"]).returning(E.c.id)
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
        self._mark_resolved = update(E).where(
            E.c.id == bindparam("key_id"), E.c.state.in_(CLOSED_STATES), E.c.resolved_at.is_(None)
        )
        self._known: OrderedDict[tuple[str, datetime], None] = OrderedDict()

    def store(self, batch: list[NotificationIn], conn: Connection | None = None) -> StoreResult:
        """Store notifications and their episodes in one transaction (group commit); returns what changed. `conn`: a
        connection the caller holds (the intake's writer keeps one), else one of the pool's."""
        now = utcnow()
        result = StoreResult()
        stored: list[tuple[str, datetime]] = []
        with self.db.tx() if conn is None else self.db.tx_on(conn) as tx:
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
        # The episode's resolved_at: when the alert ended as Prometheus found it (a pair's slower member may fire its
        # copy of the firing after that, and Gates.copy_of_a_firing tells such a copy from a new firing by it), else
        # when the end was heard.
        ended = a.ended_at or now
        params = {"key_fingerprint": a.fingerprint[:64], "key_starts_at": a.starts_at}
        row = conn.execute(self._find_episode, params).first()
        if row is None:
            # Resolved before we saw it fire: record the closed episode so a late firing starts nothing.
            if self._insert_episode(conn, a, now, "resolved", "resolved before any action", closed=True, ended=ended):
                result.closed["resolved"] = result.closed.get("resolved", 0) + 1
                return
            # Another replica stored its firing meanwhile (on PostgreSQL our insert waited for its commit): that
            # episode is the one to resolve.
            row = conn.execute(self._find_episode, params).first()
            if row is None:
                result.deduplicated += 1
                return
        if row.resolved_at is not None or row.state in CLOSED_STATES:
            if row.resolved_at is None:
                # Closed before its alert resolved (recovered while it kept firing, say): now it is over, and a
                # recovered episode is never reopened (ledger.reopening) for an alert that no longer fires.
                conn.execute(self._mark_resolved, {"key_id": row.id, "resolved_at": ended})
            result.deduplicated += 1
            return
        flag = {"key_id": row.id, "resolved_at": ended, "updated_at": now}
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
        # (RunRecord.defer). Each statement judges the row as it is then (on PostgreSQL another replica may claim or
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
        self,
        conn: Connection,
        a: AlertIn,
        now: datetime,
        state: str,
        detail: str,
        closed: bool,
        ended: datetime | None = None,
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
            "resolved_at": (ended or now) if state == "resolved" else None,
        }
        return conn.execute(self._add_episode, values).first() is not None
