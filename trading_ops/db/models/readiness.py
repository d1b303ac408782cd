"""The readiness records: each verdict `trading-ops readiness BOT --record` kept, what a live start of the bot reads."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from trading_ops.db.base import Base, utcnow


class ReadinessRecord(Base):
    """One recorded verdict of a bot (append-only: the newest of a bot is the one that counts), attributed to who
    recorded it and, when a person approved the live start whatever the verdict, to that person with their reason."""

    __tablename__ = "readiness_records"
    __table_args__ = (Index("ix_readiness_records_bot_id", "bot", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    bot: Mapped[str] = mapped_column(String(128))
    instance: Mapped[str] = mapped_column(String(255), default="")
    # ready, not ready, unknown
    verdict: Mapped[str] = mapped_column(String(16))
    window: Mapped[str] = mapped_column(String(32))
    # JSON lists of the criteria's names that failed, and that had no data.
    failing: Mapped[str] = mapped_column(Text, default="[]")
    missing: Mapped[str] = mapped_column(Text, default="[]")
    # Who ran the command (--by, or the operating system's user) and when.
    recorded_by: Mapped[str] = mapped_column(String(255))
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A person's approval of the live start whatever the verdict (--approved-by NAME --reason TEXT).
    approved_by: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text, default="")
