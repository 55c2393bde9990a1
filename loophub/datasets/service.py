"""What the API routes call: datasets, records, annotations, versions, exports, lineage.

Every public method takes the acting user first and checks permissions before it
reads or writes. Imports validate every record before anything is visible (one
transaction: all or nothing); single-record writes carry the revision the caller
read (optimistic concurrency, Conflict when stale).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import and_, delete, select

from loophub import access, audit
from loophub.access import Need
from loophub.datasets import draft, versions
from loophub.datasets.draft import RecordFilter
from loophub.datasets.formats import FORMATS, read_dataset, validated_records, write_dataset
from loophub.datasets.formats.base import MEDIA_TYPES, Bundle, FolderMedia, image_size
from loophub.datasets.manifest import PackWriter
from loophub.datasets.models import (
    STATES,
    VISIBILITIES,
    Dataset,
    DatasetLineage,
    DatasetPin,
    DatasetStateChange,
    DatasetTag,
    DatasetVersion,
    DraftRecord,
)
from loophub.datasets.records import labels_of, unpack_labels
from loophub.datasets.schemas import load_schema
from loophub.datasets.splits import assign_splits
from loophub.datasets.validation import RecordValidator, validate_label_schema
from loophub.errors import Conflict, InvalidInput, NotFound, PermissionDenied, TooLarge
from loophub.identity import Actor
from loophub.store import grants
from loophub.store.blobs import BlobStore, BlobTooLarge
from loophub.store.db import Database
from loophub.store.models import iso, utcnow

Progress = Callable[[int, int], None]
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSION_NUMBER = re.compile(r"v?([0-9]{1,12})")
MAX_REVISION = 2**31 - 1  # DraftRecord.revision is a 32-bit integer column
MAX_VERSION = 2**31 - 1  # DatasetVersion.number is a 32-bit integer column
TRANSITIONS = {
    "active": {"published", "archived", "deleted"},
    "published": {"active", "archived", "deleted"},
    "archived": {"active", "deleted"},
    "deleted": {"active"},
}
EMPTY_SCHEMA = {"task": "mixed", "classes": []}


@dataclass
class ImportReport:
    dataset: str
    format: str
    records: int
    media_stored: int
    classes_added: list[str]


@dataclass
class RecordPage:
    records: list[dict]  # each {"record": ..., "revision": n}
    next_cursor: str | None
    total: int | None = None


def _noop(done: int, total: int) -> None:
    return None


class DatasetService:
    """Dataset operations for the API service; one instance per process."""

    def __init__(self, db: Database, blobs: BlobStore, *, max_upload_bytes: int = 20 * 1024**3,
                 max_page: int = 1000) -> None:
        self.db, self.blobs = db, blobs
        self.max_upload_bytes, self.max_page = max_upload_bytes, max_page

    # -- schemas ---------------------------------------------------------------------

    @staticmethod
    def schemas() -> dict[str, dict]:
        """The JSON Schemas (record, label_schema) as served at /datasets/schemas."""
        return {name: load_schema(name) for name in ("record", "label_schema")}

    @staticmethod
    def formats() -> list[str]:
        return list(FORMATS)

    # -- permissions -----------------------------------------------------------------

    def _load(self, session, name: str) -> Dataset:
        dataset = session.scalars(select(Dataset).where(Dataset.name == name)).one_or_none()
        if dataset is None:
            raise NotFound(f"no dataset named {name!r}; list datasets to see the names")
        return dataset

    def dataset_for(self, session, actor: Actor, name: str, need: Need = "read") -> Dataset:
        """The dataset named NAME if ACTOR has NEED on it (loophub.access rules); writes
        also need it active. Every room that acts on a dataset checks through here."""
        dataset = self._load(session, name)
        access.require(actor, dataset, need, noun="dataset", name=name)
        if need == "write" and dataset.state in ("archived", "deleted"):
            raise Conflict(f"dataset {name!r} is {dataset.state}; set it active to change it")
        return dataset

    def check_access(self, actor: Actor, name: str, need: Need = "read") -> None:
        """Raise unless ACTOR has NEED on dataset NAME (before accepting a job)."""
        with self.db.session() as session:
            self.dataset_for(session, actor, name, need)

    def check_import(self, actor: Actor, name: str, digest: str) -> None:
        """An import needs write access to the dataset and a right to the upload, which
        must still be stored (an admin may name any digest: one that is not there failed
        the import job with an internal error)."""
        with self.db.session() as session:
            self.dataset_for(session, actor, name, "write")
            missing = grants.may_reference(session, actor, [digest], [self._media_holders])
            if missing or not self.blobs.exists(digest):
                raise grants.refuse(missing or {digest}, "upload")

    @staticmethod
    def _media_holders(session, actor: Actor, digests: set[str]) -> set[str]:
        """The digests a draft record of a dataset ACTOR can read holds as media."""
        return set(session.scalars(
            select(DraftRecord.media_sha).join(Dataset, Dataset.id == DraftRecord.dataset_id)
            .where(DraftRecord.media_sha.in_(digests), DraftRecord.deleted.is_(False),
                   access.readable_filter(actor, Dataset)).distinct()))

    def _check_media_refs(self, session, actor: Actor, digests: set[str], where: str) -> None:
        missing = grants.may_reference(session, actor, digests, [self._media_holders])
        if missing:
            raise grants.refuse(missing, where)

    def _readable(self, session, actor: Actor, name: str) -> Dataset:
        return self.dataset_for(session, actor, name, "read")

    def _writable(self, session, actor: Actor, name: str) -> Dataset:
        return self.dataset_for(session, actor, name, "write")

    def _managed(self, session, actor: Actor, name: str) -> Dataset:
        return self.dataset_for(session, actor, name, "manage")

    # -- datasets --------------------------------------------------------------------

    def create_dataset(self, actor: Actor, name: str, *, label_schema: dict | None = None,
                       visibility: str = "private", group: str | None = None,
                       description: str = "") -> dict:
        if not NAME.match(name or ""):
            raise InvalidInput(f"dataset name {name!r} must be 1-128 letters, digits, '.', '_' "
                               "or '-', starting with a letter or digit")
        self._check_visibility(actor, visibility, group)
        schema = label_schema or dict(EMPTY_SCHEMA)
        validate_label_schema(schema, source="label_schema")
        with self.db.transaction() as session:
            if session.scalars(select(Dataset.id).where(Dataset.name == name)).first():
                raise Conflict(f"a dataset named {name!r} exists; pick another name")
            dataset = Dataset(name=name, owner=actor.name, group_name=group,
                              visibility=visibility, description=description,
                              label_schema=schema, state="active", state_changed_by=actor.name,
                              state_changed_at=utcnow(), created=utcnow(), seq=0,
                              committed_seq=0, version_count=0, purged=False)
            session.add(dataset)
            session.flush()
            audit.record(session, actor, "dataset.create", f"dataset:{name}",
                         visibility=visibility, group=group)
            return self._describe(dataset)

    @staticmethod
    def _check_visibility(actor: Actor, visibility: str, group: str | None) -> None:
        if visibility not in VISIBILITIES:
            raise InvalidInput(f"visibility must be one of {', '.join(VISIBILITIES)}")
        if visibility == "group" and not group:
            raise InvalidInput("group visibility needs a group name")
        if group and not actor.admin and group not in actor.groups:
            raise PermissionDenied(f"you are not in group {group!r}; share with one of yours")

    @staticmethod
    def _describe(ds: Dataset) -> dict:
        return {"name": ds.name, "owner": ds.owner, "group": ds.group_name,
                "visibility": ds.visibility, "description": ds.description,
                "label_schema": ds.label_schema, "state": ds.state,
                "state_changed_by": ds.state_changed_by,
                "state_changed_at": iso(ds.state_changed_at),
                "created": iso(ds.created), "head_version": ds.head_version,
                "versions": ds.version_count}

    def list_datasets(self, actor: Actor, *, state: str | None = None) -> list[dict]:
        """Datasets the actor can read; deleted ones only when asked by state."""
        with self.db.session() as session:
            rows = session.scalars(select(Dataset).where(access.readable_filter(actor, Dataset))
                                   .order_by(Dataset.name))
            out = [self._describe(d) for d in rows]
        if state is None:
            return [d for d in out if d["state"] != "deleted"]
        return [d for d in out if d["state"] == state]

    def get_dataset(self, actor: Actor, name: str) -> dict:
        with self.db.session() as session:
            dataset = self._readable(session, actor, name)
            info = self._describe(dataset)
            info["draft_records"] = draft.count(session, dataset.id, RecordFilter())
            info["uncommitted"] = dataset.seq > dataset.committed_seq
            return info

    def update_dataset(self, actor: Actor, name: str, *, label_schema: dict | None = None,
                       visibility: str | None = None, group: str | None = None,
                       description: str | None = None) -> dict:
        with self.db.transaction() as session:
            dataset = self._managed(session, actor, name)
            before = {"visibility": dataset.visibility, "group": dataset.group_name}
            if visibility is not None or group is not None:
                self._check_visibility(actor, visibility or dataset.visibility,
                                       group if group is not None else dataset.group_name)
                dataset.visibility = visibility or dataset.visibility
                dataset.group_name = group if group is not None else dataset.group_name
            if label_schema is not None:
                validate_label_schema(label_schema, source="label_schema")
                self._check_schema_keeps_labels(session, dataset, label_schema)
                dataset.label_schema = label_schema
            if description is not None:
                dataset.description = description
            after = {"visibility": dataset.visibility, "group": dataset.group_name}
            # who may read and write it changes with these: the trail says from what to what
            audit.record(session, actor, "dataset.update", f"dataset:{name}",
                         sharing={"from": before, "to": after} if before != after else None,
                         label_schema=label_schema is not None or None,
                         description=description is not None or None)
            return self._describe(dataset)

    def _check_schema_keeps_labels(self, session, dataset: Dataset, schema: dict) -> None:
        names = {c["name"] for c in schema["classes"]}
        for (packed,) in session.execute(select(DraftRecord.labels).where(and_(
                DraftRecord.dataset_id == dataset.id, DraftRecord.deleted.is_(False))).distinct()):
            missing = [label for label in unpack_labels(packed) if label not in names]
            if missing and names:
                raise Conflict(f"records still use labels {missing} that the new label schema "
                               "drops; relabel them first")

    def set_state(self, actor: Actor, name: str, state: str) -> dict:
        """Move through active -> published -> archived -> deleted (and back to active)."""
        if state not in STATES:
            raise InvalidInput(f"state must be one of {', '.join(STATES)}")
        with self.db.transaction() as session:
            dataset = self._managed(session, actor, name)
            if state not in TRANSITIONS[dataset.state]:
                raise Conflict(f"dataset {name!r} is {dataset.state}; it can go to "
                               f"{', '.join(sorted(TRANSITIONS[dataset.state]))}")
            if dataset.purged:
                raise Conflict(f"dataset {name!r} was deleted and garbage-collected; "
                               "it cannot be restored")
            session.add(DatasetStateChange(dataset_id=dataset.id, from_state=dataset.state,
                                           to_state=state, actor=actor.name, at=utcnow()))
            audit.record(session, actor, "dataset.state", f"dataset:{name}",
                         **{"from": dataset.state, "to": state})
            dataset.state, dataset.state_changed_by = state, actor.name
            dataset.state_changed_at = utcnow()
            return self._describe(dataset)

    def state_history(self, actor: Actor, name: str) -> list[dict]:
        with self.db.session() as session:
            dataset = self._readable(session, actor, name)
            rows = session.scalars(select(DatasetStateChange).where(
                DatasetStateChange.dataset_id == dataset.id).order_by(DatasetStateChange.id))
            return [{"from": r.from_state, "to": r.to_state, "by": r.actor,
                     "at": iso(r.at)} for r in rows]

    # -- upload and import -------------------------------------------------------------

    def upload(self, actor: Actor, stream: BinaryIO, *, max_bytes: int | None = None) -> dict:
        """Store an upload (streamed, size-limited) in the blob store; import it later by
        digest with ``import_blob``."""
        limit = min(max_bytes or self.max_upload_bytes, self.max_upload_bytes)
        try:
            info = self.blobs.put_stream(stream, max_bytes=limit)
        except BlobTooLarge as exc:
            raise TooLarge(str(exc)) from None
        with self.db.transaction() as session:
            versions.register_blobs(session, [info.digest], "upload")
            grants.grant(session, actor.name, [info.digest])
        return {"digest": info.digest, "size": info.size, "by": actor.name}

    def import_blob(self, actor: Actor, name: str, fmt: str, digest: str, *,
                    progress: Progress | None = None,
                    source_name: str | None = None) -> ImportReport:
        """Import an upload by digest (the actor's own, or one they can read)."""
        self.check_import(actor, name, digest)
        with self.blobs.open(digest) as stream:
            return self.import_data(actor, name, fmt, stream, progress=progress,
                                    source_name=source_name)

    def import_data(self, actor: Actor, name: str, fmt: str, source: str | os.PathLike | BinaryIO,
                    *, progress: Progress | None = None,
                    source_name: str | None = None) -> ImportReport:
        """Import a file, folder, zip or binary stream in format ``fmt`` into the draft.

        Every record is validated and its media stored before the one transaction that
        makes them visible; any error leaves the draft as it was.
        """
        progress = progress or _noop
        with self.db.session() as session:
            self._writable(session, actor, name)
        with tempfile.TemporaryDirectory(prefix="loophub-import-") as tmp:
            path = self._spool(source, Path(tmp)) if hasattr(source, "read") else Path(source)
            try:
                with read_dataset(fmt, path, validate=False) as bundle:
                    return self._import_bundle(actor, name, fmt, bundle, progress, str(path))
            except InvalidInput as exc:
                # errors name the user's file, not the server's temporary copy of it
                if source_name:
                    exc.message = exc.message.replace(str(path), source_name)
                    exc.args = (exc.message,)
                raise

    def _spool(self, stream: BinaryIO, folder: Path) -> Path:
        target = folder / "upload"
        written = 0
        with open(target, "wb") as out:
            while chunk := stream.read(1 << 20):
                written += len(chunk)
                if written > self.max_upload_bytes:
                    raise TooLarge(f"upload is larger than {self.max_upload_bytes} bytes; split "
                                   "it or ask an admin to raise the limit")
                out.write(chunk)
        return target

    def _import_bundle(self, actor: Actor, name: str, fmt: str, bundle: Bundle,
                       progress: Progress, source: str) -> ImportReport:
        with self.db.session() as session:
            current = self._readable(session, actor, name).label_schema
        schema, added = _merged_schema(current, bundle.label_schema, source)
        # An inferred schema's classes are learnt from the records as they are validated
        # (every label is one by construction), so the file is parsed once.
        validator = RecordValidator(schema, learn_classes=bundle.infer_classes)
        stored = 0
        media = bundle.media if isinstance(bundle.media, FolderMedia) else None
        media_digests: set[str] = set()
        referenced: set[str] = set()  # media digests records name without their bytes
        records = bundle.records  # streamed: a 1M-record file is never held in memory
        total = len(records) if isinstance(records, list) else 0  # 0: not known up front

        checked: set[str] = set()  # referenced digests the actor may use
        where = f"{source}: media.sha256"

        def vetted(window: list[dict], session) -> list[dict]:
            # before they are written: rows this import writes must not vouch for themselves
            self._check_media_refs(session, actor, referenced - checked - media_digests, where)
            checked.update(referenced)
            return window

        def prepared(session):
            nonlocal stored
            window: list[dict] = []
            for record in validated_records(records, validator, source, fmt):
                if media is not None and self._store_media(media, record, media_digests):
                    stored += 1
                elif digest := (record.get("media") or {}).get("sha256"):
                    referenced.add(digest)
                window.append(record)
                if len(window) >= 500:
                    yield from vetted(window, session)
                    window = []
            yield from vetted(window, session)

        packs = PackWriter(self.blobs)
        try:
            with self.db.transaction() as session:
                dataset = self._writable(session, actor, name)
                # a digest is a name, not a right: records may only name media the actor
                # sent or can read (checked a window at a time before the window is written;
                # refused: the whole import rolls back)
                count = draft.upsert_many(session, dataset.id, prepared(session), actor.name,
                                          lambda done: progress(done, total), packs)
                if bundle.infer_classes:  # every record passed: the classes are complete
                    # (the current ones among them: merging adds only what the dataset lacks)
                    schema, added = _merged_schema(
                        current, bundle.with_classes(validator.classes), source)
                if added:
                    dataset.label_schema = schema
        finally:
            # Registered either way: after a failed import the media and packs are orphans
            # that garbage collection may remove once the grace period is over.
            with self.db.transaction() as session:
                versions.register_blobs(session, media_digests, "media")
                grants.grant(session, actor.name, media_digests)
                versions.register_blobs(session, [d for d, _ in packs.written], "draft")
        return ImportReport(name, fmt, count, stored, added)

    def _store_media(self, media: FolderMedia, record: dict, digests: set[str]) -> bool:
        path = media.locate(record)
        if path is None:
            return False
        info = self.blobs.put_file(path)
        entry = record.setdefault("media", {})
        entry.update(sha256=info.digest, size=info.size)
        if path.suffix.lower() in MEDIA_TYPES:
            entry.setdefault("type", MEDIA_TYPES[path.suffix.lower()])
        if "width" not in entry and (size := image_size(path)):
            entry["width"], entry["height"] = size
        digests.add(info.digest)
        return True

    # -- records and annotations ---------------------------------------------------------

    def list_records(self, actor: Actor, name: str, *, label: str | None = None,
                     split: str | None = None, annotated: bool | None = None,
                     annotator: str | None = None, after: str | None = None, limit: int = 100,
                     with_total: bool = False, origin: str | None = None) -> RecordPage:
        """A page of draft records in id order; pass ``next_cursor`` as ``after`` for more.
        ORIGIN "production": only the inputs the feedback loop collected."""
        limit = max(1, min(limit, self.max_page))
        where = RecordFilter(label, split, annotated, annotator, origin)
        with self.db.session() as session:
            dataset = self._readable(session, actor, name)
            rows = draft.page(session, dataset.id, where, after, limit + 1)
            total = draft.count(session, dataset.id, where) if with_total else None
        more = len(rows) > limit
        rows = rows[:limit]
        return RecordPage([{"record": draft.to_record(r), "revision": r.revision} for r in rows],
                          rows[-1].record_id if more else None, total)

    def get_record(self, actor: Actor, name: str, record_id: str) -> dict:
        with self.db.session() as session:
            dataset = self._readable(session, actor, name)
            row = draft.get_row(session, dataset.id, record_id)
            return {"record": draft.to_record(row), "revision": row.revision,
                    "updated_by": row.updated_by, "updated_at": iso(row.updated_at)}

    def next_unlabeled(self, actor: Actor, name: str, *, after: str | None = None,
                       split: str | None = None, skip: Callable[[str], bool] | None = None
                       ) -> dict | None:
        """The next record without annotations (for labeling widgets). ``skip`` is the hook
        for item leases: return True for ids leased to someone else."""
        cursor = after
        while True:
            page = self.list_records(actor, name, annotated=False, split=split, after=cursor,
                                     limit=50)
            for item in page.records:
                if skip is None or not skip(item["record"]["id"]):
                    return item
            if page.next_cursor is None:
                return None
            cursor = page.next_cursor

    def put_record(self, actor: Actor, name: str, record: dict,
                   expected_revision: int | None = None) -> int:
        """Create a record (``expected_revision`` None) or replace it; the new revision."""
        if expected_revision is not None:
            _check_revision(expected_revision)
        with self.db.transaction() as session:
            dataset = self._writable(session, actor, name)
            RecordValidator(dataset.label_schema).validate(record, source=name)
            digest = (record.get("media") or {}).get("sha256")
            if digest:
                current = session.get(DraftRecord, (dataset.id, record["id"]))
                if current is None or current.media_sha != digest:
                    self._check_media_refs(session, actor, {digest}, "record.media.sha256")
            if expected_revision is not None:
                return draft.replace_record(session, dataset.id, record, expected_revision,
                                            actor.name)
            existing = session.get(DraftRecord, (dataset.id, record["id"]))
            if existing is not None and not existing.deleted:
                raise Conflict(f"record {record['id']!r} exists (revision {existing.revision});"
                               " pass that revision to replace it")
            draft.upsert_many(session, dataset.id, [record], actor.name)
            return session.get(DraftRecord, (dataset.id, record["id"])).revision

    def delete_record(self, actor: Actor, name: str, record_id: str,
                      expected_revision: int) -> None:
        _check_revision(expected_revision)
        with self.db.transaction() as session:
            dataset = self._writable(session, actor, name)
            draft.delete_record(session, dataset.id, record_id, expected_revision, actor.name)
            audit.record(session, actor, "dataset.record.delete", f"dataset:{name}",
                         record=record_id)

    def _edit(self, actor: Actor, name: str, record_id: str, expected_revision: int,
              change: Callable[[list[dict]], str | None]) -> dict:
        """Apply ``change`` to a record's annotations under optimistic concurrency."""
        _check_revision(expected_revision)
        with self.db.transaction() as session:
            dataset = self._writable(session, actor, name)
            row = draft.get_row(session, dataset.id, record_id)
            if row.revision != expected_revision:
                draft._raise_stale(session, dataset.id, record_id, expected_revision)
            record = draft.to_record(row)
            annotation_id = change(record["annotations"])
            RecordValidator(dataset.label_schema).validate(record, source=name)
            revision = draft.replace_record(session, dataset.id, record, expected_revision,
                                            actor.name)
            return {"revision": revision, "annotation_id": annotation_id}

    def add_annotation(self, actor: Actor, name: str, record_id: str, annotation: dict,
                       expected_revision: int) -> dict:
        """Append an annotation (made by the actor unless it names its source)."""
        annotation = dict(annotation)
        annotation.setdefault("id", uuid.uuid4().hex[:12])
        annotation.setdefault("source", {"kind": "user", "name": actor.name})
        annotation.setdefault("created", utcnow().isoformat())

        def change(annotations: list[dict]) -> str:
            annotations.append(annotation)
            return annotation["id"]
        return self._edit(actor, name, record_id, expected_revision, change)

    def update_annotation(self, actor: Actor, name: str, record_id: str, annotation_id: str,
                          annotation: dict, expected_revision: int) -> dict:
        def change(annotations: list[dict]) -> str:
            index = _annotation_index(annotations, record_id, annotation_id)
            annotations[index] = {**annotation, "id": annotation_id}
            return annotation_id
        return self._edit(actor, name, record_id, expected_revision, change)

    def delete_annotation(self, actor: Actor, name: str, record_id: str, annotation_id: str,
                          expected_revision: int) -> dict:
        def change(annotations: list[dict]) -> str:
            del annotations[_annotation_index(annotations, record_id, annotation_id)]
            return annotation_id
        return self._edit(actor, name, record_id, expected_revision, change)

    def review_annotation(self, actor: Actor, name: str, record_id: str, annotation_id: str,
                          state: str, expected_revision: int, comment: str = "") -> dict:
        """Accept or reject an annotation (review is part of the open format, not a paid tier)."""
        def change(annotations: list[dict]) -> str:
            ann = annotations[_annotation_index(annotations, record_id, annotation_id)]
            ann["review"] = {"state": state, "by": actor.name, "at": utcnow().isoformat()}
            if comment:
                ann["review"]["comment"] = comment
            return annotation_id
        return self._edit(actor, name, record_id, expected_revision, change)

    def assign_splits(self, actor: Actor, name: str, *, ratios: dict[str, float] | None = None,
                      seed: str = "0", stratify: bool = True) -> dict[str, int]:
        """Set every draft record's split deterministically (hash of id, stratified by label)."""
        with self.db.transaction() as session:
            dataset = self._writable(session, actor, name)
            rows = session.execute(select(DraftRecord.record_id, DraftRecord.labels).where(
                draft.filtered(dataset.id, RecordFilter()))).all()
            try:
                plan = assign_splits(((r.record_id, (unpack_labels(r.labels) or [None])[0])
                                      for r in rows), ratios, seed, stratify)
            except ValueError as exc:
                raise InvalidInput(str(exc)) from None

            def updated():
                for row in session.scalars(select(DraftRecord).where(
                        draft.filtered(dataset.id, RecordFilter()))).all():
                    record = draft.to_record(row)
                    if record.get("split") != plan[row.record_id]:
                        record["split"] = plan[row.record_id]
                        yield record
            draft.upsert_many(session, dataset.id, list(updated()), actor.name)
            audit.record(session, actor, "dataset.splits", f"dataset:{name}", seed=seed,
                         stratify=stratify)
        counts: dict[str, int] = {}
        for split in plan.values():
            counts[split] = counts.get(split, 0) + 1
        return counts

    # -- versions --------------------------------------------------------------------

    def commit(self, actor: Actor, name: str, message: str,
               progress: Progress | None = None) -> dict:
        with self.db.session() as session:
            dataset = self._writable(session, actor, name)
        result = versions.commit(self.db, self.blobs, dataset.id, actor.name, message, progress)
        with self.db.transaction() as session:
            audit.record(session, actor, "dataset.commit",
                         f"dataset:{name}/v{result.version.number}", added=result.added,
                         changed=result.changed, removed=result.removed)
        return {**self._version_info(result.version), "added": result.added,
                "changed": result.changed, "removed": result.removed}

    @staticmethod
    def _version_info(v: DatasetVersion, tags: list[str] | None = None) -> dict:
        return {"id": v.id, "number": v.number, "parents": v.parents, "author": v.author,
                "message": v.message, "created": iso(v.created),
                "records": v.record_count, "label_counts": v.label_counts,
                "stored_bytes": v.stored_bytes, "tags": tags or []}

    def _resolve(self, session, dataset: Dataset, ref: str | None) -> DatasetVersion:
        """A version by id, number ("3" or "v3"), tag, or "head"."""
        ref = "head" if ref in (None, "", "head") else str(ref)
        if ref == "head":
            if dataset.head_version is None:
                raise NotFound(f"dataset {dataset.name!r} has no versions yet; commit first")
            return session.get(DatasetVersion, dataset.head_version)
        found = None
        # ASCII digits only (str.isdigit() also takes '³', which int() refuses), and no
        # number past the column's range (SQLite cannot bind one past 2^63)
        if (number := VERSION_NUMBER.fullmatch(ref)) and int(number[1]) <= MAX_VERSION:
            found = session.scalars(select(DatasetVersion).where(and_(
                DatasetVersion.dataset_id == dataset.id,
                DatasetVersion.number == int(number[1])))).one_or_none()
        if found is None:
            tag = session.get(DatasetTag, (dataset.id, ref))
            found = session.get(DatasetVersion, tag.version_id if tag else ref)
        if found is None or found.dataset_id != dataset.id:
            raise NotFound(f"dataset {dataset.name!r} has no version, number or tag {ref!r}; "
                           "see the log")
        return found

    def log(self, actor: Actor, name: str, *, limit: int = 50) -> list[dict]:
        with self.db.session() as session:
            dataset = self._readable(session, actor, name)
            tags: dict[str, list[str]] = {}
            for tag in session.scalars(select(DatasetTag).where(
                    DatasetTag.dataset_id == dataset.id)):
                tags.setdefault(tag.version_id, []).append(tag.name)
            rows = session.scalars(select(DatasetVersion).where(
                DatasetVersion.dataset_id == dataset.id)
                .order_by(DatasetVersion.number.desc()).limit(limit))
            return [self._version_info(v, sorted(tags.get(v.id, []))) for v in rows]

    def diff(self, actor: Actor, name: str, base: str, target: str = "head", *,
             limit: int = 1000) -> dict:
        """Added, removed and changed record ids (first ``limit`` of each) and the change
        in label counts between two versions; ``target="draft"`` compares with the working
        draft (what a commit would store now)."""
        if base == "draft":
            raise InvalidInput("'draft' can only be the target of a diff: diff VERSION draft")
        to_draft = target == "draft"
        with self.db.session() as session:  # the draft is streamed from this session
            dataset = self._readable(session, actor, name)
            old = self._resolve(session, dataset, base)
            changes = versions.draft_changes(session, dataset) if to_draft else None
            new = self._resolve(session, dataset, "head" if to_draft else target)
            result = versions.diff(self.db, self.blobs, old, new, changes)
        out = result.summary()
        out.update(base_number=old.number, target_number=None if to_draft
                   else new.number, added_ids=result.added[:limit],
                   removed_ids=result.removed[:limit], changed_ids=result.changed[:limit])
        return out

    def tag(self, actor: Actor, name: str, tag: str, version: str = "head") -> dict:
        if not NAME.match(tag) or tag == "head" or tag.isdigit() or re.match(r"^v\d+$", tag):
            raise InvalidInput(f"tag {tag!r} must be a name (not 'head', a number or v<n>)")
        with self.db.transaction() as session:
            dataset = self._writable(session, actor, name)
            target = self._resolve(session, dataset, version)
            if session.get(DatasetTag, (dataset.id, tag)) is not None:
                raise Conflict(f"tag {tag!r} exists; delete it first to move it")
            session.add(DatasetTag(dataset_id=dataset.id, name=tag, version_id=target.id,
                                   created_by=actor.name, created=utcnow()))
            audit.record(session, actor, "dataset.tag", f"dataset:{name}/v{target.number}",
                         tag=tag)
            return {"tag": tag, "version": target.id, "number": target.number}

    def delete_tag(self, actor: Actor, name: str, tag: str) -> None:
        with self.db.transaction() as session:
            dataset = self._writable(session, actor, name)
            row = session.get(DatasetTag, (dataset.id, tag))
            if row is None:
                raise NotFound(f"dataset {name!r} has no tag {tag!r}")
            session.delete(row)
            audit.record(session, actor, "dataset.untag", f"dataset:{name}", tag=tag)

    def checkout(self, actor: Actor, name: str, version: str) -> dict:
        """Make the draft equal to ``version`` (uncommitted edits are replaced)."""
        with self.db.session() as session:
            dataset = self._writable(session, actor, name)
            target = self._resolve(session, dataset, version)
        with self.db.transaction() as session:
            dataset = self._writable(session, actor, name)
            wanted = set()

            def records():
                for data in versions.iter_records(self.db, self.blobs, target):
                    record = json.loads(data)
                    wanted.add(record["id"])
                    yield record
            draft.upsert_many(session, dataset.id, records(), actor.name)
            stale = [rid for rid in session.scalars(select(DraftRecord.record_id).where(
                draft.filtered(dataset.id, RecordFilter()))) if rid not in wanted]
            draft.delete_many(session, dataset.id, stale, actor.name)
            dataset.label_schema = target.label_schema
            audit.record(session, actor, "dataset.checkout", f"dataset:{name}/v{target.number}",
                         records=len(wanted), removed=len(stale))
        return {"version": target.id, "number": target.number, "records": len(wanted)}

    def revert(self, actor: Actor, name: str, version: str, message: str | None = None) -> dict:
        """A new version whose records equal ``version``'s (history is kept)."""
        info = self.checkout(actor, name, version)
        return self.commit(actor, name, message or f"revert to version {info['number']}")

    # -- export ----------------------------------------------------------------------

    def _bundle(self, session, dataset: Dataset, version: str) -> Bundle:
        if version == "draft":
            def records():
                with self.db.session() as inner:
                    rows = inner.scalars(select(DraftRecord.content).where(
                        draft.filtered(dataset.id, RecordFilter())).order_by(
                        draft.ordered_id(inner)).execution_options(yield_per=5000))
                    for content in rows:
                        yield json.loads(content)
            return Bundle(dataset.label_schema, records(), BlobMedia(self.blobs))
        target = self._resolve(session, dataset, version)
        records = (json.loads(data) for data in versions.iter_records(self.db, self.blobs,
                                                                       target))
        return Bundle(target.label_schema, records, BlobMedia(self.blobs))

    def _record_total(self, session, dataset: Dataset, version: str) -> int:
        if version == "draft":
            return 0  # not known without a count; progress shows records written
        return self._resolve(session, dataset, version).record_count

    def resolve_version(self, actor: Actor, name: str, ref: str) -> dict:
        """The committed version REF of a dataset ACTOR can read: id, number, label schema,
        record count (what a training job pins)."""
        if ref == "draft":
            raise InvalidInput("a committed version is needed here, not the draft; commit it")
        with self.db.session() as session:
            dataset = self._readable(session, actor, name)
            version = self._resolve(session, dataset, ref)
            return {"dataset": dataset.name, "id": version.id, "number": version.number,
                    "label_schema": version.label_schema, "records": version.record_count,
                    "task": (version.label_schema or {}).get("task", "")}

    def version_records(self, actor: Actor, name: str, version_id: str) -> Iterator[dict]:
        """The records of a committed version, streamed (ACTOR must read the dataset)."""
        with self.db.session() as session:
            dataset = self._readable(session, actor, name)
            bundle = self._bundle(session, dataset, version_id)
        return iter(bundle.records)

    def link_version(self, version_id: str, model_name: str, model_version: str, *,
                     relation: str = "trained_on", by: str) -> None:
        """Record that a model (or a training job) used a version, with the platform's own
        evidence (the job that read it): no permission is asked, since reading a version
        is what gave the right to train on it. Keeps the version from collection."""
        with self.db.transaction() as session:
            exists = session.scalars(select(DatasetLineage).where(and_(
                DatasetLineage.version_id == version_id,
                DatasetLineage.model_name == model_name,
                DatasetLineage.model_version == model_version,
                DatasetLineage.relation == relation))).first()
            if exists is None:
                session.add(DatasetLineage(version_id=version_id, model_name=model_name,
                                           model_version=model_version, relation=relation,
                                           created_by=by, created=utcnow()))

    def unlink_model(self, model_name: str, model_version: str) -> None:
        """A model version was deleted: its lineage rows go, and with them what kept the
        versions it used from collection (tags and other models still keep them)."""
        with self.db.transaction() as session:
            session.execute(delete(DatasetLineage).where(and_(
                DatasetLineage.model_name == model_name,
                DatasetLineage.model_version == model_version)))

    def materialize(self, actor: Actor, name: str, fmt: str, dst: str | os.PathLike, *,
                    version: str = "head") -> Path:
        """Write a version (or "draft") to the folder ``dst`` in format ``fmt``."""
        with self.db.session() as session:
            dataset = self._readable(session, actor, name)
            bundle = self._bundle(session, dataset, version)
        write_dataset(fmt, bundle, Path(dst))
        return Path(dst)

    def export(self, actor: Actor, name: str, fmt: str, *, version: str = "head",
               chunk_size: int = 1 << 20, progress: Progress | None = None,
               dense_ids: bool = False) -> Iterator[bytes]:
        """The export as a stream of byte chunks: JSONL for ``loophub``, a zip otherwise.
        Permission and version are checked before the first chunk; PROGRESS gets
        (records written, records in the version). ``dense_ids``: YOLO class indices
        0..n-1, the class ids kept in data.yaml (``write_dataset``)."""
        if dense_ids and fmt != "yolo":
            raise InvalidInput(f"dense ids apply to the yolo format, not {fmt}")
        with self.db.session() as session:
            dataset = self._readable(session, actor, name)
            bundle = self._bundle(session, dataset, version)
            total = self._record_total(session, dataset, version)
        if progress is not None:
            bundle = dataclasses.replace(bundle, records=_counted(bundle.records, total,
                                                                  progress))
        if fmt not in FORMATS:
            raise InvalidInput(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        if fmt == "loophub":
            return _jsonl_chunks(bundle, chunk_size)
        return _zip_chunks(fmt, bundle, chunk_size, dense_ids=dense_ids)

    # -- lineage, pins, garbage collection -------------------------------------------

    def record_lineage(self, actor: Actor, name: str, version: str, model_name: str,
                       model_version: str, relation: str = "trained_on") -> dict:
        """Note that a model version was trained (or evaluated) on a dataset version. Users
        need write access (a lineage entry is shown to the owner); the model rooms record
        what they trained on through the platform, with the job as evidence."""
        with self.db.transaction() as session:
            dataset = self._writable(session, actor, name)
            target = self._resolve(session, dataset, version)
            exists = session.scalars(select(DatasetLineage).where(and_(
                DatasetLineage.version_id == target.id, DatasetLineage.model_name == model_name,
                DatasetLineage.model_version == model_version,
                DatasetLineage.relation == relation))).first()
            if exists is None:
                session.add(DatasetLineage(version_id=target.id, model_name=model_name,
                                           model_version=model_version, relation=relation,
                                           created_by=actor.name, created=utcnow()))
            audit.record(session, actor, "dataset.lineage", f"dataset:{name}/v{target.number}",
                         model=model_name, model_version=model_version, relation=relation)
            return {"dataset": name, "version": target.id, "number": target.number,
                    "model": model_name, "model_version": model_version, "relation": relation}

    def models_trained_on(self, actor: Actor, name: str, version: str = "head") -> list[dict]:
        with self.db.session() as session:
            dataset = self._readable(session, actor, name)
            target = self._resolve(session, dataset, version)
            rows = session.scalars(select(DatasetLineage).where(
                DatasetLineage.version_id == target.id).order_by(DatasetLineage.id))
            return [{"model": r.model_name, "model_version": r.model_version,
                     "relation": r.relation, "by": r.created_by} for r in rows]

    def data_of_model(self, actor: Actor, model_name: str, model_version: str) -> list[dict]:
        """The dataset versions a model version was trained or evaluated on (readable ones)."""
        with self.db.session() as session:
            rows = session.execute(select(DatasetLineage, DatasetVersion, Dataset)
                                   .join(DatasetVersion,
                                         DatasetVersion.id == DatasetLineage.version_id)
                                   .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
                                   .where(and_(DatasetLineage.model_name == model_name,
                                               DatasetLineage.model_version == model_version,
                                               access.readable_filter(actor, Dataset))))
            return [{"dataset": d.name, "version": v.id, "number": v.number,
                     "relation": lin.relation} for lin, v, d in rows]

    def pin(self, actor: Actor, name: str, version: str, ref: str) -> dict:
        """Keep a version from garbage collection on behalf of ``ref`` (e.g. a release)."""
        with self.db.transaction() as session:
            dataset = self._readable(session, actor, name)
            target = self._resolve(session, dataset, version)
            if session.scalars(select(DatasetPin).where(and_(
                    DatasetPin.version_id == target.id, DatasetPin.ref == ref))).first() is None:
                session.add(DatasetPin(version_id=target.id, ref=ref, created_by=actor.name,
                                       created=utcnow()))
            return {"version": target.id, "ref": ref}

    def unpin(self, actor: Actor, name: str, version: str, ref: str) -> None:
        with self.db.transaction() as session:
            dataset = self._readable(session, actor, name)
            target = self._resolve(session, dataset, version)
            session.execute(delete(DatasetPin).where(and_(DatasetPin.version_id == target.id,
                                                          DatasetPin.ref == ref)))

    def collect_garbage(self, actor: Actor, *, grace_seconds: float = 3600,
                        dry_run: bool = False) -> dict:
        """Delete dataset blobs no live dataset, tag, lineage row or pin needs (admins)."""
        if not actor.admin:
            raise PermissionDenied("only hub admins can collect garbage")
        from loophub.datasets.gc import collect
        return collect(self.db, self.blobs, grace_seconds=grace_seconds, dry_run=dry_run)


def _check_revision(revision: int) -> None:
    """A revision a row can have: a whole number its 32-bit column can compare
    (PostgreSQL refuses a larger one as out of range, SQLite one past 2^63)."""
    if isinstance(revision, bool) or not isinstance(revision, int) or \
            not 0 <= revision <= MAX_REVISION:
        raise InvalidInput(f"revision {revision!r}: a whole number from 0 to {MAX_REVISION},"
                           " the revision you read", detail={"field": "revision"})


def _annotation_index(annotations: list[dict], record_id: str, annotation_id: str) -> int:
    for index, ann in enumerate(annotations):
        if ann.get("id") == annotation_id:
            return index
    raise NotFound(f"record {record_id!r} has no annotation {annotation_id!r}")


def merge_label_schemas(current: dict, incoming: dict) -> tuple[dict, list[str]]:
    """The current schema plus incoming classes it lacks (new ids after the largest)."""
    if not current.get("classes"):
        return incoming, [c["name"] for c in incoming.get("classes", ())]
    merged = json.loads(json.dumps(current))
    names = {c["name"] for c in merged["classes"]}
    next_id = max(c["id"] for c in merged["classes"]) + 1
    added = []
    for cls in incoming.get("classes", ()):
        if cls["name"] not in names:
            merged["classes"].append({**cls, "id": next_id})
            next_id += 1
            added.append(cls["name"])
    return merged, added


def _merged_schema(current: dict, incoming: dict, source: str) -> tuple[dict, list[str]]:
    """``merge_label_schemas`` of two checked schemas, the result checked too."""
    validate_label_schema(incoming, source=source)
    schema, added = merge_label_schemas(current, incoming)
    validate_label_schema(schema, source=source)
    return schema, added


class BlobMedia:
    """Media read from the blob store by the record's media.sha256."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs

    def open(self, record: dict):
        digest = (record.get("media") or {}).get("sha256")
        if digest and self.blobs.exists(digest):
            return self.blobs.open(digest)
        return None


def _jsonl_chunks(bundle: Bundle, chunk_size: int) -> Iterator[bytes]:
    from loophub.datasets.records import canonical_bytes
    buffer: list[bytes] = []
    size = 0
    for record in bundle.records:
        line = canonical_bytes(record) + b"\n"
        buffer.append(line)
        size += len(line)
        if size >= chunk_size:
            yield b"".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield b"".join(buffer)


def _counted(records, total: int, progress: Progress, every: int = 1000):
    done = 0
    for record in records:
        yield record
        done += 1
        if done % every == 0:
            progress(done, total)
    progress(done, total or done)


def _zip_chunks(fmt: str, bundle: Bundle, chunk_size: int, *,
                dense_ids: bool = False) -> Iterator[bytes]:
    with tempfile.TemporaryDirectory(prefix="loophub-export-") as tmp:
        folder = Path(tmp) / "export"
        write_dataset(fmt, bundle, folder, dense_ids=dense_ids)
        folder.mkdir(parents=True, exist_ok=True)  # a version without records wrote nothing
        (folder / "label_schema.json").write_text(json.dumps(bundle.label_schema, indent=2))
        archive = Path(tmp) / "export.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(folder).as_posix())
        shutil.rmtree(folder)
        with open(archive, "rb") as stream:
            while chunk := stream.read(chunk_size):
                yield chunk


__all__ = ["Actor", "DatasetService", "ImportReport", "RecordPage", "labels_of"]
