"""Evaluations end to end: a version registered from a real training job is evaluated by
a fairly scheduled job on the training runner (real Dask), and every number equals
scikit-learn's on the same predictions; the same inputs give the same numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loophub import errors

pytestmark = pytest.mark.training


def _test_split(folder):
    records = [json.loads(line) for line in (folder / "records.jsonl").open()]
    return sorted((r for r in records if r["split"] == "test"), key=lambda r: r["id"])


def test_a_trained_version_is_evaluated_by_a_job_as_scikit_learn_would(digits, tmp_path):
    from sklearn import metrics as sk

    from loophub.models.predictor import Predictor

    job = digits.training.run("image-cnn", dataset="digits@v1", workers=1,
                              per_worker={"cpu": 1, "mem": "2G"},
                              params={"epochs": 4, "image_size": 16, "batch_size": 32})
    job.wait(progress=False, timeout=300)
    version = digits.models.register("digits", job=job, card={"limits": "8x8 scans"})
    assert (version["job"], version["dataset"]) == (job.id, "digits@v1")
    assert version["metrics"]["test_accuracy"] == job.refresh().view["result"]["metrics"][
        "test_accuracy"]
    assert digits.models.lineage("digits@1")["job"] == job.id
    assert {"torch", "numpy", "distributed"} <= set(version["framework"]["packages"])

    evaluation = digits.models.evaluate("digits@v1", dataset="digits@v1", split="test",
                                        slices=["label", "split"], progress=False)
    assert (evaluation["state"], evaluation["dataset"], evaluation["split"]) == (
        "succeeded", "digits@v1", "test")
    result = evaluation["result"]
    # the same predictions, scored by scikit-learn in this process
    records = _test_split(tmp_path / "digits")
    predictor = Predictor.load(digits.models.artifact("digits@1"), version["meta"])
    predictions = predictor.predict_images([tmp_path / "digits" / r["media"]["path"]
                                            for r in records])
    truth = [int(r["annotations"][0]["label"]) for r in records]
    predicted = [p["index"] for p in predictions]
    scores = np.array([p["scores"] for p in predictions])
    labels = list(range(10))
    assert result["count"] == len(records) and result["skipped"] == 0
    got = result["metrics"]
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(truth, predicted), abs=1e-12)
    assert got["macro_f1"] == pytest.approx(sk.f1_score(
        truth, predicted, labels=labels, average="macro", zero_division=0), abs=1e-12)
    assert got["micro_f1"] == pytest.approx(sk.f1_score(
        truth, predicted, labels=labels, average="micro", zero_division=0), abs=1e-12)
    assert got["confusion"] == sk.confusion_matrix(truth, predicted, labels=labels).tolist()
    assert got["top_k"]["top_3"] == pytest.approx(sk.top_k_accuracy_score(
        truth, scores, k=3, labels=labels), abs=1e-12)
    assert set(result["slices"]["label"]) <= {str(i) for i in labels}
    assert list(result["slices"]["split"]) == ["test"]
    # reproducible: the same version on the same dataset version gives the same numbers
    again = digits.models.evaluate("digits@1", dataset="digits@v1", split="test",
                                   slices=["label", "split"], progress=False)
    assert again["result"]["metrics"] == result["metrics"]
    assert again["result"]["slices"] == result["slices"]
    assert [e["id"] for e in digits.models.evaluations("digits")] == [
        evaluation["id"], again["id"]]
    relations = {(m["model"], m["model_version"], m["relation"])
                 for m in digits.datasets.models("digits", "v1")}
    assert {("digits", "v1", "trained_on"), ("digits", "v1", "evaluated_on")} <= relations


def test_evaluations_are_checked_before_anything_runs(digits, api, tmp_path):
    import torch

    from tests.models.conftest import DIGITS, small_cnn

    digits.models.register("cnn", small_cnn(), example_input=torch.zeros(1, 1, 16, 16),
                           task="image_classification", labels=DIGITS)
    before = len(digits.training.jobs())
    with pytest.raises(errors.InvalidInput, match="not a slice field"):
        digits.models.evaluate("cnn", dataset="digits@v1", slices=["colour"])
    digits.datasets.create("texts", label_schema={
        "task": "text_classification", "classes": [{"id": 0, "name": "a"}]})
    digits.datasets.add_record("texts", {"id": "t1", "text": "hello", "annotations": []})
    digits.datasets.commit("texts", "one text")
    with pytest.raises(errors.InvalidInput, match="evaluate on a dataset of the model's task"):
        digits.models.evaluate("cnn", dataset="texts@v1")
    with pytest.raises(errors.NotFound, match="that you can see"):
        api.client("bob").models.evaluate("cnn", dataset="digits@v1")
    with pytest.raises(errors.InvalidInput, match="no recipe 'evaluate'"):
        digits.training.run("evaluate", dataset="digits@v1")
    assert len(digits.training.jobs()) == before  # nothing was queued
    with pytest.raises(errors.LoophubError, match="no records in split 'holdout'"):
        digits.models.evaluate("cnn", dataset="digits@v1", split="holdout", progress=False)
    failed = digits.models.evaluations("cnn@1")[-1]
    assert failed["state"] == "failed" and "holdout" in failed["error"]
    assert failed["result"] is None


def _bio(text: str, spans) -> list[str]:
    """IOB2 tags of TEXT's whitespace tokens (what the conll import's records hold)."""
    import re

    tags = []
    for match in re.finditer(r"\S+", text):
        inside = [s for s in spans if s[0] <= match.start() and match.end() <= s[1]]
        if not inside:
            tags.append("O")
        else:
            start, _, kind = inside[0]
            tags.append(f"{'B' if match.start() == start else 'I'}-{kind}")
    return tags


def test_a_tagger_trained_on_the_conll_fixture_is_evaluated_as_seqeval_would(api, pool,
                                                                           tmp_path):
    from seqeval.metrics import f1_score, precision_score, recall_score

    from loophub.models.predictor import Predictor
    from loophub.training.recipes.labels import spans
    from tests.training.test_recipes import fixtures, imported

    schema, records = imported("conll", fixtures() / "conll" / "allennlp_conll2003.txt")
    for n, record in enumerate(records):
        record["split"] = "train" if n % 2 else "test"
    folder = tmp_path / "conll"
    folder.mkdir()
    (folder / "label_schema.json").write_text(json.dumps(schema))
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    client = api.client("ann")
    client.datasets.create("conll", label_schema=schema)
    client.datasets.import_("conll", folder, "loophub", progress=False)
    client.datasets.commit("conll", "the CoNLL fixture")
    job = client.training.run("ner-tagger", dataset="conll@v1", per_worker={"cpu": 1,
                                                                         "mem": "2G"},
                              params={"epochs": 30, "min_freq": 1})
    job.wait(progress=False, timeout=300)
    version = client.models.register("tagger", job=job)
    evaluation = client.models.evaluate("tagger@1", dataset="conll@v1", split="test",
                                        slices=[], progress=False)
    got = evaluation["result"]["metrics"]
    tests = sorted((r for r in records if r["split"] == "test"), key=lambda r: r["id"])
    predictor = Predictor.load(client.models.artifact("tagger@1"), version["meta"])
    found = predictor.predict_records(tests, lambda record: None)
    truth = [_bio(r["text"], spans(r)) for r in tests]
    guessed = [_bio(r["text"], [(s["start"], s["end"], s["label"]) for s in p["spans"]])
               for r, p in zip(tests, found, strict=True)]
    assert evaluation["result"]["count"] == len(tests)
    assert got["precision"] == pytest.approx(precision_score(truth, guessed), abs=1e-12)
    assert got["recall"] == pytest.approx(recall_score(truth, guessed), abs=1e-12)
    assert got["f1"] == pytest.approx(f1_score(truth, guessed), abs=1e-12)
    assert got["f1"] > 0  # it learnt something from the handful of sentences
