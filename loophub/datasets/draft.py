"""The working draft: one row per record, edited by many users at once.

Each write takes the dataset's next ``seq`` under the dataset row's lock, so a
commit that has read ``seq = S`` knows every write numbered <= S is visible to it.
Per-record ``revision`` is the optimistic-concurrency token of single edits.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session

from loophub.datasets.models import Dataset, DraftRecord
from loophub.datasets.records import (
    annotators_of,
    canonical_bytes,
    is_annotated,
    labels_of,
    pack_labels,
    record_hash,
)
from loophub.errors import Conflict, NotFound
from loophub.store.models import utcnow

BATCH = 5000


def next_seq(session: Session, dataset_id: int) -> int:
    """Take the dataset's next write number, locking its row until the transaction ends."""
    stmt = (update(Dataset).where(Dataset.id == dataset_id).values(seq=Dataset.seq + 1)
            .returning(Dataset.seq))
    seq = session.execute(stmt).scalar_one_or_none()
    if seq is None:
        raise NotFound(f"dataset {dataset_id} does not exist")
    return seq


def row_values(record: dict, seq: int, actor: str) -> dict:
    content = canonical_bytes(record)
    labels = labels_of(record)
    media = record.get("media") or {}
    return {
        "record_id": record["id"], "content": content.decode(), "hash": record_hash(content),
        "split": record.get("split"), "labels": pack_labels(labels),
        "annotated": is_annotated(record),
        "annotators": pack_labels(annotators_of(record)), "media_sha": media.get("sha256"),
        "deleted": False, "seq": seq, "updated_by": actor, "updated_at": utcnow(),
    }


COLUMNS = ("dataset_id", "record_id", "revision", "content", "hash", "split", "labels",
           "annotated", "annotators", "media_sha", "deleted", "seq", "updated_by", "updated_at")
_REPLACED = ("content", "hash", "split", "labels", "annotated", "annotators", "media_sha",
             "deleted", "seq", "updated_by", "updated_at")


def _upsert_sql(dialect: str) -> str:
    # Plain DB-API executemany: the ORM's per-row parameter processing was 3x the cost.
    marks = ", ".join(["%s" if dialect == "postgresql" else "?"] * len(COLUMNS))
    updates = ", ".join(f"{c} = excluded.{c}" for c in _REPLACED)
    return (f"INSERT INTO dataset_records ({', '.join(COLUMNS)}) VALUES ({marks}) "
            f"ON CONFLICT (dataset_id, record_id) DO UPDATE SET {updates}, "
            "revision = dataset_records.revision + 1 "
            "WHERE dataset_records.hash <> excluded.hash OR dataset_records.deleted")


def upsert_many(session: Session, dataset_id: int, records: Iterable[dict], actor: str,
                progress: Callable[[int], None] | None = None) -> int:
    """Insert or replace records in the caller's transaction; unchanged ones keep their
    revision and are not marked for the next commit. Returns the number of records seen."""
    seq = next_seq(session, dataset_id)
    connection = session.connection()
    dialect = connection.dialect
    sql = _upsert_sql(dialect.name)
    stamp = DraftRecord.updated_at.type.bind_processor(dialect)
    now = stamp(utcnow()) if stamp else utcnow()
    batch, done = [], 0
    for record in records:
        v = row_values(record, seq, actor)
        batch.append((dataset_id, v["record_id"], 1, v["content"], v["hash"], v["split"],
                      v["labels"], v["annotated"], v["annotators"], v["media_sha"], False, seq,
                      actor, now))
        if len(batch) >= BATCH:
            connection.exec_driver_sql(sql, batch)
            done += len(batch)
            batch = []
            if progress:
                progress(done)
    if batch:
        connection.exec_driver_sql(sql, batch)
        done += len(batch)
        if progress:
            progress(done)
    return done


def get_row(session: Session, dataset_id: int, record_id: str) -> DraftRecord:
    row = session.get(DraftRecord, (dataset_id, record_id))
    if row is None or row.deleted:
        raise NotFound(f"record {record_id!r} is not in the dataset's draft; list records to "
                       "see the ids")
    return row


def replace_record(session: Session, dataset_id: int, record: dict, expected_revision: int,
                   actor: str) -> int:
    """Replace one record if its revision is still ``expected_revision``; the new revision."""
    seq = next_seq(session, dataset_id)
    values = row_values(record, seq, actor)
    values.pop("record_id")
    stmt = (update(DraftRecord)
            .where(and_(DraftRecord.dataset_id == dataset_id,
                        DraftRecord.record_id == record["id"],
                        DraftRecord.revision == expected_revision,
                        DraftRecord.deleted.is_(False)))
            .values(revision=DraftRecord.revision + 1, **values))
    if session.execute(stmt).rowcount != 1:
        _raise_stale(session, dataset_id, record["id"], expected_revision)
    return expected_revision + 1


def delete_record(session: Session, dataset_id: int, record_id: str, expected_revision: int,
                  actor: str) -> None:
    seq = next_seq(session, dataset_id)
    stmt = (update(DraftRecord)
            .where(and_(DraftRecord.dataset_id == dataset_id, DraftRecord.record_id == record_id,
                        DraftRecord.revision == expected_revision,
                        DraftRecord.deleted.is_(False)))
            .values(revision=DraftRecord.revision + 1, deleted=True, seq=seq, updated_by=actor,
                    updated_at=utcnow()))
    if session.execute(stmt).rowcount != 1:
        _raise_stale(session, dataset_id, record_id, expected_revision)


def _raise_stale(session: Session, dataset_id: int, record_id: str, expected: int) -> None:
    row = get_row(session, dataset_id, record_id)
    raise Conflict(
        f"record {record_id!r} changed since you read it (you had revision {expected}, it is "
        f"now {row.revision}, last edited by {row.updated_by}); reload it and apply your "
        "change again", detail={"record_id": record_id, "revision": row.revision})


@dataclass(frozen=True)
class RecordFilter:
    label: str | None = None
    split: str | None = None
    annotated: bool | None = None
    annotator: str | None = None


def filtered(dataset_id: int, where: RecordFilter):
    conditions = [DraftRecord.dataset_id == dataset_id, DraftRecord.deleted.is_(False)]
    if where.label is not None:
        conditions.append(DraftRecord.labels.contains(pack_labels([where.label]),
                                                      autoescape=True))
    if where.split is not None:
        conditions.append(DraftRecord.split == where.split)
    if where.annotated is not None:
        conditions.append(DraftRecord.annotated.is_(where.annotated))
    if where.annotator is not None:
        conditions.append(DraftRecord.annotators.contains(pack_labels([where.annotator]),
                                                          autoescape=True))
    return and_(*conditions)


def page(session: Session, dataset_id: int, where: RecordFilter, after: str | None,
         limit: int) -> list[DraftRecord]:
    """Records in id order after the cursor ``after`` (keyset paging: no OFFSET scans)."""
    stmt = select(DraftRecord).where(filtered(dataset_id, where))
    if after is not None:
        stmt = stmt.where(ordered_id(session) > after)
    stmt = stmt.order_by(ordered_id(session)).limit(limit)
    return list(session.scalars(stmt))


def count(session: Session, dataset_id: int, where: RecordFilter) -> int:
    return session.scalar(select(func.count()).select_from(DraftRecord)
                          .where(filtered(dataset_id, where)))


def ordered_id(session: Session):
    """record_id ordered by code point on both back ends (PostgreSQL collations differ)."""
    if session.bind.dialect.name == "postgresql":
        return DraftRecord.record_id.collate("C")
    return DraftRecord.record_id


def to_record(row: DraftRecord) -> dict:
    return json.loads(row.content)
