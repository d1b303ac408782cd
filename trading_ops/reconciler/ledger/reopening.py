"""The ledger's reopening: episodes that ended "recovered" while their alert kept firing, and reopening one when its
condition returns."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from trading_ops.db.base import utcnow
from trading_ops.reconciler.ledger.db import E, LedgerDB
from trading_ops.reconciler.ledger.runs import REOPENED, record_history

RECOVERED = "recovered"


@dataclass(frozen=True)
class LinkedAlert:
    """The alert as Alertmanager holds it now (its API v2), for an episode of its own."""

    starts_at: datetime
    labels: dict[str, str]
    annotations: dict[str, str]
    generator_url: str


class Reopening:
    """Owns the reads and the write of a reopening: the recovered episodes whose alert has not resolved, and one of
    them made runnable again (pending, due now), its history saying why; conditional on the episode being what the
    reopener read (another replica may reopen it, or its alert resolve, in between)."""

    def __init__(self, db: LedgerDB) -> None:
        self.db = db

    def recovered_unresolved(self, rules: list[str], closed_since: datetime, limit: int) -> list[dict[str, Any]]:
        """Episodes of `rules` that ended recovered since `closed_since` and whose alert has not resolved (no resolved
        notification stored for it), newest first."""
        if not rules:
            return []
        columns = (
            E.c.id,
            E.c.fingerprint,
            E.c.starts_at,
            E.c.alertname,
            E.c.target,
            E.c.rule,
            E.c.labels,
            E.c.closed_at,
        )
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                select(*columns)
                .where(
                    E.c.state == RECOVERED,
                    E.c.resolved_at.is_(None),
                    E.c.rule.in_(rules),
                    E.c.closed_at >= closed_since,
                )
                .order_by(E.c.closed_at.desc())
                .limit(limit)
            ).mappings()
            return [dict(r) for r in rows]

    def open_linked(self, earlier: dict[str, Any], alert: LinkedAlert, detail: str) -> int | None:
        """A new episode of `earlier`'s rule and target for the alert Alertmanager holds now under the same
        fingerprint with a later startsAt (it fired on across a restart of Prometheus and Alertmanager, which gave it a
        new start and, having notified the group, no new notification), pending and due now, `detail` saying which
        episode it reopens. Its id, or None when an episode of that (fingerprint, startsAt) is stored already (a
        notification of it, or another replica, came first)."""
        now = utcnow()
        values = {
            "fingerprint": earlier["fingerprint"],
            "starts_at": alert.starts_at,
            "alertname": earlier["alertname"],
            "target": earlier["target"],
            "rule": earlier["rule"],
            "labels": json.dumps(alert.labels, sort_keys=True),
            "annotations": json.dumps(alert.annotations, sort_keys=True),
            "generator_url": alert.generator_url,
            "state": "pending",
            "detail": detail,
            "attempts": 0,
            "next_run_at": now,
            "received_at": now,
            "updated_at": now,
            "closed_at": None,
            "resolved_at": None,
        }
        insert_episode = (
            self.db.insert(E).on_conflict_do_nothing(index_elements=["fingerprint", "starts_at"]).returning(E.c.id)
        )
        with self.db.tx() as conn:
            row = conn.execute(insert_episode, values).first()
        return None if row is None else int(row[0])

    def reopen(self, episode_id: int, who: str, detail: str) -> bool:
        """Make the recovered episode runnable again, due now, with `detail` in its history (an attempt row that
        executed nothing). False when it is no longer recovered and unresolved."""
        now = utcnow()
        with self.db.tx() as conn:
            changed = conn.execute(
                update(E)
                .where(E.c.id == episode_id, E.c.state == RECOVERED, E.c.resolved_at.is_(None))
                .values(
                    state="pending",
                    next_run_at=now,
                    closed_at=None,
                    owner=None,
                    lease_until=None,
                    updated_at=now,
                    detail=detail,
                )
            ).rowcount
            if not changed:
                return False
            record_history(conn, episode_id, who, REOPENED, detail)
        return True
