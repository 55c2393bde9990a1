"""Example and invariance checks of a version's tests (loophub/models/gate.py), run where
models run: inside the evaluation job, on the loaded Predictor."""

from __future__ import annotations

import base64
import io
import string
from typing import Any

from loophub.models.gate import parse_transform, test_key


def run_checks(predictor, tests: list[dict]) -> list[dict]:
    """The outcome of each example or invariance test, in order (metric tests skipped)."""
    return [{**_run(predictor, test), "key": test_key(test)} for test in tests
            if test["kind"] != "metric"]


def _predict(predictor, given: dict) -> dict:
    if "text" in given:
        return predictor.predict_texts([given["text"]])[0]
    return predictor.predict_images([base64.b64decode(given["image"])])[0]


def _run(predictor, test: dict) -> dict:
    got = _predict(predictor, test["input"])
    if test["kind"] == "example":
        return {"passed": got["label"] == test["expect"], "got": got["label"],
                "expected": test["expect"], "score": max(got["scores"])}
    changed = transform(test["input"], test["transform"], predictor.task)
    after = _predict(predictor, changed)
    return {"passed": after["label"] == got["label"], "got": after["label"],
            "expected": got["label"], "transform": test["transform"]}


def transform(given: dict, spec: str, task: str) -> dict[str, Any]:
    """GIVEN's input changed by SPEC (gate.IMAGE_TRANSFORMS / TEXT_TRANSFORMS)."""
    name, arg = parse_transform(spec, task)
    if "text" in given:
        text = given["text"]
        changed = {"lowercase": text.lower, "uppercase": text.upper,
                   "strip_punctuation": lambda: text.translate(
                       str.maketrans("", "", string.punctuation)),
                   "append": lambda: f"{text}{arg}"}[name]()
        return {"text": changed}
    from PIL import Image, ImageEnhance, ImageOps

    image = Image.open(io.BytesIO(base64.b64decode(given["image"])))
    image.load()
    if name == "flip_horizontal":
        image = ImageOps.mirror(image)
    elif name == "flip_vertical":
        image = ImageOps.flip(image)
    elif name == "brightness":
        image = ImageEnhance.Brightness(image.convert("RGB")).enhance(1 + float(arg or 0))
    else:
        image = image.rotate(float(arg or 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return {"image": base64.b64encode(out.getvalue()).decode()}
