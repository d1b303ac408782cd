"""reconciler steps fence their target while a dead run's process may live; closed episodes indexed for retention

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 15:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import trading_ops.db.base

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('reconciler_steps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fenced_until', trading_ops.db.base.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_reconciler_steps_fenced_until', ['fenced_until'], unique=False)
    with op.batch_alter_table('reconciler_episodes', schema=None) as batch_op:
        batch_op.create_index('ix_reconciler_episodes_closed_at', ['closed_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('reconciler_episodes', schema=None) as batch_op:
        batch_op.drop_index('ix_reconciler_episodes_closed_at')
    with op.batch_alter_table('reconciler_steps', schema=None) as batch_op:
        batch_op.drop_index('ix_reconciler_steps_fenced_until')
        batch_op.drop_column('fenced_until')
