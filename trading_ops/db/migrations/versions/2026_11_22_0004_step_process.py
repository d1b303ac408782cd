"""reconciler steps record the process group they started

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('reconciler_steps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('process', sa.String(length=96), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('reconciler_steps', schema=None) as batch_op:
        batch_op.drop_column('process')
