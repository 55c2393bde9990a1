"""Issue 19 through the API (in-process): online import errors name the user's file and
the format it looks like; a YOLO export with dense ids; job times carry their zone."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import datetime

import pytest
import yaml

from loophub import errors


def test_online_import_of_the_wrong_format_names_the_file_and_its_format(api, tmp_path):
    ann = api.client("ann")
    ann.datasets.create("wrong")
    mine = tmp_path / "my-annotations.json"
    mine.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(errors.InvalidInput) as err:
        ann.datasets.import_("wrong", mine, "labelstudio", progress=False)
    message = str(err.value)
    assert "my-annotations.json" in message and "looks like coco" in message, message
    assert "loophub-" not in message and "/tmp" not in message, message


def test_yolo_export_with_dense_ids_over_the_api(api, tmp_path, shared):
    ann = api.client("ann")
    ann.datasets.create("coco")
    ann.datasets.import_("coco", shared / "fixtures" / "coco" /
                         "mmdet_coco_dummy_instances_val2017.json", "coco", progress=False)
    ann.datasets.commit("coco", "first")
    for progress in (False, True):
        out = ann.datasets.export("coco", tmp_path / f"y{progress}.zip", "yolo",
                                  dense_ids=True, progress=progress)
        with zipfile.ZipFile(io.BytesIO(out.read_bytes())) as z:
            config = yaml.safe_load(z.read(next(n for n in z.namelist()
                                                if n.endswith("data.yaml"))))
        assert config["nc"] == 80 and config["category_ids"][11] == 13
    with pytest.raises(errors.InvalidInput, match="yolo"):
        ann.datasets.export("coco", tmp_path / "c.zip", "coco", dense_ids=True)
    jobs = ann.jobs.list(limit=5)
    assert jobs and all(datetime.fromisoformat(j["created_at"]).tzinfo for j in jobs)
