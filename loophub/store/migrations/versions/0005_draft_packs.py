"""datasets: draft rows point into the packs a bulk import wrote

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("dataset_records", sa.Column("pack", sa.String(64), nullable=True))
    op.add_column("dataset_records", sa.Column("pack_offset", sa.BigInteger(), nullable=True))
    op.add_column("dataset_records", sa.Column("pack_length", sa.Integer(), nullable=True))


def downgrade() -> None:
    for column in ("pack_length", "pack_offset", "pack"):
        op.drop_column("dataset_records", column)
