"""Every format against the real files in ../shared/fixtures: import, export,
re-import to the same records; exports accepted by pycocotools and seqeval."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from loophub.cli import main as cli_main
from loophub.datasets.formats import convert, read_dataset, write_dataset
from loophub.datasets.formats.base import Bundle, safe_extract
from loophub.errors import InvalidInput

ROUND_TRIPS = [
    ("coco", "coco/mmdet_coco_dummy_instances_val2017.json"),
    ("coco", "coco/mmdet_coco_sample.json"),
    ("coco", "coco/ls_sdk_coco_import_input_string_iscrowd.json"),
    ("coco", "coco/datumaro_coco_dataset/coco_instances"),
    ("coco", "coco/datumaro_coco_dataset/coco_person_keypoints"),
    ("coco", "coco/datumaro_coco_dataset/coco_captions"),
    ("coco", "coco/datumaro_coco_dataset/coco_labels"),
    ("coco", "coco/datumaro_coco_dataset/coco_image_info"),
    ("coco", "coco/datumaro_coco_dataset/coco_stuff"),
    ("coco", "roboflow/datumaro_roboflow_dataset/coco"),
    ("voc", "voc/datumaro_voc_dataset/voc_dataset1"),
    ("voc", "voc/datumaro_voc_dataset/voc_dataset2"),
    ("voc", "voc/mmdet_VOCdevkit/VOC2007"),
    ("voc", "voc/mmdet_VOCdevkit/VOC2012"),
    ("voc", "voc/mmdet_widerface_0_Parade_marchingband_1_5.xml"),
    ("voc", "roboflow/datumaro_roboflow_dataset/voc/val"),
    ("yolo", "yolo/datumaro_roboflow_yolo"),
    ("yolo", "yolo/datumaro_yolo_dataset/strict"),
    ("yolo", "yolo/datumaro_yolo_dataset/labels"),
    ("yolo", "yolo/ls_sdk_import_yolo_data"),
    ("yolo", "kaggle_csv/datumaro_kaggle_dataset/relaxed_yolo"),
    ("imagefolder", "imagefolder/datumaro_imagenet_dataset"),
    ("imagefolder", "imagefolder/datumaro_imagenet_subsets_dataset"),
    ("imagefolder", "imagefolder/datumaro_image_dir_dataset"),
    ("csv", "kaggle_csv/datumaro_kaggle_dataset/image_csv/ann.csv"),
    ("csv", "textcat/datumaro_women_clothing_orig.csv"),
    ("csv", "doccano/doccano_data_import_tests/example.utf16.csv"),
    ("csv", "doccano/doccano_data_import_tests/text_classification/example.csv"),
    ("csv", "doccano/doccano_data_import_tests/text_classification/"
            "example_out_of_order_columns.csv"),
    ("jsonl", "textcat/spacy_textcat_example_data/cooking.jsonl"),
    ("jsonl", "textcat/allennlp_integer_labels.jsonl"),
    ("jsonl", "spans_jsonl"),
    ("jsonl", "doccano/doccano_data_import_tests/relation_extraction/example.jsonl"),
    ("jsonl", "doccano/doccano_data_import_tests/sequence_labeling/example_overlapping.jsonl"),
    ("conll", "conll/allennlp_conll2003.txt"),
    ("conll", "conll/flair_fashion_eng.testa"),
    ("conll", "conll/flair_germeval_NER-de-train.tsv"),
    ("conll", "conll/flair_column_with_whitespaces_eng.train"),
    ("conll", "conll/flair_span_labels_span_third.txt"),
    ("conll", "conll/spacy_ner_example_data/ner-token-per-line-conll2003.iob"),
    ("conll", "conll/spacy_ner_example_data/ner-token-per-line-with-pos.iob"),
    ("conll", "doccano/doccano_data_import_tests/sequence_labeling/labeling.trailing.conll"),
    ("labelstudio", "labelstudio/ls_sdk_export_coco_data.json"),
    ("labelstudio", "labelstudio/ls_sdk_export_json_min_polygon.json"),
    ("labelstudio", "labelstudio/ls_sdk_export_yolo_data.json"),
    ("labelstudio", "labelstudio/ls_sdk_export_yolo_data_keypoints.json"),
    ("labelstudio", "labelstudio/ls_sdk_export_yolo_data_obb_rotated.json"),
    ("labelstudio", "labelstudio/ls_sdk_csv_test2_unicode_choices.json"),
    ("labelstudio", "labelstudio/ls_sdk_csv_test_colliding_keys.json"),
    ("labelstudio", "labelstudio/lsf_named_entity/annotations_1.json"),
    ("labelstudio", "labelstudio/lsf_named_entity/tasks.json"),
]


def load(fmt: str, path: Path) -> tuple[dict, list[dict]]:
    with read_dataset(fmt, path) as bundle:
        return bundle.label_schema, list(bundle.records)


def export(fmt: str, path: Path, dst: Path) -> None:
    with read_dataset(fmt, path) as bundle:
        write_dataset(fmt, bundle, dst)


@pytest.mark.parametrize(("fmt", "rel"), ROUND_TRIPS, ids=[r[1] for r in ROUND_TRIPS])
def test_round_trip_gives_the_same_records(fixtures, tmp_path, fmt, rel):
    schema, records = load(fmt, fixtures / rel)
    assert records, "the fixture should give records"
    export(fmt, fixtures / rel, tmp_path / "out")
    again_schema, again = load(fmt, tmp_path / "out")
    assert again == records
    assert again_schema == schema


@pytest.mark.parametrize(("fmt", "rel"), ROUND_TRIPS[::4], ids=[r[1] for r in ROUND_TRIPS[::4]])
def test_native_round_trip_is_lossless(fixtures, tmp_path, fmt, rel):
    schema, records = load(fmt, fixtures / rel)
    assert convert(fmt, fixtures / rel, "loophub", tmp_path / "native") == len(records)
    assert load("loophub", tmp_path / "native") == (schema, records)


def test_coco_export_loads_in_pycocotools_and_scores_map_1(fixtures, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    convert("coco", fixtures / "coco/mmdet_coco_dummy_instances_val2017.json", "coco",
            tmp_path / "gt.json")
    gt = COCO(str(tmp_path / "gt.json"))
    original = json.loads((fixtures / "coco/mmdet_coco_dummy_instances_val2017.json").read_text())
    assert len(gt.getAnnIds()) == len(original["annotations"])
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                   "score": 1.0} for a in gt.dataset["annotations"]]
    evaluation = COCOeval(gt, gt.loadRes(detections), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


def test_voc_and_labelstudio_convert_to_coco_that_pycocotools_reads(fixtures, tmp_path):
    from pycocotools.coco import COCO

    convert("voc", fixtures / "voc/mmdet_VOCdevkit/VOC2007", "coco", tmp_path / "voc.json")
    convert("labelstudio", fixtures / "labelstudio/ls_sdk_export_coco_data.json", "coco",
            tmp_path / "ls.json")
    assert len(COCO(str(tmp_path / "voc.json")).getAnnIds()) == 2
    ls = COCO(str(tmp_path / "ls.json"))
    box = next(a for a in ls.dataset["annotations"] if a["category_id"] == 0)
    assert box["bbox"][0] == pytest.approx(31.941923774954628 * 5, rel=1e-6)


def _tags(path: Path, column: int = -1) -> list[list[str]]:
    sentences, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith(("-DOCSTART-", "#")):
            if current:
                sentences.append(current)
                current = []
            continue
        current.append(line.split("\t" if "\t" in line else None)[column])
    return sentences + ([current] if current else [])


@pytest.mark.parametrize("rel", ["conll/allennlp_conll2003.txt",
                                 "conll/spacy_ner_example_data/ner-token-per-line.iob",
                                 "conll/flair_fashion_eng.testa"])
def test_conll_export_scores_f1_1_against_the_source_in_seqeval(fixtures, tmp_path, rel):
    from seqeval.metrics import f1_score

    convert("conll", fixtures / rel, "conll", tmp_path / "out.conll")
    expected, exported = _tags(fixtures / rel), _tags(tmp_path / "out.conll")
    assert len(expected) == len(exported)
    assert f1_score(expected, exported) == pytest.approx(1.0)
    assert all(tag == "O" or tag[:2] in ("B-", "I-") for s in exported for tag in s)


def test_labelstudio_spans_count_code_points_and_export_utf16(tmp_path):
    text = "I 🤔 love Paris"
    start16 = len(text[:9].encode("utf-16-le")) // 2
    task = [{"id": 1, "data": {"text": text}, "annotations": [{"id": 5, "result": [{
        "id": "r1", "type": "labels", "from_name": "ner", "to_name": "text",
        "value": {"start": start16, "end": start16 + 5, "text": "Paris", "labels": ["LOC"]}}]}]}]
    (tmp_path / "t.json").write_text(json.dumps(task))
    _, records = load("labelstudio", tmp_path / "t.json")
    span = records[0]["annotations"][0]
    assert text[span["start"]:span["end"]] == "Paris"
    export("labelstudio", tmp_path / "t.json", tmp_path / "out.json")
    value = json.loads((tmp_path / "out.json").read_text())[0]["annotations"][0]["result"][0]
    assert (value["value"]["start"], value["value"]["end"]) == (start16, start16 + 5)


BAD_INPUTS = [
    ("coco", "edge/mmdet_coco_wrong_format_sample.json", "annotations[1].id"),
    ("labelstudio", "edge/lsf_rich_text_plain_mismatched_span.json", "result[0].value"),
    ("jsonl", "doccano/doccano_data_import_tests/intent/example.jsonl", "line 5"),
    ("csv", "doccano/doccano_data_import_tests/text_classification/example.invalid.2.csv",
     "line 2"),
    ("conll", "doccano/doccano_data_import_tests/sequence_labeling/labeling.invalid.conll",
     "line"),
]


@pytest.mark.parametrize(("fmt", "rel", "where"), BAD_INPUTS, ids=[b[1] for b in BAD_INPUTS])
def test_bad_files_name_the_file_and_the_place(fixtures, fmt, rel, where):
    with pytest.raises(InvalidInput) as caught:
        load(fmt, fixtures / rel)
    assert Path(rel).name in caught.value.message
    assert where in caught.value.message


def test_xml_bombs_are_refused(tmp_path):
    (tmp_path / "bomb.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY b "bbbb"><!ENTITY c "&b;&b;&b;">]>'
        "<annotation><filename>&c;</filename></annotation>")
    with pytest.raises(InvalidInput, match=r"bomb\.xml.*unsafe XML"):
        load("voc", tmp_path / "bomb.xml")


def test_zip_sources_are_read_and_traversal_is_refused(fixtures, tmp_path):
    archive = tmp_path / "voc.zip"
    root = fixtures / "voc/mmdet_VOCdevkit/VOC2007"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in root.rglob("*"):
            if path.is_file():
                zf.write(path, "VOC2007/" + path.relative_to(root).as_posix())
    assert load("voc", archive) == load("voc", root)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escape.txt", "x")
    with pytest.raises(InvalidInput, match="traversal"):
        safe_extract(evil, tmp_path / "out")
    assert not (tmp_path.parent / "escape.txt").exists()


def test_zip_bombs_are_refused(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.json", b"0" * (5 * 1024 * 1024))
    with pytest.raises(InvalidInput, match="zip bomb"):
        safe_extract(bomb, tmp_path / "out")


def test_records_failing_the_schema_are_reported_with_path_and_rule(tmp_path):
    (tmp_path / "records.jsonl").write_text(
        json.dumps({"id": "a", "annotations": []}) + "\n"
        + json.dumps({"id": "b", "annotations": [{"type": "bbox", "label": "x",
                                                  "bbox": [1, 2, 3]}]}) + "\n")
    with pytest.raises(InvalidInput) as caught:
        load("loophub", tmp_path / "records.jsonl")
    message = caught.value.message
    assert "record 'b'" in message and "$.annotations[0].bbox" in message
    assert "rule: minItems" in message


def test_records_without_a_label_schema_get_their_labels_as_classes(tmp_path):
    src = tmp_path / "records.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": "t", "annotations": [
        {"type": "text_class", "label": label}]}) + "\n" for i, label in [("a", "b"), ("b", "a")]))
    # writers take the classes before the first record
    assert convert("loophub", src, "loophub", tmp_path / "out") == 2
    assert json.loads((tmp_path / "out" / "label_schema.json").read_text()) == {
        "task": "mixed", "classes": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}]}


def test_exporters_refuse_what_the_format_cannot_hold(tmp_path):
    record = {"id": "t", "annotations": [{"type": "bbox", "label": "a", "bbox": [0.1, 0.1, 0.2,
                                                                              0.2],
                                          "normalized": True}]}
    bundle = Bundle({"task": "object_detection", "classes": [{"id": 0, "name": "a"}]}, [record])
    with pytest.raises(InvalidInput, match="pixel"):
        write_dataset("coco", bundle, tmp_path / "c.json")


def test_cli_convert_and_validate(fixtures, tmp_path, capsys):
    src = fixtures / "voc/mmdet_VOCdevkit/VOC2007"
    assert cli_main(["data", "convert", "-q", "--from", "voc", "--to", "coco", str(src),
                     str(tmp_path / "c.json")]) == 0
    assert cli_main(["data", "validate", "--format", "coco", str(tmp_path / "c.json")]) == 0
    bad = fixtures / "edge/mmdet_coco_wrong_format_sample.json"
    assert cli_main(["data", "validate", "--format", "coco", str(bad)]) == 2
    assert "is not unique" in capsys.readouterr().err
    assert cli_main(["data", "validate", "--format", "voc", str(tmp_path / "nope")]) == 2


def test_validate_learns_inferred_classes_reading_the_file_once(tmp_path, monkeypatch):
    """`data validate` on records without a label schema: one parse, verdicts in file order."""
    from loophub.datasets.formats import native, validate_source

    passes = []
    original = native.iter_jsonl
    monkeypatch.setattr(native, "iter_jsonl", lambda path: passes.append(path) or original(path))

    def records_file(name: str, *labels: str) -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps({"id": f"r{i}", "text": "t", "annotations": [
            {"type": "text_class", "label": label}]}) + "\n" for i, label in enumerate(labels)))
        return path

    assert validate_source("loophub", records_file("good.jsonl", "dog", "cat", "dog")) == 3
    assert len(passes) == 1
    # r0's empty label is wrong once r1 brings the first class: r0 is the error reported
    with pytest.raises(InvalidInput, match=r"record 'r0' at \$\.annotations\[0\]\.label"):
        validate_source("loophub", records_file("empty.jsonl", "", "cat"))
    assert validate_source("loophub", records_file("none.jsonl", "", "")) == 2  # no class at all
