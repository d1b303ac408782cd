"""fills store the P&L they realized; index to find the last day's fills

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import trading_ops.db.base

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('fills', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('realized_pnl', trading_ops.db.base.ExactDecimal(precision=38, scale=18), nullable=True)
        )
        batch_op.create_index('ix_fills_bot_venue_executed_at', ['bot', 'venue', 'executed_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('fills', schema=None) as batch_op:
        batch_op.drop_index('ix_fills_bot_venue_executed_at')
        batch_op.drop_column('realized_pnl')
