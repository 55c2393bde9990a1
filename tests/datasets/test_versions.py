"""Version storage beyond the service: snapshots every MAX_CHAIN versions, reads and
diffs across snapshots, and garbage collection around pins."""

from __future__ import annotations

import io
import json

import pytest
from sqlalchemy import select

from loophub.datasets import versions
from loophub.datasets.models import DatasetVersion
from loophub.datasets.service import Actor

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
    versions._merge_diff(sibling, versions._id_hashes(service.blobs, versions.chain_to_snapshot(
        service.db, version(service, 2))), versions._id_hashes(
        service.blobs, versions.chain_to_snapshot(service.db, version(service, 6))))
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
