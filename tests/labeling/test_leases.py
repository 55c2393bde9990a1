"""Leases, overlap, skips, progress, media, predictions and review queue through the real
API routes (in-process tornado app, real SQLite)."""

import threading

import pytest

from loophub import errors
from tests.labeling.conftest import image_dataset, png_bytes


@pytest.fixture
def shared_images(api, tmp_path):
    owner = api.client("owen")
    ids = image_dataset(owner, "pets", tmp_path / "pets", count=6)
    owner.datasets.update("pets", visibility="group", group="team")
    return ids


def test_two_labelers_get_disjoint_items_and_resume(api, shared_images):
    ann, ben = api.labeling("ann"), api.labeling("ben")
    first = [i["record"]["id"] for i in ann.lease("pets", 2)]
    second = [i["record"]["id"] for i in ben.lease("pets", 2)]
    assert first == shared_images[:2] and second == shared_images[2:4]
    # A restarted labeler asking again gets what it holds first: it resumes.
    assert [i["record"]["id"] for i in ann.lease("pets", 3)] == [*first, shared_images[4]]
    assert {lease["holder"] for lease in ann.leases("pets")} == {"ann", "ben"}


BACKENDS = pytest.mark.parametrize(
    "api", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


@BACKENDS
def test_concurrent_leasing_never_hands_out_an_item_twice(api, shared_images):
    got: dict[str, list[str]] = {}

    def grab(user: str) -> None:
        got[user] = [i["record"]["id"] for i in api.labeling(user).lease("pets", 2)]

    threads = [threading.Thread(target=grab, args=(u,)) for u in ("u1", "u2", "u3")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    handed = [rid for ids in got.values() for rid in ids]
    assert sorted(handed) == sorted(shared_images) and len(set(handed)) == 6


def test_leases_expire(api, shared_images):
    owner = api.labeling("owen")
    owner.configure("pets", lease_seconds=5)
    ann, ben = api.labeling("ann"), api.labeling("ben")
    assert len(ann.lease("pets", 6)) == 6
    assert ben.lease("pets", 1) == []
    service = api.service
    real_clock = service.clock
    service.clock = lambda: real_clock() + 10
    try:
        assert [i["record"]["id"] for i in ben.lease("pets", 1)] == [shared_images[0]]
    finally:
        service.clock = real_clock


@BACKENDS
def test_overlap_hands_each_item_to_k_labelers(api, shared_images):
    api.labeling("owen").configure("pets", overlap=2)
    ann, ben, cid = api.labeling("ann"), api.labeling("ben"), api.labeling("cid")
    a = [i["record"]["id"] for i in ann.lease("pets", 3)]
    b = [i["record"]["id"] for i in ben.lease("pets", 3)]
    c = [i["record"]["id"] for i in cid.lease("pets", 3)]
    assert a == b == shared_images[:3] and c == shared_images[3:]
    with pytest.raises(errors.PermissionDenied):
        ann.configure("pets", overlap=3)


def test_labeled_items_leave_the_queue_and_progress_counts(api, shared_images):
    ann = api.labeling("ann")
    item = ann.lease("pets", 1)[0]
    ann.datasets.annotate("pets", item["record"]["id"], {"type": "image_class", "label": "cat"},
                          item["revision"])
    nxt = ann.lease("pets", 1)
    assert [i["record"]["id"] for i in nxt] == [shared_images[1]]
    progress = ann.progress("pets")
    assert progress == {"total": 6, "done": 1, "labeled": 1, "mine": 1, "imported": 0,
                        "overlap": 1,
                        "labels": {"cat": 1}, "splits": {"unassigned": 6}}


def test_skip_is_not_offered_again(api, shared_images):
    ann = api.labeling("ann")
    first = ann.lease("pets", 1)[0]["record"]["id"]
    ann.skip("pets", first)
    assert ann.lease("pets", 1)[0]["record"]["id"] == shared_images[1]
    assert api.labeling("ben").lease("pets", 1)[0]["record"]["id"] == first
    ann.release("pets")
    assert ann.leases("pets") == [
        {"record_id": first, "holder": "ben", "slot": 0,
         "expires_at": ann.leases("pets")[0]["expires_at"]}]


def test_media_is_served_with_its_type(api, shared_images):
    data, kind = api.labeling("ann").media("pets", shared_images[0])
    assert kind == "image/png" and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data == png_bytes(64, 48, (200, 40, 40))


def test_private_datasets_stay_private(api, tmp_path):
    image_dataset(api.client("zed"), "mine", tmp_path / "mine", count=1)
    with pytest.raises(errors.NotFound):
        api.labeling("ann").lease("mine", 1)
    with pytest.raises(errors.NotFound):
        api.labeling("ann").media("mine", "img00")
    api.client("zed").datasets.update("mine", visibility="public")
    with pytest.raises(errors.PermissionDenied, match="label"):
        api.labeling("ann").lease("mine", 1)


def test_predictions_and_review_queue(api, shared_images):
    owen = api.labeling("owen")
    owen.put_predictions("pets", [{"record_id": shared_images[0], "model": "cnn", "version": "3",
                                   "annotations": [{"type": "image_class", "label": "dog",
                                                    "score": 0.9}]}])
    record = owen.datasets.record("pets", shared_images[0])["record"]
    assert record["annotations"][0]["source"] == {"kind": "model", "name": "cnn", "version": "3"}
    # Predictions do not count as labels: the item is still offered to labelers.
    assert api.labeling("ann").lease("pets", 1)[0]["record"]["id"] == shared_images[0]
    owen.configure("pets", overlap=2)
    for user, label in (("ann", "cat"), ("ben", "dog")):
        client = api.labeling(user)
        for rid in shared_images[:2]:
            rev = client.datasets.record("pets", rid)["revision"]
            chosen = label if rid == shared_images[0] else "cat"
            client.datasets.annotate("pets", rid, {"type": "image_class", "label": chosen}, rev)
    queue = owen.review_queue("pets")
    assert [i["record"]["id"] for i in queue] == shared_images[:2]
    assert queue[0]["agreement"] == 0.0 and queue[1]["agreement"] == 1.0
    agreement = owen.agreement("pets")
    assert agreement["items"] == 2 and agreement["mean_agreement"] == 0.5
    assert agreement["cohen_kappa"]["ann|ben"] is not None


def test_two_api_processes_racing_for_items(db_url, tmp_path):
    """Two services on separate connections (as two API processes) lease at the same time:
    the unique slot constraint leaves every item with exactly one holder."""
    from loophub.datasets.service import Actor, DatasetService
    from loophub.labeling.service import LabelingService
    from loophub.store.blobs import BlobStore
    from loophub.store.db import Database

    blobs = BlobStore(str(tmp_path / "blobs"))
    owner = Actor("owen", ["team"])
    first = DatasetService(Database(db_url), blobs)
    first.create_dataset(owner, "race", label_schema={
        "task": "image_classification", "classes": [{"id": 0, "name": "a"}]},
        visibility="group", group="team")
    for i in range(30):
        first.put_record(owner, "race", {"id": f"r{i:02d}", "annotations": []})
    second = DatasetService(Database(db_url), blobs)
    services = [LabelingService(first.db, first), LabelingService(second.db, second)]
    barrier = threading.Barrier(2)
    held: dict[str, list[str]] = {"u1": [], "u2": []}

    def work(service: LabelingService, user: str) -> None:
        actor = Actor(user, ["team"])
        for round_ in range(10):  # each round both ask at once for one more item
            barrier.wait()
            held[user] = [i["record"]["id"] for i in service.acquire(actor, "race", round_ + 1)]

    threads = [threading.Thread(target=work, args=(s, u))
               for s, u in zip(services, held, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(held["u1"]) == 10 == len(held["u2"])
    assert not set(held["u1"]) & set(held["u2"])
    leases = services[0].leases(owner, "race")
    assert len(leases) == 20 == len({lease["record_id"] for lease in leases})
