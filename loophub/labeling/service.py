"""What the labeling routes call: leases, labeling settings, progress, media, agreement,
review queue and model predictions.

Leases follow superintendent's database queue: an item is handed to one labeler for a
while (``lease_seconds``) so several labelers on one dataset get different items; with
``overlap`` k an item is handed to k different labelers. Who has labeled an item comes
from the draft's ``annotators`` column (user annotations only), so a lease that outlives
its label never blocks anyone: a slot is taken by the union of labelers and lease holders.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable

from sqlalchemy import and_, delete, not_, select, tuple_
from sqlalchemy.exc import IntegrityError

from loophub import audit
from loophub.access import Need
from loophub.datasets import draft
from loophub.datasets.draft import RecordFilter
from loophub.datasets.models import Dataset, DraftRecord
from loophub.datasets.records import pack_labels, unpack_labels
from loophub.datasets.service import DatasetService
from loophub.datasets.validation import RecordValidator
from loophub.errors import InvalidInput, NotFound
from loophub.identity import Actor
from loophub.labeling.agreement import (
    dataset_agreement,
    is_done,
    item_agreement,
    user_annotations,
)
from loophub.labeling.models import LabelingConfig, Lease
from loophub.store.db import Database
from loophub.store.models import utcnow

Clock = Callable[[], float]
SCAN_BATCH = 200
MAX_LEASES_PER_CALL = 50
# "id": draft order; "uncertain": lowest model confidence first (records without
# predictions after, in id order), so labeling effort goes where the model is weakest
LEASE_ORDERS = ("id", "uncertain")


class LabelingService:
    """Labeling operations for the API service; one instance per process."""

    def __init__(self, db: Database, datasets: DatasetService, clock: Clock = time.time) -> None:
        self.db, self.datasets, self.clock = db, datasets, clock

    # -- settings ---------------------------------------------------------------------

    def _dataset(self, session, actor: Actor, name: str, need: Need = "read") -> Dataset:
        # The dataset room's check (loophub.access rules); get_dataset would also count
        # the draft, a scan on every lease.
        return self.datasets.dataset_for(session, actor, name, need)

    @staticmethod
    def _config(session, dataset: Dataset) -> LabelingConfig:
        config = session.get(LabelingConfig, dataset.id)
        return config or LabelingConfig(dataset_id=dataset.id, overlap=1, lease_seconds=600.0,
                                        lease_order="id")

    @staticmethod
    def _settings_view(config: LabelingConfig) -> dict:
        return {"overlap": config.overlap, "lease_seconds": config.lease_seconds,
                "order": config.lease_order or "id"}

    def settings(self, actor: Actor, name: str) -> dict:
        with self.db.session() as session:
            return self._settings_view(self._config(session, self._dataset(session, actor,
                                                                            name)))

    def configure(self, actor: Actor, name: str, *, overlap: int | None = None,
                  lease_seconds: float | None = None, order: str | None = None) -> dict:
        """Set the annotations wanted per item, the lease length and the order items are
        leased in (owner or admin)."""
        if overlap is not None and (not isinstance(overlap, int) or not 1 <= overlap <= 50):
            raise InvalidInput("overlap must be a whole number from 1 to 50")
        if lease_seconds is not None and not 5 <= float(lease_seconds) <= 7 * 86400:
            raise InvalidInput("lease_seconds must be between 5 seconds and a week")
        _check_order(order)
        with self.db.transaction() as session:
            dataset = self._dataset(session, actor, name, "manage")
            config = session.get(LabelingConfig, dataset.id)
            if config is None:
                config = LabelingConfig(dataset_id=dataset.id, overlap=1, lease_seconds=600.0,
                                        lease_order="id")
                session.add(config)
            config.overlap = overlap if overlap is not None else config.overlap
            config.lease_seconds = (float(lease_seconds) if lease_seconds is not None
                                    else config.lease_seconds)
            config.lease_order = order or config.lease_order or "id"
            config.updated_by, config.updated_at = actor.name, utcnow()
            audit.record(session, actor, "labeling.settings", f"dataset:{name}",
                         overlap=config.overlap, lease_seconds=config.lease_seconds,
                         order=config.lease_order)
            return self._settings_view(config)

    # -- leases -----------------------------------------------------------------------

    def acquire(self, actor: Actor, name: str, count: int = 1, *,
                split: str | None = None, order: str | None = None,
                origin: str | None = None) -> list[dict]:
        """Lease up to ``count`` items that still need the actor's label (of SPLIT, of
        ORIGIN "production": collected from a release, when given).

        Items the actor already holds come first (a restarted labeler resumes where it
        was), then new ones in ``order`` (None: the dataset's labeling setting): "id", or
        "uncertain" (lowest prediction confidence first, then unpredicted items by id).
        Each item is {"record", "revision", "expires_at"}.
        """
        _check_order(order)
        count = max(1, min(int(count), MAX_LEASES_PER_CALL))
        now = self.clock()
        with self.db.transaction() as session:
            dataset = self._dataset(session, actor, name, "write")
            config = self._config(session, dataset)
            order = order or config.lease_order or "id"
            expires = now + config.lease_seconds
            session.execute(delete(Lease).where(and_(
                Lease.dataset_id == dataset.id, Lease.state == "active", Lease.expires_at < now)))
            where = RecordFilter(split=split, origin=origin)
            held = self._renew_held(session, dataset.id, actor.name, where, expires)
            leases = self._leases_by_record(session, dataset.id)
            mine = {rid for rid, rows in leases.items() if any(h == actor.name for h, _ in rows)}
            fresh: list[DraftRecord] = []
            for row in self._candidates(session, dataset.id, actor.name, where,
                                        unlabeled_only=config.overlap == 1, order=order):
                if len(held) + len(fresh) >= count:
                    break
                if row.record_id in mine:
                    continue
                slot = _free_slot(row, leases.get(row.record_id, []), config.overlap)
                if slot is not None and self._try_lease(session, dataset.id, row.record_id,
                                                        actor.name, slot, now, expires):
                    fresh.append(row)
            rows = held[:count] + fresh
            return [{"record": draft.to_record(r), "revision": r.revision, "expires_at": expires}
                    for r in rows]

    def _renew_held(self, session, dataset_id: int, holder: str, where: RecordFilter,
                    expires: float) -> list[DraftRecord]:
        """The holder's active leases on items still needing their label, renewed; leases
        on items they have labeled (or that vanished) are released."""
        leases = session.scalars(select(Lease).where(and_(
            Lease.dataset_id == dataset_id, Lease.holder == holder, Lease.state == "active"))
            .order_by(Lease.acquired_at, Lease.record_id)).all()
        kept = []
        for lease in leases:
            row = session.get(DraftRecord, (dataset_id, lease.record_id))
            if row is None or row.deleted or holder in unpack_labels(row.annotators):
                session.delete(lease)
            elif (where.split is None or row.split == where.split) and (
                    where.origin is None
                    or row.record_id.startswith(draft.origin_prefix(where.origin))):
                lease.expires_at = expires
                kept.append(row)
        return kept

    @staticmethod
    def _leases_by_record(session, dataset_id: int) -> dict[str, list[tuple[str, int | None]]]:
        out: dict[str, list[tuple[str, int | None]]] = {}
        for lease in session.scalars(select(Lease).where(and_(
                Lease.dataset_id == dataset_id))):
            out.setdefault(lease.record_id, []).append(
                (lease.holder, lease.slot if lease.state == "active" else None))
        return out

    @staticmethod
    def _candidates(session, dataset_id: int, holder: str, where: RecordFilter, *,
                    unlabeled_only: bool, order: str = "id") -> Iterable[DraftRecord]:
        """Draft records the holder has not labeled, in ORDER, fetched in batches (with
        overlap 1 only items no person labeled, filtered in SQL: no scan of done ones).

        Items no person labeled come first: those with no label at all, then those that
        carry labels from an import (a person still confirms them), then, with overlap,
        items others labeled. "uncertain" reads the predicted rows first by (confidence,
        id) through their partial index, which holds only records no person labeled (the
        queue itself), then the unpredicted ones by id: keyset scans, no sort of the whole
        draft."""
        mine = DraftRecord.annotators.contains(pack_labels([holder]), autoescape=True)
        base = [draft.filtered(dataset_id, where), not_(mine)]
        nobody = DraftRecord.annotators == ""
        if order == "uncertain":
            yield from _by_confidence(session, [*base, nobody])
            base.append(DraftRecord.confidence.is_(None))
        yield from _by_id(session, [*base, nobody, DraftRecord.annotated.is_(False)])
        yield from _by_id(session, [*base, nobody, DraftRecord.annotated.is_(True)])
        if not unlabeled_only:
            yield from _by_id(session, [*base, DraftRecord.annotators != ""])

    @staticmethod
    def _try_lease(session, dataset_id: int, record_id: str, holder: str, slot: int,
                   now: float, expires: float) -> bool:
        """Insert a lease in a savepoint; a concurrent labeler that took the same slot
        first makes the insert fail and the item is left to them."""
        try:
            with session.begin_nested():
                session.add(Lease(dataset_id=dataset_id, record_id=record_id, holder=holder,
                                  slot=slot, state="active", acquired_at=now,
                                  expires_at=expires))
        except IntegrityError:
            return False
        return True

    def release(self, actor: Actor, name: str, record_ids: list[str] | None = None) -> int:
        """Give back the actor's active leases (all of them when ``record_ids`` is None)."""
        with self.db.transaction() as session:
            dataset = self._dataset(session, actor, name, "write")
            where = [Lease.dataset_id == dataset.id, Lease.holder == actor.name,
                     Lease.state == "active"]
            if record_ids is not None:
                where.append(Lease.record_id.in_(record_ids))
            return session.execute(delete(Lease).where(and_(*where))).rowcount

    def skip(self, actor: Actor, name: str, record_id: str) -> dict:
        """Leave an item to others: it is not offered to the actor again."""
        with self.db.transaction() as session:
            dataset = self._dataset(session, actor, name, "write")
            draft.get_row(session, dataset.id, record_id)  # NotFound for unknown ids
            lease = session.scalars(select(Lease).where(and_(
                Lease.dataset_id == dataset.id, Lease.record_id == record_id,
                Lease.holder == actor.name))).one_or_none()
            now = self.clock()
            if lease is None:
                session.add(Lease(dataset_id=dataset.id, record_id=record_id,
                                  holder=actor.name, slot=None, state="skipped",
                                  acquired_at=now, expires_at=now))
            else:
                lease.state, lease.slot = "skipped", None
            return {"record_id": record_id, "state": "skipped"}

    def unskip(self, actor: Actor, name: str, record_id: str) -> None:
        with self.db.transaction() as session:
            dataset = self._dataset(session, actor, name, "write")
            session.execute(delete(Lease).where(and_(
                Lease.dataset_id == dataset.id, Lease.record_id == record_id,
                Lease.holder == actor.name, Lease.state == "skipped")))

    def leases(self, actor: Actor, name: str) -> list[dict]:
        """Active leases on the dataset (who holds what until when)."""
        now = self.clock()
        with self.db.session() as session:
            dataset = self._dataset(session, actor, name)
            rows = session.scalars(select(Lease).where(and_(
                Lease.dataset_id == dataset.id, Lease.state == "active",
                Lease.expires_at >= now)).order_by(Lease.record_id))
            return [{"record_id": r.record_id, "holder": r.holder, "slot": r.slot,
                     "expires_at": r.expires_at} for r in rows]

    # -- progress, media --------------------------------------------------------------

    def progress(self, actor: Actor, name: str) -> dict:
        """Items done, labeled by people, labeled by the actor, imported with labels,
        per-label counts.

        An item is done when ``overlap`` people labeled it, or when it carries labels from
        an import (or an accepted prediction) and no person has labeled it yet: a dataset
        imported with labels is not "0 done". ``labeled`` counts items people labeled;
        ``imported`` the items whose only labels came from elsewhere."""
        with self.db.session() as session:
            dataset = self._dataset(session, actor, name)
            overlap = self._config(session, dataset).overlap
            rows = session.execute(select(DraftRecord.labels, DraftRecord.annotators,
                                          DraftRecord.annotated, DraftRecord.split).where(
                draft.filtered(dataset.id, RecordFilter()))).all()
        labels: Counter[str] = Counter()
        splits: Counter[str] = Counter()
        done = mine = labeled = imported = 0
        for packed_labels, packed_users, annotated, split in rows:
            users = unpack_labels(packed_users)
            labeled += bool(users)
            imported += bool(annotated) and not users
            done += is_done(len(users), bool(annotated), overlap)
            mine += actor.name in users
            labels.update(unpack_labels(packed_labels))
            splits[split or "unassigned"] += 1
        return {"total": len(rows), "done": done, "labeled": labeled, "mine": mine,
                "imported": imported, "overlap": overlap,
                "labels": dict(sorted(labels.items())), "splits": dict(sorted(splits.items()))}

    def media(self, actor: Actor, name: str, record_id: str) -> tuple[bytes, str]:
        """The record's media bytes and type (read permission on the dataset)."""
        record = self.datasets.get_record(actor, name, record_id)["record"]
        media = record.get("media") or {}
        digest = media.get("sha256")
        if not digest or not self.datasets.blobs.exists(digest):
            raise NotFound(f"record {record_id!r} has no stored media")
        with self.datasets.blobs.open(digest) as stream:
            return stream.read(), media.get("type", "application/octet-stream")

    # -- agreement and review ---------------------------------------------------------

    def _multi_labeled(self, session, dataset_id: int, minimum: int) -> Iterable[DraftRecord]:
        rows = session.scalars(select(DraftRecord).where(and_(
            draft.filtered(dataset_id, RecordFilter()), DraftRecord.annotators != ""))
            .order_by(DraftRecord.record_id).execution_options(yield_per=1000))
        for row in rows:
            if len(unpack_labels(row.annotators)) >= minimum:
                yield row

    def agreement(self, actor: Actor, name: str) -> dict:
        with self.db.session() as session:
            dataset = self._dataset(session, actor, name)
            task = dataset.label_schema.get("task", "mixed")
            records = [draft.to_record(r) for r in self._multi_labeled(session, dataset.id, 2)]
        return dataset_agreement(task, records)

    def review_queue(self, actor: Actor, name: str, *, limit: int = 50,
                     annotator: str | None = None) -> list[dict]:
        """Items with user annotations nobody has reviewed, most disputed first.

        Each is {"record", "revision", "agreement", "pending"}: agreement is None for items
        with one labeler; pending lists the unreviewed annotation ids."""
        with self.db.session() as session:
            dataset = self._dataset(session, actor, name)
            task = dataset.label_schema.get("task", "mixed")
            queue = []
            for row in self._multi_labeled(session, dataset.id, 1):
                record = draft.to_record(row)
                pending = [a["id"] for a in record["annotations"]
                           if (a.get("source") or {}).get("kind") == "user"
                           and (annotator is None or a["source"]["name"] == annotator)
                           and (a.get("review") or {}).get("state") in (None, "pending")]
                if pending:
                    score = item_agreement(task, user_annotations(record))
                    queue.append({"record": record, "revision": row.revision,
                                  "agreement": score, "pending": pending})
        queue.sort(key=lambda i: (i["agreement"] if i["agreement"] is not None else 2.0,
                                  i["record"]["id"]))
        return queue[:max(1, min(limit, 1000))]

    # -- predictions ------------------------------------------------------------------

    def put_predictions(self, actor: Actor, name: str, predictions: list[dict]) -> dict:
        """Store model predictions as pre-annotations (source kind "model"), all or none.

        Each prediction is {"record_id", "model", "version"?, "annotations": [...]}; a
        model's earlier predictions on that record are replaced. Every record is read
        and validated first, then written in one transaction (writers only)."""
        for i, pred in enumerate(predictions):
            if not isinstance(pred, dict) or not isinstance(pred.get("record_id"), str) \
                    or not isinstance(pred.get("model"), str) \
                    or not isinstance(pred.get("annotations", []), list):
                raise InvalidInput(f"predictions[{i}]: needs 'record_id' and 'model' strings "
                                   "and a list of 'annotations'",
                                   detail={"field": f"predictions[{i}]"})
        written = 0
        with self.db.transaction() as session:
            dataset = self._dataset(session, actor, name, "write")
            # Take the dataset's write lock before reading the records: a label saved
            # between this read and the write below would otherwise be overwritten.
            draft.take_seq(session, dataset.id)
            wanted = sorted({p["record_id"] for p in predictions})
            rows: dict[str, DraftRecord] = {}
            for start in range(0, len(wanted), 500):
                rows.update((r.record_id, r) for r in session.scalars(select(DraftRecord).where(
                    DraftRecord.dataset_id == dataset.id,
                    DraftRecord.record_id.in_(wanted[start:start + 500]),
                    DraftRecord.deleted.is_(False))))
            records: dict[str, dict] = {}
            for i, pred in enumerate(predictions):
                record_id, model = pred["record_id"], pred["model"]
                if record_id not in rows:
                    raise NotFound(f"predictions[{i}].record_id: no record {record_id!r} in "
                                   f"dataset {name!r}", detail={"field": f"predictions[{i}]"})
                record = records.get(record_id) or draft.to_record(rows[record_id])
                version = pred.get("version")
                source = {"kind": "model", "name": model,
                          "version": None if version is None else str(version)}
                kept = [a for a in record["annotations"]
                        if not ((a.get("source") or {}).get("kind") == "model"
                                and a["source"].get("name") == model)]
                added = [{**ann, "source": source,
                          "id": ann.get("id") or f"{model}-{j}-{record_id}"}
                         for j, ann in enumerate(pred.get("annotations") or [])]
                record["annotations"] = kept + added
                records[record_id] = record
                written += len(added)
            validator = RecordValidator(dataset.label_schema)
            for record in records.values():
                validator.validate(record, source=f"{name}: predictions")
            draft.upsert_many(session, dataset.id, records.values(), actor.name)
            audit.record(session, actor, "labeling.predictions", f"dataset:{name}",
                         records=len(records), annotations=written)
        return {"records": len(records), "annotations": written}

def _check_order(order: str | None) -> None:
    if order is not None and order not in LEASE_ORDERS:
        raise InvalidInput(f"order {order!r} is not a lease order; use one of "
                           f"{', '.join(LEASE_ORDERS)}", detail={"field": "order"})


def _by_id(session, where: list) -> Iterable[DraftRecord]:
    """Rows matching WHERE in id order, SCAN_BATCH at a time (keyset paging)."""
    ordered = draft.ordered_id(session)
    after = None
    while True:
        page = where if after is None else [*where, ordered > after]
        batch = session.scalars(select(DraftRecord).where(and_(*page))
                                .order_by(ordered).limit(SCAN_BATCH)).all()
        yield from batch
        if len(batch) < SCAN_BATCH:
            return
        after = batch[-1].record_id


def _by_confidence(session, where: list) -> Iterable[DraftRecord]:
    """Predicted rows matching WHERE by ascending confidence, ties by id (keyset paging
    on the pair)."""
    ordered = draft.ordered_id(session)
    score = DraftRecord.confidence
    after: tuple[float, str] | None = None
    while True:
        page = [*where, score.is_not(None)]
        if after is not None:
            page.append(tuple_(score, ordered) > tuple_(*after))  # a row value: an index range
        batch = session.scalars(select(DraftRecord).where(and_(*page))
                                .order_by(score, ordered).limit(SCAN_BATCH)).all()
        yield from batch
        if len(batch) < SCAN_BATCH:
            return
        after = (batch[-1].confidence, batch[-1].record_id)


def _free_slot(row: DraftRecord, leases: list[tuple[str, int | None]],
               overlap: int) -> int | None:
    """The lowest free lease slot of an item, or None when labelers and holders together
    already reach the overlap. Concurrent callers reading the same state pick the same
    slot, so the unique constraint lets only one of them in."""
    users = set(unpack_labels(row.annotators))
    holders = {holder for holder, slot in leases if slot is not None}
    if len(users | holders) >= overlap:
        return None
    taken = {slot for _, slot in leases if slot is not None}
    return next(i for i in range(overlap + len(taken) + 1) if i not in taken)
