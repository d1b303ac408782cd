"""operators reset circuits: the budget counts from the reset, and each reset is audited

Revision ID: 0007_backup
Revises: 0006
Create Date: 2026-11-23 01:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import trading_ops.db.base

revision: str = '0007_backup'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'reconciler_audit',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column('action', sa.String(length=32), nullable=False),
        sa.Column('target', sa.String(length=255), nullable=False),
        sa.Column('actor', sa.String(length=255), nullable=False),
        sa.Column('detail', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_reconciler_audit')),
    )
    with op.batch_alter_table('reconciler_audit', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reconciler_audit_at'), ['at'], unique=False)
    with op.batch_alter_table('reconciler_targets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('budget_reset_at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('reconciler_targets', schema=None) as batch_op:
        batch_op.drop_column('budget_reset_at')
    with op.batch_alter_table('reconciler_audit', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reconciler_audit_at'))
    op.drop_table('reconciler_audit')
