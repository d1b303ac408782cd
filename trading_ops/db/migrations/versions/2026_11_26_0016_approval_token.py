"""reconciler: an approval's deciding token apart from the name the person typed (an attribution no one can forge)

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-26 02:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0016'
down_revision: str | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('reconciler_approvals', schema=None) as batch_op:
        batch_op.add_column(sa.Column('decided_token', sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('reconciler_approvals', schema=None) as batch_op:
        batch_op.drop_column('decided_token')
