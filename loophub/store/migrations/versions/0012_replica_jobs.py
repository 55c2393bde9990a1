"""release_replicas.job: the batch job (Slurm) a replica runs as, when it is not a local
process (the manager adopts or cancels it after a restart)

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("release_replicas", sa.Column("job", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("release_replicas") as batch:
        batch.drop_column("job")
