"""The promotion gate: a version's tests (metric thresholds, per-slice thresholds,
examples, invariances) run as evaluation jobs, are judged by the platform, and decide
whether champion may point at the version."""

from __future__ import annotations

import base64

import pytest

from loophub import errors
from loophub.models import gate
from tests.models.conftest import DIGITS

TEXT = ["negative", "positive"]


def test_tests_are_checked_with_clear_messages():
    ok = gate.check_tests([{"kind": "metric", "metric": "accuracy", "min": 0.9,
                            "dataset": "d@v1"}], task="image_classification", labels=DIGITS)
    assert ok[0]["split"] == "test" and ok[0]["name"] == "accuracy >= 0.9"
    cases = [
        ({"kind": "metric", "metric": "accuracy", "dataset": "d@v1"}, "min and/or max"),
        ({"kind": "metric", "metric": "accuracy", "min": 1, "dataset": "d"}, "NAME@VERSION"),
        ({"kind": "example", "input": {"text": "x"}, "expect": "7"}, "input: {'image'"),
        ({"kind": "example", "input": {"image": "aGk="}, "expect": "cat"}, "one of the "
                                                                          "model's labels"),
        ({"kind": "invariance", "input": {"image": "aGk="}, "transform": "lowercase"},
         "flip_horizontal"),
        ({"kind": "invariance", "input": {"image": "aGk="}, "transform": "rotate:x"},
         "rotate:<number>"),
        ({"kind": "vibes"}, "kind is one of"),
    ]
    for test, message in cases:
        with pytest.raises(errors.InvalidInput, match=message):
            gate.check_tests([test], task="image_classification", labels=DIGITS)
    with pytest.raises(errors.InvalidInput, match="use metric tests"):
        gate.check_tests([{"kind": "example", "input": {"text": "x"}, "expect": "a"}],
                         task="ner", labels=["a"])


def test_judge_reads_metrics_slices_and_checks():
    tests = gate.check_tests([
        {"kind": "metric", "metric": "accuracy", "min": 0.5, "dataset": "d@v1"},
        {"kind": "metric", "metric": "per_class.a.recall", "max": 0.2, "dataset": "d@v1"},
        {"kind": "metric", "metric": "accuracy", "min": 0.9, "dataset": "d@v1",
         "slice": {"field": "label", "value": "b"}},
        {"kind": "example", "input": {"text": "hi"}, "expect": "a"}],
        task="text_classification", labels=["a", "b"])
    evaluation = {"id": "e1", "dataset": "d@v1", "split": "test", "result": {
        "metrics": {"accuracy": 0.6, "per_class": {"a": {"recall": 0.1}}},
        "slices": {"label": {"b": {"accuracy": 0.95}}},
        "checks": [{"passed": True, "got": "a", "expected": "a",
                    "key": gate.test_key(tests[3])}]}}
    judged = gate.judge(tests, [evaluation])
    assert judged["status"] == "passed"
    assert [r["value"] for r in judged["results"][:3]] == [0.6, 0.1, 0.95]
    evaluation["result"]["metrics"]["accuracy"] = 0.4
    failed = gate.judge(tests, [evaluation])
    assert failed["status"] == "failed" and not failed["results"][0]["passed"]
    missing = gate.judge(tests, [{**evaluation, "split": "val"}])
    assert "no evaluation on d@v1 (test)" in missing["results"][0]["why"]
    assert gate.judge([], [])["status"] == "failed"  # no tests: nothing passed
    # a check run for another example does not count for this one
    other = gate.check_tests([{"kind": "example", "input": {"text": "hi"}, "expect": "b"}],
                             task="text_classification", labels=["a", "b"])
    stale = gate.judge(other, [evaluation])["results"][0]
    assert not stale["passed"] and "did not run" in stale["why"]


@pytest.mark.training
def test_champion_moves_only_to_a_version_whose_tests_passed(digits, tmp_path):
    import torch

    from loophub.models.predictor import Predictor
    from tests.models.conftest import small_cnn

    version = digits.models.register("cnn", small_cnn(), task="image_classification",
                                      labels=DIGITS, dataset="digits@v1",
                                      example_input=torch.zeros(1, 1, 16, 16))
    digits.datasets.tag("digits", "base", 1)
    image = (tmp_path / "digits" / "d0000.png")
    image = next((tmp_path / "digits").glob("*.png")) if not image.exists() else image
    answer = Predictor.load(digits.models.artifact("cnn@1"), version["meta"]).predict_images(
        [image])[0]["label"]
    b64 = base64.b64encode(image.read_bytes()).decode()
    passing = [
        {"kind": "metric", "metric": "accuracy", "min": 0.0, "dataset": "digits@base"},
        {"kind": "metric", "metric": "count", "min": 1, "dataset": "digits@base",
         "split": None},
        {"kind": "metric", "metric": "accuracy", "min": 0.0, "dataset": "digits@base",
         "slice": {"field": "split", "value": "test"}},
        {"kind": "example", "input": {"image": b64}, "expect": answer},
        {"kind": "invariance", "input": {"image": b64}, "transform": "brightness:0"}]
    view = digits.models.set_tests("cnn@1", passing, reason="gate")
    assert view["tests"][0]["dataset"] == "digits@v1"  # the tag, pinned
    assert view["test_status"] == "untested"
    outcome = digits.models.test("cnn@1", progress=False)
    assert outcome["status"] == "passed", outcome
    assert len(outcome["evaluations"]) == 2  # one per (dataset, split)
    digits.models.alias("cnn", "champion", 1, reason="tests passed")
    assert "forced" not in digits.models.history("cnn", subject="alias:champion")[-1]["to"]

    digits.models.set_tests("cnn@1", [{"kind": "metric", "metric": "accuracy", "min": 1.01,
                                       "dataset": "digits@v1"}])
    assert digits.models.test("cnn@1", progress=False)["status"] == "failed"
    assert digits.models.get("cnn@1")["test_status"] == "failed"
    digits.models.remove_alias("cnn", "champion")
    with pytest.raises(errors.Conflict, match=r"tests have not passed \(failed\)"):
        digits.models.alias("cnn", "champion", 1)
    history = [e["action"] for e in digits.models.history("cnn", subject="v1")]
    assert history.count("tests.run") == 2 and history.count("tests.set") == 2
    # the same from a terminal
    from loophub.cli import main

    auth = ["--url", digits.url, "--token", "user:ann"]
    assert main(["models", "test", "cnn@1", *auth]) == 1  # a failing test: exit 1
    assert main(["models", "evaluate", "cnn@1", "--dataset", "digits@v1", "--json",
                 *auth]) == 0
    capsys_rows = compare_json(main, auth)
    assert capsys_rows[0]["version"] == 1 and capsys_rows[0]["tests"] == "failed"
    assert "digits@v1/test accuracy" in capsys_rows[0]


def compare_json(main, auth):
    import contextlib
    import io
    import json

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["models", "compare", "cnn", "--json", *auth]) == 0
    return json.loads(out.getvalue())
