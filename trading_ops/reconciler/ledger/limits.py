"""The ledger's limits: cooldowns, action budgets, circuit breakers (with their audit trail), settings and the pause."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import func, insert, or_, select, update

from trading_ops import audit
from trading_ops.db.base import utcnow
from trading_ops.db.states import OPEN_STATES
from trading_ops.reconciler.ledger.db import AUDIT, SET, A, E, LedgerDB, S, T, later
from trading_ops.reconciler.ledger.runs import OPERATOR_OUTCOMES

# The target whose budget and circuit cover every target (reconciler-wide).
GLOBAL_TARGET = "*"
# The operator's pause (every replica), and the detail of the episodes it parked (woken on resume).
PAUSE_KEY = "paused"
PAUSED_DETAIL = "reconciler paused"
# Step outcomes that mean something was actually done (they count against budgets).
EXECUTED_OUTCOMES = ("running", "success", "failure", "timeout", "interrupted", "unknown")
# The audit entry of an operator resetting a circuit.
CIRCUIT_RESET = "circuit_reset"


class Limits:
    """Owns what caps the reconciler: cooldown per rule and target, budgeted actions per hour, circuits (opened,
    listed, reset with an audit entry), the settings table and the operator's pause of every replica."""

    def __init__(self, db: LedgerDB) -> None:
        self.db = db

    def cooldown_until(
        self, rule: str, target: str, episode_id: int, cooldown: float, now: datetime
    ) -> datetime | None:
        """When the last run of `rule` on `target` (another episode) is at least `cooldown` old, else None."""
        with self.db.engine.connect() as conn:
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

    def deferred_to(
        self, rules: tuple[str, ...], target: str, episode_id: int, recovered_since: datetime
    ) -> dict[str, Any] | None:
        """The episode of one of `rules` on `target` (not `episode_id`) that a new episode's rule defers to: one open
        (its recovery under way; the earliest), else the last one recovered at or after `recovered_since`. None when
        there is none."""
        if not rules:
            return None
        columns = (E.c.id, E.c.rule, E.c.alertname, E.c.state, E.c.closed_at)
        mine = (E.c.rule.in_(rules), E.c.target == target, E.c.id != episode_id)
        with self.db.engine.connect() as conn:
            row = conn.execute(
                select(*columns).where(*mine, E.c.state.in_(OPEN_STATES)).order_by(E.c.id).limit(1)
            ).first()
            if row is None:
                row = conn.execute(
                    select(*columns)
                    .where(*mine, E.c.state == "recovered", E.c.closed_at >= recovered_since)
                    .order_by(E.c.closed_at.desc())
                    .limit(1)
                ).first()
        return None if row is None else dict(row._mapping)

    def recovered_sibling(self, rule: str, target: str, episode_id: int, since: datetime) -> dict[str, Any] | None:
        """The last episode of `rule` on `target` (not `episode_id`) that recovered at or after `since`: a remedy
        verified while a new episode of the same rule waited behind it (one run per target at a time). None when
        there is none."""
        columns = (E.c.id, E.c.alertname, E.c.labels, E.c.closed_at)
        with self.db.engine.connect() as conn:
            row = conn.execute(
                select(*columns)
                .where(
                    E.c.rule == rule,
                    E.c.target == target,
                    E.c.id != episode_id,
                    E.c.state == "recovered",
                    E.c.closed_at >= since,
                )
                .order_by(E.c.closed_at.desc())
                .limit(1)
            ).first()
        return None if row is None else dict(row._mapping)

    def other_copies(
        self, fingerprint: str, episode_id: int, starts_at: datetime, within: timedelta
    ) -> list[dict[str, Any]]:
        """The other episodes of alert `fingerprint` (not `episode_id`) whose startsAt is within `within` of
        `starts_at`, oldest first: what may be copies of one firing (a Prometheus pair's members start one alert a
        few seconds apart)."""
        columns = (E.c.id, E.c.state, E.c.starts_at, E.c.resolved_at, E.c.closed_at)
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                select(*columns)
                .where(
                    E.c.fingerprint == fingerprint,
                    E.c.id != episode_id,
                    E.c.starts_at > starts_at - within,
                    E.c.starts_at < starts_at + within,
                )
                .order_by(E.c.id)
            ).all()
        return [dict(row._mapping) for row in rows]

    def actions_last_hour(self, now: datetime, target: str | None = None) -> int:
        """Budgeted actions on `target` (every target when None) in the last hour, or since its circuit was reset."""
        since = now - timedelta(hours=1)
        with self.db.engine.connect() as conn:
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
        with self.db.engine.connect() as conn:
            until = conn.execute(select(T.c.circuit_open_until).where(T.c.name == target)).scalar()
        return until if until is not None and until > now else None

    def open_circuit(self, target: str, until: datetime) -> bool:
        """Open the circuit; True only for the caller that opened it (so one escalation is posted)."""
        now = utcnow()
        with self.db.tx() as conn:
            conn.execute(self.db.insert(T).values(name=target).on_conflict_do_nothing(index_elements=["name"]))
            return bool(
                conn.execute(
                    update(T)
                    .where(T.c.name == target, or_(T.c.circuit_open_until.is_(None), T.c.circuit_open_until <= now))
                    .values(circuit_open_until=until)
                ).rowcount
            )

    def open_circuits(self, now: datetime) -> list[dict[str, Any]]:
        """Every open circuit: target, open_until, and its budgeted actions in the last hour."""
        with self.db.engine.connect() as conn:
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
        with self.db.tx() as conn:
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
            audit.append(
                conn,
                # The API's "token 'NAME' from ADDRESS"; the CLI's user@host (the database's own access).
                principal=actor.split("'")[1] if actor.startswith("token '") and actor.count("'") >= 2 else actor,
                source=actor.rpartition(" from ")[2] if " from " in actor else "cli",
                action=CIRCUIT_RESET,
                target=target,
                before={"circuit_open_until": until.isoformat()},
                after={"circuit_open_until": None, "budget_reset_at": now.isoformat()},
                at=now,
            )
        return cast(datetime, until)

    def audit_entries(self, limit: int = 50, target: str | None = None) -> list[dict[str, Any]]:
        stmt = select(AUDIT).order_by(AUDIT.c.id.desc()).limit(limit)
        if target is not None:
            stmt = stmt.where(AUDIT.c.target == target)
        with self.db.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def get_setting(self, key: str, default: str = "") -> str:
        with self.db.engine.connect() as conn:
            value = conn.execute(select(SET.c.value).where(SET.c.key == key)).scalar()
        return default if value is None else str(value)

    def set_setting(self, key: str, value: str) -> None:
        now = utcnow()
        with self.db.tx() as conn:
            stmt = self.db.insert(SET).values(key=key, value=value, updated_at=now)
            conn.execute(stmt.on_conflict_do_update(index_elements=["key"], set_={"value": value, "updated_at": now}))

    def set_paused(self, paused: bool, who: tuple[str, str] | None = None) -> int:
        """Switch the pause of every replica; resuming makes the episodes it parked due at once (their number). With
        `who` (principal, source: the person that decided it), an audit entry in the same transaction."""
        now = utcnow()
        value = "1" if paused else "0"
        with self.db.tx() as conn:
            was = conn.execute(select(SET.c.value).where(SET.c.key == PAUSE_KEY)).scalar()
            stmt = self.db.insert(SET).values(key=PAUSE_KEY, value=value, updated_at=now)
            conn.execute(stmt.on_conflict_do_update(index_elements=["key"], set_={"value": value, "updated_at": now}))
            woken = 0
            if not paused:
                woken = int(
                    conn.execute(
                        update(E)
                        .where(E.c.state == "waiting", E.c.detail.startswith(PAUSED_DETAIL, autoescape=True))
                        .values(next_run_at=now, updated_at=now)
                    ).rowcount
                )
            if who is not None:
                audit.append(
                    conn,
                    principal=who[0],
                    source=who[1],
                    action="reconciler_pause" if paused else "reconciler_resume",
                    target="reconciler",
                    before={"paused": was == "1"},
                    after={"paused": paused, **({} if paused else {"episodes_woken": woken})},
                    at=now,
                )
            return woken
