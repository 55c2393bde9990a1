"""scheduler requests and state snapshot

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sched_requests",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(512), nullable=True),
        sa.Column("tenant", sa.String(255), nullable=False),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("submitted_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.Column("allocation", sa.JSON(), nullable=True),
        sa.Column("preemptions", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_index("ix_sched_requests_state", "sched_requests", ["state"])
    op.create_index("ix_sched_requests_tenant", "sched_requests", ["tenant"])
    op.create_index("ix_sched_requests_key", "sched_requests", ["key"])
    op.create_table(
        "sched_snapshot",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("saved_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sched_snapshot")
    op.drop_table("sched_requests")
