"""Evaluation metrics for classification, entity spans and object detection, in numpy only.

Every number here follows a published reference implementation so that results can be compared
with papers and other tools: scikit-learn for classification, seqeval for entity spans and
pycocotools' ``COCOeval`` for boxes. The tests check each function against that reference on
random data. Results are JSON-ready: plain ``int``/``float``/``str``/``list``/``dict``, never a
numpy type or NaN; ``None`` marks a number that the reference leaves undefined.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import numpy as np

# --- classification ---------------------------------------------------------------------------


def classification(
    y_true: Sequence[int],
    scores: np.ndarray,
    labels: Sequence[str],
    *,
    top_k: Sequence[int] = (1, 3, 5),
    bins: int = 15,
) -> dict[str, Any]:
    """Single-label classification metrics, as scikit-learn defines them.

    ``y_true`` holds N class indices into ``labels``; ``scores`` is (N, C) class probabilities.
    The prediction is the argmax of each row, the lowest index winning a tie (``np.argmax``).

    - ``accuracy``: fraction of rows whose prediction is the true class.
    - ``per_class``: precision = TP / predicted, recall = TP / support,
      F1 = 2 TP / (support + predicted); a zero denominator gives 0.0, scikit-learn's
      ``zero_division=0``, so a class never predicted has precision 0.0.
    - ``macro_*``: unweighted mean over *all* C labels, those without support included
      (scikit-learn with ``labels=range(C)``); ``weighted_f1`` weighs by support;
      ``micro_f1`` pools the counts, which equals accuracy for single-label data.
    - ``confusion``: C x C counts, rows the true class, columns the prediction.
    - ``ece``: expected calibration error of the top probability over ``bins`` equal-width bins
      (i/B, (i+1)/B] (the first also holds 0): sum of |accuracy - mean confidence| * n_bin / N.
    - ``top_k``: ``top_<k>`` for each k <= C, as ``sklearn.metrics.top_k_accuracy_score``: the
      true class is among the k best after a descending sort in which a tie puts the *higher*
      class index first. With C == 2 scikit-learn thresholds the class-1 probability at 0.5
      instead, so ``top_1`` equals accuracy for rows that sum to 1; ``top_2`` is then 1.0.

    Raises ``ValueError`` on empty input, mismatched shapes, class indices outside
    ``range(C)``, duplicate labels, or scores outside [0, 1].
    """
    y, probs = _check_classification(y_true, scores, labels)
    ks = _check_top_k(top_k)
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    n, c = probs.shape
    pred = np.argmax(probs, axis=1)
    confusion = np.bincount(y * c + pred, minlength=c * c).reshape(c, c)
    result: dict[str, Any] = {"count": n, "accuracy": float(np.mean(pred == y))}
    result.update(_prf(confusion, labels))
    result["confusion"] = confusion.tolist()
    result["labels"] = list(labels)
    result["ece"] = _ece(probs[np.arange(n), pred], pred == y, bins)
    result["top_k"] = {f"top_{k}": _top_k_accuracy(y, probs, k) for k in ks if k <= c}
    return result


def _check_classification(
    y_true: Sequence[int], scores: np.ndarray, labels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    probs = np.asarray(scores, dtype=np.float64)
    if y.size == 0:
        raise ValueError("classification metrics need at least one example; y_true is empty")
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise ValueError(
            f"y_true must be a 1-d sequence of integer class indices, got {y.dtype} {y.shape}"
        )
    if probs.shape != (len(y), len(labels)):
        raise ValueError(
            f"scores has shape {probs.shape}, expected (len(y_true), len(labels)) = "
            f"{(len(y), len(labels))}"
        )
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be unique, got {list(labels)}")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= len(labels):
        raise ValueError(
            f"y_true holds class indices in [{low}, {high}], outside range({len(labels)})"
        )
    if not np.all((probs >= 0) & (probs <= 1)):  # also rejects NaN
        raise ValueError("scores must be probabilities in [0, 1]")
    return y.astype(np.int64), probs


def _check_top_k(top_k: Sequence[int]) -> list[int]:
    ks = [int(k) for k in top_k]
    if any(k < 1 for k in ks):
        raise ValueError(f"top_k values must be at least 1, got {list(top_k)}")
    return ks


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den is 0 (scikit-learn's and seqeval's zero_division=0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def _prf(confusion: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Per-class and averaged precision/recall/F1 from a confusion matrix."""
    tp = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = _divide(tp, predicted)
    recall = _divide(tp, support)
    # scikit-learn computes F1 from counts, not from P and R; the same here keeps it bit-equal.
    f1 = _divide(2 * tp, support + predicted)
    micro = _divide(2 * tp.sum(), support.sum() + predicted.sum())
    return {
        "macro_f1": float(np.mean(f1)),
        "micro_f1": float(micro),
        "weighted_f1": float(np.average(f1, weights=support)),
        "macro_precision": float(np.mean(precision)),
        "macro_recall": float(np.mean(recall)),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
    }


def _ece(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """Expected calibration error (Guo et al. 2017) over equal-width confidence bins."""
    edges = np.arange(bins + 1) / bins
    # side="left" puts a value equal to an edge in the bin that edge closes: (lo, hi].
    # Comparing against i/B avoids conf * B, whose rounding moves 0.3 * 10 into the wrong bin.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    hits = np.bincount(index, weights=correct.astype(np.float64), minlength=bins)
    conf = np.bincount(index, weights=confidence, minlength=bins)
    used = count > 0
    gap = np.abs(hits[used] / count[used] - conf[used] / count[used])
    return float(np.sum(gap * count[used]) / len(confidence))


def _top_k_accuracy(y: np.ndarray, probs: np.ndarray, k: int) -> float:
    """sklearn.metrics.top_k_accuracy_score with labels=range(C), ties included."""
    n, c = probs.shape
    if c == 2:
        # scikit-learn's binary branch: for k=1 predict class 1 iff p1 > 0.5 (scores in [0, 1]).
        return float(np.mean((probs[:, 1] > 0.5) == (y == 1))) if k == 1 else 1.0
    true_score = probs[np.arange(n), y][:, None]
    # Its order is a stable ascending argsort reversed: higher scores first, and among equal
    # scores the higher class index first. The true class's place in that order:
    ahead = (probs > true_score) | ((probs == true_score) & (np.arange(c) > y[:, None]))
    return float(np.mean(ahead.sum(axis=1) < k))


# --- entity spans -----------------------------------------------------------------------------

Span = tuple[int, int, str]


def entities(
    truth: Sequence[Iterable[tuple[int, int, str]]],
    predicted: Sequence[Iterable[tuple[int, int, str]]],
) -> dict[str, Any]:
    """Entity-level precision, recall and F1, as seqeval defines them.

    Each item is a document holding ``(start, end, type)`` spans (code-point offsets, end
    exclusive). A predicted entity counts only if a true entity in the same document has the
    same type and the same boundaries; a span listed twice in a document counts once (seqeval
    collects entities in sets).

    - ``precision`` = correct / predicted, ``recall`` = correct / true, ``f1`` their harmonic
      mean, all pooled over every entity (micro average, seqeval's ``f1_score``); 0.0 when a
      denominator is 0.
    - ``per_type``: the same per entity type, for every type in the truth or the predictions;
      ``support`` counts the true entities.
    - ``macro_f1``: unweighted mean of the per-type F1 (seqeval's classification_report
      "macro avg"); ``None`` when there is no entity at all.
    """
    if len(truth) != len(predicted):
        raise ValueError(f"truth has {len(truth)} documents but predicted has {len(predicted)}")
    if len(truth) == 0:
        raise ValueError("entity metrics need at least one document; truth is empty")
    true_n: Counter[str] = Counter()
    pred_n: Counter[str] = Counter()
    correct_n: Counter[str] = Counter()
    for doc_truth, doc_pred in zip(truth, predicted, strict=True):
        true_spans, pred_spans = _span_set(doc_truth), _span_set(doc_pred)
        true_n.update(span[2] for span in true_spans)
        pred_n.update(span[2] for span in pred_spans)
        correct_n.update(span[2] for span in true_spans & pred_spans)
    types = sorted(true_n.keys() | pred_n.keys())
    per_type = {t: _span_scores(correct_n[t], pred_n[t], true_n[t]) for t in types}
    micro = _span_scores(correct_n.total(), pred_n.total(), true_n.total())
    macro = float(np.mean([s["f1"] for s in per_type.values()])) if types else None
    return {
        "count": len(truth),
        "precision": micro["precision"],
        "recall": micro["recall"],
        "f1": micro["f1"],
        "macro_f1": macro,
        "per_type": per_type,
    }


def _span_set(spans: Iterable[tuple[int, int, str]]) -> set[Span]:
    result = set()
    for span in spans:
        start, end, kind = span
        if not (isinstance(start, int | np.integer) and isinstance(end, int | np.integer)):
            raise ValueError(f"span offsets must be integers, got {span!r}")
        if not 0 <= start < end:
            raise ValueError(f"span {span!r} needs 0 <= start < end")
        if not isinstance(kind, str):
            raise ValueError(f"span type must be a string, got {span!r}")
        result.add((int(start), int(end), kind))
    return result


def _span_scores(correct: int, predicted: int, true: int) -> dict[str, Any]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / true if true else 0.0
    # seqeval's formula and operation order: (1 + beta^2) P R / (beta^2 P + R), beta = 1.
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": true}


# --- object detection -------------------------------------------------------------------------

# pycocotools' Params: the same linspace calls give bit-identical thresholds, which matters
# because matching compares IoU >= threshold and AP@.75 is found by equality.
_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
_RECALL_POINTS = np.linspace(0.0, 1.0, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
_AREA_ALL = (0.0**2, 1e5**2)  # COCO's "all" range; a box outside it is ignored, not missed


def detection(
    truth: Sequence[Sequence[dict]],
    predicted: Sequence[Sequence[dict]],
    labels: Sequence[str],
    *,
    max_detections: int = 100,
) -> dict[str, Any]:
    """COCO box average precision, exactly as pycocotools' ``COCOeval`` (iouType "bbox").

    ``truth[i]`` lists image i's boxes as ``{"box": [x, y, w, h], "label": int}``;
    ``predicted[i]`` adds ``"score"``. Settings are COCO's: area range "all", IoU thresholds
    .50:.05:.95, 101 recall points, no crowd boxes. Per image and class the ``max_detections``
    best-scored predictions are matched greedily, highest score first, each to the unmatched
    true box of highest IoU >= threshold. IoU uses w*h areas (no +1). AP at a threshold is the
    mean over the recall points of the interpolated (monotone) precision, 0 past the
    highest recall reached.

    - ``map``: AP averaged over the ten thresholds and over classes with ground truth;
      ``map_50`` / ``map_75`` at IoU .50 / .75; ``None`` when no class has ground truth.
    - ``per_class``: ``ap`` (over thresholds), ``ap_50`` and ``support`` (true boxes); a class
      without ground truth gets ``None`` APs (pycocotools -1) and stays out of the means.
    """
    if len(truth) != len(predicted):
        raise ValueError(f"truth has {len(truth)} images but predicted has {len(predicted)}")
    if len(truth) == 0:
        raise ValueError("detection metrics need at least one image; truth is empty")
    if max_detections < 1:
        raise ValueError(f"max_detections must be at least 1, got {max_detections}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be unique, got {list(labels)}")
    gts = _group_boxes(truth, len(labels), scored=False)
    dts = _group_boxes(predicted, len(labels), scored=True)
    curves: list[np.ndarray | None] = [
        _class_precision(gts[k], dts[k], max_detections) for k in range(len(labels))
    ]
    valid = [c for c in curves if c is not None]
    stacked = np.stack(valid) if valid else None
    at_50 = np.flatnonzero(_IOU_THRESHOLDS == 0.5)
    at_75 = np.flatnonzero(_IOU_THRESHOLDS == 0.75)
    return {
        "count": len(truth),
        "map": _mean_or_none(stacked),
        "map_50": _mean_or_none(None if stacked is None else stacked[:, at_50]),
        "map_75": _mean_or_none(None if stacked is None else stacked[:, at_75]),
        "per_class": {
            label: {
                "ap": _mean_or_none(curves[k]),
                "ap_50": _mean_or_none(None if curves[k] is None else curves[k][at_50]),
                "support": sum(len(boxes) for boxes, _ in gts[k].values()),
            }
            for k, label in enumerate(labels)
        },
    }


def _mean_or_none(values: np.ndarray | None) -> float | None:
    return None if values is None else float(np.mean(values))


_Boxes = tuple[np.ndarray, np.ndarray]  # (n, 4) xywh boxes, (n,) scores (zeros for truth)
_NO_BOXES: _Boxes = (np.zeros((0, 4)), np.zeros(0))


def _group_boxes(
    images: Sequence[Sequence[dict]], n_labels: int, *, scored: bool
) -> list[dict[int, _Boxes]]:
    """Per class, {image index: boxes and scores} for the images holding that class.

    Boxes keep their input order, which decides ties in score as it does in COCOeval.
    Images without the class are left out: most image/class pairs are empty.
    """
    grouped: list[defaultdict[int, list[tuple[float, ...]]]] = [
        defaultdict(list) for _ in range(n_labels)
    ]
    for i, image in enumerate(images):
        for obj in image:
            label = obj["label"]
            if not (isinstance(label, int | np.integer) and 0 <= label < n_labels):
                raise ValueError(f"image {i}: label {label!r} is not an index into labels")
            grouped[label][i].append(_box_row(i, obj, scored))
    result = []
    for per_image in grouped:
        arrays = {i: np.array(rows, dtype=np.float64) for i, rows in per_image.items()}
        result.append({i: (rows[:, :4], rows[:, 4]) for i, rows in arrays.items()})
    return result


def _box_row(image: int, obj: dict, scored: bool) -> tuple[float, ...]:
    """(x, y, w, h, score) of one box, checked."""
    box = tuple(float(v) for v in obj["box"])
    score = float(obj["score"]) if scored else 0.0
    if len(box) != 4 or not all(map(math.isfinite, box)) or box[2] < 0 or box[3] < 0:
        raise ValueError(f"image {image}: box must be finite [x, y, w>=0, h>=0], got {box}")
    if not math.isfinite(score):
        raise ValueError(f"image {image}: score must be finite, got {score}")
    return (*box, score)


def _box_iou(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(D, G) IoU of xywh boxes, with pycocotools' bbIou operations (maskApi.c) and order."""
    d = dt[:, None, :]
    g = gt[None, :, :]
    w = np.minimum(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.maximum(d[..., 1], g[..., 1])
    inter = w * h
    union = d[..., 2] * d[..., 3] + g[..., 2] * g[..., 3] - inter
    overlaps = (w > 0) & (h > 0)
    return np.divide(inter, union, out=np.zeros_like(inter), where=overlaps)


def _outside_area(boxes: np.ndarray) -> np.ndarray:
    area = boxes[:, 2] * boxes[:, 3]
    return (area < _AREA_ALL[0]) | (area > _AREA_ALL[1])


def _match_image(gt: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """COCOeval.evaluateImg for one image and class: (matched, ignored) as (T, D), regular GTs.

    ``dt`` is already sorted by score and cut to max_detections.
    """
    n_thr, n_dt = len(_IOU_THRESHOLDS), len(dt)
    gt_ignore = _outside_area(gt)
    ious = _box_iou(dt, gt)
    gt_taken = np.zeros((n_thr, len(gt)), dtype=bool)
    matched = np.zeros((n_thr, n_dt), dtype=bool)
    ignored = np.zeros((n_thr, n_dt), dtype=bool)
    floor = np.minimum(_IOU_THRESHOLDS, 1 - 1e-10)[:, None]
    for d in range(n_dt if len(gt) else 0):
        candidate = ~gt_taken & (ious[d][None, :] >= floor)
        # COCOeval walks the truth with ignored boxes sorted last, keeps the *last* of equally
        # good boxes (it replaces on >=) and stops at the first ignored box once a regular one
        # matched: the best regular box, else the best ignored one, with no sort needed here.
        regular = candidate & ~gt_ignore
        candidate = np.where(regular.any(axis=1, keepdims=True), regular, candidate)
        score = np.where(candidate, ious[d][None, :], -1.0)
        best = len(gt) - 1 - np.argmax(score[:, ::-1], axis=1)
        hit = candidate.any(axis=1)
        rows = np.flatnonzero(hit)
        gt_taken[rows, best[hit]] = True
        matched[rows, d] = True
        ignored[rows, d] = gt_ignore[best[hit]]
    # Unmatched predictions outside the area range are ignored rather than counted as false.
    ignored |= ~matched & _outside_area(dt)[None, :]
    return matched, ignored, int(np.count_nonzero(~gt_ignore))


def _class_precision(
    gts: dict[int, _Boxes], dts: dict[int, _Boxes], max_det: int
) -> np.ndarray | None:
    """COCOeval.accumulate for one class: (T, R) interpolated precision, None without truth."""
    scores, matched, ignored, n_gt = [], [], [], 0
    for image in sorted(gts.keys() | dts.keys()):
        gt = gts.get(image, _NO_BOXES)[0]
        dt, dt_scores = dts.get(image, _NO_BOXES)
        top = np.argsort(-dt_scores, kind="mergesort")[:max_det]
        m, ig, n = _match_image(gt, dt[top])
        scores.append(dt_scores[top])
        matched.append(m)
        ignored.append(ig)
        n_gt += n
    if n_gt == 0:
        return None
    # Pool images in image order, then a stable sort: COCOeval's order for tied scores.
    order = np.argsort(-np.concatenate(scores), kind="mergesort")
    matched_all = np.concatenate(matched, axis=1)[:, order]
    ignored_all = np.concatenate(ignored, axis=1)[:, order]
    tp = np.cumsum(matched_all & ~ignored_all, axis=1).astype(np.float64)
    fp = np.cumsum(~matched_all & ~ignored_all, axis=1).astype(np.float64)
    return _interpolated_precision(tp, fp, n_gt)


def _interpolated_precision(tp: np.ndarray, fp: np.ndarray, n_gt: int) -> np.ndarray:
    recall = tp / n_gt
    precision = tp / (fp + tp + np.spacing(1))
    # Precision envelope: the best precision at this recall or any higher one.
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    result = np.zeros((len(tp), len(_RECALL_POINTS)))
    for t in range(len(tp)):
        at = np.searchsorted(recall[t], _RECALL_POINTS, side="left")
        reached = at < recall.shape[1]  # recall points past the last one reached stay 0
        result[t, reached] = envelope[t, at[reached]]
    return result


# --- slices -----------------------------------------------------------------------------------


def by_slice(
    keys: Sequence[Hashable | None], compute: Callable[[list[int]], dict]
) -> dict[str, dict]:
    """Run ``compute`` on the item indices of each slice, e.g. per language or per source.

    ``keys[i]`` names item i's slice; items keyed ``None`` belong to none. Returns
    ``{str(key): compute(indices)}`` ordered by that string; indices ascend within a slice.
    Two different keys with the same string (``1`` and ``"1"``) raise ``ValueError``.
    """
    groups: defaultdict[Hashable, list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        if key is not None:
            groups[key].append(index)
    names: dict[str, Hashable] = {}
    for key in groups:
        other = names.setdefault(str(key), key)
        if other != key:
            raise ValueError(f"slice keys {other!r} and {key!r} have the same name {str(key)!r}")
    return {name: compute(groups[names[name]]) for name in sorted(names)}
