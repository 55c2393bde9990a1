"""Garbage collection of dataset blobs.

Roots: every version of a dataset that is not deleted, and any version (of any
dataset) that a tag, a lineage row (a model) or a pin (a release) references, plus
the media of live drafts and the packs their bulk-imported rows point into. Kept:
those versions' manifests, the packs and media their manifests point at, and the
chain of deltas back to a snapshot. Only blobs
the datasets room registered (dataset_blobs) and older than the grace period are
candidates, so other rooms' blobs and in-flight imports are never touched.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import and_, delete, select

from loophub.datasets.manifest import iter_changes
from loophub.datasets.models import (
    Dataset,
    DatasetBlob,
    DatasetLineage,
    DatasetPin,
    DatasetTag,
    DatasetVersion,
    DraftRecord,
)
from loophub.store.blobs import BlobStore
from loophub.store.db import Database
from loophub.store.models import utcnow


def _root_versions(session) -> set[str]:
    roots = set(session.scalars(select(DatasetVersion.id).join(
        Dataset, Dataset.id == DatasetVersion.dataset_id).where(Dataset.state != "deleted")))
    for model in (DatasetTag, DatasetLineage, DatasetPin):
        roots.update(session.scalars(select(model.version_id)))
    return roots


def _with_chains(session, roots: set[str]) -> list[DatasetVersion]:
    """The root versions and the versions their deltas build on, back to a snapshot."""
    seen: dict[str, DatasetVersion] = {}
    stack = list(roots)
    while stack:
        version = session.get(DatasetVersion, stack.pop())
        if version is None or version.id in seen:
            continue
        seen[version.id] = version
        if version.snapshot is None and version.parents:
            stack.append(version.parents[0])
    return list(seen.values())


def live_blobs(db: Database, blobs: BlobStore) -> set[str]:
    keep: set[str] = set()
    with db.session() as session:
        for version in _with_chains(session, _root_versions(session)):
            for digest in (version.delta, version.snapshot):
                if digest and digest not in keep:
                    keep.add(digest)
                    for change in iter_changes(blobs, digest):
                        if change.new is not None:
                            keep.add(change.new.pack)
                            if change.new.media:
                                keep.add(change.new.media)
        for column in (DraftRecord.media_sha, DraftRecord.pack):
            keep.update(session.scalars(select(column).distinct().join(
                Dataset, Dataset.id == DraftRecord.dataset_id).where(and_(
                    Dataset.state != "deleted", column.is_not(None)))).all())
    return keep


def collect(db: Database, blobs: BlobStore, *, grace_seconds: float = 3600,
            dry_run: bool = False) -> dict:
    keep = live_blobs(db, blobs)
    cutoff = utcnow() - timedelta(seconds=grace_seconds)
    with db.session() as session:
        owned = session.execute(select(DatasetBlob.digest, DatasetBlob.created)).all()
    doomed = [d for d, created in owned if d not in keep and _aware(created) <= cutoff]
    freed = 0
    if not dry_run:
        for digest in doomed:
            if blobs.exists(digest):
                freed += blobs.size(digest)
                blobs.delete(digest)
        with db.transaction() as session:
            for start in range(0, len(doomed), 500):
                session.execute(delete(DatasetBlob).where(
                    DatasetBlob.digest.in_(doomed[start:start + 500])))
            _purge_deleted(session)
    return {"kept": len(keep), "deleted": len(doomed), "freed_bytes": freed,
            "dry_run": dry_run}


def _purge_deleted(session) -> None:
    """Deleted datasets lose their drafts; they can no longer be restored."""
    for dataset in session.scalars(select(Dataset).where(and_(Dataset.state == "deleted",
                                                              Dataset.purged.is_(False)))):
        session.execute(delete(DraftRecord).where(DraftRecord.dataset_id == dataset.id))
        dataset.purged = True


def _aware(moment):
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)
