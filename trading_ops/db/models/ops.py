"""Scheduled operations: one row per claimed run of a scheduled task, and the maintenance windows opened."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from trading_ops.db.base import Base, utcnow


class JobRun(Base):
    """A scheduled slot of a task, claimed by exactly one scheduler (the unique key), with its outcome."""

    __tablename__ = "ops_job_runs"
    __table_args__ = (
        UniqueConstraint("job", "scheduled_for"),
        Index("ix_ops_job_runs_state_lease_until", "state", "lease_until"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job: Mapped[str] = mapped_column(String(64))
    scheduled_for: Mapped[datetime] = mapped_column()
    owner: Mapped[str] = mapped_column(String(128))
    # running, success, failed
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(default=0)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    # A running claim whose lease passed belongs to a dead scheduler: another one takes it over.
    lease_until: Mapped[datetime] = mapped_column()
    error: Mapped[str] = mapped_column(Text, default="")


class MaintenanceWindow(Base):
    """A maintenance window: its Alertmanager silence, the bots it paused, and what it could not do."""

    __tablename__ = "ops_maintenance_windows"
    __table_args__ = (Index("ix_ops_maintenance_windows_state_ends_at", "state", "ends_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # The matchers as canonical JSON ({"name": "value"}, keys sorted): two windows with equal text overlap.
    matchers: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(128))
    starts_at: Mapped[datetime] = mapped_column()
    ends_at: Mapped[datetime] = mapped_column()
    # active (until ended), ended (by `maintenance end`), expired (ended by itself at ends_at)
    state: Mapped[str] = mapped_column(String(16))
    ended_at: Mapped[datetime | None] = mapped_column()
    silence_id: Mapped[str | None] = mapped_column(String(64))
    # JSON list of the bot instances this window paused and has not resumed yet.
    paused_bots: Mapped[str] = mapped_column(Text, default="[]")
    # What it could not do (Alertmanager down, a bot not answering), one line each.
    problems: Mapped[str] = mapped_column(Text, default="")
