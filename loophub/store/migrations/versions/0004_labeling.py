"""labeling: per-dataset labeling settings and item leases

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "labeling_configs",
        sa.Column("dataset_id", sa.Integer(), sa.ForeignKey("datasets.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("overlap", sa.Integer(), nullable=False),
        sa.Column("lease_seconds", sa.Float(), nullable=False),
        sa.Column("updated_by", sa.String(255), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "labeling_leases",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("dataset_id", sa.Integer(), sa.ForeignKey("datasets.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("record_id", sa.String(1024), nullable=False),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("acquired_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("dataset_id", "record_id", "slot", name="uq_lease_slot"),
        sa.UniqueConstraint("dataset_id", "record_id", "holder", name="uq_lease_holder"),
    )
    op.create_index("ix_labeling_leases_holder", "labeling_leases", ["dataset_id", "holder"])


def downgrade() -> None:
    op.drop_index("ix_labeling_leases_holder", table_name="labeling_leases")
    op.drop_table("labeling_leases")
    op.drop_table("labeling_configs")
