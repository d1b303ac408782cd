"""audit_bot_cursors: how far the audit chain holds each bot's journaled control commands (the reconciler's pull)

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-28 03:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import trading_ops.db.base

revision: str = '0021'
down_revision: str | None = '0020'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'audit_bot_cursors',
        sa.Column('bot', sa.String(length=255), nullable=False),
        sa.Column('event_id', sa.BigInteger(), nullable=False),
        sa.Column('updated_at', trading_ops.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('bot', name=op.f('pk_audit_bot_cursors')),
    )


def downgrade() -> None:
    op.drop_table('audit_bot_cursors')
