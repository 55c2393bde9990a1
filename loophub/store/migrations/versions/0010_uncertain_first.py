"""labeling: "uncertain first" leases (draft rows' prediction confidence, indexed; the
labeling setting lease_order)

``dataset_records.confidence`` is the lowest score of a record's pending model predictions
while no person has labeled it (loophub.datasets.records.prediction_confidence). Rows that
already hold predictions get it here, so an upgraded draft orders correctly at once.

Revision ID: 0010
Revises: 0009
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

PREDICTED = sa.text("confidence IS NOT NULL")
BATCH = 1000


def upgrade() -> None:
    op.add_column("dataset_records", sa.Column("confidence", sa.Float(), nullable=True))
    op.create_index("ix_dataset_records_confidence", "dataset_records",
                    ["dataset_id", "confidence", "record_id"],
                    sqlite_where=PREDICTED, postgresql_where=PREDICTED)
    op.add_column("labeling_configs", sa.Column("lease_order", sa.String(16), nullable=False,
                                                server_default="id"))
    _backfill()


def _confidence(content: str) -> float | None:
    """records.prediction_confidence as of this revision (a migration keeps its own copy:
    later changes to the domain must not change what an old upgrade did)."""
    annotations = json.loads(content).get("annotations") or []
    if any((a.get("source") or {}).get("kind") == "user" for a in annotations):
        return None
    scores = [a["score"] for a in annotations
              if (a.get("source") or {}).get("kind") == "model"
              and (a.get("review") or {}).get("state") in (None, "pending")
              and isinstance(a.get("score"), int | float) and not isinstance(a["score"], bool)]
    return float(min(scores)) if scores else None


def _backfill() -> None:
    """Only rows whose canonical JSON names a model source can hold predictions."""
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT dataset_id, record_id, content FROM dataset_records "
        "WHERE deleted = :no AND content LIKE :model"),
        {"no": False, "model": '%"kind":"model"%'}).fetchall()
    update = sa.text("UPDATE dataset_records SET confidence = :c "
                     "WHERE dataset_id = :d AND record_id = :r")
    values = [{"c": c, "d": d, "r": r} for d, r, content in rows
              if (c := _confidence(content)) is not None]
    for start in range(0, len(values), BATCH):
        conn.execute(update, values[start:start + BATCH])


def downgrade() -> None:
    op.drop_column("labeling_configs", "lease_order")
    op.drop_index("ix_dataset_records_confidence", "dataset_records")
    op.drop_column("dataset_records", "confidence")
