"""The input/output signature of a model version: JSON Schemas of one prediction request
and its response, derived from the task and the artifact's label names (never from user
code), so a server can check every request before the model sees it and every client
knows what comes back. The request holds ``instances``: base64 images or texts; an image
classifier's instance may instead give its ``pixels`` (0-255 intensities, ints or floats,
at the model's input size), the numeric form other servers take as a tensor."""

from __future__ import annotations

from typing import Any

from loophub.errors import InvalidInput

IMAGE_TASKS = ("image_classification", "object_detection")
TEXT_TASKS = ("text_classification", "ner")
TASKS = IMAGE_TASKS + TEXT_TASKS
MAX_INSTANCES = 256
MAX_IMAGE_BASE64 = 16 * 1024 * 1024  # characters of one base64 image
MAX_TEXT = 100_000                     # code points of one text

_PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}


def check_task(task: str) -> str:
    if task not in TASKS:
        raise InvalidInput(f"task {task!r} has no model support here; one of "
                           f"{', '.join(TASKS)}", detail={"field": "task"})
    return task


_IMAGE = {"type": "string", "contentEncoding": "base64", "minLength": 4,
          "maxLength": MAX_IMAGE_BASE64,
          "description": "a PNG, JPEG, GIF, BMP or WebP file, base64-encoded"}


def pixels_schema(preprocess: dict | None) -> dict[str, Any]:
    """An image as nested arrays of 0-255 intensities: [height][width] for a grey model,
    [height][width][3] for an RGB one, at the model's input size when PREPROCESS (the
    artifact's) says it; JSON numbers, so float64 and ints are both taken (and cast)."""
    value: dict[str, Any] = {"type": "number", "minimum": 0, "maximum": 255}
    size = (preprocess or {}).get("size")
    height, width = (size, size) if isinstance(size, int) else (size or (None, None))

    def axis(items: dict, length: int | None) -> dict[str, Any]:
        bounds = {"minItems": length, "maxItems": length} if length else {"minItems": 1}
        return {"type": "array", **bounds, "items": items}

    mode = (preprocess or {}).get("mode")
    pixel = axis(value, 3) if mode == "RGB" else value if mode == "L" else {
        "anyOf": [value, axis(value, 3)]}
    return {**axis(axis(pixel, width), height),
            "description": "the image's 0-255 intensities, [height][width] (grey) or "
                           "[height][width][3] (RGB), at the model's input size"}


def _instance(task: str, preprocess: dict | None = None) -> dict[str, Any]:
    if task == "image_classification":
        # exactly one of the two forms (minProperties/maxProperties keep the errors
        # naming the field, which oneOf would not)
        return {"type": "object", "minProperties": 1, "maxProperties": 1,
                "additionalProperties": False,
                "properties": {"image": _IMAGE, "pixels": pixels_schema(preprocess)},
                "description": "one of image (a base64 file) or pixels"}
    if task in IMAGE_TASKS:
        return {"type": "object", "required": ["image"], "additionalProperties": False,
                "properties": {"image": _IMAGE}}
    return {"type": "object", "required": ["text"], "additionalProperties": False,
            "properties": {"text": {"type": "string", "maxLength": MAX_TEXT}}}


def _prediction(task: str, labels: list[str]) -> dict[str, Any]:
    label = {"type": "string", "enum": list(labels)}
    index = {"type": "integer", "minimum": 0, "maximum": max(len(labels) - 1, 0)}
    if task in ("image_classification", "text_classification"):
        return {"type": "object", "required": ["label", "index", "scores"], "properties": {
            "label": label, "index": index,
            "scores": {"type": "array", "items": _PROBABILITY, "minItems": len(labels),
                       "maxItems": len(labels),
                       "description": "probability of each label, in label order"}}}
    if task == "ner":
        return {"type": "object", "required": ["spans"], "properties": {"spans": {
            "type": "array", "items": {
                "type": "object", "required": ["start", "end", "label", "score"],
                "properties": {"start": {"type": "integer", "minimum": 0},
                               "end": {"type": "integer", "minimum": 0},
                               "label": label, "text": {"type": "string"},
                               "score": _PROBABILITY}}}}}
    return {"type": "object", "required": ["boxes"], "properties": {"boxes": {
        "type": "array", "items": {
            "type": "object", "required": ["box", "label", "index", "score"],
            "properties": {"box": {"type": "array", "items": {"type": "number"},
                                   "minItems": 4, "maxItems": 4,
                                   "description": "[x, y, width, height] in the image's "
                                                  "pixels"},
                           "label": label, "index": index, "score": _PROBABILITY}}}}}


def signature(task: str, labels: list[str], preprocess: dict | None = None) -> dict[str, Any]:
    """{"request": schema, "response": schema} of TASK with LABELS (in the model's order);
    PREPROCESS (the artifact's) fixes the size of an image classifier's pixels."""
    check_task(task)
    return {
        "request": {"type": "object", "required": ["instances"], "additionalProperties": False,
                    "properties": {"instances": {"type": "array", "minItems": 1,
                                                 "maxItems": MAX_INSTANCES,
                                                 "items": _instance(task, preprocess)}}},
        "response": {"type": "object", "required": ["predictions"], "properties": {
            "predictions": {"type": "array", "items": _prediction(task, labels)},
            "model": {"type": "string"}}},
    }
