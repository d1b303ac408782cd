"""The ledger's read side: what the engine exports, the API and the operator console show, and episodes as JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from trading_ops.db.states import OPEN_STATES, RUNNABLE_STATES
from trading_ops.reconciler.ledger.db import ESC, SET, A, E, LedgerDB, N, S, T
from trading_ops.reconciler.ledger.limits import PAUSE_KEY

# Notifications searched for the one that carried an episode's alert (`reconciler history ID --payload`).
NOTIFICATION_SEARCH_LIMIT = 200


@dataclass
class LedgerCounts:
    """Open episodes by state, the due queue, open circuits and the pause, as of one poll."""

    states: dict[str, int]
    queue_depth: int
    open_circuits: list[str]
    paused: bool
    # Open episodes per (target, alertname): what TradingBotUnhandledExposure reads as "someone is on it".
    open_by_target: dict[tuple[str, str], int]


class Queries:
    """Owns the reads that change nothing: the poll's snapshot, episodes with their attempts and steps, the fleet's open
    episodes, and the notification that carried an episode's alert."""

    def __init__(self, db: LedgerDB) -> None:
        self.db = db

    def snapshot(self, now: datetime) -> LedgerCounts:
        """What the engine exports after each poll, read in one connection (one thread hop, not five)."""
        with self.db.engine.connect() as conn:
            states = conn.execute(
                select(E.c.state, func.count()).where(E.c.state.in_(OPEN_STATES)).group_by(E.c.state)
            ).all()
            due = conn.execute(
                select(func.count()).select_from(E).where(E.c.state.in_(RUNNABLE_STATES), E.c.next_run_at <= now)
            ).scalar_one()
            circuits = conn.execute(select(T.c.name).where(T.c.circuit_open_until > now)).scalars().all()
            paused = conn.execute(select(SET.c.value).where(SET.c.key == PAUSE_KEY)).scalar()
            by_target = conn.execute(
                select(E.c.target, E.c.alertname, func.count())
                .where(E.c.state.in_(OPEN_STATES))
                .group_by(E.c.target, E.c.alertname)
            ).all()
        return LedgerCounts(
            {r[0]: int(r[1]) for r in states},
            int(due),
            list(circuits),
            paused == "1",
            {(str(r[0]), str(r[1])): int(r[2]) for r in by_target},
        )

    def list_episodes(
        self, limit: int = 50, state: str | None = None, target: str | None = None
    ) -> list[dict[str, Any]]:
        stmt = select(E).order_by(E.c.id.desc()).limit(limit)
        if state:
            stmt = stmt.where(E.c.state == state)
        if target is not None:
            stmt = stmt.where(E.c.target == target)
        with self.db.engine.connect() as conn:
            episodes = [dict(r) for r in conn.execute(stmt).mappings()]
            attempts = _attempts_with_steps(conn, [e["id"] for e in episodes])
        _attach(episodes, "attempt_list", attempts, "episode_id")
        return episodes

    def open_episodes_by_target(self) -> dict[str, int]:
        """How many episodes are open (not closed yet) per target: the operator console's fleet."""
        stmt = select(E.c.target, func.count()).where(E.c.state.in_(OPEN_STATES)).group_by(E.c.target)
        with self.db.engine.connect() as conn:
            return {str(target): int(count) for target, count in conn.execute(stmt).all()}

    def get_episode_full(self, episode_id: int) -> dict[str, Any] | None:
        with self.db.engine.connect() as conn:
            row = conn.execute(select(E).where(E.c.id == episode_id)).mappings().first()
            if row is None:
                return None
            episode = dict(row)
            episode["attempt_list"] = _attempts_with_steps(conn, [episode_id])
            pages = conn.execute(select(ESC).where(ESC.c.episode_id == episode_id).order_by(ESC.c.id)).mappings()
            episode["escalation_list"] = [dict(p) for p in pages]
        return episode

    def notification_for(self, fingerprint: str, starts_at: datetime) -> str | None:
        """The first stored notification (the payload exactly as received) that carried this episode's alert."""
        stmt = (
            select(N.c.payload)
            .where(N.c.payload.contains(fingerprint, autoescape=True))
            .order_by(N.c.received_at, N.c.id)
            .limit(NOTIFICATION_SEARCH_LIMIT)
        )
        with self.db.engine.connect() as conn:
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

    def notification_count(self) -> int:
        with self.db.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(N)).scalar_one())


def _attempts_with_steps(conn: Connection, episode_ids: list[int]) -> list[dict[str, Any]]:
    """The attempts of these episodes by number, each with its steps by position under "steps": two queries, however
    many episodes."""
    if not episode_ids:
        return []
    attempts = [
        dict(r) for r in conn.execute(select(A).where(A.c.episode_id.in_(episode_ids)).order_by(A.c.number)).mappings()
    ]
    aids = [a["id"] for a in attempts]
    steps = (
        [dict(r) for r in conn.execute(select(S).where(S.c.attempt_id.in_(aids)).order_by(S.c.position)).mappings()]
        if aids
        else []
    )
    _attach(attempts, "steps", steps, "attempt_id")
    return attempts


def _attach(parents: list[dict[str, Any]], name: str, children: list[dict[str, Any]], parent_key: str) -> None:
    """Put under each parent's `name` its children (those whose `parent_key` is its id), in the children's order."""
    by_parent: dict[int, list[dict[str, Any]]] = {}
    for child in children:
        by_parent.setdefault(child[parent_key], []).append(child)
    for parent in parents:
        parent[name] = by_parent.get(parent["id"], [])


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
