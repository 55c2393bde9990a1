"""The input/output signature of a model version: JSON Schemas of one prediction request
and its response, derived from the task and the artifact's label names (never from user
code), so a server can check every request before the model sees it and every client
knows what comes back. The request holds ``instances``: base64 images or texts."""

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


def _instance(task: str) -> dict[str, Any]:
    if task in IMAGE_TASKS:
        return {"type": "object", "required": ["image"], "additionalProperties": False,
                "properties": {"image": {
                    "type": "string", "contentEncoding": "base64", "minLength": 4,
                    "maxLength": MAX_IMAGE_BASE64,
                    "description": "a PNG, JPEG, GIF, BMP or WebP file, base64-encoded"}}}
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


def signature(task: str, labels: list[str]) -> dict[str, Any]:
    """{"request": schema, "response": schema} of TASK with LABELS (in the model's order)."""
    check_task(task)
    return {
        "request": {"type": "object", "required": ["instances"], "additionalProperties": False,
                    "properties": {"instances": {"type": "array", "minItems": 1,
                                                 "maxItems": MAX_INSTANCES,
                                                 "items": _instance(task)}}},
        "response": {"type": "object", "required": ["predictions"], "properties": {
            "predictions": {"type": "array", "items": _prediction(task, labels)},
            "model": {"type": "string"}}},
    }
