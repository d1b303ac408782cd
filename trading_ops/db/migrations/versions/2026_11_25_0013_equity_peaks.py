"""journal: the highest equity of each bucket of a bot's drawdown window (the peak survives a restart)

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-25 06:38:23.802730
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import trading_ops.db.base

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('equity_peaks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('bot', sa.String(length=64), nullable=False),
    sa.Column('venue', sa.String(length=32), nullable=False),
    sa.Column('bucket_start', trading_ops.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('equity', trading_ops.db.base.ExactDecimal(precision=38, scale=18), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_equity_peaks')),
    sa.UniqueConstraint('bot', 'venue', 'bucket_start', name=op.f('uq_equity_peaks_bot_venue_bucket_start'))
    )


def downgrade() -> None:
    op.drop_table('equity_peaks')
