"""A version's tests, which gate its promotion to ``champion`` (pure: no database).

Three kinds, checked when they are set (``check_tests``) and judged from the version's
evaluations (``judge``), which only the platform's own evaluation jobs write:

- ``metric``: a number of an evaluation on an exact dataset version and split is at least
  ``min`` and/or at most ``max``: ``{"kind": "metric", "metric": "accuracy", "min": 0.97,
  "dataset": "digits@v3", "split": "test"}``; ``metric`` is a dotted path into the
  evaluation's metrics (``macro_f1``, ``top_k.top_3``, ``per_class.7.recall``); with
  ``"slice": {"field": "label", "value": "7"}`` it reads that slice's metrics;
- ``example``: given this input, the model answers this label: ``{"kind": "example",
  "input": {"text": "..."} | {"image": "<base64>"}, "expect": "positive"}``;
- ``invariance``: the label does not change under a transform of the input
  (``TRANSFORMS``): ``{"kind": "invariance", "input": {...}, "transform": "lowercase"}``.

Examples and invariances run inside an evaluation job (``checks.run_checks``), whose result
carries their outcomes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from loophub.errors import InvalidInput

KINDS = ("metric", "example", "invariance")
IMAGE_TRANSFORMS = ("flip_horizontal", "flip_vertical", "brightness", "rotate")
TEXT_TRANSFORMS = ("lowercase", "uppercase", "strip_punctuation", "append")
TRANSFORM = re.compile(r"^(?P<name>[a-z_]+)(?::(?P<arg>.{1,200}))?$")
MAX_TESTS = 64
MAX_INPUT = 2 * 1024 * 1024  # characters of one example's input (a base64 image)
METRIC_PATH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_. -]{0,200}$")


def _refuse(index: int, message: str) -> InvalidInput:
    return InvalidInput(f"tests[{index}]: {message}", detail={"field": f"tests[{index}]"})


def check_tests(tests: Any, *, task: str, labels: list[str]) -> list[dict]:
    """TESTS checked for a model of TASK with LABELS, normalized (split defaults to test)."""
    if not isinstance(tests, list) or len(tests) > MAX_TESTS:
        raise InvalidInput(f"tests: a list of at most {MAX_TESTS} tests", detail={
            "field": "tests"})
    return [_check_one(i, test, task, labels) for i, test in enumerate(tests)]


def _check_one(i: int, test: Any, task: str, labels: list[str]) -> dict:
    if not isinstance(test, dict) or test.get("kind") not in KINDS:
        raise _refuse(i, f"an object whose kind is one of {', '.join(KINDS)}")
    if test["kind"] == "metric":
        return _check_metric(i, test)
    if task not in ("image_classification", "text_classification"):
        raise _refuse(i, f"{test['kind']} tests check a classifier's label; this model is "
                         f"{task} (use metric tests)")
    _check_input(i, test.get("input"), task)
    if test["kind"] == "example":
        if test.get("expect") not in labels:
            raise _refuse(i, f"expect: one of the model's labels ({', '.join(labels[:20])})")
        return {"kind": "example", "input": test["input"], "expect": test["expect"],
                "name": str(test.get("name") or f"example {i}")}
    transform = test.get("transform")
    parse_transform(transform if isinstance(transform, str) else "", task, index=i)
    return {"kind": "invariance", "input": test["input"], "transform": transform,
            "name": str(test.get("name") or f"invariance {i} ({transform})")}


def _check_metric(i: int, test: dict) -> dict:
    metric, dataset = test.get("metric"), test.get("dataset")
    if not isinstance(metric, str) or not METRIC_PATH.match(metric):
        raise _refuse(i, "metric: a metric's name or dotted path (accuracy, "
                         "per_class.7.recall)")
    if not isinstance(dataset, str) or "@" not in dataset:
        raise _refuse(i, "dataset: the dataset version it is measured on, NAME@VERSION")
    bounds = {k: test.get(k) for k in ("min", "max") if test.get(k) is not None}
    if not bounds or not all(isinstance(v, int | float) and math.isfinite(v)
                             for v in bounds.values()):
        raise _refuse(i, "min and/or max: the number the metric must reach")
    found_slice = test.get("slice")
    if found_slice is not None and not (
            isinstance(found_slice, dict) and isinstance(found_slice.get("field"), str)
            and isinstance(found_slice.get("value"), str)):
        raise _refuse(i, "slice: {field: label|split|metadata.<key>, value: text}")
    split = test.get("split", "test")
    if split is not None and not isinstance(split, str):
        raise _refuse(i, "split: a split's name (null: every record)")
    name = test.get("name") or f"{metric} {'>= ' + str(bounds['min']) if 'min' in bounds else ''}"
    return {"kind": "metric", "metric": metric, "dataset": dataset, "split": split,
            "slice": found_slice, **bounds, "name": str(name).strip()}


def _check_input(i: int, given: Any, task: str) -> None:
    key = "image" if task == "image_classification" else "text"
    if not isinstance(given, dict) or set(given) != {key} or not isinstance(given[key], str) \
            or len(given[key]) > MAX_INPUT:
        what = "base64 of an image file" if key == "image" else "a text"
        raise _refuse(i, f"input: {{{key!r}: ...}} ({what}, at most {MAX_INPUT} characters)")


def parse_transform(text: str, task: str, *, index: int = 0) -> tuple[str, str | None]:
    found = TRANSFORM.match(text or "")
    allowed = IMAGE_TRANSFORMS if task == "image_classification" else TEXT_TRANSFORMS
    if not found or found["name"] not in allowed:
        raise _refuse(index, f"transform: one of {', '.join(allowed)} "
                             "(brightness:0.1, rotate:10, append:TEXT take an argument)")
    name, arg = found["name"], found["arg"]
    if name in ("brightness", "rotate"):
        try:
            float(arg or "")
        except ValueError:
            raise _refuse(index, f"transform: {name}:<number>") from None
    if name == "append" and not arg:
        raise _refuse(index, "transform: append:<text>")
    return name, arg


def pin(tests: list[dict], resolve) -> list[dict]:
    """The metric tests' datasets as exact versions (RESOLVE("name@ref") -> "name@vN"), so a
    tag that moves later does not change what the gate measured."""
    return [{**t, "dataset": resolve(t["dataset"])} if t["kind"] == "metric" else t
            for t in tests]


def needed(tests: list[dict]) -> list[dict]:
    """The evaluations the tests read: one per (dataset, split) with the slice fields its
    tests use; the first also runs the example and invariance checks."""
    wanted: dict[tuple[str, str | None], set[str]] = {}
    for test in tests:
        if test["kind"] == "metric":
            fields = wanted.setdefault((test["dataset"], test["split"]), set())
            if test.get("slice"):
                fields.add(test["slice"]["field"])
    return [{"dataset": d, "split": s, "slices": sorted(f)} for (d, s), f in wanted.items()]


def _lookup(metrics: dict, path: str) -> Any:
    value: Any = metrics
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _metric_outcome(test: dict, evaluations: list[dict]) -> dict:
    matching = [e for e in evaluations if e["dataset"] == test["dataset"]
                and e["split"] == test["split"] and e.get("result")]
    if not matching:
        return {"passed": False, "why": f"no evaluation on {test['dataset']} "
                                        f"({test['split'] or 'every split'}) in this run"}
    result = matching[-1]["result"]
    metrics = result.get("metrics") or {}
    if test.get("slice"):
        field, value = test["slice"]["field"], test["slice"]["value"]
        metrics = ((result.get("slices") or {}).get(field) or {}).get(value)
        if metrics is None:
            return {"passed": False, "evaluation": matching[-1]["id"],
                    "why": f"no records with {field} = {value!r} in the evaluation"}
    value = _lookup(metrics, test["metric"])
    if not isinstance(value, int | float):
        return {"passed": False, "evaluation": matching[-1]["id"],
                "why": f"the evaluation has no number {test['metric']!r}"}
    passed = value >= test.get("min", -math.inf) and value <= test.get("max", math.inf)
    return {"passed": bool(passed), "value": value, "evaluation": matching[-1]["id"]}


def test_key(test: dict) -> str:
    """What identifies an example or invariance test: a check's outcome counts for the
    test it was run for, not for one set later in its place."""
    return hashlib.sha256(json.dumps(test, sort_keys=True).encode()).hexdigest()


def judge(tests: list[dict], evaluations: list[dict]) -> dict:
    """Each test's outcome from EVALUATIONS (views of this version's evaluations, their
    results in), and the status: passed only when every test passed and there is one."""
    checks: dict[str, dict] = {}
    for evaluation in evaluations:
        for check in (evaluation.get("result") or {}).get("checks") or ():
            checks[check.get("key", "")] = check
    outcomes = []
    for index, test in enumerate(tests):
        if test["kind"] == "metric":
            outcome = _metric_outcome(test, evaluations)
        else:
            found = checks.get(test_key(test))
            outcome = {k: v for k, v in found.items() if k != "key"} if found else {
                "passed": False, "why": "the check did not run (models.test runs it)"}
        outcomes.append({"test": index, "name": test["name"], "kind": test["kind"],
                         **outcome})
    status = "passed" if outcomes and all(o["passed"] for o in outcomes) else "failed"
    return {"status": status, "results": outcomes,
            "evaluations": [e["id"] for e in evaluations]}
