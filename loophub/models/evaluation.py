"""Evaluate a trained artifact on dataset records: predict them with ``Predictor``, take
the ground truth from people's annotations only (``labels.trusted``: never a model's
pre-annotation nor a rejected one), and score with ``loophub.models.metrics``, overall
and by slice.

Ground truth per task, as the recipes read it for training:

- classification: the record's trusted ``image_class`` / ``text_class`` label (an image
  needs its media file); y_true is its index among the model's labels;
- NER: the trusted ``span`` annotations of the text (a text with no span annotation at
  all has no entities; one whose only spans are a model's or rejected is skipped), spans
  of types the model does not know left out, as training leaves them out; the whole text
  is scored (training's validation only reads the first max_len tokens);
- detection: the trusted boxes of ``detection.record_boxes`` (pixel or normalized, clipped
  to the image) in the image's pixels; an image without box annotations has no objects.
  Detections are decoded as the recipe measures mAP (peaks above
  ``detection.EVAL_THRESHOLD``, the best ``EVAL_TOP_K``), not with the served threshold,
  which would cut the precision-recall curve short.

Records without such a truth are skipped and counted, by reason.

Deterministic: the same artifact and records give identical numbers (all but
``timing``), because the module runs in eval mode (no dropout, batch norm on its stored
statistics) under ``torch.inference_mode()``, nothing is sampled, and the records are
sorted by id before batching, so each batch, and the padding of its texts, is the same
whatever order the records came in; the metrics are plain numpy over that order.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loophub.errors import InvalidInput
from loophub.models import metrics
from loophub.models.predictor import BATCH_SIZE, Predictor

if TYPE_CHECKING:
    from loophub.training.data import MaterializedVersion

MediaPath = Callable[[dict], "Path | None"]
CLASS_ANNOTATION = {"image_classification": "image_class",
                    "text_classification": "text_class"}
IMAGE_TASKS = ("image_classification", "object_detection")


@dataclass(frozen=True)
class Case:
    """A record with its ground truth: a class index (classification), (start, end,
    label) spans (NER) or {"box", "label"} pixel boxes (detection); ``label`` is the true
    class name of a classification record (its "label" slice)."""

    record: dict
    truth: Any
    label: str | None = None


def evaluate(predictor: Predictor, records: Iterable[dict], media_path: MediaPath, *,
             label_schema: dict, slices: Sequence[str] = ("label",),
             batch_size: int = BATCH_SIZE) -> dict[str, Any]:
    """Metrics of PREDICTOR on RECORDS (MEDIA_PATH(record): a record's image file) whose
    annotations follow LABEL_SCHEMA.

    Returns ``{"task", "count", "skipped", "skipped_by_reason", "metrics", "slices",
    "timing"}``: count the records scored, skipped those without a trusted ground truth
    (by reason: no_truth, unknown_label, no_media, unreadable_media), metrics those of
    ``metrics.classification`` / ``entities`` / ``detection`` over all scored records
    ({} when none), slices ``{field: {value: metrics}}`` for each of SLICES ("label": the
    true class, classification only, ignored otherwise; "split"; "metadata.<key>"; records
    without the value are in no slice), timing ``{"read_s", "predict_s", "metrics_s"}``."""
    _check_schema(predictor, label_schema)
    fields = check_slices(slices)
    started = time.perf_counter()
    cases, skipped = ground_truth(predictor, records, media_path)
    read = time.perf_counter()
    predictions = predictor.predict_records([case.record for case in cases], media_path,
                                            batch_size=batch_size, **_decoding(predictor))
    predicted = time.perf_counter()
    compute = _scorer(predictor, cases, predictions)
    overall = compute(list(range(len(cases)))) if cases else {}
    sliced = {field: metrics.by_slice([slice_key(case, field) for case in cases], compute)
              for field in fields if field != "label" or predictor.task in CLASS_ANNOTATION}
    done = time.perf_counter()
    return {"task": predictor.task, "count": len(cases), "skipped": sum(skipped.values()),
            "skipped_by_reason": dict(sorted(skipped.items())), "metrics": overall,
            "slices": sliced,
            "timing": {"read_s": read - started, "predict_s": predicted - read,
                       "metrics_s": done - predicted}}


def evaluate_version(predictor: Predictor, version: MaterializedVersion, split: str | None,
                     slices: Sequence[str] = ("label",), *, batch_size: int = BATCH_SIZE
                     ) -> dict[str, Any]:
    """``evaluate`` on the records of SPLIT (None: all) of a materialized VERSION."""
    return evaluate(predictor, version.records(split), version.media_path,
                    label_schema=version.label_schema, slices=slices, batch_size=batch_size)


# -- ground truth -----------------------------------------------------------------------------

def ground_truth(predictor: Predictor, records: Iterable[dict], media_path: MediaPath
                 ) -> tuple[list[Case], Counter[str]]:
    """The records that have a trusted ground truth for PREDICTOR's task, sorted by id
    (stable: records without an id keep their order), and the others counted by reason."""
    index = {name: i for i, name in enumerate(predictor.labels)}
    cases: list[Case] = []
    skipped: Counter[str] = Counter()
    for record in records:
        found = _case(predictor.task, record, media_path, index)
        if isinstance(found, str):
            skipped[found] += 1
        else:
            cases.append(found)
    cases.sort(key=lambda case: str(case.record.get("id", "")))
    return cases, skipped


def _case(task: str, record: dict, media_path: MediaPath, index: dict[str, int]
          ) -> Case | str:
    """RECORD's case, or why it has none."""
    path = None
    if task in IMAGE_TASKS:
        path = media_path(record)
        if path is None or not Path(path).is_file():
            return "no_media"
    elif not record.get("text"):
        return "no_truth"
    if task in CLASS_ANNOTATION:
        from loophub.training.recipes.labels import class_label

        label = class_label(record, CLASS_ANNOTATION[task])
        if label is None:
            return "no_truth"
        return Case(record, index[label], label) if label in index else "unknown_label"
    if task == "ner":
        return _ner_case(record, index)
    return _detection_case(record, Path(path), index)


def _ner_case(record: dict, index: dict[str, int]) -> Case | str:
    from loophub.training.recipes.labels import spans
    from loophub.training.recipes.text import ner_usable

    if not ner_usable(record):
        return "no_truth"
    return Case(record, [(s, e, label) for s, e, label in spans(record)
                         if label in index and 0 <= s < e])


def _detection_case(record: dict, path: Path, index: dict[str, int]) -> Case | str:
    from PIL import Image

    from loophub.training.recipes.detection import record_boxes, usable

    if not usable(record):
        return "no_truth"
    try:
        with Image.open(path) as image:  # the header only: boxes go to its pixels
            width, height = image.size
    except OSError:  # PIL's UnidentifiedImageError is one
        return "unreadable_media"
    return Case(record, [{"box": [x * width, y * height, w * width, h * height], "label": c}
                         for c, x, y, w, h in record_boxes(record, width, height, index)])


# -- metrics ----------------------------------------------------------------------------------

def _decoding(predictor: Predictor) -> dict[str, Any]:
    """Decode settings for measuring mAP: the recipe's own (detection only)."""
    if predictor.task != "object_detection":
        return {}
    from loophub.training.recipes.detection import EVAL_THRESHOLD, EVAL_TOP_K

    return {"score_threshold": EVAL_THRESHOLD, "top_k": EVAL_TOP_K}


def _scorer(predictor: Predictor, cases: list[Case], predictions: list[dict]
            ) -> Callable[[list[int]], dict]:
    """compute(indices) -> the task's metrics over those cases."""
    labels = predictor.labels
    if predictor.task in CLASS_ANNOTATION:
        import numpy as np

        y_true = [case.truth for case in cases]
        scores = np.asarray([p["scores"] for p in predictions], dtype=np.float64)
        return lambda rows: metrics.classification([y_true[i] for i in rows],
                                                   scores[rows], labels)
    if predictor.task == "ner":
        found = [[(s["start"], s["end"], s["label"]) for s in p["spans"]] for p in predictions]
        return lambda rows: metrics.entities([cases[i].truth for i in rows],
                                             [found[i] for i in rows])
    boxes = [[{"box": b["box"], "label": b["index"], "score": b["score"]} for b in p["boxes"]]
             for p in predictions]
    return lambda rows: metrics.detection([cases[i].truth for i in rows],
                                          [boxes[i] for i in rows], labels)


# -- slices and checks --------------------------------------------------------------------------

def slice_key(case: Case, field: str) -> Hashable | None:
    """CASE's value of the slice FIELD: its true label, its split, or a metadata value
    (a string as it is, anything else as its JSON); None: in no slice."""
    if field == "label":
        return case.label
    if field == "split":
        return case.record.get("split") or None
    value = (case.record.get("metadata") or {}).get(field.removeprefix("metadata."))
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def check_slices(slices: Sequence[str]) -> list[str]:
    if isinstance(slices, str):
        slices = [slices]
    for field in slices:
        if field not in ("label", "split") and not (
                isinstance(field, str) and field.startswith("metadata.")
                and len(field) > len("metadata.")):
            raise InvalidInput(f"slices: {field!r} is not a slice field; use 'label', "
                               "'split' or 'metadata.<key>'", detail={"field": "slices"})
    return list(dict.fromkeys(slices))


def _check_schema(predictor: Predictor, label_schema: dict) -> None:
    task = (label_schema or {}).get("task")
    if task != predictor.task:
        raise InvalidInput(f"the dataset's task is {task}, the model's {predictor.task}: "
                           "evaluate a model on a dataset of its own task",
                           detail={"field": "label_schema.task"})
    if task in CLASS_ANNOTATION and label_schema.get("multi_label"):
        raise InvalidInput("the dataset is multi-label; the model is a single-label "
                           "classifier", detail={"field": "label_schema.multi_label"})
