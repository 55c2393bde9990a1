"""loophub.models.metrics against the reference implementations it promises to equal.

Classification is compared with scikit-learn, entity spans with seqeval (spans turned into
IOB2 tags over one-unit tokens), boxes with pycocotools' COCOeval run on the same data, and ECE
with a plain loop written here from the definition. Cases are random but seeded.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import warnings

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.scheme import IOB2
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)
from sklearn.metrics import (
    f1_score as sk_f1_score,
)

from loophub.models import metrics

EXACT = 1e-12  # classification and spans: same counts, same formulas
COCO_TOL = 1e-9  # the brief's tolerance for COCO means (summation order differs)


def assert_plain_json(value: object) -> None:
    """Only builtin JSON types (numpy's float64 subclasses float, so check exact types)."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str
            assert_plain_json(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain_json(item)
    else:
        assert value is None or type(value) in (str, int, float, bool), type(value)
    json.dumps(value, allow_nan=False)


# --- classification ---------------------------------------------------------------------------


def make_classification(seed: int, n: int, c: int, variant: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if variant == "ties":
        # Small integer weights: many equal probabilities, 0.5/0.5 rows when c == 2, and
        # confidences exactly on bin edges (e.g. 0.5, 1.0).
        raw = rng.integers(0, 4, size=(n, c)).astype(np.float64)
        raw[raw.sum(axis=1) == 0, 0] = 1.0
    else:
        raw = rng.dirichlet(np.full(c, 0.7), size=n)
    if variant == "never_predicted":
        raw[:, 0] = 0.0  # class 0 can never be the argmax
    scores = raw / raw.sum(axis=1, keepdims=True)
    # Labels correlated with the scores, so that the metrics are not all near chance.
    y = np.where(rng.random(n) < 0.6, scores.argmax(axis=1), rng.integers(0, c, size=n))
    if variant == "no_support":
        y[y == c - 1] = 0  # the last class never occurs
    return y, scores


def ece_reference(y: np.ndarray, scores: np.ndarray, bins: int) -> float:
    """ECE straight from the definition, one bin at a time."""
    confidence = scores.max(axis=1)
    correct = scores.argmax(axis=1) == y
    total = 0.0
    for i in range(bins):
        low, high = i / bins, (i + 1) / bins
        members = [
            j
            for j, conf in enumerate(confidence)
            if (conf > low or (i == 0 and conf >= low)) and conf <= high
        ]
        if members:
            accuracy = float(np.mean(correct[members]))
            mean_conf = float(np.mean(confidence[members]))
            total += abs(accuracy - mean_conf) * len(members) / len(y)
    return total


def sklearn_top_k(y: np.ndarray, scores: np.ndarray, k: int) -> float:
    c = scores.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k >= C "is meaningless" warnings
        if c == 2:  # scikit-learn takes only the positive-class column for two classes
            return top_k_accuracy_score(y, scores[:, 1], k=k, labels=[0, 1])
        return top_k_accuracy_score(y, scores, k=k, labels=list(range(c)))


CLASSIFICATION_CASES = [
    (1, 500, 2, "dirichlet"),
    (2, 500, 2, "ties"),
    (3, 300, 3, "ties"),
    (4, 2000, 10, "dirichlet"),
    (5, 2000, 10, "ties"),
    (6, 400, 5, "no_support"),
    (7, 400, 5, "never_predicted"),
    (8, 40, 10, "dirichlet"),  # several classes with few or no examples
]


@pytest.mark.parametrize(("seed", "n", "c", "variant"), CLASSIFICATION_CASES)
def test_classification_matches_sklearn(seed: int, n: int, c: int, variant: str) -> None:
    y, scores = make_classification(seed, n, c, variant)
    labels = [f"class{i}" for i in range(c)]
    ks = (1, 2, 3, 5)
    result = metrics.classification(y.tolist(), scores, labels, top_k=ks, bins=10)

    pred = scores.argmax(axis=1)
    every = list(range(c))
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=every, zero_division=0
    )
    assert result["count"] == n
    assert result["labels"] == labels
    assert result["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=EXACT)
    for average in ("macro", "micro", "weighted"):
        expected = sk_f1_score(y, pred, labels=every, average=average, zero_division=0)
        assert result[f"{average}_f1"] == pytest.approx(expected, abs=EXACT), average
    assert result["macro_precision"] == pytest.approx(np.mean(precision), abs=EXACT)
    assert result["macro_recall"] == pytest.approx(np.mean(recall), abs=EXACT)
    for i, label in enumerate(labels):
        row = result["per_class"][label]
        assert row["precision"] == pytest.approx(precision[i], abs=EXACT)
        assert row["recall"] == pytest.approx(recall[i], abs=EXACT)
        assert row["f1"] == pytest.approx(f1[i], abs=EXACT)
        assert row["support"] == support[i]
    assert result["confusion"] == confusion_matrix(y, pred, labels=every).tolist()
    assert result["ece"] == pytest.approx(ece_reference(y, scores, 10), abs=EXACT)
    assert set(result["top_k"]) == {f"top_{k}" for k in ks if k <= c}
    for k in ks:
        if k <= c:
            assert result["top_k"][f"top_{k}"] == pytest.approx(
                sklearn_top_k(y, scores, k), abs=EXACT
            ), k
    assert_plain_json(result)


def test_classification_variants_hit_their_edge_cases() -> None:
    y, scores = make_classification(6, 400, 5, "no_support")
    result = metrics.classification(y, scores, list("abcde"))
    assert result["per_class"]["e"]["support"] == 0
    assert result["per_class"]["e"]["recall"] == 0.0
    y, scores = make_classification(7, 400, 5, "never_predicted")
    result = metrics.classification(y, scores, list("abcde"))
    assert sum(row[0] for row in result["confusion"]) == 0
    assert result["per_class"]["a"]["precision"] == 0.0  # zero_division=0, not NaN
    assert result["per_class"]["a"]["support"] > 0


def test_top_k_ties_rank_the_higher_index_first() -> None:
    # All three classes tie: scikit-learn's order is 2, 1, 0, so class 0 is not in the top 2.
    scores = np.full((3, 3), 1 / 3)
    result = metrics.classification([0, 1, 2], scores, ["a", "b", "c"], top_k=(1, 2, 3))
    assert result["top_k"] == {"top_1": 1 / 3, "top_2": 2 / 3, "top_3": 1.0}
    assert result["accuracy"] == 1 / 3  # argmax picks class 0 on the tie
    assert result["top_k"]["top_1"] == sklearn_top_k(np.array([0, 1, 2]), scores, 1)


def test_ece_bins_close_on_the_right() -> None:
    # Confidence 0.3 lies in (0.2, 0.3], apart from 0.35 in (0.3, 0.4]; 0.3 * 10 rounds to
    # 3.0000000000000004, so a naive ceil(conf * B) would put the two in one bin.
    scores = np.array([[0.3, 0.25, 0.25, 0.2], [0.35, 0.3, 0.2, 0.15]])
    y = np.array([0, 1])  # the first right, the second wrong
    result = metrics.classification(y, scores, list("abcd"), bins=10)
    assert result["ece"] == pytest.approx((1 - 0.3) / 2 + 0.35 / 2, abs=EXACT)
    assert result["ece"] == pytest.approx(ece_reference(y, scores, 10), abs=EXACT)
    zero = metrics.classification([0], np.array([[0.0, 0.0]]), ["a", "b"], bins=4)
    assert zero["ece"] == 1.0  # confidence 0 is in the first bin, prediction right


def test_classification_of_10k_examples_is_fast() -> None:
    y, scores = make_classification(11, 10_000, 10, "dirichlet")
    labels = [f"c{i}" for i in range(10)]
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        metrics.classification(y, scores, labels)
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.25, timings


def test_classification_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        metrics.classification([], np.zeros((0, 3)), ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 2\)"):
        metrics.classification([0, 1, 0, 1], np.full((4, 3), 1 / 3), ["a", "b"])
    with pytest.raises(ValueError, match="outside range"):
        metrics.classification([0, 3], np.full((2, 3), 1 / 3), ["a", "b", "c"])
    with pytest.raises(ValueError, match="outside range"):
        metrics.classification([-1, 0], np.full((2, 3), 1 / 3), ["a", "b", "c"])
    with pytest.raises(ValueError, match="class indices"):
        metrics.classification([0.0, 1.0], np.full((2, 2), 0.5), ["a", "b"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.classification([0], np.array([[np.nan, 0.5]]), ["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        metrics.classification([0], np.array([[0.5, 0.5]]), ["a", "a"])


# --- entity spans -----------------------------------------------------------------------------

TYPES = ("PER", "LOC", "ORG", "MISC")


def random_spans(rng: np.random.Generator, length: int, rate: float = 1.0) -> list:
    """Non-overlapping spans in token units; a gap of 0 makes adjacent same-type entities."""
    spans, pos = [], 0
    while True:
        pos += int(rng.integers(0, 4 / rate))
        size = int(rng.integers(1, 4))
        if pos + size > length:
            return spans
        spans.append((pos, pos + size, TYPES[rng.integers(len(TYPES))]))
        pos += size


def perturb(rng: np.random.Generator, spans: list, length: int) -> list:
    """Predictions: mostly exact, some shifted, resized, retyped or missed, plus spurious."""
    out = []
    for start, end, kind in spans:
        roll = rng.random()
        if roll < 0.5:
            out.append((start, end, kind))
        elif roll < 0.62:
            shift = int(rng.choice([-1, 1]))
            out.append((start + shift, end + shift, kind))
        elif roll < 0.72:
            out.append((start, end + int(rng.choice([-1, 1])), kind))
        elif roll < 0.85:
            out.append((start, end, TYPES[(TYPES.index(kind) + 1) % len(TYPES)]))
    if rng.random() < 0.5:
        out += random_spans(rng, length, rate=0.3)
    # Keep what IOB2 can express: inside the document, non-empty, non-overlapping.
    kept, last_end = [], 0
    for start, end, kind in sorted(out):
        if 0 <= start < end <= length and start >= last_end:
            kept.append((start, end, kind))
            last_end = end
    return kept


def iob2(spans: list, length: int) -> list[str]:
    tags = ["O"] * length
    for start, end, kind in spans:
        tags[start] = f"B-{kind}"
        for i in range(start + 1, end):
            tags[i] = f"I-{kind}"
    return tags


@pytest.mark.parametrize("seed", range(6))
def test_entities_match_seqeval(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    lengths = [int(rng.integers(1, 40)) for _ in range(30)]
    truth = [random_spans(rng, n) for n in lengths]
    truth[0] = []  # a document without entities
    predicted = [perturb(rng, spans, n) for spans, n in zip(truth, lengths, strict=True)]
    predicted[1] = []  # one with no predictions
    tags_true = [iob2(s, n) for s, n in zip(truth, lengths, strict=True)]
    tags_pred = [iob2(s, n) for s, n in zip(predicted, lengths, strict=True)]

    result = metrics.entities(truth, predicted)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns on types with no prediction
        for mode in ({}, {"mode": "strict", "scheme": IOB2}):
            assert result["precision"] == pytest.approx(
                precision_score(tags_true, tags_pred, **mode), abs=EXACT
            )
            assert result["recall"] == pytest.approx(
                recall_score(tags_true, tags_pred, **mode), abs=EXACT
            )
            assert result["f1"] == pytest.approx(f1_score(tags_true, tags_pred, **mode), abs=EXACT)
            report = classification_report(tags_true, tags_pred, output_dict=True, **mode)
            types = sorted(set(report) - {"micro avg", "macro avg", "weighted avg"})
            assert sorted(result["per_type"]) == types
            for kind in types:
                for ours, theirs in (("precision",) * 2, ("recall",) * 2, ("f1", "f1-score")):
                    assert result["per_type"][kind][ours] == pytest.approx(
                        report[kind][theirs], abs=EXACT
                    )
                assert result["per_type"][kind]["support"] == report[kind]["support"]
            assert result["macro_f1"] == pytest.approx(report["macro avg"]["f1-score"], abs=EXACT)
    assert result["count"] == len(truth)
    assert 0 < result["f1"] < 1  # the generator makes both hits and misses
    assert_plain_json(result)


def test_entities_on_character_offsets() -> None:
    text = "Ada Lovelace wrote to Babbage in London."
    truth = [[(0, 12, "PER"), (22, 29, "PER"), (33, 39, "LOC")]]
    predicted = [[(0, 3, "PER"), (22, 29, "PER"), (22, 29, "PER"), (33, 39, "ORG")]]
    assert text[0:12] == "Ada Lovelace" and text[33:39] == "London"
    result = metrics.entities(truth, predicted)
    # Boundaries and type must both match; the repeated span counts once, as in seqeval.
    assert result["precision"] == 1 / 3
    assert result["recall"] == 1 / 3
    assert result["per_type"]["PER"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert result["per_type"]["ORG"]["support"] == 0
    assert result["macro_f1"] == pytest.approx(0.5 / 3, abs=EXACT)


def test_entities_without_any_entity() -> None:
    result = metrics.entities([[], []], [[], []])
    assert result == {
        "count": 2,
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "macro_f1": None,
        "per_type": {},
    }


def test_entities_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2 documents but predicted has 1"):
        metrics.entities([[], []], [[]])
    with pytest.raises(ValueError, match="empty"):
        metrics.entities([], [])
    with pytest.raises(ValueError, match="start < end"):
        metrics.entities([[(3, 3, "PER")]], [[]])
    with pytest.raises(ValueError, match="string"):
        metrics.entities([[(0, 3, 1)]], [[]])


# --- detection --------------------------------------------------------------------------------


def jitter(rng: np.random.Generator, box: list[float], amount: float) -> list[float]:
    x, y, w, h = box
    return [
        x + rng.normal(0, amount * w),
        y + rng.normal(0, amount * h),
        max(1.0, w * (1 + rng.normal(0, amount))),
        max(1.0, h * (1 + rng.normal(0, amount))),
    ]


def random_detection(
    seed: int, n_images: int, n_labels: int, *, grid: bool = False
) -> tuple[list, list]:
    """Jittered, duplicated, retyped and missed boxes plus false positives.

    ``grid`` puts small integer boxes on a small canvas with scores in tenths, which makes
    IoU ties, IoUs exactly on a threshold (1/2) and tied scores common. The last label never
    has ground truth but gets false positives.
    """
    rng = np.random.default_rng(seed)

    def new_box() -> list[float]:
        if grid:
            return [float(v) for v in (*rng.integers(0, 8, 2), *rng.integers(1, 5, 2))]
        return [*rng.uniform(0, 300, 2), *rng.uniform(4, 120, 2)]

    def score() -> float:
        return float(rng.integers(1, 11) / 10) if grid else float(np.round(rng.random(), 2))

    truth, predicted = [], []
    for _ in range(n_images):
        gts = [
            {"box": new_box(), "label": int(rng.integers(0, n_labels - 1))}
            for _ in range(int(rng.integers(0, 7)))
        ]
        dts = []
        for gt in gts:
            if rng.random() < 0.15:
                continue  # missed
            for _ in range(int(rng.integers(1, 3))):  # sometimes a duplicate
                box = new_box() if grid and rng.random() < 0.3 else gt["box"]
                label = gt["label"] if rng.random() < 0.9 else int(rng.integers(0, n_labels))
                dts.append({"box": jitter(rng, box, 0.08), "label": label, "score": score()})
        for _ in range(int(rng.integers(0, 4))):
            dts.append(
                {"box": new_box(), "label": int(rng.integers(0, n_labels)), "score": score()}
            )
        order = rng.permutation(len(dts))  # input order matters for ties: shuffle it
        truth.append(gts)
        predicted.append([dts[i] for i in order])
    return truth, predicted


def coco_reference(truth: list, predicted: list, n_labels: int, max_det: int) -> COCOeval:
    """pycocotools' COCOeval on the same boxes; image i is id i+1, label k category k+1."""
    annotations = [
        {
            "id": n + 1,
            "image_id": i + 1,
            "category_id": gt["label"] + 1,
            "bbox": list(gt["box"]),
            "area": gt["box"][2] * gt["box"][3],
            "iscrowd": 0,
        }
        for n, (i, gt) in enumerate((i, gt) for i, gts in enumerate(truth) for gt in gts)
    ]
    results = [
        {
            "image_id": i + 1,
            "category_id": d["label"] + 1,
            "bbox": list(d["box"]),
            "score": d["score"],
        }
        for i, dts in enumerate(predicted)
        for d in dts
    ]
    ground = COCO()
    ground.dataset = {
        "images": [{"id": i + 1, "width": 640, "height": 480} for i in range(len(truth))],
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": f"c{k}"} for k in range(n_labels)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        ground.createIndex()
        evaluation = COCOeval(ground, ground.loadRes(results), "bbox")
        # summarize() reads maxDets[2]; evaluate() sorts the list, so keep it sorted.
        evaluation.params.maxDets = [1, min(10, max_det), max_det]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def coco_summary(evaluation: COCOeval, iou: float | None) -> float:
    """COCOeval.summarize's AP formula at area "all" and the last maxDets.

    summarize() itself reads stats[0] at maxDets=100 whatever the params say, so it gives -1
    for other limits; this repeats its arithmetic for any limit.
    """
    s = evaluation.eval["precision"][:, :, :, 0, -1]
    if iou is not None:
        s = s[np.where(iou == evaluation.params.iouThrs)[0]]
    return -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))


def assert_matches_coco(truth: list, predicted: list, n_labels: int, max_det: int) -> dict:
    labels = [f"c{k}" for k in range(n_labels)]
    result = metrics.detection(truth, predicted, labels, max_detections=max_det)
    reference = coco_reference(truth, predicted, n_labels, max_det)
    assert result["count"] == len(truth)
    summary = [coco_summary(reference, iou) for iou in (None, 0.5, 0.75)]
    assert [result["map"], result["map_50"], result["map_75"]] == pytest.approx(
        summary, abs=COCO_TOL
    )
    if max_det == 100:  # stats[0] is always read at maxDets=100, whatever params say
        assert summary == pytest.approx(list(reference.stats[:3]), abs=COCO_TOL)
    precision = reference.eval["precision"][:, :, :, 0, -1]  # area "all", maxDets[-1]
    for k, label in enumerate(labels):
        row = result["per_class"][label]
        assert row["support"] == sum(gt["label"] == k for gts in truth for gt in gts)
        if np.all(precision[:, :, k] == -1):
            assert row["ap"] is None and row["ap_50"] is None
        else:
            assert row["ap"] == pytest.approx(np.mean(precision[:, :, k]), abs=COCO_TOL)
            assert row["ap_50"] == pytest.approx(np.mean(precision[0, :, k]), abs=COCO_TOL)
    assert_plain_json(result)
    return result


@pytest.mark.parametrize(
    ("seed", "n_images", "n_labels", "grid", "max_det"),
    [
        (1, 12, 4, False, 100),
        (2, 25, 6, False, 100),
        (3, 15, 3, True, 100),
        (4, 30, 4, True, 100),
        (5, 20, 3, True, 2),  # the per-image, per-class cut to max_detections
    ],
)
def test_detection_matches_pycocotools(
    seed: int, n_images: int, n_labels: int, grid: bool, max_det: int
) -> None:
    truth, predicted = random_detection(seed, n_images, n_labels, grid=grid)
    result = assert_matches_coco(truth, predicted, n_labels, max_det)
    assert result["per_class"][f"c{n_labels - 1}"]["ap"] is None  # no ground truth
    assert 0 < result["map"] < 1


def test_detection_ignores_boxes_outside_coco_area_range() -> None:
    # COCO's "all" range ends at 1e5**2: a larger true box is ignored, and so is a prediction
    # matched to it, instead of counting as a miss or a false positive.
    truth, predicted = random_detection(9, 6, 3)
    truth[0].append({"box": [10.0, 10.0, 2e5, 2e5], "label": 0})
    predicted[0].append({"box": [10.0, 10.0, 2e5, 1.9e5], "label": 0, "score": 0.95})
    predicted[1].append({"box": [5.0, 5.0, 1.5e5, 1e5], "label": 1, "score": 0.9})
    # A prediction overlapping an ignored box (IoU 1) and a regular one (IoU 0.98) must take
    # the regular one: COCOeval only falls back to ignored boxes when no regular one fits.
    truth[2] += [
        {"box": [0.0, 0.0, 1e5, 1.01e5], "label": 1},
        {"box": [0.0, 0.0, 1e5, 0.99e5], "label": 1},
    ]
    predicted[2].append({"box": [0.0, 0.0, 1e5, 1.01e5], "label": 1, "score": 0.97})
    assert_matches_coco(truth, predicted, 3, 100)


def test_detection_equal_iou_takes_the_last_true_box() -> None:
    # The first prediction has IoU 0.6 with both true boxes; COCOeval keeps the last of equal
    # matches, which leaves the first box for the second prediction: two hits, not one.
    truth = [[{"box": [0.0, 0.0, 2.0, 1.0], "label": 0}, {"box": [1.0, 0.0, 2.0, 1.0], "label": 0}]]
    predicted = [
        [
            {"box": [0.5, 0.0, 2.0, 1.0], "label": 0, "score": 0.9},
            {"box": [0.0, 0.0, 2.0, 1.0], "label": 0, "score": 0.8},
        ]
    ]
    result = assert_matches_coco(truth, predicted, 1, 100)
    assert result["map_50"] == pytest.approx(1.0)


def test_detection_perfect_and_empty_predictions() -> None:
    truth = [[{"box": [0, 0, 10, 10], "label": 0}], [{"box": [5, 5, 20, 10], "label": 1}]]
    perfect = [[{**gt, "score": 0.9} for gt in gts] for gts in truth]
    result = metrics.detection(truth, perfect, ["cat", "dog", "fox"])
    # COCO's precision is tp / (tp + fp + eps), so "perfect" is 1 - 2e-16, not 1.0.
    assert [result["map"], result["map_50"], result["map_75"]] == pytest.approx([1.0] * 3)
    assert result["per_class"]["fox"] == {"ap": None, "ap_50": None, "support": 0}
    empty = metrics.detection(truth, [[], []], ["cat", "dog", "fox"])
    assert empty["map"] == 0.0 and empty["per_class"]["cat"]["ap"] == 0.0
    nothing = metrics.detection([[]], [[]], ["cat"])
    assert nothing["map"] is None and nothing["map_50"] is None


def test_detection_rejects_bad_input() -> None:
    box = {"box": [0, 0, 1, 1], "label": 0}
    with pytest.raises(ValueError, match="empty"):
        metrics.detection([], [], ["a"])
    with pytest.raises(ValueError, match="1 images but predicted has 2"):
        metrics.detection([[box]], [[], []], ["a"])
    with pytest.raises(ValueError, match="label 3"):
        metrics.detection([[{**box, "label": 3}]], [[]], ["a"])
    with pytest.raises(ValueError, match="w>=0"):
        metrics.detection([[{**box, "box": [0, 0, -1, 1]}]], [[]], ["a"])
    with pytest.raises(ValueError, match="score"):
        metrics.detection([[box]], [[{**box, "score": float("nan")}]], ["a"])


# --- slices -----------------------------------------------------------------------------------


def test_by_slice_groups_indices_and_skips_none() -> None:
    calls = []

    def compute(indices: list[int]) -> dict:
        calls.append(indices)
        return {"n": len(indices)}

    result = metrics.by_slice(["en", None, "de", "en", 10, 2, None], compute)
    assert list(result) == ["10", "2", "de", "en"]  # ordered by the key's string
    assert result["en"] == {"n": 2}
    assert sorted(calls) == [[0, 3], [2], [4], [5]]
    assert metrics.by_slice([None, None], compute) == {}
    with pytest.raises(ValueError, match="same name"):
        metrics.by_slice([1, "1"], compute)


def test_by_slice_with_classification() -> None:
    y, scores = make_classification(12, 300, 4, "dirichlet")
    keys = ["short" if i % 3 else "long" for i in range(300)]
    result = metrics.by_slice(
        keys, lambda idx: metrics.classification(y[idx], scores[idx], list("abcd"))
    )
    assert result["long"]["count"] == 100 and result["short"]["count"] == 200
    long_idx = list(range(0, 300, 3))
    assert result["long"]["accuracy"] == pytest.approx(
        accuracy_score(y[long_idx], scores[long_idx].argmax(axis=1)), abs=EXACT
    )
