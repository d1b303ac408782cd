"""Database access of crash recovery: bot runs and heartbeats, recovery events, reconciliation runs.

Every method is synchronous and meant to run on the journal's worker thread (`await journal.call(...)`),
so the event loop never waits on the disk and writes keep their order with the journal's own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, or_, select

from trading_ops.db.base import make_sessionmaker, utcnow
from trading_ops.db.models import BotRun, ReconciliationDiscrepancy, ReconciliationRun, RecoveryEvent

MAX_ERROR_LENGTH = 255
MAX_VALUE_LENGTH = 64
STATE_EVENT = "state"  # the kind of a journaled trading state transition
CONTROL_EVENT = "control"  # the kind of a journaled control command (who sent it, what came of it)


@dataclass(frozen=True)
class RunRecord:
    """A bot run as crash detection sees it."""

    id: int
    pid: int
    hostname: str
    started_at: datetime
    last_heartbeat_at: datetime
    stopped_at: datetime | None
    clean_shutdown: bool
    stop_reason: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.id,
            "pid": self.pid,
            "hostname": self.hostname,
            "started_at": self.started_at.isoformat(),
            "last_heartbeat_at": self.last_heartbeat_at.isoformat(),
            "stopped_at": self.stopped_at.isoformat() if self.stopped_at else None,
            "clean_shutdown": self.clean_shutdown,
            "stop_reason": self.stop_reason,
        }


def _record(row: BotRun) -> RunRecord:
    return RunRecord(
        id=row.id,
        pid=row.pid,
        hostname=row.hostname,
        started_at=row.started_at,
        last_heartbeat_at=row.last_heartbeat_at,
        stopped_at=row.stopped_at,
        clean_shutdown=row.clean_shutdown,
        stop_reason=row.stop_reason,
    )


class RecoveryStore:
    """Owns one bot's crash-recovery rows: its runs and their heartbeats (crash detection), the recovery events
    still to notify, its trading-state transitions, and its reconciliation runs with their discrepancies."""

    def __init__(self, engine: Engine, bot: str, venue: str) -> None:
        self.bot = bot
        self.venue = venue
        self._sessions = make_sessionmaker(engine, immediate=True)

    # -- runs and heartbeats --------------------------------------------------------------------------
    def last_run(self) -> RunRecord | None:
        with self._sessions() as session:
            row = session.scalars(select(BotRun).where(BotRun.bot == self.bot).order_by(BotRun.id.desc())).first()
            return None if row is None else _record(row)

    def get_run(self, run_id: int) -> RunRecord | None:
        with self._sessions() as session:
            row = session.get(BotRun, run_id)
            return None if row is None else _record(row)

    def crashed_runs(self, current_run: int | None) -> int:
        """How many runs of this bot before `current_run` ended without the clean-shutdown marker: its crashes."""
        with self._sessions() as session:
            query = select(func.count(BotRun.id)).where(
                BotRun.bot == self.bot, BotRun.id != (current_run or 0), BotRun.clean_shutdown.is_(False)
            )
            return int(session.scalar(query) or 0)

    def crashed_runs_since(self, current_run: int | None, since: datetime, live_at: datetime | None = None) -> int:
        """How many runs of this bot before `current_run` crashed at or after `since` (a crash loop): a run that
        started then or later, one still alive then (its last heartbeat at or after it), and with `live_at` (a moment
        the bot was known to run: its promotion) the run that was live at that moment, which started before it."""
        with self._sessions() as session:
            after = or_(BotRun.started_at >= since, BotRun.last_heartbeat_at >= since)
            if live_at is not None:
                live = (
                    select(BotRun.id)
                    .where(BotRun.bot == self.bot, BotRun.started_at <= live_at)
                    .order_by(BotRun.started_at.desc(), BotRun.id.desc())
                    .limit(1)
                    .scalar_subquery()
                )
                after = or_(after, BotRun.id == live)
            query = select(func.count(BotRun.id)).where(
                BotRun.bot == self.bot,
                BotRun.id != (current_run or 0),
                BotRun.clean_shutdown.is_(False),
                after,
            )
            return int(session.scalar(query) or 0)

    def begin_run(self, pid: int, hostname: str) -> int:
        with self._sessions.begin() as session:
            now = utcnow()
            row = BotRun(
                bot=self.bot, venue=self.venue, pid=pid, hostname=hostname[:255], started_at=now, last_heartbeat_at=now
            )
            session.add(row)
            session.flush()
            return row.id

    def heartbeat(self, run_id: int, at: datetime) -> None:
        with self._sessions.begin() as session:
            row = session.get(BotRun, run_id)
            if row is not None:
                row.last_heartbeat_at = at

    def mark_stopped(self, run_id: int, clean: bool, reason: str) -> None:
        """The final heartbeat; with `clean` it is the marker that tells the next start this was no crash."""
        with self._sessions.begin() as session:
            row = session.get(BotRun, run_id)
            if row is not None:
                now = utcnow()
                row.last_heartbeat_at = now
                row.stopped_at = now
                row.clean_shutdown = clean
                row.stop_reason = reason[:64]

    # -- recovery events ------------------------------------------------------------------------------
    def record_event(
        self,
        run_id: int,
        kind: str,
        previous: RunRecord | None,
        detail: dict[str, Any],
    ) -> int:
        with self._sessions.begin() as session:
            row = RecoveryEvent(
                bot=self.bot,
                run_id=run_id,
                previous_run_id=previous.id if previous else None,
                kind=kind,
                last_heartbeat_at=previous.last_heartbeat_at if previous else None,
                detail=json.dumps(detail, sort_keys=True, default=str),
            )
            session.add(row)
            session.flush()
            return row.id

    def unnotified_events(self, limit: int) -> list[RecoveryEvent]:
        """Events whose report has not been sent yet, oldest first (at most `limit`, the newest ones)."""
        with self._sessions() as session:
            rows = session.scalars(
                select(RecoveryEvent)
                .where(RecoveryEvent.bot == self.bot, RecoveryEvent.notified.is_(False))
                .order_by(RecoveryEvent.id.desc())
                .limit(limit)
            )
            return sorted(rows, key=lambda row: row.id)

    def mark_notified(self, event_id: int) -> None:
        with self._sessions.begin() as session:
            row = session.get(RecoveryEvent, event_id)
            if row is not None:
                row.notified = True

    def events(self, kind: str = "crash") -> list[RecoveryEvent]:
        with self._sessions() as session:
            return list(
                session.scalars(
                    select(RecoveryEvent)
                    .where(RecoveryEvent.bot == self.bot, RecoveryEvent.kind == kind)
                    .order_by(RecoveryEvent.id)
                )
            )

    # -- trading state transitions --------------------------------------------------------------------
    def record_transition(self, run_id: int, before: str, after: str, reason: str, by: str = "") -> None:
        """Journal a change of trading state with its reason and who asked for it (`by`, a control command's
        `token 'NAME' from ADDRESS`; "" for the bot's own), as a `state` event: never reported as a crash."""
        with self._sessions.begin() as session:
            fields = {"before": before, "after": after, "reason": reason}
            if by:
                fields["by"] = by
            detail = json.dumps(fields, sort_keys=True)
            session.add(RecoveryEvent(bot=self.bot, run_id=run_id, kind=STATE_EVENT, detail=detail, notified=True))

    def record_command(self, run_id: int, fields: dict[str, Any]) -> None:
        """Journal a control command an authenticated caller sent (its command, principal, source, peer, outcome and
        the signed decision it acted on), as a `control` event: never reported as a crash."""
        detail = json.dumps(fields, sort_keys=True, default=str)
        with self._sessions.begin() as session:
            session.add(RecoveryEvent(bot=self.bot, run_id=run_id, kind=CONTROL_EVENT, detail=detail, notified=True))

    def commands(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest journaled control commands of this bot, oldest first (each its fields and `at`)."""
        with self._sessions() as session:
            rows = session.scalars(
                select(RecoveryEvent)
                .where(RecoveryEvent.bot == self.bot, RecoveryEvent.kind == CONTROL_EVENT)
                .order_by(RecoveryEvent.id.desc())
                .limit(limit)
            ).all()
        out = []
        for row in reversed(rows):
            try:
                fields = json.loads(row.detail)
            except ValueError:
                continue
            if isinstance(fields, dict):
                out.append({**fields, "at": row.detected_at})
        return out

    def control_events(self, after: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """The journaled control commands of this bot after event `after`, oldest first (at most `limit`; each its
        fields with its event `id`, `run_id` and `at`), and the newest such event's id (0: none): what the
        reconciler's audit pulls (the control API's `control_events`). A row whose detail is not a JSON object is
        answered with what the row alone says (an event is never skipped unseen)."""
        kind = (RecoveryEvent.bot == self.bot, RecoveryEvent.kind == CONTROL_EVENT)
        with self._sessions() as session:
            rows = session.scalars(
                select(RecoveryEvent).where(*kind, RecoveryEvent.id > after).order_by(RecoveryEvent.id).limit(limit)
            ).all()
            last = int(session.scalar(select(func.max(RecoveryEvent.id)).where(*kind)) or 0)
        out = []
        for row in rows:
            try:
                fields = json.loads(row.detail)
            except ValueError:
                fields = None
            fields = fields if isinstance(fields, dict) else {"outcome": "unreadable journal row"}
            out.append({**fields, "id": row.id, "run_id": row.run_id, "at": row.detected_at.isoformat()})
        return out, last

    def last_transition(self) -> dict[str, str] | None:
        """The newest journaled change of trading state of this bot ({before, after, reason}), or None."""
        with self._sessions() as session:
            row = session.scalars(
                select(RecoveryEvent)
                .where(RecoveryEvent.bot == self.bot, RecoveryEvent.kind == STATE_EVENT)
                .order_by(RecoveryEvent.id.desc())
                .limit(1)
            ).first()
        if row is None:
            return None
        try:
            detail = json.loads(row.detail)
        except ValueError:
            return None
        return detail if isinstance(detail, dict) else None

    # -- reconciliation -------------------------------------------------------------------------------
    def record_reconciliation(
        self,
        trigger: str,
        result: str,
        started_at: datetime,
        finished_at: datetime,
        discrepancies: list[dict[str, Any]],
        error: str | None,
    ) -> int:
        with self._sessions.begin() as session:
            run = ReconciliationRun(
                bot=self.bot,
                venue=self.venue,
                trigger=trigger,
                result=result,
                started_at=started_at,
                finished_at=finished_at,
                discrepancies=len(discrepancies),
                error=error[:MAX_ERROR_LENGTH] if error else None,
            )
            session.add(run)
            session.flush()
            for d in discrepancies:
                session.add(
                    ReconciliationDiscrepancy(
                        run_id=run.id,
                        kind=d["kind"],
                        key=str(d["key"])[:MAX_VALUE_LENGTH],
                        symbol=d.get("symbol"),
                        journal_value=_short(d.get("journal")),
                        venue_value=_short(d.get("venue")),
                        policy=d["policy"],
                        outcome=d["outcome"],
                        detail=json.dumps(d.get("detail") or {}, sort_keys=True, default=str),
                    )
                )
            return run.id

    def reconciliation_runs(self) -> list[ReconciliationRun]:
        with self._sessions() as session:
            return list(
                session.scalars(
                    select(ReconciliationRun).where(ReconciliationRun.bot == self.bot).order_by(ReconciliationRun.id)
                )
            )

    def discrepancies(self, run_id: int) -> list[ReconciliationDiscrepancy]:
        with self._sessions() as session:
            return list(
                session.scalars(
                    select(ReconciliationDiscrepancy)
                    .where(ReconciliationDiscrepancy.run_id == run_id)
                    .order_by(ReconciliationDiscrepancy.id)
                )
            )


def _short(value: Any) -> str | None:
    return None if value is None else str(value)[:MAX_VALUE_LENGTH]
