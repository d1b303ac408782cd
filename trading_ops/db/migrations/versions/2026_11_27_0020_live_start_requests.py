"""live start through the reconciler: a request's detail (the readiness verdict it was asked on); a readiness record's
request and the live_start decision the reconciler signed for it

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-27 20:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0020'
down_revision: str | None = '0019'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('reconciler_requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('detail', sa.Text(), server_default='{}', nullable=False))
    with op.batch_alter_table('readiness_records', schema=None) as batch_op:
        batch_op.add_column(sa.Column('request_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('decision', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('readiness_records', schema=None) as batch_op:
        batch_op.drop_column('decision')
        batch_op.drop_column('request_id')
    with op.batch_alter_table('reconciler_requests', schema=None) as batch_op:
        batch_op.drop_column('detail')
