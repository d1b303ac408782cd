"""reconciler: approvals, a human decision a playbook step waits for, bound to the step and the playbook version

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-25 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import trading_ops.db.base

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'reconciler_approvals',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('episode_id', sa.Integer(), nullable=False),
        sa.Column('attempt_id', sa.Integer(), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('action', sa.String(length=32), nullable=False),
        sa.Column('step_name', sa.Text(), nullable=False),
        sa.Column('arguments', sa.Text(), nullable=False),
        sa.Column('playbook_version', sa.String(length=64), nullable=False),
        sa.Column('rule', sa.String(length=128), nullable=False),
        sa.Column('target', sa.String(length=255), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('on_timeout', sa.String(length=16), nullable=False),
        sa.Column('requested_by', sa.String(length=128), nullable=False),
        sa.Column('requested_at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column('deadline', trading_ops.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column('decided_by', sa.String(length=255), nullable=True),
        sa.Column('decided_at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('executed_at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ['episode_id'],
            ['reconciler_episodes.id'],
            name=op.f('fk_reconciler_approvals_episode_id_reconciler_episodes'),
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_reconciler_approvals')),
    )
    with op.batch_alter_table('reconciler_approvals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reconciler_approvals_episode_id'), ['episode_id'], unique=False)
        batch_op.create_index('ix_reconciler_approvals_status_deadline', ['status', 'deadline'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('reconciler_approvals', schema=None) as batch_op:
        batch_op.drop_index('ix_reconciler_approvals_status_deadline')
        batch_op.drop_index(batch_op.f('ix_reconciler_approvals_episode_id'))
    op.drop_table('reconciler_approvals')
