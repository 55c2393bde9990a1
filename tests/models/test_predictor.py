"""Predictor and evaluate() on artifacts the built-in recipes really trained (in this
process, a few short epochs each, on the generated data of tests/training/test_recipes):
the predictor's outputs equal the traced module's on the metadata's preprocessing done
by hand, evaluate() agrees with scikit-learn and seqeval on the same predictions and is
deterministic, and bad artifacts or metadata are refused with what was wrong.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loophub.errors import InvalidInput
from loophub.models.evaluation import evaluate, evaluate_version
from loophub.models.predictor import Predictor
from loophub.training.context import FolderChannel
from loophub.training.data import MaterializedVersion
from loophub.training.recipes import recipe
from tests.training.test_recipes import (
    SHAPES,
    TOPICS,
    _image_record,
    _split,
    context,
    ner_records,
    shape_images,
    topic_records,
    version_of,
)


@dataclass
class Trained:
    artifact: bytes
    meta: dict
    version: MaterializedVersion

    def predictor(self) -> Predictor:
        return Predictor.load(self.artifact, self.meta)

    def test_records(self) -> list[dict]:
        return list(self.version.records("test"))


def train(folder: Path, name: str, records: list[dict], schema: dict, params: dict,
          paths: dict | None = None) -> Trained:
    """NAME trained in this process on RECORDS; its artifact, metadata and version."""
    torch.manual_seed(0)
    version = version_of(folder, records, schema, paths, name=name)
    out = folder / "run"
    recipe(name).train(context(name, version, FolderChannel(out), params))
    return Trained((out / "model.pt").read_bytes(),
                   json.loads((out / "model.json").read_text()), version)


def digit_records(folder: Path, count: int) -> tuple[list[dict], dict]:
    """COUNT of scikit-learn's bundled 8x8 digits as 16x16 grey PNGs, with a metadata
    field to slice by."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    records, paths = [], {}
    for n in range(count):
        pixels = (digits.images[n] * 255 / 16).astype(np.uint8)
        image = Image.fromarray(pixels).resize((16, 16), Image.NEAREST)
        record = _image_record(folder, f"d{n:04d}", image,
                               [{"type": "image_class", "label": str(digits.target[n])}],
                               _split(n, count), paths)
        record["metadata"] = {"scanner": "a" if n % 3 else "b"}
        records.append(record)
    return records, paths


def class_schema(task: str, names: list[str]) -> dict:
    return {"task": task, "classes": [{"id": i, "name": n} for i, n in enumerate(names)]}


@pytest.fixture(scope="module")
def image_model(tmp_path_factory) -> Trained:
    folder = tmp_path_factory.mktemp("image")
    records, paths = digit_records(folder / "images", 200)
    return train(folder, "image-cnn", records,
                 class_schema("image_classification", [str(d) for d in range(10)]),
                 {"epochs": 5, "batch_size": 32, "image_size": 8, "augment": False}, paths)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Trained:
    return train(tmp_path_factory.mktemp("text"), "text-classifier", topic_records(320),
                 class_schema("text_classification", sorted(TOPICS)),
                 {"epochs": 15, "batch_size": 16, "max_len": 32, "hidden": 32,
                  "embedding_dim": 32})


@pytest.fixture(scope="module")
def ner_model(tmp_path_factory) -> Trained:
    # max_len 8: most sentences are longer, so prediction tags them in chunks
    return train(tmp_path_factory.mktemp("ner"), "ner-tagger", ner_records(240),
                 class_schema("ner", ["PER", "ORG", "LOC"]),
                 {"epochs": 10, "batch_size": 16, "max_len": 8, "hidden": 32,
                  "embedding_dim": 32})


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Trained:
    folder = tmp_path_factory.mktemp("detect")
    records, paths = shape_images(folder / "images", 60)
    return train(folder, "detector", records, class_schema("object_detection", SHAPES),
                 {"epochs": 2, "batch_size": 8, "image_size": 32, "width": 8}, paths)


# -- what the traced module gives on the metadata's preprocessing, by hand ------------------

def by_hand_image(path: Path, pre: dict) -> torch.Tensor:
    """preprocess applied as its keys say: mode, stretched to size, scale, mean, std."""
    height, width = pre["size"]
    with Image.open(path) as image:
        array = np.asarray(image.convert(pre["mode"]).resize((width, height),
                                                             Image.BILINEAR),
                           dtype=np.float32) * np.float32(pre["scale"])
    pixels = torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    return ((pixels - torch.tensor(pre["mean"]).view(-1, 1, 1))
            / torch.tensor(pre["std"]).view(-1, 1, 1))


def test_image_classifier_predicts_as_the_traced_module(image_model):
    predictor = image_model.predictor()
    records = image_model.test_records()
    paths = [image_model.version.media_path(r) for r in records]
    module = torch.jit.load(io.BytesIO(image_model.artifact))
    pre = image_model.meta["preprocess"]
    assert pre["mode"] == "L"
    with torch.no_grad():
        expected = torch.softmax(module(torch.stack([by_hand_image(p, pre) for p in paths])),
                                 1)
    found = predictor.predict_records(records, image_model.version.media_path, batch_size=7)
    assert len(found) == len(records)
    assert [p["index"] for p in found] == expected.argmax(1).tolist()
    assert [p["label"] for p in found] == [predictor.labels[p["index"]] for p in found]
    for prediction, row in zip(found, expected, strict=True):
        assert sum(prediction["scores"]) == pytest.approx(1.0, abs=1e-5)
        assert prediction["scores"] == pytest.approx(row.tolist(), abs=1e-5)
    # every input kind gives the same prediction: path (str, Path), bytes, PIL image
    with Image.open(paths[0]) as image:
        kinds = [str(paths[0]), paths[0], paths[0].read_bytes(), image]
        for p in predictor.predict_images(kinds):  # a batch of 4, not 7: equal to 1e-5
            assert p["label"] == found[0]["label"] and p["index"] == found[0]["index"]
            assert p["scores"] == pytest.approx(found[0]["scores"], abs=1e-5)
    assert predictor.task == "image_classification" and predictor.labels == list("0123456789")


def test_text_classifier_predicts_as_the_traced_module(text_model):
    from loophub.training.recipes.text import Tokenizer

    predictor = text_model.predictor()
    texts = [r["text"] for r in text_model.test_records()]
    encoder = Tokenizer.from_json(text_model.meta["preprocess"]["tokenizer"])
    module = torch.jit.load(io.BytesIO(text_model.artifact))
    found = predictor.predict_texts(texts, batch_size=5)
    for text, prediction in zip(texts, found, strict=True):
        ids, _ = encoder.encode(text)
        with torch.no_grad():
            expected = torch.softmax(module(torch.tensor([ids])), 1)[0]
        assert prediction["index"] == int(expected.argmax())
        assert prediction["label"] == text_model.meta["labels"][prediction["index"]]
        assert sum(prediction["scores"]) == pytest.approx(1.0, abs=1e-5)
        assert prediction["scores"] == pytest.approx(expected.tolist(), abs=1e-5)
    assert predictor.predict_texts([""])[0]["label"] in predictor.labels  # no tokens at all


def test_ner_predicts_as_the_traced_module_chunk_by_chunk(ner_model):
    from loophub.training.recipes.text import Tokenizer, tags_to_spans

    predictor = ner_model.predictor()
    pre = ner_model.meta["preprocess"]
    encoder = Tokenizer.from_json(pre["tokenizer"])
    module = torch.jit.load(io.BytesIO(ner_model.artifact))
    texts = [r["text"] for r in ner_model.test_records()]
    found = predictor.predict_texts(texts, batch_size=16)
    chunked = 0
    for text, prediction in zip(texts, found, strict=True):
        offsets = encoder.tokens(text)
        expected = set()
        for start in range(0, len(offsets), encoder.max_len):  # chunks of max_len tokens
            piece = offsets[start:start + encoder.max_len]
            ids = [encoder.id_of(text[s:e]) for s, e in piece]
            with torch.no_grad():
                tags = [pre["tags"][i] for i in module(torch.tensor([ids]))[0].argmax(-1)]
            expected |= set(tags_to_spans(tags, piece))
            chunked += start > 0
        assert {(s["start"], s["end"], s["label"]) for s in prediction["spans"]} == expected
        for span in prediction["spans"]:
            assert text[span["start"]:span["end"]] == span["text"]
            assert 0 < span["score"] <= 1
    assert chunked > 0  # some texts were longer than max_len
    assert predictor.predict_texts(["", "   "]) == [{"spans": []}, {"spans": []}]


def test_detector_boxes_are_the_decoded_maps_in_the_original_pixels(detector):
    from loophub.training.recipes.detection import decode

    predictor = detector.predictor()
    records = detector.test_records()
    paths = [detector.version.media_path(r) for r in records]
    module = torch.jit.load(io.BytesIO(detector.artifact))
    settings = {k: detector.meta["decode"][k] for k in ("score_threshold", "top_k",
                                                         "peak_kernel")}
    # an artifact trained 2 epochs scores low: every peak, the best 10
    settings.update(score_threshold=0.0, top_k=10)
    found = predictor.predict_images(paths, score_threshold=0.0, top_k=10)
    with torch.no_grad():
        maps = module(torch.stack([by_hand_image(p, detector.meta["preprocess"])
                                   for p in paths]))
    decoded = decode(*maps, **settings)
    boxes = 0
    for path, prediction, expected in zip(paths, found, decoded, strict=True):
        with Image.open(path) as image:
            width, height = image.size
        assert len(prediction["boxes"]) == len(expected["scores"])
        for box, fraction, score, index in zip(prediction["boxes"], expected["boxes"],
                                               expected["scores"], expected["labels"],
                                               strict=True):
            x, y, w, h = box["box"]
            assert box["box"] == pytest.approx(
                (fraction * torch.tensor([width, height, width, height])).tolist(), abs=1e-3)
            assert x >= -1e-3 and y >= -1e-3 and x + w <= width + 1e-3
            assert y + h <= height + 1e-3
            assert box["score"] == pytest.approx(float(score), abs=1e-6)
            assert box["index"] == int(index) and box["label"] == SHAPES[box["index"]]
            boxes += 1
    assert boxes > 0


# -- evaluate ---------------------------------------------------------------------------------

def without_timing(result: dict) -> dict:
    assert set(result["timing"]) == {"read_s", "predict_s", "metrics_s"}
    return {k: v for k, v in result.items() if k != "timing"}


def test_classification_evaluation_is_scikit_learn_on_the_predictions(text_model):
    from sklearn.metrics import accuracy_score, f1_score

    from loophub.training.recipes.labels import class_label

    predictor = text_model.predictor()
    records = text_model.test_records()
    labels = text_model.meta["labels"]
    untrusted = [{"id": "zz-model", "text": "the team won", "split": "test",
                  "annotations": [{"type": "text_class", "label": "sports",
                                   "source": {"kind": "model", "name": "m"}}]},
                 {"id": "zz-rejected", "text": "shares fell", "split": "test",
                  "annotations": [{"type": "text_class", "label": "business",
                                   "review": {"state": "rejected"}}]},
                 {"id": "zz-unknown", "text": "a poem", "split": "test",
                  "annotations": [{"type": "text_class", "label": "poetry"}]}]
    schema = text_model.version.label_schema
    result = evaluate(predictor, [*records, *untrusted], text_model.version.media_path,
                      label_schema=schema, slices=("label", "split"))
    assert result["task"] == "text_classification"
    assert result["count"] == len(records) and result["skipped"] == 3
    assert result["skipped_by_reason"] == {"no_truth": 2, "unknown_label": 1}

    predicted = [p["index"] for p in predictor.predict_records(records, lambda r: None)]
    truth = [labels.index(class_label(r, "text_class")) for r in records]
    overall = result["metrics"]
    assert overall["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-12)
    assert overall["macro_f1"] == pytest.approx(
        f1_score(truth, predicted, labels=range(len(labels)), average="macro",
                 zero_division=0), abs=1e-12)
    assert overall["accuracy"] > 0.5  # chance: 0.25
    assert set(result["slices"]["split"]) == {"test"}
    assert result["slices"]["split"]["test"]["accuracy"] == overall["accuracy"]
    per_label = result["slices"]["label"]
    assert sum(m["count"] for m in per_label.values()) == len(records)
    for name, metrics in per_label.items():
        rows = [i for i, t in enumerate(truth) if labels[t] == name]
        assert metrics["accuracy"] == pytest.approx(
            accuracy_score([truth[i] for i in rows], [predicted[i] for i in rows]))

    # deterministic, whatever order the records come in
    again = evaluate(predictor, list(reversed([*records, *untrusted])),
                     text_model.version.media_path, label_schema=schema,
                     slices=("label", "split"))
    assert without_timing(again) == without_timing(result)
    assert json.dumps(without_timing(again), sort_keys=True) == json.dumps(
        without_timing(result), sort_keys=True)


def test_ner_evaluation_is_seqeval_on_the_predictions(ner_model):
    from seqeval.metrics import f1_score, precision_score, recall_score

    from loophub.training.recipes.labels import spans
    from loophub.training.recipes.text import Tokenizer, bio_tags, record_offsets

    predictor = ner_model.predictor()
    records = ner_model.test_records()
    first = evaluate_version(predictor, ner_model.version, "test")
    second = evaluate_version(predictor, ner_model.version, "test")
    assert without_timing(first) == without_timing(second)
    assert first["count"] == len(records) and first["skipped"] == 0
    assert first["slices"] == {}  # "label" slices classification only

    encoder = Tokenizer.from_json(ner_model.meta["preprocess"]["tokenizer"])
    import re

    regex = re.compile(encoder.pattern)
    names = set(predictor.labels)
    truth_tags, found_tags = [], []
    for record, prediction in zip(records, predictor.predict_records(records, lambda r: None),
                                  strict=True):
        offsets = record_offsets(record, regex)
        truth_tags.append(bio_tags(offsets, spans(record), names))
        found_tags.append(bio_tags(offsets, [(s["start"], s["end"], s["label"])
                                             for s in prediction["spans"]], names))
    overall = first["metrics"]
    assert overall["f1"] == pytest.approx(f1_score(truth_tags, found_tags), abs=1e-12)
    assert overall["precision"] == pytest.approx(precision_score(truth_tags, found_tags),
                                                 abs=1e-12)
    assert overall["recall"] == pytest.approx(recall_score(truth_tags, found_tags), abs=1e-12)
    assert overall["f1"] > 0.3


def test_image_evaluation_by_split_and_metadata_is_deterministic(image_model):
    from sklearn.metrics import accuracy_score

    predictor = image_model.predictor()
    version = image_model.version
    slices = ("label", "split", "metadata.scanner")
    first = evaluate_version(predictor, version, None, slices)
    second = evaluate_version(predictor, version, None, slices)
    assert without_timing(first) == without_timing(second)
    assert first["count"] == version.count(None) and first["skipped"] == 0
    assert set(first["slices"]["split"]) == {"train", "val", "test"}
    assert set(first["slices"]["metadata.scanner"]) == {"a", "b"}
    assert sum(m["count"] for m in first["slices"]["metadata.scanner"].values()) == \
        first["count"]
    test = list(version.records("test"))
    predicted = [p["index"] for p in predictor.predict_records(test, version.media_path)]
    truth = [int(r["annotations"][0]["label"]) for r in test]
    assert first["slices"]["split"]["test"]["accuracy"] == pytest.approx(
        accuracy_score(truth, predicted), abs=1e-12)
    assert first["metrics"]["accuracy"] > 0.3  # chance: 0.1


def test_detector_evaluation_scores_map(detector):
    predictor = detector.predictor()
    result = evaluate_version(predictor, detector.version, "test", ("split",))
    again = evaluate_version(predictor, detector.version, "test", ("split",))
    assert without_timing(result) == without_timing(again)
    assert result["count"] == detector.version.count("test")
    overall = result["metrics"]
    assert {"map", "map_50", "map_75", "per_class"} <= set(overall)
    assert 0.0 <= overall["map_50"] <= 1.0
    assert result["slices"]["split"]["test"] == overall


# -- signatures and refusals ------------------------------------------------------------------

def test_signature_describes_the_predictions(text_model, ner_model):
    import jsonschema

    for trained, instance in ((text_model, "The striker scored."),
                              (ner_model, "Anna Schmidt visited Paris.")):
        predictor = trained.predictor()
        schema = predictor.signature()
        jsonschema.Draft202012Validator(schema["request"]).validate(
            {"instances": [{"text": instance}]})
        predictions = predictor.predict_texts([instance])
        jsonschema.Draft202012Validator(schema["response"]).validate(
            {"predictions": predictions})
        label = json.dumps(schema["response"])
        assert all(name in label for name in predictor.labels)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"predictions": [{"label": "nope", "index": 0, "scores": [1]}]},
                                schema["response"])


def test_bad_artifacts_and_metadata_are_refused(text_model, tmp_path):
    meta = text_model.meta
    for garbage in (b"", b"not a model at all", text_model.artifact[:200]):
        with pytest.raises(InvalidInput, match="not a TorchScript module"):
            Predictor.load(garbage, meta)
    with open(tmp_path / "weights.pt", "wb") as out:  # a plain torch.save file is not one
        torch.save({"w": torch.zeros(2)}, out)
    with pytest.raises(InvalidInput, match="not a TorchScript module"):
        Predictor.load((tmp_path / "weights.pt").read_bytes(), meta)
    with pytest.raises(InvalidInput, match="task 'captioning' has no predictor"):
        Predictor.load(text_model.artifact, {**meta, "task": "captioning"})
    with pytest.raises(InvalidInput, match="format 'onnx'"):
        Predictor.load(text_model.artifact, {**meta, "format": "onnx"})
    with pytest.raises(InvalidInput, match=r"preprocess\.tags"):
        Predictor.load(text_model.artifact, {**meta, "task": "ner"})
    predictor = text_model.predictor()
    with pytest.raises(InvalidInput, match="use predict_texts"):
        predictor.predict_images([b"\x89PNG"])
    with pytest.raises(InvalidInput, match="dataset's task is ner"):
        evaluate(predictor, [], lambda r: None, label_schema={"task": "ner", "classes": []})
    with pytest.raises(InvalidInput, match="not a slice field"):
        evaluate(predictor, [], lambda r: None, label_schema=text_model.version.label_schema,
                 slices=("colour",))


def test_an_unreadable_image_is_the_callers_error(image_model):
    with pytest.raises(InvalidInput, match=r"images\[1\]: not an image"):
        image_model.predictor().predict_images(
            [image_model.version.media_path(image_model.test_records()[0]), b"not png"])
