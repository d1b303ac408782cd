"""audit: the append-only, hash-chained record of every decision, and its head (the appenders' lock row)

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-27 17:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import trading_ops.db.base

revision: str = '0018'
down_revision: str | None = '0017'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS = '0' * 64


def upgrade() -> None:
    op.create_table(
        'audit',
        sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column('principal', sa.String(length=255), nullable=False),
        sa.Column('source', sa.String(length=255), nullable=False),
        sa.Column('action', sa.String(length=64), nullable=False),
        sa.Column('target', sa.String(length=255), nullable=False),
        sa.Column('before', sa.Text(), nullable=False),
        sa.Column('after', sa.Text(), nullable=False),
        sa.Column('decision', sa.String(length=255), nullable=True),
        sa.Column('comment', sa.Text(), nullable=False),
        sa.Column('prev_hash', sa.String(length=64), nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('seq', name=op.f('pk_audit')),
    )
    with op.batch_alter_table('audit', schema=None) as batch_op:
        batch_op.create_index('ix_audit_principal_seq', ['principal', 'seq'], unique=False)
        batch_op.create_index('ix_audit_target_seq', ['target', 'seq'], unique=False)
    head = op.create_table(
        'audit_head',
        sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_head')),
    )
    op.bulk_insert(head, [{'id': 1, 'seq': 0, 'hash': GENESIS}])


def downgrade() -> None:
    op.drop_table('audit_head')
    with op.batch_alter_table('audit', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_target_seq')
        batch_op.drop_index('ix_audit_principal_seq')
    op.drop_table('audit')
