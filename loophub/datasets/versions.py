"""Commits, version reads, diffs: the draft turned into immutable manifests.

A commit streams the draft rows written since the last commit in id order, packs
their content, writes a delta manifest (and a snapshot every MAX_CHAIN versions)
and records the version, never holding the whole dataset in memory. Rows a bulk
import packed arrive as text and are listed a block of lines at a time; the others
(single edits, deletions, checkout writes) come in a second sorted stream, merged in.
"""

from __future__ import annotations

import gc
import uuid
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from operator import itemgetter

from sqlalchemy import and_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from loophub.datasets.manifest import (
    MAX_CHAIN,
    Change,
    Entry,
    ManifestWriter,
    PackReader,
    PackWriter,
    apply,
    compose,
    format_line,
    iter_changes,
    read_manifest_blocks,
    snapshot_entries,
    unescape,
)
from loophub.datasets.models import Dataset, DatasetBlob, DatasetVersion, DraftRecord
from loophub.datasets.records import unpack_labels
from loophub.errors import Conflict, InvalidInput, NotFound
from loophub.store.blobs import BlobStore
from loophub.store.db import Database
from loophub.store.models import utcnow

PENDING_LINES = 50_000


@dataclass
class CommitResult:
    version: DatasetVersion
    added: int = 0
    changed: int = 0
    removed: int = 0


def _locked_dataset(session, dataset_id: int) -> Dataset:
    """The dataset row, read after taking its lock: SQLite's write lock first (it has no
    FOR UPDATE; a row read before waiting for the lock may be a commit behind, which let
    two concurrent commits both pass the head check), FOR UPDATE elsewhere."""
    if session.bind.dialect.name == "sqlite":
        session.execute(update(Dataset).where(Dataset.id == dataset_id)
                        .values(seq=Dataset.seq).execution_options(synchronize_session=False))
    dataset = session.scalars(select(Dataset).where(Dataset.id == dataset_id).with_for_update()
                              .execution_options(populate_existing=True)).one_or_none()
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} does not exist")
    return dataset


def commit(db: Database, blobs: BlobStore, dataset_id: int, author: str, message: str,
           progress: Callable[[int, int], None] | None = None) -> CommitResult:
    with db.transaction() as session:  # waits for in-flight draft writes, then reads seq
        dataset = _locked_dataset(session, dataset_id)
        upto, since, parent_id = dataset.seq, dataset.committed_seq, dataset.head_version
        label_schema = dataset.label_schema
        parent = session.get(DatasetVersion, parent_id) if parent_id else None
    version_id = uuid.uuid4().hex
    delta = ManifestWriter(blobs, {"kind": "delta", "version": version_id, "parent": parent_id})
    # before the first version no row has a base (one is saved only for rows at or below
    # committed_seq, then 0): every line adds a record
    based = parent is not None
    writer = _DeltaWriter(PackWriter(blobs), delta, based)
    result, packs = writer.result, writer.packs
    manifests: list[str] = []
    try:
        with (_collector_paused(),
              closing(_changed_runs(db, dataset_id, since, upto, based)) as runs):
            _write_delta(writer, runs, progress)
        if parent and not (result.added or result.changed or result.removed):
            raise InvalidInput(f"nothing to commit: the draft equals version {parent.number}; "
                               "edit or import records first")
        delta_digest, delta_size = delta.close()
        manifests.append(delta_digest)
        counts = Counter(parent.label_counts if parent else {})
        for packed, number in writer.packed_counts.items():
            for label in unpack_labels(packed):
                counts[label] += number
        record_count = (parent.record_count if parent else 0) + result.added - result.removed
        snapshot, snapshot_size, chain = _maybe_snapshot(db, blobs, parent, delta_digest)
        manifests += [snapshot] if snapshot and snapshot != delta_digest else []
        version = DatasetVersion(
            id=version_id, dataset_id=dataset_id, parents=[parent_id] if parent_id else [],
            author=author, message=message, created=utcnow(), delta=delta_digest,
            snapshot=snapshot, chain=chain, record_count=record_count,
            label_schema=label_schema,
            label_counts={k: v for k, v in sorted(counts.items()) if v > 0},
            stored_bytes=delta_size + snapshot_size + sum(size for _, size in packs.written))
        _finish(db, blobs, dataset_id, parent_id, upto, version,
                [d for d, _ in packs.written] + manifests, writer.deleted_ids, writer.reused)
    except BaseException:
        # A commit that fails (someone else committed first, cancelled, nothing to commit)
        # leaves the packs and manifests it stored referenced by nothing: registered,
        # garbage collection removes them after its grace period (unregistered, nothing
        # would ever remove them).
        with db.transaction() as session:
            register_blobs(session, [d for d, _ in packs.written] + manifests, "draft")
        raise
    result.version = version
    return result


def _write_delta(writer: _DeltaWriter, runs: Iterable[list[tuple] | tuple],
                 progress: Callable[[int, int], None] | None) -> None:
    done = reported = 0
    for run in runs:
        if isinstance(run, list):  # rows an import packed, with no other row among them
            writer.listed(run)
            done += len(run)
        else:
            writer.row(*run)
            done += 1
        if progress and done - reported >= 10_000:
            progress(done, 0)
            reported = done
    writer.close()
    if progress and done > reported:
        progress(done, 0)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Fetched rows are tuples, which the cyclic garbage collector tracks: reading 1M
    of them set off over a thousand collections (about 5% of the commit). Tuples of strings
    and numbers make no cycles; reference counting frees them all the same."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# Rows an import packed, as the commit reads them (all text): without a parent
# (id, hash, labels, media, pack, offset, length); with one, the id is prefixed by its
# op and (base hash, base labels) follow, "" for none.
_FIRST, _LABELS, _PACK = itemgetter(0), itemgetter(2), itemgetter(4)
_BASE_HASH, _BASE_LABELS = itemgetter(7), itemgetter(8)


def _prefixed_id(row: tuple) -> str:
    return row[0][1:]


class _DeltaWriter:
    """Writes a commit's delta manifest in id order from runs of rows an import packed
    (only listed, a block at a time) and single rows it packs itself. Their lines wait
    (``pending``) until the pack is stored and has a digest, and whatever follows them
    waits too."""

    def __init__(self, packs: PackWriter, delta: ManifestWriter, based: bool) -> None:
        self.packs, self.delta, self.based = packs, delta, based
        self.record_id = _prefixed_id if based else _FIRST
        self.result = CommitResult(None)  # type: ignore[arg-type]
        self.packed_counts: Counter = Counter()  # label strings, expanded once at the end
        self.reused: set[str] = set()  # import packs this version lists
        self.deleted_ids: list[str] = []  # removed from the draft once the version exists
        # (first id, last id, lines, text) or, for a line whose pack is not stored yet,
        # (id, id, 1, (op, fields with the pack's number))
        self.pending: list[tuple[str, str, int, str | tuple]] = []
        self.pending_lines = 0

    def listed(self, rows: list[tuple]) -> None:
        """A run of packed rows in id order with no other changed row among them."""
        if self.based:
            text = "\n".join(map("\t".join, rows)) + "\n"
        else:  # every line adds a record: "+" and no old hash or labels
            text = "+" + "\t\t\n+".join(map("\t".join, rows)) + "\t\t\n"
        # only ids and labels are free text (hashes, digests and numbers are ours, media
        # digests are validated hex): if none holds a tab, newline, carriage return or
        # backslash, the run needs no escaping (else format it line by line)
        free_text = "".join(map(_FIRST, rows)) + "".join(map(_LABELS, rows))
        if self.based:
            free_text += "".join(map(_BASE_LABELS, rows))
        if "\t" in free_text or "\n" in free_text or "\\" in free_text or "\r" in free_text:
            text = "".join(map(self._escaped_line, rows))
        # a whole run may wait: no pack is added within it, so the commit's packs end
        # where they would if its lines had waited one by one
        self._emit((self.record_id(rows[0]), self.record_id(rows[-1]), len(rows), text))
        # C-level passes over the run (itemgetter, Counter, set), no Python loop per row
        added = list(map(_BASE_HASH, rows)).count("") if self.based else len(rows)
        self.result.added += added
        self.result.changed += len(rows) - added
        self.packed_counts.update(map(_LABELS, rows))  # "" expands to no label
        if added < len(rows):  # Counter.subtract loops in Python: count in C, subtract once
            old = Counter(map(_BASE_LABELS, rows))
            del old[""]  # no base (added) or no label
            self.packed_counts.subtract(old)
        self.reused.update(map(_PACK, rows))

    def _escaped_line(self, row: tuple) -> str:
        op, rid = (row[0][0], row[0][1:]) if self.based else ("+", row[0])
        hash_, labels, media, pack, offset, length = row[1:7]
        entry = Entry(rid, hash_, labels, media, pack, int(offset), int(length))
        return format_line(op, entry, rid, *row[7:9])

    def row(self, rid, hash_, labels, media, base_hash, base_labels, content, deleted) -> None:
        """A row no import packed: an edit, a deletion, a checkout's write."""
        op = _operation(deleted, hash_, base_hash)
        if deleted:
            self.deleted_ids.append(rid)
        if op is None:
            return
        if base_labels:
            self.packed_counts[base_labels] -= 1
        if op == "-":
            self.result.removed += 1
            self._emit((rid, rid, 1, format_line("-", None, rid, base_hash, base_labels or "")))
            return
        self.result.added += op == "+"
        self.result.changed += op == "~"
        if labels:
            self.packed_counts[labels] += 1
        closed_before = len(self.packs.written)
        number, offset, length = self.packs.add(content.encode())
        self.pending.append((rid, rid, 1, (op, hash_, labels, media or "", number, offset,
                                           length, base_hash or "", base_labels or "")))
        self.pending_lines += 1
        if len(self.packs.written) > closed_before:  # stored: the waiting lines can go out
            self._flush_pending()

    def _emit(self, lines: tuple[str, str, int, str]) -> None:
        if not self.pending:
            self._write(*lines)
            return
        self.pending.append(lines)
        self.pending_lines += lines[2]
        if self.pending_lines > PENDING_LINES:  # bounded memory when edits interleave
            self.packs.flush()  # with rows a bulk import packed
            self._flush_pending()

    def _write(self, first_id: str, last_id: str, count: int, text: str) -> None:
        if count == 1:  # buffered: a block per line would compress line by line
            self.delta.write(text, first_id)
        else:
            self.delta.write_block(text, first_id, last_id, count)

    def _flush_pending(self) -> None:
        for first_id, last_id, count, text in self.pending:
            if not isinstance(text, str):
                op, hash_, labels, media, number, offset, length, old_hash, old_labels = text
                entry = Entry(first_id, hash_, labels, media, self.packs.written[number][0],
                              offset, length)
                text = format_line(op, entry, first_id, old_hash, old_labels)
            self._write(first_id, last_id, count, text)
        self.pending.clear()
        self.pending_lines = 0

    def close(self) -> None:
        self.packs.flush()
        self._flush_pending()


def _operation(deleted: bool, hash_: str, base_hash: str | None) -> str | None:
    """What a row not packed by an import does to the head: add, change, remove, nothing."""
    if deleted:
        return "-" if base_hash is not None else None
    if base_hash is None:
        return "+"
    return "~" if hash_ != base_hash else None


def _changed_runs(db: Database, dataset_id: int, since: int, upto: int, based: bool
                  ) -> Iterator[list[tuple] | tuple]:
    """Draft rows written in (since, upto], in code-point id order, read from one
    snapshot as two sorted streams merged here: runs (lists) of rows an import packed,
    all text, in the shape ``_DeltaWriter.listed`` takes (``based``: the head exists),
    leaving out those equal to the head; and single rows (tuples) no import packed:
    (id, hash, labels, media, base_hash, base_labels, content, deleted). Plain DB-API
    cursors: the ORM's row objects cost a third of a 1M-record commit, and each column
    of a row costs, so packed rows bring only what their lines need."""
    postgres = db.engine.dialect.name == "postgresql"
    params = (dataset_id, since, upto)
    raw = db.engine.raw_connection()
    try:
        # both streams must see the same rows (PostgreSQL reads a snapshot per statement)
        raw.cursor().execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ" if postgres
                             else "BEGIN")
        packed = _cursor(raw, postgres, "loophub_packed", _packed_sql(postgres, since, based),
                         params)
        unpacked = _cursor(raw, postgres, "loophub_unpacked", _unpacked_sql(postgres), params)
        batches = iter(lambda: packed.fetchmany(10_000), [])
        yield from _merged(batches, iter(unpacked), _prefixed_id if based else _FIRST)
    finally:
        raw.rollback()
        raw.close()


def _cursor(raw, postgres: bool, name: str, sql: str, params: tuple):
    cursor = raw.cursor(name=name) if postgres else raw.cursor()  # streamed, not fetched
    if postgres:
        cursor.itersize = 10_000
    cursor.execute(sql, params)
    return cursor


def _range(postgres: bool, seq: str = "seq") -> str:
    mark = "%s" if postgres else "?"
    return f"FROM dataset_records WHERE dataset_id = {mark} AND {seq} > {mark} AND {seq} <= {mark}"


def _ordered(postgres: bool) -> str:
    return ' ORDER BY record_id COLLATE "C"' if postgres else " ORDER BY record_id"


def _packed_sql(postgres: bool, since: int, based: bool) -> str:
    # The first commit reads every row: walking the primary key in id order beats
    # SQLite's plan (the seq index, then sorting every row). PostgreSQL plans on stats.
    seq = "+seq" if since == 0 and not postgres else "seq"
    head = ("CASE WHEN base_hash IS NULL THEN '+' ELSE '~' END || record_id" if based
            else "record_id")
    tail = ", coalesce(base_hash, ''), coalesce(base_labels, '')" if based else ""
    return (f"SELECT {head}, hash, labels, coalesce(media_sha, ''), pack, "
            f"CAST(pack_offset AS TEXT), CAST(pack_length AS TEXT){tail} "
            f"{_range(postgres, seq)} AND pack IS NOT NULL "
            "AND (base_hash IS NULL OR base_hash <> hash)" + _ordered(postgres))


def _unpacked_sql(postgres: bool) -> str:
    # served by the partial index ix_dataset_records_unpacked: cheap when there are none
    return ("SELECT record_id, hash, labels, media_sha, base_hash, base_labels, content, "
            f"deleted {_range(postgres)} AND pack IS NULL" + _ordered(postgres))


def _merged(packed: Iterable[list[tuple]], unpacked: Iterator[tuple],
            record_id: Callable[[tuple], str]) -> Iterator[list[tuple] | tuple]:
    """Merge batches of packed rows with unpacked rows (no id is in both) by id: the
    batches are cut only where an unpacked row falls inside one."""
    edit = next(unpacked, None)
    for batch in packed:
        start = 0
        while edit is not None:
            end = bisect_left(batch, edit[0], start, key=record_id)
            if end == len(batch):
                break
            if end > start:
                yield batch[start:end]
            yield edit
            edit, start = next(unpacked, None), end
        if start < len(batch):
            yield batch[start:] if start else batch
    if edit is not None:
        yield edit
        yield from unpacked


def _maybe_snapshot(db, blobs, parent: DatasetVersion | None, delta_digest: str):
    if parent is None:  # a first delta has only additions: it is a snapshot already
        return delta_digest, 0, 0
    if parent.chain + 1 < MAX_CHAIN:
        return None, 0, parent.chain + 1
    writer = ManifestWriter(blobs, {"kind": "snapshot"})
    changes = {c.record_id: c for c in iter_changes(blobs, delta_digest)}
    for entry in apply(iter_entries(db, blobs, parent), changes):
        writer.write(format_line("+", entry, entry.record_id), entry.record_id)
    digest, size = writer.close()
    return digest, size, 0


def _finish(db, blobs, dataset_id, parent_id, upto, version, digests, deleted_ids,
            reused) -> None:
    """Record the version; rows up to ``upto`` become clean by ``committed_seq`` alone.
    Packs an import wrote count in the stored bytes of the first version to list them."""
    with db.transaction() as session:
        dataset = _locked_dataset(session, dataset_id)
        if dataset.head_version != parent_id:
            raise Conflict("someone else committed this dataset while you did; commit again "
                           "(your draft changes are kept)")
        version.number = dataset.version_count + 1
        for start in range(0, len(reused), 500):
            for row in session.scalars(select(DatasetBlob).where(and_(
                    DatasetBlob.digest.in_(sorted(reused)[start:start + 500]),
                    DatasetBlob.kind == "draft"))):
                version.stored_bytes += blobs.size(row.digest)
                row.kind = "version"
        session.add(version)
        dataset.head_version, dataset.committed_seq = version.id, upto
        dataset.version_count += 1
        register_blobs(session, digests, "version")
        for start in range(0, len(deleted_ids), 1000):
            # seq + 0: by the seq index, SQLite would walk every committed row to find these
            session.execute(DraftRecord.__table__.delete().where(and_(
                DraftRecord.dataset_id == dataset_id, DraftRecord.seq + 0 <= upto,
                DraftRecord.deleted, DraftRecord.record_id.in_(deleted_ids[start:start + 1000]))))
    _fix_bases_written_during_commit(db, blobs, dataset_id, upto, version)


def _fix_bases_written_during_commit(db, blobs, dataset_id: int, upto: int, version) -> None:
    """Rows edited after the commit read them keep their new content, but their base
    must be what the commit stored, or the next delta would misreport them (the edit
    saw them as not yet committed and kept the older base)."""
    with db.transaction() as session:
        late = set(session.scalars(select(DraftRecord.record_id).where(and_(
            DraftRecord.dataset_id == dataset_id, DraftRecord.seq > upto))))
    if not late:
        return
    with db.transaction() as session:
        for change in iter_changes(blobs, version.delta):
            if change.record_id in late:
                session.execute(update(DraftRecord).where(and_(
                    DraftRecord.dataset_id == dataset_id,
                    DraftRecord.record_id == change.record_id)).values(
                    base_hash=change.new.hash if change.new else None,
                    base_labels=change.new.labels if change.new else None))


def register_blobs(session, digests, kind: str) -> None:
    """Make DIGESTS the datasets room's (garbage collection candidates once no version
    or draft needs them); content already registered restarts its grace period. One
    upsert, so two requests storing the same bytes at once (two uploads of one file)
    do not collide on the key."""
    now = utcnow()
    rows = [{"digest": d, "kind": kind, "created": now} for d in sorted(set(digests))]
    if not rows:
        return
    session.flush()  # the ORM's pending changes to these rows go first
    insert = pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
    for start in range(0, len(rows), 300):
        stmt = insert(DatasetBlob).values(rows[start:start + 300])
        session.execute(stmt.on_conflict_do_update(index_elements=["digest"],
                                                   set_={"created": stmt.excluded.created}))


# -- reading versions --------------------------------------------------------------

def chain_to_snapshot(db: Database, version: DatasetVersion) -> list[DatasetVersion]:
    """[snapshot version, ..., version] following first parents."""
    path = [version]
    with db.session() as session:
        while path[-1].snapshot is None:
            parent = session.get(DatasetVersion, path[-1].parents[0])
            path.append(parent)
    path.reverse()
    return path


def iter_entries(db: Database, blobs: BlobStore, version: DatasetVersion) -> Iterator[Entry]:
    """The version's manifest entries in id order, streamed from its snapshot + deltas."""
    path = chain_to_snapshot(db, version)
    combined = compose(iter_changes(blobs, v.delta) for v in path[1:])
    return apply(snapshot_entries(blobs, path[0].snapshot), combined)


def iter_records(db: Database, blobs: BlobStore, version: DatasetVersion) -> Iterator[bytes]:
    """Canonical JSON of every record of the version, in id order."""
    reader = PackReader(blobs)
    for entry in iter_entries(db, blobs, version):
        yield reader.read(entry)


# -- diff --------------------------------------------------------------------------

@dataclass
class Diff:
    base: str
    target: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    label_change: dict[str, int] = field(default_factory=dict)
    method: str = "delta"

    def summary(self) -> dict:
        return {"base": self.base, "target": self.target, "added": len(self.added),
                "removed": len(self.removed), "changed": len(self.changed),
                "label_change": self.label_change, "method": self.method}


def _first_parent_path(db: Database, base: DatasetVersion, target: DatasetVersion,
                       limit: int = 64) -> list[DatasetVersion] | None:
    """Versions after ``base`` up to ``target`` if base is a first-parent ancestor."""
    path = []
    with db.session() as session:
        current = target
        while current is not None and current.id != base.id and len(path) < limit:
            path.append(current)
            current = session.get(DatasetVersion, current.parents[0]) if current.parents else None
    if current is None or current.id != base.id:
        return None
    path.reverse()
    return path


def diff(db: Database, blobs: BlobStore, base: DatasetVersion, target: DatasetVersion,
         draft: Iterable[Change] | None = None) -> Diff:
    """Records added, removed and changed from ``base`` to ``target``; with ``draft`` (the
    uncommitted changes on top of ``target``, the head, in id order) to the working draft."""
    counts = Counter(target.label_counts)
    counts.subtract(base.label_counts)
    result = Diff(base.id, "draft" if draft is not None else target.id)
    on_top = [_counting_labels(draft, counts)] if draft is not None else []
    _diff_into(result, db, blobs, base, target, on_top)
    result.label_change = {k: v for k, v in sorted(counts.items()) if v}
    return result


def _diff_into(result: Diff, db: Database, blobs: BlobStore, base: DatasetVersion,
               target: DatasetVersion, on_top: list[Iterable[Change]]) -> None:
    path = _first_parent_path(db, base, target)
    if path == [] and on_top:  # the head against the draft: streamed, nothing composed
        for change in on_top[0]:
            _classify(result, change)
    elif path is not None:
        combined = compose([*(iter_changes(blobs, v.delta) for v in path), *on_top])
        for record_id in sorted(combined):
            _classify(result, combined[record_id])
    else:
        base_path, target_path = chain_to_snapshot(db, base), chain_to_snapshot(db, target)
        if base_path[0].id == target_path[0].id:  # same snapshot: compare the delta chains
            result.method = "deltas"
            _changes_diff(result, _path_changes(blobs, base_path),
                          _path_changes(blobs, target_path, on_top))
        else:
            result.method = "merge"
            _merge_diff(result, blobs, base_path, target_path, on_top)


def _counting_labels(changes: Iterable[Change], counts: Counter) -> Iterator[Change]:
    """``changes``, adding each one's label-count change to ``counts`` as it passes."""
    for change in changes:
        if change.new is not None:
            counts.update(unpack_labels(change.new.labels))
        counts.subtract(unpack_labels(change.old_labels))
        yield change


def draft_changes(session, dataset: Dataset) -> Iterator[Change]:
    """What committing now would change against the head (``dataset.head_version``), in
    code-point id order, streamed from the caller's session (read lazily: consume it
    before the session closes). New entries name no pack: their records are not in a
    version yet."""
    postgres = session.bind.dialect.name == "postgresql"
    order = DraftRecord.record_id.collate("C") if postgres else DraftRecord.record_id
    rows = session.execute(select(
        DraftRecord.record_id, DraftRecord.hash, DraftRecord.labels, DraftRecord.media_sha,
        DraftRecord.deleted, DraftRecord.base_hash, DraftRecord.base_labels).where(and_(
            DraftRecord.dataset_id == dataset.id, DraftRecord.seq > dataset.committed_seq,
            DraftRecord.seq <= dataset.seq)).order_by(order).execution_options(
                yield_per=10_000))
    for rid, hash_, labels, media, deleted, base_hash, base_labels in rows:
        op = _operation(deleted, hash_, base_hash)
        if op is not None:
            new = None if op == "-" else Entry(rid, hash_, labels, media or "", "", 0, 0)
            yield Change(op, rid, new, base_hash or "", base_labels or "")


def _path_changes(blobs: BlobStore, path: list[DatasetVersion],
                  on_top: Sequence[Iterable[Change]] = ()) -> dict[str, Change]:
    """The deltas of a snapshot path (and changes ``on_top``) folded into one."""
    return compose([*(iter_changes(blobs, v.delta) for v in path[1:]), *on_top])


def _changes_diff(result: Diff, old: dict[str, Change], new: dict[str, Change],
                  old_lines: dict[str, str] | None = None,
                  new_lines: dict[str, str] | None = None) -> None:
    """Two sides, each changes over a snapshot. The snapshots are one, or differ only
    in the {id: hash} of ``old_lines`` and ``new_lines``: every other id is equal on
    both sides but for the changes."""
    old_lines, new_lines = old_lines or {}, new_lines or {}

    def state(changes: dict[str, Change], other: dict[str, Change], lines: dict[str, str],
              other_lines: dict[str, str], record_id: str) -> str | None:
        change = changes.get(record_id)
        if change is not None:
            return change.new.hash if change.new else None
        if record_id in lines or record_id in other_lines:
            return lines.get(record_id)
        first = other[record_id]  # the same line in both snapshots: the other's first state
        return None if first.op == "+" else first.old_hash
    for record_id in sorted(old.keys() | new.keys() | old_lines.keys() | new_lines.keys()):
        a = state(old, new, old_lines, new_lines, record_id)
        b = state(new, old, new_lines, old_lines, record_id)
        if a is None and b is not None:
            result.added.append(record_id)
        elif b is None and a is not None:
            result.removed.append(record_id)
        elif a != b:
            result.changed.append(record_id)


def _merge_diff(result: Diff, blobs: BlobStore, old: list[DatasetVersion],
                new: list[DatasetVersion], on_top: Sequence[Iterable[Change]] = ()) -> None:
    """Two versions on different snapshots (their snapshot paths; ``new`` with changes
    ``on_top``): the snapshots' differences, then the deltas laid over them."""
    differences = _snapshot_differences(read_manifest_blocks(blobs, old[0].snapshot)[1],
                                        read_manifest_blocks(blobs, new[0].snapshot)[1])
    _changes_diff(result, _path_changes(blobs, old), _path_changes(blobs, new, on_top),
                  *differences)


def _snapshot_differences(old: Iterator[list[str]], new: Iterator[list[str]]
                          ) -> tuple[dict[str, str], dict[str, str]]:
    """{id: hash} of the lines only one snapshot has (given as blocks of lines). A
    record that did not change between them has the same line in both, so they are
    compared a window of ids at a time as whole lines, in C (list equality, else set
    difference), and only the lines that differ are parsed. Memory: a window and the
    differences."""
    only_old: dict[str, str] = {}
    only_new: dict[str, str] = {}
    for old_lines, new_lines in _windows(old, new):
        if old_lines != new_lines:
            a, b = set(old_lines), set(new_lines)
            only_old.update(map(_id_and_hash, a - b))
            only_new.update(map(_id_and_hash, b - a))
    return only_old, only_new


def _windows(old: Iterator[list[str]], new: Iterator[list[str]]
             ) -> Iterator[tuple[list[str], list[str]]]:
    """The blocks of lines of two manifests, cut so that each pair covers the same ids."""
    a, b = next(old, []), next(new, [])
    while a or b:
        if not (a and b):  # one manifest is done
            yield a, b
            a, b = next(old, []), next(new, [])
        elif _line_id(a[-1]) <= _line_id(b[-1]):
            cut = bisect_right(b, _line_id(a[-1]), key=_line_id)
            yield a, b[:cut]
            a, b = next(old, []), b[cut:] or next(new, [])
        else:
            cut = bisect_right(a, _line_id(b[-1]), key=_line_id)
            yield a[:cut], b
            a, b = a[cut:] or next(old, []), next(new, [])


def _line_id(line: str) -> str:
    return unescape(line[1:line.index("\t")])


def _id_and_hash(line: str) -> tuple[str, str]:
    head, hash_, _ = line.split("\t", 2)
    return unescape(head[1:]), hash_


def _classify(result: Diff, change: Change) -> None:
    if change.op == "+":
        result.added.append(change.record_id)
    elif change.op == "-":
        result.removed.append(change.record_id)
    elif change.new.hash != change.old_hash:
        result.changed.append(change.record_id)
