"""Crash recovery records: each run of a bot with its heartbeat and clean-shutdown marker, the recovery events
found at start, and every reconciliation run with the discrepancies it found and how each was resolved."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from trading_ops.db.base import Base, utcnow


class BotRun(Base):
    """One process lifetime of a bot: `last_heartbeat_at` moves while its loop makes progress, and
    `clean_shutdown` is the marker a graceful stop writes last. A run without it is a crash."""

    __tablename__ = "bot_runs"
    __table_args__ = (Index("ix_bot_runs_bot_started_at", "bot", "started_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    bot: Mapped[str] = mapped_column(String(64))
    venue: Mapped[str] = mapped_column(String(32))
    pid: Mapped[int] = mapped_column()
    hostname: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column()
    clean_shutdown: Mapped[bool] = mapped_column(default=False)
    stop_reason: Mapped[str | None] = mapped_column(String(64))


class RecoveryEvent(Base):
    """Something found at start that needs recovering from (a crash), with what was found as JSON."""

    __tablename__ = "recovery_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    bot: Mapped[str] = mapped_column(String(64), index=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("bot_runs.id"))
    previous_run_id: Mapped[int | None] = mapped_column(ForeignKey("bot_runs.id"))
    kind: Mapped[str] = mapped_column(String(32))  # crash
    detected_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column()
    detail: Mapped[str] = mapped_column(Text)  # JSON
    notified: Mapped[bool] = mapped_column(default=False)


class ReconciliationRun(Base):
    """One comparison of the journal with the venue: why it ran and how it ended."""

    __tablename__ = "reconciliation_runs"
    __table_args__ = (Index("ix_reconciliation_runs_bot_started_at", "bot", "started_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    bot: Mapped[str] = mapped_column(String(64))
    venue: Mapped[str] = mapped_column(String(32))
    trigger: Mapped[str] = mapped_column(String(16))  # startup, schedule, reconnect, command, lost_reply, journal
    result: Mapped[str] = mapped_column(String(16))  # clean, resolved, failed, halted, unknown
    started_at: Mapped[datetime] = mapped_column()
    finished_at: Mapped[datetime] = mapped_column()
    discrepancies: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(String(255))


class ReconciliationDiscrepancy(Base):
    """One difference between the journal and the venue, and what its class's policy did about it."""

    __tablename__ = "reconciliation_discrepancies"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("reconciliation_runs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(64))  # trade id, client order id, symbol or asset
    symbol: Mapped[str | None] = mapped_column(String(32))
    journal_value: Mapped[str | None] = mapped_column(String(64))
    venue_value: Mapped[str | None] = mapped_column(String(64))
    policy: Mapped[str] = mapped_column(String(16))  # adopt, cancel, alert, halt
    outcome: Mapped[str] = mapped_column(String(16))  # adopted, canceled, alerted, halted, failed
    detail: Mapped[str | None] = mapped_column(Text)
