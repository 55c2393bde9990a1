"""persisted jobs, scheduler transitions with their causes, who holds a request, audit by
target, blob grants (who may refer to a digest) and draft records by media digest

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

HAS_MEDIA = sa.text("media_sha IS NOT NULL")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("target", sa.String(512), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("done", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("log_tail", sa.Text(), nullable=False),
        sa.Column("log_blob", sa.String(64), nullable=True),
        sa.Column("cause", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.create_index("ix_jobs_owner_created", "jobs", ["owner", "created_at"])
    op.create_table(
        "sched_transitions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("stimulus", sa.String(128), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
    )
    op.create_index("ix_sched_transitions_request", "sched_transitions", ["request_id", "id"])
    op.create_index("ix_sched_transitions_stimulus", "sched_transitions", ["stimulus"])
    with op.batch_alter_table("sched_requests") as batch:
        batch.add_column(sa.Column("submitted_by", sa.String(255), nullable=False,
                                   server_default=""))
    op.create_index("ix_audit_events_target", "audit_events", ["target"])
    op.create_table(
        "blob_grants",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("user", sa.String(255), primary_key=True),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_dataset_records_media", "dataset_records", ["media_sha"],
                    sqlite_where=HAS_MEDIA, postgresql_where=HAS_MEDIA)


def downgrade() -> None:
    op.drop_index("ix_dataset_records_media", "dataset_records")
    op.drop_table("blob_grants")
    op.drop_index("ix_audit_events_target", "audit_events")
    with op.batch_alter_table("sched_requests") as batch:
        batch.drop_column("submitted_by")
    op.drop_table("sched_transitions")
    op.drop_table("jobs")
