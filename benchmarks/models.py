"""Model evaluation: time to evaluate a 10,000-item classification test split on the
platform, the share of it spent reading the dataset, and whether every number the
evaluation reports equals the independent library's (scikit-learn, seqeval, pycocotools).

A real platform (`loophub up`, hub, proxy, API, its Dask) on a declared pool of this
machine's 2 cores. The data: scikit-learn's bundled digits, each scan drawn several times
with a random shift and noise, as 16x16 PNGs (--items in the test split). The model: a
small CNN trained here in plain torch for a few seconds, registered from the notebook
side (scripted). Each of --reps evaluations is a fairly scheduled job; reported:

  eval_10k_s       the evaluation itself (read + predict + metrics, its own timing), median
  eval_read_share  read / (read + predict + metrics)
  eval_job_s       submit -> result, the job's start and the dataset's materialization
                   included (the first run materializes the version; later runs reuse it)
  metrics_match_reference  every number equal (1e-9) to scikit-learn's on the same
                   predictions, and seqeval's / pycocotools' on random NER and detection
                   cases

    python benchmarks/models.py [--items 10000] [--reps 3] [--quick] [--json]

Prints a table, then one JSON line (--json: only the JSON line).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._hub import code_version, start_hub
from loophub.client import Client

POOL = '[{"name": "node1", "cpu": 2, "mem": "8G", "gpu": 0}]'
SIZE = 16


def digits_images(folder: Path, items: int, seed: int = 0) -> dict:
    """ITEMS shifted, noisy digits as PNGs, all in the test split, plus 200 train ones."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for n in range(items + 200):
        i = int(rng.integers(len(digits.images)))
        pixels = np.kron(digits.images[i], np.ones((2, 2))) * 255 / 16
        pixels = np.roll(pixels, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))
        pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
        name = f"x{n:05d}.png"
        Image.fromarray(pixels).save(folder / name)
        records.append({"id": f"x{n:05d}", "split": "test" if n < items else "train",
                        "media": {"path": name}, "metadata": {"source": int(i % 3)},
                        "annotations": [{"type": "image_class",
                                         "label": str(digits.target[i])}]})
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    schema = {"task": "image_classification",
              "classes": [{"id": i, "name": str(i)} for i in range(10)]}
    (folder / "label_schema.json").write_text(json.dumps(schema))
    return schema


def trained_cnn(seconds: float = 20.0):
    """A small CNN on the bundled digits (2x upscaled, pixels / 255), trained in plain
    torch for about SECONDS: a model whose scores are worth evaluating."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(np.kron(digits.images, np.ones((2, 2))) / 16, dtype=torch.float32)[:, None]
    y = torch.tensor(digits.target)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(128, 10), torch.nn.Softmax(dim=1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            F.nll_loss(torch.log(model(x[batch]) + 1e-9), y[batch]).backward()
            optimizer.step()
    return model.eval()


def _equal(a, b, path: str, wrong: list[str]) -> int:
    """Compare nested numbers; count them; note each difference in WRONG."""
    if isinstance(a, dict):
        return sum(_equal(a[k], b[k], f"{path}.{k}", wrong) for k in a)
    if isinstance(a, list | tuple | np.ndarray):
        return sum(_equal(x, y, f"{path}[{i}]", wrong) for i, (x, y) in enumerate(
            zip(list(a), list(b), strict=True)))
    if abs(float(a) - float(b)) > 1e-9:
        wrong.append(f"{path}: {a} != {b}")
    return 1


def classification_reference(result_metrics: dict, truth, scores, wrong: list[str]) -> int:
    from sklearn import metrics as sk

    labels = list(range(scores.shape[1]))
    predicted = scores.argmax(1)
    p, r, f, support = sk.precision_recall_fscore_support(truth, predicted, labels=labels,
                                                          zero_division=0)
    expected = {
        "accuracy": sk.accuracy_score(truth, predicted),
        "macro_f1": sk.f1_score(truth, predicted, labels=labels, average="macro",
                                zero_division=0),
        "micro_f1": sk.f1_score(truth, predicted, labels=labels, average="micro",
                                zero_division=0),
        "weighted_f1": sk.f1_score(truth, predicted, labels=labels, average="weighted",
                                   zero_division=0),
        "confusion": sk.confusion_matrix(truth, predicted, labels=labels),
        "per_class": {str(c): {"precision": p[c], "recall": r[c], "f1": f[c],
                               "support": support[c]} for c in labels},
        "top_k": {f"top_{k}": sk.top_k_accuracy_score(truth, scores, k=k, labels=labels)
                  for k in (1, 3, 5)},
    }
    return _equal(expected, {k: result_metrics[k] for k in expected}, "classification", wrong)


def ner_reference(wrong: list[str], cases: int = 200, seed: int = 1) -> int:
    """Random documents of unit tokens, spans as token ranges: entities() vs seqeval."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    from loophub.models import metrics

    rng = np.random.default_rng(seed)
    truth, predicted, tags_true, tags_pred = [], [], [], []
    for _ in range(cases):
        length, spans = int(rng.integers(5, 30)), []
        start = 0
        while start < length - 1:
            start += int(rng.integers(0, 4))
            end = min(length, start + int(rng.integers(1, 4)))
            if start < end:
                spans.append((start, end, str(rng.choice(["PER", "ORG", "LOC"]))))
            start = end + 1
        guess = [(s, e + int(rng.random() < 0.2), t if rng.random() > 0.15 else "MISC")
                 for s, e, t in spans if rng.random() > 0.2]
        guess = [(s, min(e, length), t) for s, e, t in guess]
        truth.append(spans)
        predicted.append(guess)
        tags_true.append(_tags(spans, length))
        tags_pred.append(_tags(guess, length))
    ours = metrics.entities(truth, predicted)
    report = classification_report(tags_true, tags_pred, output_dict=True, zero_division=0)
    expected = {"precision": precision_score(tags_true, tags_pred),
                "recall": recall_score(tags_true, tags_pred),
                "f1": f1_score(tags_true, tags_pred)}
    count = _equal(expected, {k: ours[k] for k in expected}, "ner", wrong)
    for kind, row in ours["per_type"].items():
        count += _equal({"precision": report[kind]["precision"],
                         "recall": report[kind]["recall"], "f1": report[kind]["f1-score"]},
                        {k: row[k] for k in ("precision", "recall", "f1")}, f"ner.{kind}",
                        wrong)
    return count


def _tags(spans, length: int) -> list[str]:
    tags = ["O"] * length
    for start, end, kind in spans:
        tags[start] = f"B-{kind}"
        for i in range(start + 1, end):
            tags[i] = f"I-{kind}"
    return tags


def detection_reference(wrong: list[str], images: int = 60, seed: int = 2) -> int:
    """Random boxes, jittered detections, false positives: detection() vs COCOeval."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from loophub.models import metrics

    rng = np.random.default_rng(seed)
    labels = ["a", "b", "c"]
    truth, predicted, gt, dt = [], [], [], []
    for image in range(images):
        boxes = [{"box": [float(v) for v in rng.uniform(0, 200, 2)] +
                  [float(v) for v in rng.uniform(10, 80, 2)],
                  "label": int(rng.integers(3))} for _ in range(int(rng.integers(1, 6)))]
        guesses = [{"box": [v + float(rng.normal(0, 4)) for v in b["box"]],
                    "label": b["label"], "score": float(rng.random())}
                   for b in boxes if rng.random() > 0.2]
        guesses += [{"box": [float(v) for v in rng.uniform(0, 200, 2)] + [30.0, 30.0],
                     "label": int(rng.integers(3)), "score": float(rng.random())}
                    for _ in range(int(rng.integers(0, 3)))]
        truth.append(boxes)
        predicted.append(guesses)
        gt += [{"id": len(gt) + n + 1, "image_id": image + 1,  # ids unique: COCO indexes
                "category_id": b["label"] + 1, "bbox": b["box"],   # annotations by id
                "area": b["box"][2] * b["box"][3], "iscrowd": 0} for n, b in enumerate(boxes)]
        dt += [{"image_id": image + 1, "category_id": g["label"] + 1, "bbox": g["box"],
                "score": g["score"]} for g in guesses]
    ours = metrics.detection(truth, predicted, labels)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        # ids from 1, as COCO files have them (pycocotools skips id 0 in places)
        coco.dataset = {"images": [{"id": i + 1} for i in range(images)], "annotations": gt,
                        "categories": [{"id": i + 1} for i in range(3)]}
        coco.createIndex()
        evaluation = COCOeval(coco, coco.loadRes(dt), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    expected = {"map": evaluation.stats[0], "map_50": evaluation.stats[1],
                "map_75": evaluation.stats[2]}
    count = _equal(expected, {k: ours[k] for k in expected}, "detection", wrong)
    precision = evaluation.eval["precision"][:, :, :, 0, -1]  # area all, maxDets 100
    for k, label in enumerate(labels):
        at_all, at_50 = precision[:, :, k], precision[0, :, k]
        count += _equal({"ap": at_all[at_all > -1].mean(), "ap_50": at_50[at_50 > -1].mean()},
                        {n: ours["per_class"][label][n] for n in ("ap", "ap_50")},
                        f"detection.{label}", wrong)
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1,000 items, one rep")
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    args = parser.parse_args()
    items, reps = (1000, 1) if args.quick else (args.items, args.reps)
    work = Path(tempfile.mkdtemp(prefix="loophub-bench-models-"))
    schema = digits_images(work / "digits", items)
    model = trained_cnn(5 if args.quick else 20)
    home = work / "home"
    home.mkdir()
    platform = start_hub(home, env={"LOOPHUB_POOL": POOL})
    try:
        import torch

        client = Client(platform.api, platform.token("bench"))
        client.datasets.create("digits", label_schema=schema)
        client.datasets.import_("digits", work / "digits", "loophub", progress=False)
        client.datasets.commit("digits", f"{items} test digits")
        version = client.models.register("cnn", model, example_input=torch.zeros(
            1, 1, SIZE, SIZE), task="image_classification", labels=[str(i) for i in range(10)],
            dataset="digits@v1")
        runs = []
        for _ in range(reps):
            started = time.monotonic()
            done = client.models.evaluate("cnn@1", dataset="digits@v1", split="test",
                                          slices=["label", "metadata.source"],
                                          progress=False, timeout=900)
            runs.append((time.monotonic() - started, done["result"]))
        result = runs[-1][1]
        wrong: list[str] = []
        checked = reference_checks(client, version, work / "digits", result, wrong)
    finally:
        platform.stop()
    own = [sum(r["timing"].values()) for _, r in runs]
    read = [r["timing"]["read_s"] / sum(r["timing"].values()) for _, r in runs]
    figures = {
        "items": result["count"], "accuracy": round(result["metrics"]["accuracy"], 4),
        "eval_10k_s": round(statistics.median(own), 2),
        "eval_read_share": round(statistics.median(read), 3),
        "eval_predict_s": round(statistics.median(r["timing"]["predict_s"] for _, r in runs),
                                2),
        "eval_metrics_s": round(statistics.median(r["timing"]["metrics_s"] for _, r in runs),
                                3),
        "eval_job_s_first": round(runs[0][0], 2),
        "eval_job_s": round(statistics.median(wall for wall, _ in runs[1:] or runs), 2),
        "numbers_checked": checked, "metrics_match_reference": checked > 0 and not wrong,
        "spread": {"eval_s": [round(min(own), 2), round(max(own), 2)],
                   "job_s": [round(min(w for w, _ in runs), 2),
                             round(max(w for w, _ in runs), 2)]},
        "reps": reps, "target_s": 10.0, "code": code_version(),
    }
    if not args.json:
        print(f"{'figure':<28}{'value':>14}")
        for key, value in figures.items():
            if not isinstance(value, dict):
                print(f"{key:<28}{value!s:>14}")
        for line in wrong[:20]:
            print(f"# differs: {line}")
    print(json.dumps(figures))
    return 0


def reference_checks(client: Client, version: dict, folder: Path, result: dict,
                     wrong: list[str]) -> int:
    """Every number of the platform's evaluation against scikit-learn on the same
    predictions (made here with the registered artifact), and the NER and detection
    metrics against seqeval and pycocotools. Returns how many numbers were compared."""
    from loophub.models.predictor import Predictor

    records = sorted((json.loads(line) for line in (folder / "records.jsonl").open()),
                     key=lambda r: r["id"])
    tests = [r for r in records if r["split"] == "test"]
    predictor = Predictor.load(client.models.artifact("cnn@1"), version["meta"])
    scores = np.array([p["scores"] for p in predictor.predict_images(
        [folder / r["media"]["path"] for r in tests])])
    truth = [int(r["annotations"][0]["label"]) for r in tests]
    count = classification_reference(result["metrics"], truth, scores, wrong)
    return count + ner_reference(wrong) + detection_reference(wrong)


if __name__ == "__main__":
    sys.exit(main())
