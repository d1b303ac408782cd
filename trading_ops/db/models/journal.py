"""The bot's trading journal: orders, fills, positions and balances as the bot believes them."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from trading_ops.db.base import Base, utcnow


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("bot", "client_order_id"),
        Index("ix_orders_bot_status", "bot", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    bot: Mapped[str] = mapped_column(String(64))
    client_order_id: Mapped[str] = mapped_column(String(64))
    venue_order_id: Mapped[str | None] = mapped_column(String(64))
    venue: Mapped[str] = mapped_column(String(32))
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(4))
    order_type: Mapped[str] = mapped_column(String(16))
    quantity: Mapped[Decimal] = mapped_column()
    price: Mapped[Decimal | None] = mapped_column()
    filled_quantity: Mapped[Decimal] = mapped_column(default=Decimal(0))
    # new, acknowledged, partially_filled, filled, canceled, rejected
    status: Mapped[str] = mapped_column(String(24))
    reject_reason: Mapped[str | None] = mapped_column(String(64))
    strategy: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Fill(Base):
    __tablename__ = "fills"
    __table_args__ = (
        UniqueConstraint("bot", "venue", "trade_id"),
        # The last day's fills (its realized P&L at a start) without scanning the whole history.
        Index("ix_fills_bot_venue_executed_at", "bot", "venue", "executed_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    bot: Mapped[str] = mapped_column(String(64))
    venue: Mapped[str] = mapped_column(String(32))
    trade_id: Mapped[str] = mapped_column(String(64))
    client_order_id: Mapped[str | None] = mapped_column(String(64), index=True)
    venue_order_id: Mapped[str | None] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(4))
    quantity: Mapped[Decimal] = mapped_column()
    price: Mapped[Decimal] = mapped_column()
    fee: Mapped[Decimal] = mapped_column()
    fee_asset: Mapped[str] = mapped_column(String(16))
    liquidity: Mapped[str] = mapped_column(String(8))
    executed_at: Mapped[datetime] = mapped_column()
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The P&L this fill realized (average cost, net of its fee) when it was booked; NULL for fills journaled before
    # this was stored (a start computes it once for them).
    realized_pnl: Mapped[Decimal | None] = mapped_column()


class Position(Base):
    __tablename__ = "positions"
    __table_args__ = (UniqueConstraint("bot", "venue", "symbol"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    bot: Mapped[str] = mapped_column(String(64))
    venue: Mapped[str] = mapped_column(String(32))
    symbol: Mapped[str] = mapped_column(String(32))
    quantity: Mapped[Decimal] = mapped_column()
    average_price: Mapped[Decimal] = mapped_column()
    realized_pnl: Mapped[Decimal] = mapped_column(default=Decimal(0))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Balance(Base):
    __tablename__ = "balances"
    __table_args__ = (UniqueConstraint("bot", "venue", "asset"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    bot: Mapped[str] = mapped_column(String(64))
    venue: Mapped[str] = mapped_column(String(32))
    asset: Mapped[str] = mapped_column(String(16))
    total: Mapped[Decimal] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class EquityPeak(Base):
    """The highest equity a bot saw in one bucket of its drawdown window (trading_ops.bot.drawdown): the peak the
    drawdown limit measures from survives a restart. Buckets older than the window are deleted."""

    __tablename__ = "equity_peaks"
    __table_args__ = (UniqueConstraint("bot", "venue", "bucket_start"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    bot: Mapped[str] = mapped_column(String(64))
    venue: Mapped[str] = mapped_column(String(32))
    bucket_start: Mapped[datetime] = mapped_column()
    equity: Mapped[Decimal] = mapped_column()
