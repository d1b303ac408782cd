"""ops: one row per claimed run of a scheduled task (unique job, slot), and the maintenance windows

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 01:02:38.997966
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import trading_ops.db.base

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('ops_job_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job', sa.String(length=64), nullable=False),
    sa.Column('scheduled_for', trading_ops.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('started_at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('lease_until', trading_ops.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ops_job_runs')),
    sa.UniqueConstraint('job', 'scheduled_for', name=op.f('uq_ops_job_runs_job_scheduled_for'))
    )
    with op.batch_alter_table('ops_job_runs', schema=None) as batch_op:
        batch_op.create_index('ix_ops_job_runs_state_lease_until', ['state', 'lease_until'], unique=False)

    op.create_table('ops_maintenance_windows',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('matchers', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('starts_at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ends_at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('ended_at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('silence_id', sa.String(length=64), nullable=True),
    sa.Column('paused_bots', sa.Text(), nullable=False),
    sa.Column('problems', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ops_maintenance_windows'))
    )
    with op.batch_alter_table('ops_maintenance_windows', schema=None) as batch_op:
        batch_op.create_index('ix_ops_maintenance_windows_state_ends_at', ['state', 'ends_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('ops_maintenance_windows', schema=None) as batch_op:
        batch_op.drop_index('ix_ops_maintenance_windows_state_ends_at')

    op.drop_table('ops_maintenance_windows')
    with op.batch_alter_table('ops_job_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_ops_job_runs_state_lease_until')

    op.drop_table('ops_job_runs')
