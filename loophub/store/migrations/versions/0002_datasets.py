"""datasets: draft records, versions, tags, lifecycle, lineage, pins, owned blobs

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _when(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("group_name", sa.String(255), nullable=True),
        sa.Column("visibility", sa.String(16), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("label_schema", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_changed_by", sa.String(255), nullable=False),
        _when("state_changed_at"),
        _when("created"),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("committed_seq", sa.BigInteger(), nullable=False),
        sa.Column("head_version", sa.String(64), nullable=True),
        sa.Column("version_count", sa.Integer(), nullable=False),
        sa.Column("purged", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_datasets_owner", "datasets", ["owner"])
    op.create_table(
        "dataset_records",
        sa.Column("dataset_id", sa.Integer(), sa.ForeignKey("datasets.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("record_id", sa.String(1024), primary_key=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("split", sa.String(64), nullable=True),
        sa.Column("labels", sa.Text(), nullable=False),
        sa.Column("annotated", sa.Boolean(), nullable=False),
        sa.Column("annotators", sa.Text(), nullable=False),
        sa.Column("media_sha", sa.String(64), nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("base_hash", sa.String(64), nullable=True),
        sa.Column("base_labels", sa.Text(), nullable=True),
        sa.Column("updated_by", sa.String(255), nullable=False),
        _when("updated_at"),
    )
    op.create_index("ix_dataset_records_seq", "dataset_records", ["dataset_id", "seq"])
    op.create_index("ix_dataset_records_annotated", "dataset_records",
                    ["dataset_id", "annotated"])
    op.create_table(
        "dataset_versions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("dataset_id", sa.Integer(), sa.ForeignKey("datasets.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("parents", sa.JSON(), nullable=False),
        sa.Column("author", sa.String(255), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        _when("created"),
        sa.Column("delta", sa.String(64), nullable=True),
        sa.Column("snapshot", sa.String(64), nullable=True),
        sa.Column("chain", sa.Integer(), nullable=False),
        sa.Column("record_count", sa.Integer(), nullable=False),
        sa.Column("label_counts", sa.JSON(), nullable=False),
        sa.Column("label_schema", sa.JSON(), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("dataset_id", "number"),
    )
    op.create_index("ix_dataset_versions_dataset_id", "dataset_versions", ["dataset_id"])
    op.create_table(
        "dataset_tags",
        sa.Column("dataset_id", sa.Integer(), sa.ForeignKey("datasets.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("version_id", sa.String(64), sa.ForeignKey("dataset_versions.id"),
                  nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        _when("created"),
    )
    op.create_index("ix_dataset_tags_version_id", "dataset_tags", ["version_id"])
    op.create_table(
        "dataset_state_changes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("dataset_id", sa.Integer(), sa.ForeignKey("datasets.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("from_state", sa.String(16), nullable=False),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        _when("at"),
    )
    op.create_index("ix_dataset_state_changes_dataset_id", "dataset_state_changes",
                    ["dataset_id"])
    op.create_table(
        "dataset_lineage",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("version_id", sa.String(64), sa.ForeignKey("dataset_versions.id"),
                  nullable=False),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("model_version", sa.String(255), nullable=False),
        sa.Column("relation", sa.String(32), nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        _when("created"),
        sa.UniqueConstraint("version_id", "model_name", "model_version", "relation"),
    )
    op.create_index("ix_dataset_lineage_version_id", "dataset_lineage", ["version_id"])
    op.create_index("ix_dataset_lineage_model", "dataset_lineage",
                    ["model_name", "model_version"])
    op.create_table(
        "dataset_pins",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("version_id", sa.String(64), sa.ForeignKey("dataset_versions.id"),
                  nullable=False),
        sa.Column("ref", sa.String(512), nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        _when("created"),
        sa.UniqueConstraint("version_id", "ref"),
    )
    op.create_index("ix_dataset_pins_version_id", "dataset_pins", ["version_id"])
    op.create_table(
        "dataset_blobs",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        _when("created"),
    )


def downgrade() -> None:
    for table in ("dataset_blobs", "dataset_pins", "dataset_lineage", "dataset_state_changes",
                  "dataset_tags", "dataset_versions", "dataset_records", "datasets"):
        op.drop_table(table)
