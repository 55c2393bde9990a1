"""Property-based tests of the importers: random and truncated input never crashes
(only InvalidInput, naming the file) and never leaves a partial import behind."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loophub.datasets.formats import read_dataset
from loophub.datasets.service import Actor, DatasetService
from loophub.errors import InvalidInput
from loophub.store.blobs import BlobStore
from loophub.store.db import Database

SAMPLES = {
    "coco": ("coco/mmdet_coco_sample.json", ".json"),
    "voc": ("voc/datumaro_voc_dataset/voc_dataset1/Annotations/2007_000001.xml", ".xml"),
    "yolo": ("yolo/ls_sdk_import_yolo_data/labels/img_1.txt", ".txt"),
    "csv": ("doccano/doccano_data_import_tests/text_classification/example.csv", ".csv"),
    "jsonl": ("spans_jsonl/flair_jsonl_train.jsonl", ".jsonl"),
    "conll": ("conll/allennlp_conll2003.txt", ".txt"),
    "labelstudio": ("labelstudio/lsf_named_entity/annotations_1.json", ".json"),
    "loophub": (None, ".jsonl"),
}
PROPERTY = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def read_all(fmt: str, data: bytes, suffix: str) -> list[dict] | None:
    """The records, or None when the importer refused the input with InvalidInput."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input{suffix}"
        path.write_bytes(data)
        try:
            with read_dataset(fmt, path) as bundle:
                return list(bundle.records)
        except InvalidInput as exc:
            assert "input" in exc.message  # the error names the file
            return None


@pytest.mark.parametrize("fmt", list(SAMPLES))
@PROPERTY
@given(data=st.binary(max_size=400))
def test_random_bytes_are_refused_or_read(fmt, data):
    read_all(fmt, data, SAMPLES[fmt][1])


@pytest.mark.parametrize("fmt", [f for f in SAMPLES if SAMPLES[f][0]])
@PROPERTY
@given(cut=st.floats(min_value=0, max_value=1, exclude_max=True))
def test_truncated_real_files_are_refused_or_read(fixtures, fmt, cut):
    source, suffix = SAMPLES[fmt]
    data = (fixtures / source).read_bytes()
    read_all(fmt, data[: int(len(data) * cut)], suffix)


@pytest.fixture(scope="module")
def sqlite_service(tmp_path_factory):
    root = tmp_path_factory.mktemp("props")
    db = Database(f"sqlite:///{root / 'db.sqlite'}")
    service = DatasetService(db, BlobStore(str(root / "blobs")))
    owner = Actor("owner")
    service.create_dataset(owner, "target")
    yield service, owner
    db.dispose()


@PROPERTY
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_a_failed_import_writes_nothing(fixtures, sqlite_service, cut):
    service, owner = sqlite_service
    data = (fixtures / "spans_jsonl/flair_jsonl_train.jsonl").read_bytes()
    data += (fixtures / "spans_jsonl/flair_jsonl_testa.jsonl").read_bytes()
    before = service.list_records(owner, "target", limit=1000).records
    try:
        service.import_data(owner, "target", "jsonl", io.BytesIO(data[: cut % len(data)]))
    except InvalidInput:
        assert service.list_records(owner, "target", limit=1000).records == before


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False)
    | st.sampled_from(["", "a", "image", "text", "labels", "x.jpg"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["id", "data", "text", "image", "annotations", "result", "value",
                         "type", "images", "categories", "bbox", "label", "start", "end",
                         "labels", "image_id", "category_id", "file_name"]), inner, max_size=5),
    max_leaves=25)


@pytest.mark.parametrize("fmt", ["coco", "labelstudio", "loophub", "jsonl"])
@PROPERTY
@given(document=JSON)
def test_random_json_documents_are_refused_or_read(fmt, document):
    import json

    text = json.dumps(document)
    if fmt in ("loophub", "jsonl"):
        text = text + "\n" + text + "\n"
    read_all(fmt, text.encode(), ".jsonl" if fmt in ("loophub", "jsonl") else ".json")
