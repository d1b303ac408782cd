"""four eyes: an approval's kind, its requester's principal and how many others must approve; each approver's
decision; the authenticated requests (a ramp promotion asked through the reconciler)

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-27 17:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import trading_ops.db.base

revision: str = '0019'
down_revision: str | None = '0018'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('reconciler_approvals', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=32), server_default='step', nullable=False))
        batch_op.add_column(sa.Column('required', sa.Integer(), server_default='1', nullable=False))
        batch_op.add_column(sa.Column('requester', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('request_id', sa.Integer(), nullable=True))
    op.create_table(
        'reconciler_approval_decisions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('approval_id', sa.Integer(), nullable=False),
        sa.Column('principal', sa.String(length=255), nullable=False),
        sa.Column('decision', sa.String(length=16), nullable=False),
        sa.Column('decided_at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column('source', sa.String(length=255), nullable=False),
        sa.Column('comment', sa.Text(), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ['approval_id'],
            ['reconciler_approvals.id'],
            name=op.f('fk_reconciler_approval_decisions_approval_id_reconciler_approvals'),
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_reconciler_approval_decisions')),
        sa.UniqueConstraint('approval_id', 'principal', name=op.f('uq_reconciler_approval_decisions_approval_id_principal')),
    )
    op.create_table(
        'reconciler_requests',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('bot', sa.String(length=128), nullable=False),
        sa.Column('instance', sa.String(length=255), nullable=False),
        sa.Column('stage', sa.String(length=64), nullable=False),
        sa.Column('principal', sa.String(length=255), nullable=False),
        sa.Column('source', sa.String(length=255), nullable=False),
        sa.Column('comment', sa.Text(), nullable=False),
        sa.Column('requested_at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column('expires_at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_reconciler_requests')),
    )
    with op.batch_alter_table('reconciler_requests', schema=None) as batch_op:
        batch_op.create_index('ix_reconciler_requests_bot_stage', ['bot', 'stage'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('reconciler_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_reconciler_requests_bot_stage')
    op.drop_table('reconciler_requests')
    op.drop_table('reconciler_approval_decisions')
    with op.batch_alter_table('reconciler_approvals', schema=None) as batch_op:
        batch_op.drop_column('request_id')
        batch_op.drop_column('requester')
        batch_op.drop_column('required')
        batch_op.drop_column('kind')
