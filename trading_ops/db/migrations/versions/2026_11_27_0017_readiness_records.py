"""readiness: the verdicts `trading-ops readiness BOT --record` keeps in the ledger (what a live start reads)

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-27 01:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import trading_ops.db.base

revision: str = '0017'
down_revision: str | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('readiness_records',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('bot', sa.String(length=128), nullable=False),
    sa.Column('instance', sa.String(length=255), nullable=False),
    sa.Column('verdict', sa.String(length=16), nullable=False),
    sa.Column('window', sa.String(length=32), nullable=False),
    sa.Column('failing', sa.Text(), nullable=False),
    sa.Column('missing', sa.Text(), nullable=False),
    sa.Column('recorded_by', sa.String(length=255), nullable=False),
    sa.Column('recorded_at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('approved_by', sa.String(length=255), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_readiness_records'))
    )
    with op.batch_alter_table('readiness_records', schema=None) as batch_op:
        batch_op.create_index('ix_readiness_records_bot_id', ['bot', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('readiness_records', schema=None) as batch_op:
        batch_op.drop_index('ix_readiness_records_bot_id')
    op.drop_table('readiness_records')
