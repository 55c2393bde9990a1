"""Who may read, write and manage owned things (loophub.access), enforced by every route:
read-only users cannot write, and a blob digest is a name, not a right."""

from __future__ import annotations

import itertools
import json

import pytest
from sqlalchemy import select

from loophub import access, errors
from loophub.datasets.models import Dataset
from loophub.identity import Actor
from loophub.store import Database
from tests.labeling.conftest import image_dataset, png_bytes

OWNER, MEMBER, OTHER = Actor("ann", ("vision",)), Actor("bob", ("vision",)), Actor("cid")
ADMIN, SERVICE = Actor("root", admin=True), Actor("loophub-spawner", kind="service")


def _dataset(name, visibility, group, state="active"):
    return Dataset(name=name, owner="ann", visibility=visibility, group_name=group, state=state,
                   label_schema={}, state_changed_by="ann")


def test_the_rules():
    private = _dataset("p", "private", None)
    shared = _dataset("g", "group", "vision")
    public = _dataset("o", "public", None)
    deleted = _dataset("d", "public", None, state="deleted")
    assert [access.can_read(OTHER, d) for d in (private, shared, public, deleted)] == [
        False, False, True, False]
    assert [access.can_read(MEMBER, d) for d in (private, shared, public)] == [False, True, True]
    assert not access.can_write(OTHER, public) and access.can_write(MEMBER, shared)
    assert not access.can_manage(MEMBER, shared) and access.can_manage(OWNER, shared)
    assert all(access.can_manage(ADMIN, d) for d in (private, shared, public, deleted))
    # a service acting for a user has exactly the user's rights
    acting = SERVICE.acting_for("bob", ("vision",))
    assert acting.via == "loophub-spawner" and access.can_write(acting, shared)
    assert not access.can_read(SERVICE.acting_for("cid"), private)
    with pytest.raises(errors.NotFound):
        access.require(OTHER, private, "read", noun="dataset", name="p")
    with pytest.raises(errors.PermissionDenied, match="ask its owner ann"):
        access.require(OTHER, public, "write", noun="dataset", name="o")


def test_the_sql_filter_says_what_can_read_says(db_url):
    """Listings filter in the query (no Python scan); both must agree on every case."""
    db = Database(db_url)
    cases = list(itertools.product(("private", "group", "public"), (None, "vision", "other"),
                                   ("active", "deleted")))
    with db.transaction() as s:
        for i, (visibility, group, state) in enumerate(cases):
            s.add(_dataset(f"d{i}", visibility, group, state))
    for actor in (OWNER, MEMBER, OTHER, ADMIN, Actor("eve", ("other",))):
        with db.transaction() as s:
            rows = s.scalars(select(Dataset)).all()
            expected = {d.name for d in rows if access.can_read(actor, d)}
            found = set(s.scalars(select(Dataset.name).where(
                access.readable_filter(actor, Dataset))))
        assert found == expected, actor
    db.dispose()


@pytest.fixture
def public_pets(api, tmp_path):
    """ann's public dataset (no group): every other user may read it, not change it."""
    owner = api.client("ann")
    ids = image_dataset(owner, "pets", tmp_path / "pets", count=3)
    owner.datasets.update("pets", visibility="public")
    owner.datasets.commit("pets", "v1")
    return ids


def test_read_only_users_are_refused_every_write_at_once(api, public_pets, tmp_path):
    reader = api.client("ben")
    assert reader.datasets.get("pets")["visibility"] == "public"  # may read
    digest = reader.datasets.upload(tmp_path / "pets" / "img00.png")["digest"]
    refused = [
        lambda: reader.request("POST", "datasets/pets/lineage", json={
            "version": "v1", "model_name": "fake", "model_version": "1"}),
        lambda: reader.request("POST", "labeling/pets/skips", json={"record_id": public_pets[0]}),
        lambda: reader.request("DELETE", f"labeling/pets/skips/{public_pets[0]}"),
        lambda: reader.request("POST", "datasets/pets/imports",
                               json={"format": "imagefolder", "upload": digest}),
        lambda: reader.request("POST", "labeling/pets/leases", json={"count": 1}),
        lambda: reader.request("POST", "labeling/pets/predictions", json={"predictions": [
            {"record_id": public_pets[0], "model": "m", "annotations": []}]}),
        lambda: reader.request("POST", "datasets/pets/tags", json={"tag": "mine"}),
    ]
    for call in refused:
        with pytest.raises(errors.PermissionDenied, match="you can read dataset 'pets'"):
            call()
    assert reader.jobs.list() == []  # the import was refused before any job started
    owner = api.client("ann")
    assert owner.datasets.models("pets", "v1") == []
    owner.datasets.record_lineage("pets", "v1", "digits-cnn", 1)  # the owner may
    assert [m["model"] for m in owner.datasets.models("pets", "v1")] == ["digits-cnn"]


def test_a_digest_is_a_name_not_a_right(api, tmp_path):
    owner, thief = api.client("ann"), api.client("ben")
    image_dataset(owner, "private-pets", tmp_path / "private")  # private by default
    record = owner.datasets.record("private-pets", "img00")["record"]
    secret = record["media"]["sha256"]
    thief.datasets.create("mine")
    # naming the digest in a record of one's own
    with pytest.raises(errors.NotFound, match="no blob"):
        thief.datasets.add_record("mine", {"id": "x", "annotations": [],
                                           "media": {"sha256": secret, "type": "image/png"}})
    # importing records that name it: refused, and nothing of the import is kept
    folder = tmp_path / "refs"
    folder.mkdir()
    (folder / "records.jsonl").write_text(json.dumps(
        {"id": "y", "annotations": [], "media": {"sha256": secret, "type": "image/png"}}) + "\n")
    with pytest.raises(errors.NotFound, match="no blob"):
        thief.datasets.import_("mine", folder, "loophub", progress=False)
    assert thief.datasets.get("mine")["draft_records"] == 0
    # importing someone else's upload by its digest
    upload = owner.datasets.upload(tmp_path / "private" / "img01.png")["digest"]
    with pytest.raises(errors.NotFound, match="no blob"):
        thief.request("POST", "datasets/mine/imports",
                      json={"format": "imagefolder", "upload": upload})
    # ... while the same bytes sent by the thief themselves are theirs to use
    (tmp_path / "own.png").write_bytes(png_bytes(64, 48))
    mine = thief.datasets.upload(tmp_path / "own.png")["digest"]
    thief.datasets.add_record("mine", {"id": "z", "annotations": [],
                                       "media": {"sha256": mine, "type": "image/png"}})
    # and what they can read they may refer to: the owner shares the dataset
    owner.datasets.update("private-pets", visibility="public")
    thief.datasets.add_record("mine", {"id": "w", "annotations": [],
                                       "media": {"sha256": secret, "type": "image/png"}})
    assert thief.labeling.media("mine", "w")[0] == (tmp_path / "private" / "img00.png"
                                                    ).read_bytes()


def test_the_audit_trail_records_state_changes_and_filters_them(api, tmp_path):
    """Every state-changing action on a dataset is in the trail; admins filter it by
    actor, object (a prefix: dataset:pets takes its versions too) and time."""
    owner, admin = api.client("ann"), api.client("root")
    image_dataset(owner, "audited", tmp_path / "audited", count=3)
    owner.datasets.commit("audited", "first")
    owner.datasets.tag("audited", "gold", "v1")
    owner.datasets.update("audited", visibility="public")
    owner.datasets.set_state("audited", "archived")
    owner.datasets.set_state("audited", "active")
    owner.labeling.configure("audited", overlap=2)
    events = admin.request("GET", "audit", params={"target": "dataset:audited"})["events"]
    actions = [e["action"] for e in reversed(events)]
    assert actions == ["dataset.create", "dataset.commit", "dataset.tag", "dataset.update",
                       "dataset.state", "dataset.state", "labeling.settings"], actions
    sharing = next(e for e in events if e["action"] == "dataset.update")["detail"]["sharing"]
    assert sharing == {"from": {"visibility": "private", "group": None},
                       "to": {"visibility": "public", "group": None}}
    assert all(e["at"].endswith("+00:00") for e in events)
    jobs = admin.request("GET", "audit", params={"action": "job.", "actor": "ann"})["events"]
    assert {e["action"] for e in jobs} == {"job.import", "job.commit"}
    later = admin.request("GET", "audit", params={"target": "dataset:audited",
                                                  "since": events[0]["at"]})["events"]
    assert [e["id"] for e in later] == [events[0]["id"]]
    with pytest.raises(errors.PermissionDenied):
        owner.request("GET", "audit")
