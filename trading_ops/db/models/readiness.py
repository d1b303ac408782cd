"""The readiness records: the verdict of each approved live start request (`trading-ops readiness BOT --record`), with
the decision the reconciler signed for it; what a live start of the bot reads."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from trading_ops.db.base import Base, utcnow


class ReadinessRecord(Base):
    """One recorded verdict of a bot (append-only: the newest of a bot is the one that counts), attributed to the
    principal that asked for the live start and the principals that approved it, with the request's reason."""

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
    # The principal that asked (its token's name), and when the reconciler recorded it.
    recorded_by: Mapped[str] = mapped_column(String(255))
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The principals that approved the live start whatever the verdict (comma-separated), and the request's reason.
    approved_by: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text, default="")
    # The live start request the reconciler answered with this record (reconciler_requests.id), and the live_start
    # decision it signed for the record (what bot.live_start_decision_file holds).
    request_id: Mapped[int | None] = mapped_column()
    decision: Mapped[str | None] = mapped_column(Text)
