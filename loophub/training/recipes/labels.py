"""Which annotations a recipe learns from: people's labels, never a model's own predictions
(pre-annotations) and never one a reviewer rejected."""

from __future__ import annotations


def trusted(annotation: dict) -> bool:
    source = (annotation.get("source") or {}).get("kind")
    review = (annotation.get("review") or {}).get("state")
    return source != "model" and review != "rejected"


def class_label(record: dict, kind: str) -> str | None:
    """The record's label of annotation type KIND (image_class, text_class), or None."""
    for annotation in record.get("annotations") or ():
        if annotation.get("type") == kind and trusted(annotation) and annotation.get("label"):
            return annotation["label"]
    return None


def spans(record: dict) -> list[tuple[int, int, str]]:
    """(start, end, label) of the record's trusted span annotations, in text order."""
    found = [(a["start"], a["end"], a["label"]) for a in record.get("annotations") or ()
             if a.get("type") == "span" and trusted(a) and "start" in a and "end" in a
             and a.get("label")]
    return sorted(found)
