"""release_feedback: callers flag a release's answers (request id, instance, the right
label, a note); the feedback loop collects the flagged inputs for labeling

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "release_feedback",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("release_id", sa.Integer(),
                  sa.ForeignKey("releases.id", ondelete="CASCADE"), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("instance", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("label", sa.String(255), nullable=True),
        sa.Column("note", sa.String(1000), nullable=False, server_default=""),
        sa.Column("by", sa.String(255), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_release_feedback_release_request", "release_feedback",
                    ["release_id", "request_id"])


def downgrade() -> None:
    op.drop_index("ix_release_feedback_release_request", "release_feedback")
    op.drop_table("release_feedback")
