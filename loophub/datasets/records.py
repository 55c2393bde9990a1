"""Record helpers: canonical bytes, hashes and the label summary used by filters and diffs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

LABEL_SEPARATOR = "\x1f"  # unit separator: cannot appear in a sane class name


def canonical_bytes(record: dict) -> bytes:
    """The one byte form of a record: sorted keys, no spaces, UTF-8; its sha256 names it."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def counts_as_label(ann: dict) -> bool:
    """Whether an annotation is a label of its record: not rejected in review, and not a
    model's prediction that no one has accepted yet."""
    state = (ann.get("review") or {}).get("state")
    if state == "rejected":
        return False
    return (ann.get("source") or {}).get("kind") != "model" or state == "accepted"


def labels_of(record: dict) -> list[str]:
    """Sorted distinct labels of the record (filters, label counts, diffs, splits)."""
    return sorted({a["label"] for a in record.get("annotations", ())
                   if a.get("label") and counts_as_label(a)})


def all_labels_of(record: dict) -> list[str]:
    """Every label any annotation uses, predictions included (for label schemas)."""
    return sorted({a["label"] for a in record.get("annotations", ()) if a.get("label")})


def is_annotated(record: dict) -> bool:
    return any(counts_as_label(a) for a in record.get("annotations", ()))


def annotators_of(record: dict) -> list[str]:
    names = set()
    for ann in record.get("annotations", ()):
        source = ann.get("source")
        if source and source.get("kind") == "user":
            names.add(source["name"])
    return sorted(names)


def prediction_confidence(record: dict) -> float | None:
    """The lowest score of the record's pending model predictions while no person has
    labeled it, else None: the key of the labelers' "uncertain first" order. A record a
    person labeled leaves that order (so the index behind it holds only the queue), and
    predictions without a score, accepted or rejected ones rank nothing."""
    if annotators_of(record):
        return None
    scores = [a["score"] for a in record.get("annotations", ())
              if (a.get("source") or {}).get("kind") == "model"
              and (a.get("review") or {}).get("state") in (None, "pending")
              and isinstance(a.get("score"), int | float) and not isinstance(a["score"], bool)]
    return float(min(scores)) if scores else None


def pack_labels(labels: Iterable[str]) -> str:
    """Labels as one string with separators at both ends, so SQL LIKE finds whole names."""
    labels = list(labels)
    if not labels:
        return ""
    return LABEL_SEPARATOR + LABEL_SEPARATOR.join(labels) + LABEL_SEPARATOR


def unpack_labels(packed: str) -> list[str]:
    return [label for label in packed.split(LABEL_SEPARATOR) if label]


def new_record(record_id: str, **fields) -> dict:
    record = {"id": record_id, "annotations": []}
    record.update({k: v for k, v in fields.items() if v is not None})
    return record


# Where records came from, told by their id's prefix (an index-friendly filter): origin ->
# prefix. "production": inputs the feedback loop collected from a release (loophub.loop).
ORIGINS = {"production": "production-"}
