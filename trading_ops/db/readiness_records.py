"""The readiness records in the ledger: `trading-ops readiness BOT --record` writes them, a live start reads one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from trading_ops.db.models.readiness import ReadinessRecord

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

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
    )
    try:
        with Session(engine, expire_on_commit=False) as session, session.begin():
            session.add(row)
    except SQLAlchemyError as exc:
        raise _unreachable(exc) from None
    return _record(row)


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
    )
