"""The working draft: one row per record, edited by many users at once.

Each write takes the dataset's next ``seq`` under the dataset row's lock, so a
commit that has read ``seq = S`` knows every write numbered <= S is visible to it.
Per-record ``revision`` is the optimistic-concurrency token of single edits.

A row with ``seq <= committed_seq`` equals the head version. Its committed state
(``base_hash``, ``base_labels``) is saved only when a write first changes it (copy on
write), so a commit never rewrites the rows it stored: a 1M-record commit touches
no draft row.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import and_, case, func, select, update
from sqlalchemy.orm import Session

from loophub.datasets.manifest import PackWriter
from loophub.datasets.models import Dataset, DraftRecord
from loophub.datasets.records import (
    ORIGINS,
    annotators_of,
    canonical_bytes,
    is_annotated,
    labels_of,
    pack_labels,
    prediction_confidence,
    record_hash,
)
from loophub.errors import Conflict, InvalidInput, NotFound
from loophub.store.models import utcnow

BATCH = 5000


@dataclass(frozen=True)
class Stamp:
    """A write's number and the dataset's ``committed_seq`` when it was taken."""

    seq: int
    committed: int


def take_seq(session: Session, dataset_id: int) -> Stamp:
    """Take the dataset's next write number, locking its row until the transaction ends."""
    stmt = (update(Dataset).where(Dataset.id == dataset_id).values(seq=Dataset.seq + 1)
            .returning(Dataset.seq, Dataset.committed_seq))
    row = session.execute(stmt).one_or_none()
    if row is None:
        raise NotFound(f"dataset {dataset_id} does not exist")
    return Stamp(*row)


def saved_base(committed: int) -> dict:
    """Update values that keep a clean row's committed state before a write changes it."""
    clean = DraftRecord.seq <= committed
    return {"base_hash": case((clean, DraftRecord.hash), else_=DraftRecord.base_hash),
            "base_labels": case((clean, DraftRecord.labels), else_=DraftRecord.base_labels)}


UNPACKED = {"pack": None, "pack_offset": None, "pack_length": None}


def record_columns(record: dict) -> dict:
    """The draft columns a record's content determines."""
    content = canonical_bytes(record)
    media = record.get("media") or {}
    return {
        "record_id": record["id"], "content": content.decode(), "hash": record_hash(content),
        "split": record.get("split"), "labels": pack_labels(labels_of(record)),
        "annotated": is_annotated(record),
        "annotators": pack_labels(annotators_of(record)), "media_sha": media.get("sha256"),
        "confidence": prediction_confidence(record),
    }


def row_values(record: dict, seq: int, actor: str) -> dict:
    return {**record_columns(record), "deleted": False, "seq": seq, "updated_by": actor,
            "updated_at": utcnow(), **UNPACKED}


COLUMNS = ("dataset_id", "record_id", "revision", "content", "hash", "split", "labels",
           "annotated", "annotators", "media_sha", "confidence", "deleted", "seq", "updated_by",
           "updated_at", "pack", "pack_offset", "pack_length")
_REPLACED = COLUMNS[3:]
_PACK_AT = COLUMNS.index("pack")


def _upsert_sql(dialect: str, committed: int) -> str:
    # Plain DB-API executemany: the ORM's per-row parameter processing was 3x the cost.
    marks = ", ".join(["%s" if dialect == "postgresql" else "?"] * len(COLUMNS))
    updates = ", ".join(f"{c} = excluded.{c}" for c in _REPLACED)
    # SET expressions read the row as it was: the base is saved before it is overwritten
    bases = ", ".join(f"base_{c} = CASE WHEN dataset_records.seq <= {int(committed)} "
                      f"THEN dataset_records.{c} ELSE dataset_records.base_{c} END"
                      for c in ("hash", "labels"))
    return (f"INSERT INTO dataset_records ({', '.join(COLUMNS)}) VALUES ({marks}) "
            f"ON CONFLICT (dataset_id, record_id) DO UPDATE SET {bases}, {updates}, "
            "revision = dataset_records.revision + 1 "
            "WHERE dataset_records.hash <> excluded.hash OR dataset_records.deleted")


def upsert_many(session: Session, dataset_id: int, records: Iterable[dict], actor: str,
                progress: Callable[[int], None] | None = None,
                packs: PackWriter | None = None) -> int:
    """Insert or replace records in the caller's transaction; unchanged ones keep their
    revision and are not marked for the next commit. With ``packs`` (bulk imports) new
    and changed content is packed as it streams, so committing it only lists it.
    Returns the number of records seen."""
    writer = _RowWriter(session, dataset_id, take_seq(session, dataset_id), actor, packs)
    done = 0
    for record in records:
        writer.add(record)
        done += 1
        if progress and done % BATCH == 0:
            progress(done)
    writer.close()
    if progress and done % BATCH:
        progress(done)
    return done


class _RowWriter:
    """Writes draft rows with one executemany per batch. When packing, a row waits until
    its pack is stored, since the pack's digest is part of the row."""

    def __init__(self, session: Session, dataset_id: int, stamp: Stamp, actor: str,
                 packs: PackWriter | None) -> None:
        self.session, self.dataset_id, self.packs = session, dataset_id, packs
        self.connection = session.connection()
        self.sql = _upsert_sql(self.connection.dialect.name, stamp.committed)
        to_db = DraftRecord.updated_at.type.bind_processor(self.connection.dialect)
        self.fixed = (stamp.seq, actor, to_db(utcnow()) if to_db else utcnow())
        # an empty draft (the dataset row is locked: no one adds rows meanwhile) has
        # nothing unchanged to skip
        self.skip_unchanged = packs is not None and session.scalar(
            select(DraftRecord.record_id).where(DraftRecord.dataset_id == dataset_id)
            .limit(1)) is not None
        self.batch: list[list] = []
        self.waiting: list[tuple[list, tuple[int, int, int]]] = []

    def add(self, record: dict) -> None:
        v = record_columns(record)
        self.batch.append([self.dataset_id, v["record_id"], 1, v["content"], v["hash"],
                           v["split"], v["labels"], v["annotated"], v["annotators"],
                           v["media_sha"], v["confidence"], False, *self.fixed, None, None,
                           None])
        if len(self.batch) >= BATCH:
            self._write_batch()

    def close(self) -> None:
        self._write_batch()
        if self.packs is not None:
            self.packs.flush()
            self._write_waiting()

    def _write_batch(self) -> None:
        batch, self.batch = self.batch, []
        if not batch:
            return
        if self.packs is None:
            self.connection.exec_driver_sql(self.sql, list(map(tuple, batch)))
            return
        if self.skip_unchanged:  # packing them would only leave dead bytes in the packs
            batch = self._changed(batch)
        packs = self.packs
        for row in batch:
            closed = len(packs.written)
            self.waiting.append((row, packs.add(row[3].encode())))
            if len(packs.written) > closed:  # every waiting row's pack is now stored
                self._write_waiting()

    def _write_waiting(self) -> None:
        if not self.waiting:
            return
        written = self.packs.written
        for row, (number, offset, length) in self.waiting:
            row[_PACK_AT:] = (written[number][0], offset, length)
        self.connection.exec_driver_sql(self.sql, [tuple(row) for row, _ in self.waiting])
        self.waiting = []

    def _changed(self, batch: list[list]) -> list[list]:
        current = dict(self.session.execute(select(DraftRecord.record_id, DraftRecord.hash)
                                            .where(and_(
                                                DraftRecord.dataset_id == self.dataset_id,
                                                DraftRecord.record_id.in_([r[1] for r in batch]),
                                                DraftRecord.deleted.is_(False)))).all())
        return [row for row in batch if current.get(row[1]) != row[4]]


def get_row(session: Session, dataset_id: int, record_id: str) -> DraftRecord:
    row = session.get(DraftRecord, (dataset_id, record_id))
    if row is None or row.deleted:
        raise NotFound(f"record {record_id!r} is not in the dataset's draft; list records to "
                       "see the ids")
    return row


def replace_record(session: Session, dataset_id: int, record: dict, expected_revision: int,
                   actor: str) -> int:
    """Replace one record if its revision is still ``expected_revision``; the new revision."""
    stamp = take_seq(session, dataset_id)
    values = row_values(record, stamp.seq, actor)
    values.pop("record_id")
    stmt = (update(DraftRecord)
            .where(and_(DraftRecord.dataset_id == dataset_id,
                        DraftRecord.record_id == record["id"],
                        DraftRecord.revision == expected_revision,
                        DraftRecord.deleted.is_(False)))
            .values(revision=DraftRecord.revision + 1, **saved_base(stamp.committed), **values))
    if session.execute(stmt).rowcount != 1:
        _raise_stale(session, dataset_id, record["id"], expected_revision)
    return expected_revision + 1


def delete_record(session: Session, dataset_id: int, record_id: str, expected_revision: int,
                  actor: str) -> None:
    stamp = take_seq(session, dataset_id)
    stmt = (update(DraftRecord)
            .where(and_(DraftRecord.dataset_id == dataset_id, DraftRecord.record_id == record_id,
                        DraftRecord.revision == expected_revision,
                        DraftRecord.deleted.is_(False)))
            .values(revision=DraftRecord.revision + 1, deleted=True, seq=stamp.seq,
                    updated_by=actor, updated_at=utcnow(), **saved_base(stamp.committed),
                    **UNPACKED))
    if session.execute(stmt).rowcount != 1:
        _raise_stale(session, dataset_id, record_id, expected_revision)


def delete_many(session: Session, dataset_id: int, record_ids: list[str], actor: str) -> None:
    """Mark records deleted whatever their revision (a checkout replacing the draft)."""
    stamp = take_seq(session, dataset_id)
    for start in range(0, len(record_ids), 1000):
        session.execute(update(DraftRecord).where(and_(
            DraftRecord.dataset_id == dataset_id,
            DraftRecord.record_id.in_(record_ids[start:start + 1000]))).values(
            deleted=True, seq=stamp.seq, revision=DraftRecord.revision + 1, updated_by=actor,
            updated_at=utcnow(), **saved_base(stamp.committed), **UNPACKED))


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
    origin: str | None = None  # "production": collected by the feedback loop



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
    if where.origin is not None:  # a prefix of the key: the primary key's index serves it
        conditions.append(DraftRecord.record_id.startswith(origin_prefix(where.origin),
                                                           autoescape=True))
    return and_(*conditions)


def origin_prefix(origin: str) -> str:
    if origin not in ORIGINS:
        raise InvalidInput(f"origin: {origin!r} is not an origin; choose "
                           f"{', '.join(ORIGINS)}", detail={"field": "origin"})
    return ORIGINS[origin]


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
