"""reconciler: the escalation outbox, one row per page owed, sent until Alertmanager takes it

Revision ID: 0012
Revises: 0008
Create Date: 2026-11-25 06:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import trading_ops.db.base

revision: str = '0012'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'reconciler_escalations',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('episode_id', sa.Integer(), nullable=False),
        sa.Column('alertname', sa.String(length=255), nullable=False),
        sa.Column('labels', sa.Text(), nullable=False),
        sa.Column('annotations', sa.Text(), nullable=False),
        sa.Column('starts_at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column('created_at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column('owner', sa.String(length=128), nullable=True),
        sa.Column('lease_until', trading_ops.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column('posted_at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column('notified_at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column('fallback_failed_at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ['episode_id'],
            ['reconciler_episodes.id'],
            name=op.f('fk_reconciler_escalations_episode_id_reconciler_episodes'),
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_reconciler_escalations')),
    )
    with op.batch_alter_table('reconciler_escalations', schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f('ix_reconciler_escalations_episode_id'), ['episode_id'], unique=False
        )
        batch_op.create_index(
            'ix_reconciler_escalations_posted_at_next_attempt_at', ['posted_at', 'next_attempt_at'], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table('reconciler_escalations', schema=None) as batch_op:
        batch_op.drop_index('ix_reconciler_escalations_posted_at_next_attempt_at')
        batch_op.drop_index(batch_op.f('ix_reconciler_escalations_episode_id'))
    op.drop_table('reconciler_escalations')
