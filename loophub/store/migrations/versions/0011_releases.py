"""releases: models served as REST services (releases, replicas, append-only history,
hashed API keys, drift reference samples)

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "releases",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("visibility", sa.String(16), nullable=False),
        sa.Column("group_name", sa.String(255), nullable=True),
        sa.Column("model", sa.String(512), nullable=False),
        sa.Column("version", sa.String(512), nullable=False),
        sa.Column("artifact", sa.String(64), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("replicas", sa.Integer(), nullable=False),
        sa.Column("per_replica", sa.JSON(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("canary", sa.JSON(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("created", WHEN, nullable=False),
        sa.Column("updated", WHEN, nullable=False),
    )
    op.create_index("ix_releases_owner", "releases", ["owner"])
    op.create_table(
        "release_replicas",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("release_id", sa.Integer(),
                  sa.ForeignKey("releases.id", ondelete="CASCADE"), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("version", sa.String(512), nullable=False),
        sa.Column("artifact", sa.String(64), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("node", sa.String(255), nullable=True),
        sa.Column("url", sa.String(255), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created", WHEN, nullable=False),
        sa.Column("updated", WHEN, nullable=False),
    )
    op.create_index("ix_release_replicas_release_state", "release_replicas",
                    ["release_id", "state"])
    op.create_table(
        "release_history",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("release_id", sa.Integer(),
                  sa.ForeignKey("releases.id", ondelete="CASCADE"), nullable=False),
        sa.Column("at", WHEN, nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
    )
    op.create_index("ix_release_history_release_id", "release_history", ["release_id"])
    op.create_table(
        "release_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("release_id", sa.Integer(),
                  sa.ForeignKey("releases.id", ondelete="CASCADE"), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("note", sa.String(255), nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("created", WHEN, nullable=False),
        sa.Column("revoked", WHEN, nullable=True),
    )
    op.create_index("ix_release_keys_release_id", "release_keys", ["release_id"])
    op.create_table(
        "serving_references",
        sa.Column("artifact", sa.String(64), primary_key=True),
        sa.Column("version", sa.String(512), nullable=False),
        sa.Column("dataset", sa.String(512), nullable=True),
        sa.Column("reference", sa.JSON(), nullable=False),
        sa.Column("created", WHEN, nullable=False),
    )


def downgrade() -> None:
    for table in ("serving_references", "release_keys", "release_history",
                  "release_replicas", "releases"):
        op.drop_table(table)
