"""datasets: a partial index of the draft rows no import packed, by write number

A commit reads the rows an import packed and the others (edits, deletions, checkout
writes) as two streams; this index keeps the second cheap when there are few.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UNPACKED = sa.text("pack IS NULL")


def upgrade() -> None:
    op.create_index("ix_dataset_records_unpacked", "dataset_records", ["dataset_id", "seq"],
                    sqlite_where=UNPACKED, postgresql_where=UNPACKED)


def downgrade() -> None:
    op.drop_index("ix_dataset_records_unpacked", "dataset_records")
