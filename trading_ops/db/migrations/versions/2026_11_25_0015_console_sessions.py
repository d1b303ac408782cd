"""reconciler: the operator console's sessions, shared by replicas and kept over a restart (a hash of the id only)

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-25 14:54:27.018192
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import trading_ops.db.base

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'reconciler_console_sessions',
        sa.Column('id_hash', sa.String(length=64), nullable=False),
        sa.Column('token_name', sa.String(length=128), nullable=False),
        sa.Column('scope', sa.String(length=16), nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('csrf', sa.String(length=64), nullable=False),
        sa.Column('created_at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column('expires_at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column('flash', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('id_hash', name=op.f('pk_reconciler_console_sessions')),
    )
    with op.batch_alter_table('reconciler_console_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reconciler_console_sessions_expires_at'), ['expires_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('reconciler_console_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reconciler_console_sessions_expires_at'))
    op.drop_table('reconciler_console_sessions')
