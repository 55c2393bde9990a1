"""YOLO export of COCO data: by default the class indices are COCO's category ids (data.yaml
fills the gaps with placeholder names, as Ultralytics needs indices 0..nc-1); asked for
dense ids, indices are 0..n-1, data.yaml has only the real names and keeps COCO's ids."""

from __future__ import annotations

import io
import zipfile

import yaml

from loophub.datasets.formats import read_dataset, write_dataset

COCO = "coco/mmdet_coco_dummy_instances_val2017.json"  # 80 categories, ids 1..90 with gaps


def _coco_ids(fixtures):
    import json

    return {c["name"]: c["id"] for c in json.loads((fixtures / COCO).read_text())["categories"]}


def test_dense_ids_have_no_placeholders_and_keep_cocos_ids(fixtures, tmp_path):
    coco_ids = _coco_ids(fixtures)
    with read_dataset("coco", fixtures / COCO) as bundle:
        write_dataset("yolo", bundle, tmp_path / "out", dense_ids=True)
    config = yaml.safe_load((tmp_path / "out" / "data.yaml").read_text())
    names = config["names"]
    assert config["nc"] == len(names) == 80
    assert not [n for n in names if n.startswith("class_")]
    assert names[:3] == ["person", "bicycle", "car"]
    assert config["category_ids"] == {i: coco_ids[n] for i, n in enumerate(names)}
    used = {int(line.split()[0]) for f in (tmp_path / "out" / "labels").rglob("*.txt")
            for line in f.read_text().splitlines()}
    assert used and max(used) < 80
    # read back, the classes carry COCO's ids again
    with read_dataset("yolo", tmp_path / "out") as again:
        assert {c["name"]: c["id"] for c in again.label_schema["classes"]} == coco_ids


def test_default_keeps_cocos_ids_as_indices(fixtures, tmp_path):
    with read_dataset("coco", fixtures / COCO) as bundle:
        write_dataset("yolo", bundle, tmp_path / "out")
    config = yaml.safe_load((tmp_path / "out" / "data.yaml").read_text())
    assert config["nc"] == len(config["names"]) == 91
    assert config["names"][13] == "stop sign"
    assert "category_ids" not in config


def test_export_with_dense_ids(service, alice, fixtures):
    service.create_dataset(alice, "coco")
    service.import_data(alice, "coco", "coco", fixtures / COCO)
    chunks = service.export(alice, "coco", "yolo", version="draft", dense_ids=True)
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as z:
        name = next(n for n in z.namelist() if n.endswith("data.yaml"))
        config = yaml.safe_load(z.read(name))
    assert config["nc"] == 80 and "category_ids" in config
