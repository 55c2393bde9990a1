"""Version storage beyond the service: snapshots every MAX_CHAIN versions, reads and
diffs across snapshots, garbage collection around pins, and the delta manifest a commit
writes from mixed drafts."""

from __future__ import annotations

import io
import json

import pytest
from sqlalchemy import select

from loophub.datasets import manifest, versions
from loophub.datasets.manifest import Entry
from loophub.datasets.models import Dataset, DatasetBlob, DatasetVersion, DraftRecord
from loophub.datasets.service import Actor
from loophub.errors import InvalidInput, NotFound

ADMIN = Actor("root", admin=True)


def records(n: int, generation: dict[int, int]) -> bytes:
    return "".join(json.dumps({"id": f"r{i:03d}", "text": f"v{generation.get(i, 0)}",
                               "annotations": [{"type": "text_class",
                                                "label": f"c{generation.get(i, 0) % 3}"}]})
                   + "\n" for i in range(n) if generation.get(i, 0) >= 0).encode()


def version(service, number: int) -> DatasetVersion:
    with service.db.session() as session:
        return session.scalars(select(DatasetVersion).where(
            DatasetVersion.number == number)).one()


def test_snapshots_every_max_chain_and_reads_across_them(service, alice, monkeypatch):
    monkeypatch.setattr(versions, "MAX_CHAIN", 3)
    service.create_dataset(alice, "chain")
    generation: dict[int, int] = {}
    expected = {}
    for number in range(1, 8):
        if number > 1:
            generation.update({number * 3: number, number * 3 + 1: number})
            generation[40 + number] = number  # a new record each time
            if number == 5:
                service.delete_record(alice, "chain", "r003", service.get_record(
                    alice, "chain", "r003")["revision"])
                generation[3] = -1
        data = records(48, generation)
        service.import_data(alice, "chain", "loophub", io.BytesIO(data))
        service.commit(alice, "chain", f"v{number}")
        expected[number] = sorted(json.loads(line)["id"] for line in data.splitlines())
    kinds = [(version(service, n).chain, version(service, n).snapshot is not None)
             for n in range(1, 8)]
    assert kinds == [(0, True), (1, False), (2, False), (0, True), (1, False), (2, False),
                     (0, True)]
    for number in range(1, 8):
        got = [json.loads(data)["id"] for data in versions.iter_records(
            service.db, service.blobs, version(service, number))]
        assert got == expected[number]
    across = versions.diff(service.db, service.blobs, version(service, 2), version(service, 6))
    stepwise = service.diff(alice, "chain", "v2", "v6")
    assert across.method == "delta"  # an ancestor: folds the deltas
    sibling = versions.Diff("a", "b")
    versions._merge_diff(sibling, service.blobs, *(versions.chain_to_snapshot(
        service.db, version(service, n)) for n in (2, 6)))
    assert (sibling.added, sibling.removed, sibling.changed) == (
        across.added, across.removed, across.changed)
    assert stepwise["removed_ids"] == ["r003"]


def test_gc_keeps_pinned_versions_of_deleted_datasets(service, alice, tmp_path):
    service.create_dataset(alice, "released")
    service.import_data(alice, "released", "loophub", io.BytesIO(records(10, {})))
    service.commit(alice, "released", "v1")
    service.pin(alice, "released", "v1", "release:sentiment-1")
    service.set_state(alice, "released", "deleted")
    service.collect_garbage(ADMIN, grace_seconds=0)
    service.materialize(ADMIN, "released", "jsonl", tmp_path / "out", version="v1")
    assert len((tmp_path / "out/data.jsonl").read_text().splitlines()) == 10
    service.unpin(ADMIN, "released", "v1", "release:sentiment-1")
    assert service.collect_garbage(ADMIN, grace_seconds=0)["deleted"] >= 2
    with pytest.raises(Exception, match=r"[0-9a-f]{64}"):
        service.materialize(ADMIN, "released", "jsonl", tmp_path / "gone", version="v1")


def _text(record_id: str, text: str) -> dict:
    return {"id": record_id, "text": text,
            "annotations": [{"type": "text_class", "label": text[:2]}]}


def _ids_and_texts(service, number: int) -> dict[str, str]:
    return {json.loads(data)["id"]: json.loads(data)["text"] for data in versions.iter_records(
        service.db, service.blobs, version(service, number))}


def test_edits_made_while_a_commit_runs_go_to_the_next_version(service, alice, monkeypatch):
    """A commit stores what it read; edits that land meanwhile (to rows it stored, to
    clean rows, deletions of rows it added) are diffed against what it stored."""
    service.create_dataset(alice, "busy")
    for i in range(3):
        service.put_record(alice, "busy", _text(f"r{i}", "aa"))
    service.commit(alice, "busy", "v1")
    service.put_record(alice, "busy", _text("r0", "bb"),
                       service.get_record(alice, "busy", "r0")["revision"])
    service.put_record(alice, "busy", _text("r3", "aa"))
    reading = versions._changed_runs

    def rows_then_edits(*args):
        yield from reading(*args)
        revision = service.get_record(alice, "busy", "r0")["revision"]
        service.put_record(alice, "busy", _text("r0", "cc"), revision)  # stored by this commit
        revision = service.get_record(alice, "busy", "r1")["revision"]
        service.put_record(alice, "busy", _text("r1", "dd"), revision)  # clean row
        service.delete_record(alice, "busy", "r3",
                              service.get_record(alice, "busy", "r3")["revision"])
    monkeypatch.setattr(versions, "_changed_runs", rows_then_edits)
    service.commit(alice, "busy", "v2")
    monkeypatch.setattr(versions, "_changed_runs", reading)
    assert _ids_and_texts(service, 2) == {"r0": "bb", "r1": "aa", "r2": "aa", "r3": "aa"}
    second = service.diff(alice, "busy", "v1", "v2")
    assert (second["added_ids"], second["changed_ids"], second["removed_ids"]) == (
        ["r3"], ["r0"], [])
    assert service.get_dataset(alice, "busy")["uncommitted"]
    service.commit(alice, "busy", "v3")
    assert _ids_and_texts(service, 3) == {"r0": "cc", "r1": "dd", "r2": "aa"}
    third = service.diff(alice, "busy", "v2", "v3")
    assert (third["added_ids"], third["changed_ids"], third["removed_ids"]) == (
        [], ["r0", "r1"], ["r3"])
    assert third["label_change"] == {"aa": -2, "bb": -1, "cc": 1, "dd": 1}
    with pytest.raises(Exception, match="nothing to commit"):
        service.commit(alice, "busy", "v4")
    # an edit back to the committed content is no change at all
    service.put_record(alice, "busy", _text("r2", "zz"),
                       service.get_record(alice, "busy", "r2")["revision"])
    service.put_record(alice, "busy", _text("r2", "aa"),
                       service.get_record(alice, "busy", "r2")["revision"])
    with pytest.raises(Exception, match="nothing to commit"):
        service.commit(alice, "busy", "v4")



def _registered(service, kind: str | None = None) -> set[str]:
    with service.db.session() as session:
        stmt = select(DatasetBlob.digest)
        if kind is not None:
            stmt = stmt.where(DatasetBlob.kind == kind)
        return set(session.scalars(stmt))


def test_a_commit_lists_the_packs_a_bulk_import_wrote(service, alice, monkeypatch):
    """Imported content is packed once, at import; the commit only lists it, counts its
    bytes once, and a re-import of unchanged records packs nothing more."""
    service.create_dataset(alice, "bulk")
    service.import_data(alice, "bulk", "loophub", io.BytesIO(records(40, {})))
    imported = _registered(service, "draft")
    assert imported
    first = service.commit(alice, "bulk", "v1")
    assert _registered(service, "draft") == set()  # the packs now belong to a version
    assert first["stored_bytes"] >= sum(service.blobs.size(d) for d in imported)
    service.import_data(alice, "bulk", "loophub", io.BytesIO(records(40, {})))
    assert _registered(service) == _registered(service, "version")  # nothing new packed
    # edits and imported rows interleaved in id order, with tiny pending batches
    monkeypatch.setattr(versions, "PENDING_LINES", 2)
    service.import_data(alice, "bulk", "loophub", io.BytesIO(records(40, dict.fromkeys(
        range(0, 40, 3), 1))))
    for record_id in ("r001", "r007", "r020"):
        item = service.get_record(alice, "bulk", record_id)
        item["record"]["text"] = "edited"
        service.put_record(alice, "bulk", item["record"], item["revision"])
    second = service.commit(alice, "bulk", "v2")
    assert (second["added"], second["changed"], second["removed"]) == (0, 17, 0)
    texts = _ids_and_texts(service, 2)
    assert [texts[f"r{i:03d}"] for i in (0, 1, 3, 7, 20, 39)] == [
        "v1", "edited", "v1", "edited", "edited", "v1"]
    assert texts["r002"] == "v0" and len(texts) == 40


def test_gc_keeps_the_packs_an_uncommitted_import_needs(service, alice):
    service.create_dataset(alice, "pending")
    service.import_data(alice, "pending", "loophub", io.BytesIO(records(12, {})))
    packs = _registered(service, "draft")
    service.collect_garbage(ADMIN, grace_seconds=0)
    assert all(service.blobs.exists(d) for d in packs)  # the draft still points into them
    service.commit(alice, "pending", "v1")
    assert len(_ids_and_texts(service, 1)) == 12
    # a failed import leaves orphan packs that garbage collection removes
    bad = records(30, {1: 5}) + b'{"id": "broken", "annotations": 3}\n'
    with pytest.raises(Exception, match=r"record .broken. at \$\.annotations"):
        service.import_data(alice, "pending", "loophub", io.BytesIO(bad))
    orphans = _registered(service, "draft")
    service.collect_garbage(ADMIN, grace_seconds=0)
    assert not any(service.blobs.exists(d) for d in orphans)
    assert len(_ids_and_texts(service, 1)) == 12


def test_packs_and_manifests_written_with_zlib_still_read(service):
    """Versions stored before manifests and packs moved to zstd stay readable."""
    import struct
    import zlib

    from loophub.datasets import manifest
    pack = service.blobs.put_bytes(zlib.compress(b'{"id":"a"}\n{"id":"b"}\n', 1))
    lines = "".join(manifest.format_line("+", manifest.Entry(rid, "h" + rid, "", "", pack,
                                                             offset, 10), rid)
                    for rid, offset in (("a", 0), ("b", 11)))
    head = json.dumps({"kind": "snapshot"}).encode()
    digest = service.blobs.put_bytes(manifest.MAGIC + struct.pack(">I", len(head)) + head
                                     + zlib.compress(lines.encode(), 6))
    entries = list(manifest.snapshot_entries(service.blobs, digest))
    assert [e.record_id for e in entries] == ["a", "b"]
    reader = manifest.PackReader(service.blobs)
    assert [reader.read(e) for e in entries] == [b'{"id":"a"}', b'{"id":"b"}']
    assert manifest.compress(b"x")[:4] == manifest.ZSTD_MAGIC  # what is written now


def test_manifests_read_where_a_chunk_ends_inside_a_character(service, monkeypatch):
    """A manifest is decompressed a chunk at a time: one can end inside a multi-byte
    character of an id or label (zlib here, to cut the output anywhere)."""
    import struct
    import zlib

    monkeypatch.setattr(manifest, "READ_STEP", 7)
    ids = sorted(["é", "日本", "z\U0001f600", "ascii", "ü" * 40])
    lines = "".join(manifest.format_line("+", Entry(rid, "h", "lä", "", "p", 0, 1), rid)
                    for rid in ids)
    head = json.dumps({"kind": "snapshot"}).encode()
    digest = service.blobs.put_bytes(manifest.MAGIC + struct.pack(">I", len(head)) + head
                                     + zlib.compress(lines.encode(), 6))
    entries = list(manifest.snapshot_entries(service.blobs, digest))
    assert [(e.record_id, e.labels) for e in entries] == [(rid, "lä") for rid in ids]


def test_ids_and_labels_with_tabs_newlines_and_backslashes_survive_a_bulk_commit(service,
                                                                                   alice):
    odd = ["back\\slash", "new\nline", "tab\there", "plain"]
    data = "".join(json.dumps({"id": rid, "text": rid, "annotations": [
        {"type": "text_class", "label": "la\\bel" if "\\" in rid else "lab\tel"}]}) + "\n"
        for rid in odd).encode()
    service.create_dataset(alice, "odd")
    service.import_data(alice, "odd", "loophub", io.BytesIO(data))
    first = service.commit(alice, "odd", "v1")
    assert first["label_counts"] == {"la\\bel": 1, "lab\tel": 3}
    assert sorted(_ids_and_texts(service, 1)) == sorted(odd)
    item = service.get_record(alice, "odd", "tab\there")
    item["record"]["text"] = "edited"
    service.put_record(alice, "odd", item["record"], item["revision"])
    service.commit(alice, "odd", "v2")
    assert service.diff(alice, "odd", "v1", "v2")["changed_ids"] == ["tab\there"]
    assert _ids_and_texts(service, 2)["tab\there"] == "edited"


@pytest.mark.parametrize("fold", [True, False], ids=["folded-deltas", "snapshot-merge"])
def test_diff_against_the_draft_is_what_the_next_commit_will_show(service, alice, monkeypatch,
                                                                   fold):
    """``target="draft"`` lists the uncommitted changes on top of the head, against the
    head or an older version, by every diff method; committing then gives the same diff."""
    monkeypatch.setattr(versions, "MAX_CHAIN", 2)
    if not fold:  # force the snapshot/delta-chain methods instead of folding the path
        monkeypatch.setattr(versions, "_first_parent_path", lambda *args: None)
    service.create_dataset(alice, "wip")
    with pytest.raises(NotFound, match="no versions yet"):
        service.diff(alice, "wip", "head", "draft")
    for i in range(5):
        service.put_record(alice, "wip", _text(f"r{i}", "aa"))
    service.commit(alice, "wip", "v1")

    def edit(record_id: str, text: str | None) -> None:
        revision = service.get_record(alice, "wip", record_id)["revision"]
        if text is None:
            service.delete_record(alice, "wip", record_id, revision)
        else:
            service.put_record(alice, "wip", _text(record_id, text), revision)
    edit("r1", "bb")
    edit("r2", None)
    service.put_record(alice, "wip", _text("r9", "aa"))
    service.commit(alice, "wip", "v2")
    assert service.diff(alice, "wip", "v2", "draft")["changed"] == 0  # nothing uncommitted
    edit("r3", "cc")
    edit("r9", None)  # added in v2, removed in the draft
    service.put_record(alice, "wip", _text("r10", "aa"))
    edit("r4", "dd")
    edit("r4", "aa")  # edited back: no change
    against_head = service.diff(alice, "wip", "v2", "draft")
    assert (against_head["added_ids"], against_head["removed_ids"],
            against_head["changed_ids"]) == (["r10"], ["r9"], ["r3"])
    assert (against_head["target"], against_head["target_number"]) == ("draft", None)
    against_v1 = service.diff(alice, "wip", "v1", "draft")
    assert (against_v1["added_ids"], against_v1["removed_ids"], against_v1["changed_ids"]) == (
        ["r10"], ["r2"], ["r1", "r3"])
    with pytest.raises(InvalidInput, match="only be the target"):
        service.diff(alice, "wip", "draft", "v1")
    service.commit(alice, "wip", "v3")
    for base, before in (("v2", against_head), ("v1", against_v1)):
        after = service.diff(alice, "wip", base, "v3")
        for key in ("added_ids", "removed_ids", "changed_ids", "label_change"):
            assert after[key] == before[key], (base, key)


def test_merge_diff_matches_a_naive_diff_of_every_version_pair(service, alice, monkeypatch):
    """The windowed merge-join agrees with comparing the two versions' full (id, hash)
    maps, for ids that need escaping, records added after the last id and removals."""
    import random

    monkeypatch.setattr(versions, "MAX_CHAIN", 2)  # snapshots and delta chains
    rng = random.Random(7)
    pool = [f"id{i:02d}" for i in range(40)] + ["tab\there", "back\\slash", "new\nline", "zz"]
    service.create_dataset(alice, "pairs")
    live: dict[str, str] = {}
    for number in range(1, 6):
        for record_id in rng.sample(pool, 12):
            if record_id in live and rng.random() < 0.3:
                service.delete_record(alice, "pairs", record_id, service.get_record(
                    alice, "pairs", record_id)["revision"])
                del live[record_id]
                continue
            revision = (service.get_record(alice, "pairs", record_id)["revision"]
                        if record_id in live else None)
            live[record_id] = f"t{number}{rng.random():.3f}"
            service.put_record(alice, "pairs", _text(record_id, live[record_id]), revision)
        service.commit(alice, "pairs", f"v{number}")
    states = {n: {e.record_id: e.hash for e in versions.iter_entries(
        service.db, service.blobs, version(service, n))} for n in range(1, 6)}
    for a in range(1, 6):
        for b in range(1, 6):
            got = versions.Diff("a", "b")
            versions._merge_diff(got, service.blobs, *(versions.chain_to_snapshot(
                service.db, version(service, n)) for n in (a, b)))
            old, new = states[a], states[b]
            assert got.removed == sorted(old.keys() - new.keys()), (a, b)
            assert got.added == sorted(new.keys() - old.keys()), (a, b)
            assert got.changed == sorted(k for k in old.keys() & new.keys()
                                         if old[k] != new[k]), (a, b)


# -- the commit's two streams ------------------------------------------------------

ODD_IDS = ["tab\there", "new\nline", "back\\slash", "cr\rid", "é", "日本", "z\U0001f600", "Zed"]


def _import_texts(service, alice, name: str, texts: dict[str, str]) -> None:
    data = "".join(json.dumps(_text(rid, text)) + "\n" for rid, text in texts.items())
    service.import_data(alice, name, "loophub", io.BytesIO(data.encode()))


def _edit(service, alice, name: str, record_id: str, text: str | None) -> None:
    """A single-record write (never packed): put, or delete with ``text`` None."""
    try:
        revision = service.get_record(alice, name, record_id)["revision"]
    except NotFound:
        revision = None
    if text is None:
        service.delete_record(alice, name, record_id, revision)
    else:
        service.put_record(alice, name, _text(record_id, text), revision)


def _delta_by_the_rules(service, name: str) -> list[tuple[str, str]]:
    """(id, line) the next commit's delta must list, formatted one by one from the draft
    rows and the rules (draft.py, versions.py): rows an import packed point into its
    packs (left out if equal to the head); the others are packed in id order into the
    commit's packs, flushed early once PENDING_LINES lines wait behind one of them."""
    with service.db.session() as session:
        dataset = session.scalars(select(Dataset).where(Dataset.name == name)).one()
        rows = sorted(session.scalars(select(DraftRecord).where(
            DraftRecord.dataset_id == dataset.id, DraftRecord.seq > dataset.committed_seq,
            DraftRecord.seq <= dataset.seq)), key=lambda row: row.record_id)
    packs, waiting, lines = manifest.PackWriter(service.blobs), 0, []
    for row in rows:
        if row.base_hash == (None if row.deleted else row.hash):
            continue  # no change to the head: deleted before it had it, or equal to it
        op = "-" if row.deleted else "~" if row.base_hash else "+"
        where = (row.pack, row.pack_offset, row.pack_length)
        if row.pack is None and not row.deleted:
            closed = len(packs.written)
            where = packs.add(row.content.encode())  # (pack number, offset, length)
            waiting = 0 if len(packs.written) > closed else waiting + 1
        elif waiting:
            waiting += 1
            if waiting > versions.PENDING_LINES:
                packs.flush()
                waiting = 0
        lines.append((op, row, where))
    packs.flush()
    return [(row.record_id, manifest.format_line(
        op, None if op == "-" else Entry(row.record_id, row.hash, row.labels,
                                         row.media_sha or "", _pack(where[0], packs),
                                         *where[1:]),
        row.record_id, row.base_hash or "", row.base_labels or "")) for op, row, where in lines]


def _pack(pack: str | int, packs: manifest.PackWriter) -> str:
    return packs.written[pack][0] if isinstance(pack, int) else pack


def _commit_by_the_rules(service, alice, name: str, message: str) -> dict:
    """Commit; the delta manifest must be byte for byte the one the rules give."""
    expected = _delta_by_the_rules(service, name)
    info = service.commit(alice, name, message)
    stored = version(service, info["number"])
    _, lines = manifest.read_manifest(service.blobs, stored.delta)
    assert [line + "\n" for line in lines if line] == [line for _, line in expected]
    writer = manifest.ManifestWriter(service.blobs, {
        "kind": "delta", "version": stored.id,
        "parent": stored.parents[0] if stored.parents else None})
    for record_id, line in expected:
        writer.write(line, record_id)
    assert stored.delta == writer.close()[0]
    # and a commit leaves the head equal to the draft, and no deleted row behind
    draft = {item["record"]["id"]: item["record"]["text"]
             for item in service.list_records(alice, name, limit=1000).records}
    assert _ids_and_texts(service, info["number"]) == draft
    with service.db.session() as session:
        assert not session.scalars(select(DraftRecord.record_id).where(
            DraftRecord.dataset_id == stored.dataset_id, DraftRecord.deleted)).all()
    return info


@pytest.mark.parametrize("small", [False, True], ids=["plain", "small-packs"])
def test_commits_of_mixed_drafts_write_the_manifest_the_rules_give(service, alice,
                                                                    monkeypatch, small):
    """Rows a bulk import packed, interleaved in id order with single-record edits,
    deletions and a checkout's rows; ids and labels that need escaping; first and later
    commits. With ``small`` packs close every few records and PENDING_LINES cuts the
    runs of packed rows."""
    if small:
        monkeypatch.setattr(versions, "PENDING_LINES", 2)
        monkeypatch.setattr(manifest, "PACK_BYTES", 300)
    name, ids = "mixed", [f"r{i:03d}" for i in range(30)] + ODD_IDS
    service.create_dataset(alice, name)
    # labels are the texts' first two characters ("t\t" and "b\\" need escaping); the
    # import brings them all into the label schema
    special = {"r004": "t\tv1", "é": "t\tv1", "r021": "b\\v1", "r025": "bb v1", "r026": "cc"}
    _import_texts(service, alice, name, {rid: special.get(rid, "aa v1") for rid in ids})
    for rid, text in (("r010", "bb edit"), ("é", "aa edit"), ("r010a", "bb new"),
                      ("a", "aa new"), ("r020", None), ("new\nline", None)):
        _edit(service, alice, name, rid, text)
    first = _commit_by_the_rules(service, alice, name, "v1")
    assert (first["added"], first["changed"], first["removed"]) == (38, 0, 0)

    _import_texts(service, alice, name, {**{rid: "bb v2" for rid in ids[:30:3]},
                                         "back\\slash": "t\tv2", "r030": "aa", "r031": "aa",
                                         "r009": "cc v2", "r011": "aa v1"})  # r011 as is
    _import_texts(service, alice, name, {"r009": "aa v1"})  # packed, equal to the head
    for rid, text in (("r003", "aa e"), ("r001", "bb e"), ("r017", "cc"), ("r017", "aa v1"),
                      ("r002", None), ("r006", None), ("r030", None), ("日本", "t\tx")):
        _edit(service, alice, name, rid, text)
    second = _commit_by_the_rules(service, alice, name, "v2")
    assert (second["added"], second["changed"], second["removed"]) == (1, 11, 2)

    service.checkout(alice, name, "v1")  # the rows that differ are rewritten unpacked
    _import_texts(service, alice, name, {"r012": "cc v3", "r015": "t\tv3", "r040": "aa"})
    _edit(service, alice, name, "Zed", "bb v3")
    third = _commit_by_the_rules(service, alice, name, "v3")
    assert (third["added"], third["changed"], third["removed"]) == (3, 12, 1)


def test_merged_runs_cut_the_packed_batches_only_at_unpacked_rows():
    def key(row):
        return row[0][1:]
    batches = [[("+b",), ("~d",), ("+f",)], [("+h",), ("~j",)]]
    unpacked = [("a", 1), ("c", 1), ("c2", 1), ("g", 1), ("k", 1)]
    runs = list(versions._merged(iter(batches), iter(unpacked), key))
    assert runs == [("a", 1), [("+b",)], ("c", 1), ("c2", 1), [("~d",), ("+f",)], ("g", 1),
                    [("+h",), ("~j",)], ("k", 1)]
    assert runs[6] is batches[1]  # a batch no unpacked row cuts is passed on as it is
    assert list(versions._merged(iter(batches), iter([]), key)) == batches
    assert list(versions._merged(iter([]), iter(unpacked), key)) == unpacked


def test_snapshot_differences_hold_across_any_cut_of_the_blocks():
    """Windows of two snapshots' lines cover the same ids however their blocks fall
    (ids whose escaped form sorts differently included)."""
    import random

    rng = random.Random(3)
    pool = sorted({f"id{rng.randrange(400):03d}" for _ in range(300)}
                  | {"a\tb", "a b", "a\\b", "a\nb", "é", "z\U0001f600"})

    def lines(state: dict[str, str]) -> list[str]:
        return [manifest.format_line("+", Entry(rid, state[rid], "", "", "p", 0, 1), rid)[:-1]
                for rid in sorted(state)]

    def blocks(items: list[str]) -> list[list[str]]:
        cuts = sorted(rng.sample(range(1, len(items)), rng.randrange(min(12, len(items)))))
        return [items[a:b] for a, b in zip([0, *cuts], [*cuts, len(items)], strict=True)]
    for _ in range(40):
        old = {rid: f"h{rng.randrange(3)}" for rid in pool if rng.random() < 0.8}
        new = {rid: f"h{rng.randrange(3)}" if rng.random() < 0.2 else old.get(rid, "h0")
               for rid in pool if rng.random() < 0.8}
        only_old, only_new = versions._snapshot_differences(iter(blocks(lines(old))),
                                                            iter(blocks(lines(new))))
        assert only_old == {k: v for k, v in old.items() if new.get(k) != v}
        assert only_new == {k: v for k, v in new.items() if old.get(k) != v}
