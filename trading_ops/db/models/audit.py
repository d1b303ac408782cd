"""The audit chain: one append-only record of every decision (who, from where, when, what changed, which decision it
answered), each entry hashed with the one before it, so an edited or a deleted row shows (trading_ops.audit); and how
far it holds each bot's journaled control commands (trading_ops.reconciler.control_audit)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from trading_ops.db.base import Base, utcnow


class Audit(Base):
    """One entry of the chain. `seq` is its place (1, 2, ... with no gap: the primary key, so two appenders racing
    cannot both take a number); `hash` is sha256 over `prev_hash` and the canonical JSON of the entry's fields."""

    __tablename__ = "audit"
    __table_args__ = (
        Index("ix_audit_target_seq", "target", "seq"),
        Index("ix_audit_principal_seq", "principal", "seq"),
    )

    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    # The authenticated principal (a named token, a console session's token, the reconciler, a bot) and the source
    # address it came from (an HTTP client's address, cli:user@host for a command that wrote the ledger itself).
    principal: Mapped[str] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255))
    # What changed: canonical JSON (sorted keys) of the state before and after.
    before: Mapped[str] = mapped_column(Text)
    after: Mapped[str] = mapped_column(Text)
    # The decision it answered (e.g. approval:12), or none.
    decision: Mapped[str | None] = mapped_column(String(255))
    # What the person wrote beside it (a typed name, a reason): a comment, never the principal.
    comment: Mapped[str] = mapped_column(Text, default="")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The chain's newest entry (one row, id 1): the lock every appender takes first (SELECT ... FOR UPDATE on
    PostgreSQL; SQLite's write lock, BEGIN IMMEDIATE), and the anchor that shows a deleted last entry."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(default=0)
    hash: Mapped[str] = mapped_column(String(64))


class AuditBotCursor(Base):
    """How far the chain holds a bot's journaled control commands (trading_ops.reconciler.control_audit): the last
    event id of its journal appended, read and moved under the chain's lock, so no event is appended twice."""

    __tablename__ = "audit_bot_cursors"

    # The bot as the chain's entries name it (bots[].name, else its instance).
    bot: Mapped[str] = mapped_column(String(255), primary_key=True)
    event_id: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
