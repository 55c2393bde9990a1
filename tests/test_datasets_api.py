"""The dataset routes and Client().datasets against the running platform."""

import json

import pytest
import requests

from loophub import errors
from loophub.client import Client

pytestmark = pytest.mark.hub


@pytest.fixture(scope="module")
def ann(hub):
    return Client(hub.api, hub.token("ann"))


def test_import_annotate_commit_diff_export(hub, ann, shared, tmp_path):
    coco = shared / "fixtures" / "coco" / "mmdet_coco_dummy_instances_val2017.json"
    ann.datasets.create("boxes", description="dummy val2017")
    report = ann.datasets.import_(
        "boxes", coco, "coco", progress=False)
    assert report["records"] > 0
    records = list(ann.datasets.records("boxes"))
    assert len(records) == report["records"]
    first = ann.datasets.commit("boxes", "import from mmdet")
    assert first["number"] == 1

    item = records[0]
    record_id, revision = item["record"]["id"], item["revision"]
    label = ann.datasets.get("boxes")["label_schema"]["classes"][0]["name"]
    saved = ann.datasets.annotate("boxes", record_id, {"type": "image_class", "label": label},
                                  revision)
    assert saved["revision"] > revision
    with pytest.raises(errors.Conflict):  # a stale revision never overwrites
        ann.datasets.annotate("boxes", record_id, {"type": "image_class", "label": label},
                              revision)
    second = ann.datasets.commit("boxes", "one more label")
    diff = ann.datasets.diff("boxes", 1, 2)
    assert diff["changed_ids"] == [record_id]
    assert diff["added_ids"] == [] == diff["removed_ids"]
    ann.datasets.tag("boxes", "baseline", 1)
    log = ann.datasets.log("boxes")
    assert [v["number"] for v in log] == [second["number"], 1]

    out = ann.datasets.export("boxes", tmp_path / "boxes.jsonl", version="baseline")
    lines = out.read_text().splitlines()
    assert len(lines) == report["records"]
    assert {json.loads(line)["id"] for line in lines} == {r["record"]["id"] for r in records}
    zipped = ann.datasets.export("boxes", tmp_path / "boxes-coco.zip", "coco")
    assert zipped.read_bytes()[:2] == b"PK"


def test_private_datasets_are_private(hub, ann):
    ann.datasets.create("secret")
    other = Client(hub.api, hub.token("ben"))
    assert "secret" not in [d["name"] for d in other.datasets.list()]
    with pytest.raises((errors.NotFound, errors.PermissionDenied)):
        other.datasets.get("secret")
    with pytest.raises((errors.NotFound, errors.PermissionDenied)):
        other.datasets.commit("secret", "nope")


def test_a_bad_import_names_the_problem_and_changes_nothing(hub, ann, tmp_path):
    ann.datasets.create("broken")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 1, '
                   '"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1]}], '
                   '"categories": [{"id": 1, "name": "cat"}]}')
    with pytest.raises(errors.InvalidInput) as err:
        ann.datasets.import_("broken", bad, "coco", progress=False)
    assert "99" in str(err.value) or "image" in str(err.value)
    assert list(ann.datasets.records("broken")) == []


def test_malformed_requests_are_4xx(hub, ann):
    headers = {"Authorization": ann.session.headers["Authorization"]}
    for method, path, body in [("POST", "datasets", b"{"), ("POST", "datasets", b"[]"),
                               ("POST", "datasets", b'{"name": "../x"}'),
                               ("POST", "datasets/boxes/imports", b'{"format": "nope"}'),
                               ("GET", "datasets/boxes/diff", None)]:
        resp = requests.request(method, f"{hub.api}/{path}", data=body, headers=headers,
                                timeout=30)
        assert 400 <= resp.status_code < 500, (path, resp.status_code, resp.text)
        assert resp.json()["error"]


def test_online_cli(hub, shared, tmp_path):
    import subprocess
    import sys

    token = hub.token("cli-user")
    conll = shared / "fixtures" / "conll" / "allennlp_conll2003.txt"

    def data(*args):
        return subprocess.run([sys.executable, "-m", "loophub.cli", "data", *args, "--url",
                               hub.api, "--token", token], capture_output=True, text=True,
                              timeout=120)

    out = data("import", "cli-ner", str(conll), "--format", "conll", "--create", "-q")
    assert out.returncode == 0, out.stderr
    assert "imported" in out.stdout
    assert data("commit", "cli-ner", "-m", "first").returncode == 0
    log = data("log", "cli-ner")
    assert log.returncode == 0 and "v1" in log.stdout and "first" in log.stdout
    assert data("export", "cli-ner", str(tmp_path / "ner.zip"), "--format", "conll").returncode == 0
    assert (tmp_path / "ner.zip").stat().st_size > 0
    bad = data("import", "cli-ner", str(tmp_path / "missing.txt"), "--format", "conll")
    assert bad.returncode == 2 and "missing.txt" in bad.stderr
    diff = data("diff", "cli-ner", "1")
    assert diff.returncode == 0 and "v1 -> v1: 0 added, 0 removed, 0 changed" in diff.stdout
    uncommitted = data("diff", "cli-ner", "1", "draft")
    assert uncommitted.returncode == 0, uncommitted.stderr
    assert "v1 -> draft: 0 added, 0 removed, 0 changed" in uncommitted.stdout
