"""collect_schedules: the feedback loop's collections the platform runs on a schedule

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "collect_schedules",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("release_id", sa.Integer(),
                  sa.ForeignKey("releases.id", ondelete="CASCADE"), nullable=False),
        sa.Column("dataset", sa.String(255), nullable=False),
        sa.Column("rule", sa.String(32), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("every_s", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("created", WHEN, nullable=False),
        sa.Column("next_run", sa.Float(), nullable=False),
        sa.Column("last_run", WHEN, nullable=True),
        sa.Column("last_result", sa.JSON(), nullable=True),
    )
    op.create_index("ix_collect_schedules_release_id", "collect_schedules", ["release_id"])
    op.create_index("ix_collect_schedules_next_run", "collect_schedules", ["next_run"])


def downgrade() -> None:
    op.drop_table("collect_schedules")
