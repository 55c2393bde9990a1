"""Property-based tests of the importers: random and truncated input never crashes
(only InvalidInput, naming the file) and never leaves a partial import behind."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loophub.datasets.formats import read_dataset
from loophub.datasets.formats.base import build_label_schema
from loophub.datasets.records import all_labels_of
from loophub.datasets.service import Actor, DatasetService, merge_label_schemas
from loophub.datasets.validation import RecordValidator
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
    text = json.dumps(document)
    if fmt in ("loophub", "jsonl"):
        text = text + "\n" + text + "\n"
    read_all(fmt, text.encode(), ".jsonl" if fmt in ("loophub", "jsonl") else ".json")


LABELLED = st.lists(st.fixed_dictionaries(
    {"id": st.sampled_from(["r1", "r2", "r3"]),
     "annotations": st.lists(st.fixed_dictionaries(
         {"type": st.sampled_from(["text_class", "text_class", "bbox"]),
          "label": st.sampled_from(["", "a", "b", "c", 5])}), max_size=2)},
    optional={"text": st.just("t")}), max_size=4)


def inferred_up_front(current: dict, records: list[dict]) -> dict | None:
    """The label schema an import of ``records`` gives, found the way it was before imports
    learnt classes as they stream: every label collected first, then every record checked
    against the complete schema. None for a refusal."""
    names = set()
    for record in records:
        with contextlib.suppress(TypeError):  # a record with both text and number labels
            names.update(all_labels_of(record))
    if not all(isinstance(name, str) for name in names):
        return None
    schema, added = merge_label_schemas(current, build_label_schema("mixed", sorted(names)))
    validator = RecordValidator(schema)
    try:
        for record in records:
            validator.validate(record)
    except InvalidInput:
        return None
    if len({r["id"] for r in records}) != len(records):
        return None
    return schema if added else current


@settings(PROPERTY, max_examples=150)
@given(records=LABELLED, current=st.sampled_from([[], ["a"], ["c", "b"]]))
def test_importing_learns_the_classes_a_pass_of_their_own_would(sqlite_service, records,
                                                                current):
    service, owner = sqlite_service
    name = f"learn-{uuid.uuid4().hex[:12]}"
    before = build_label_schema("object_detection", current)
    service.create_dataset(owner, name, label_schema=before)
    expected = inferred_up_front(before, records)
    data = "".join(json.dumps(record) + "\n" for record in records).encode()
    try:
        service.import_data(owner, name, "loophub", io.BytesIO(data))
    except InvalidInput as exc:
        assert expected is None and "upload" in exc.message
        assert service.list_records(owner, name).records == []
        assert service.get_dataset(owner, name)["label_schema"] == before
    else:
        assert service.get_dataset(owner, name)["label_schema"] == expected
