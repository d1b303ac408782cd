"""The readiness records in the ledger: the reconciler writes one when a live start request is approved (with the
live_start decision it signed for it), a live start reads one."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from trading_ops.db.base import utcnow
from trading_ops.db.models.readiness import ReadinessRecord

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

# Longest error text of the database kept in the one line that says the ledger is unreachable.
ERROR_CHARS = 200


class LedgerUnreachable(Exception):
    """The ledger's database cannot be read or written now (one line: why)."""


@dataclass(frozen=True)
class Record:
    id: int
    bot: str
    instance: str
    verdict: str
    window: str
    failing: list[str]
    missing: list[str]
    recorded_by: str
    recorded_at: datetime
    approved_by: str | None
    reason: str
    request_id: int | None = None
    decision: str | None = None

    @property
    def allows_live(self) -> bool:
        """A passing paper verdict, or a person's approval whatever the verdict."""
        return self.verdict == "ready" or bool(self.approved_by)

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "bot": self.bot,
            "instance": self.instance,
            "verdict": self.verdict,
            "window": self.window,
            "failing": self.failing,
            "missing": self.missing,
            "recorded_by": self.recorded_by,
            "recorded_at": self.recorded_at.isoformat(),
            "approved_by": self.approved_by,
            "reason": self.reason,
            "request_id": self.request_id,
        }


def _unreachable(exc: SQLAlchemyError) -> LedgerUnreachable:
    first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
    return LedgerUnreachable(f"the ledger's database is unreachable ({first[:ERROR_CHARS]})")


def write(
    engine: Engine,
    *,
    bot: str,
    instance: str,
    verdict: str,
    window: str,
    failing: list[str],
    missing: list[str],
    recorded_by: str,
    approved_by: str | None = None,
    reason: str = "",
    request_id: int | None = None,
) -> Record:
    """Append a record (committed before this returns); LedgerUnreachable when the database cannot take it."""
    row = ReadinessRecord(
        bot=bot[:128],
        instance=instance[:255],
        verdict=verdict,
        window=window[:32],
        failing=json.dumps(failing),
        missing=json.dumps(missing),
        recorded_by=recorded_by.strip()[:255] or "unknown",
        approved_by=approved_by.strip()[:255] if approved_by else None,
        reason=reason.strip()[:2000],
        request_id=request_id,
    )
    try:
        with Session(engine, expire_on_commit=False) as session, session.begin():
            session.add(row)
    except SQLAlchemyError as exc:
        raise _unreachable(exc) from None
    return _record(row)


def write_decided(
    conn: Connection,
    *,
    bot: str,
    instance: str,
    verdict: dict[str, Any],
    requested_by: str,
    approvers: list[str],
    reason: str,
    request_id: int,
    decision_for: Callable[[int], str],
) -> Record:
    """Append the record of an approved live start request inside the caller's write transaction (with its audit
    entry, say), and the decision `decision_for` signs for the record's id beside it."""
    rr = cast(Table, ReadinessRecord.__table__)
    values: dict[str, Any] = {
        "bot": bot[:128],
        "instance": instance[:255],
        "verdict": str(verdict.get("verdict") or "unknown")[:16],
        "window": str(verdict.get("window") or "")[:32],
        "failing": json.dumps([str(c) for c in verdict.get("failing") or []]),
        "missing": json.dumps([str(c) for c in verdict.get("missing") or []]),
        "recorded_by": requested_by.strip()[:255],
        "recorded_at": utcnow(),
        "approved_by": ", ".join(approvers)[:255] or None,
        "reason": reason.strip()[:2000],
        "request_id": request_id,
    }
    record_id = int(conn.execute(insert(rr).values(**values).returning(rr.c.id)).scalar_one())
    token = decision_for(record_id)
    conn.execute(update(rr).where(rr.c.id == record_id).values(decision=token))
    return Record(
        record_id,
        values["bot"],
        values["instance"],
        values["verdict"],
        values["window"],
        _list(values["failing"]),
        _list(values["missing"]),
        values["recorded_by"],
        values["recorded_at"],
        values["approved_by"],
        values["reason"],
        request_id,
        token,
    )


def latest(engine: Engine, bot: str) -> Record | None:
    """The bot's newest record, or None; LedgerUnreachable when the database cannot be read."""
    try:
        with Session(engine) as session:
            row = session.scalars(
                select(ReadinessRecord).where(ReadinessRecord.bot == bot).order_by(ReadinessRecord.id.desc()).limit(1)
            ).first()
            return None if row is None else _record(row)
    except SQLAlchemyError as exc:
        raise _unreachable(exc) from None


def answering(engine: Engine, request_id: int) -> Record | None:
    """The record written for live start request `request_id`, or None."""
    try:
        with Session(engine) as session:
            row = session.scalars(
                select(ReadinessRecord).where(ReadinessRecord.request_id == request_id).limit(1)
            ).first()
            return None if row is None else _record(row)
    except SQLAlchemyError as exc:
        raise _unreachable(exc) from None


def history(engine: Engine, bot: str, limit: int = 20) -> list[Record]:
    """The bot's newest records, newest first."""
    try:
        with Session(engine) as session:
            rows = session.scalars(
                select(ReadinessRecord)
                .where(ReadinessRecord.bot == bot)
                .order_by(ReadinessRecord.id.desc())
                .limit(limit)
            ).all()
            return [_record(r) for r in rows]
    except SQLAlchemyError as exc:
        raise _unreachable(exc) from None


def _list(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def _record(row: ReadinessRecord) -> Record:
    return Record(
        row.id,
        row.bot,
        row.instance,
        row.verdict,
        row.window,
        _list(row.failing),
        _list(row.missing),
        row.recorded_by,
        row.recorded_at,
        row.approved_by,
        row.reason,
        row.request_id,
        row.decision,
    )
