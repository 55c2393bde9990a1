"""The pure side of monitoring a release: what a replica's request log says about the
traffic (rates, latency, errors, predicted classes, confidence) and whether its inputs
have drifted from a reference sample of the version's training data.

Pure: no I/O besides reading the JSON-lines files handed to ``read_log``, deterministic,
and everything returned is JSON (floats, None where a figure is undefined, never NaN), so
the release side stores and serves it as it is.

Drift compares numeric **summary features** of the inputs, computed by one function,
``summary_features``, both on the training sample (``reference_sample``, stored with the
model version) and on each logged request (serving.requestlog, in the replica's request
path, hence cheap): for images brightness, contrast, ink, height and width; for texts
chars, tokens and, given the model's vocabulary, oov. Numeric features are compared with
the two-sample Kolmogorov-Smirnov test and the population stability index; the predicted
classes against the training labels with a chi-squared test of homogeneity.

scipy is imported inside the functions that run the statistical tests: the replica
imports this module for ``summary_features`` and has no use for scipy's import time.
"""

from __future__ import annotations

import io
import json
import math
import random
import string
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE_LIMIT = 2000      # feature values kept per reference (the stored sample's bound)
MAX_SIDE = 64               # image files larger than this a side are measured reduced
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as PIL's "L"
PSI_BINS = 10               # quantile bins of the reference
PSI_EPSILON = 1e-4          # the share standing in for an empty bin (log(0) otherwise)
CONFIDENCE_BINS = 10        # over 0..1
PERCENTILES = (50, 95, 99)
UNVERSIONED = "unknown"     # the per-version key of records logged without a version
_PUNCTUATION = string.punctuation + "\u201c\u201d\u2018\u2019\u00ab\u00bb\u2026"  # and quotes


# -- features of one instance -------------------------------------------------------------

def summary_features(instance: Any, *, vocabulary: Collection[str] | None = None
                     ) -> dict[str, float]:
    """The numeric summary of one input, what drift is measured on.

    INSTANCE is a serving Instance (its .text, .image or .pixels) or, for building a
    reference from training data, the bare value: a str (text), bytes (an image file) or
    an array of 0-255 intensities, [height][width] or [height][width][3]. Pixels are
    scaled by 1/255, the server's contract for them, not by their own maximum, so a dark
    image stays dark. Images: brightness (mean of 0..1 grey), contrast (its std), ink
    (share of grey above 0.5), height, width. Texts: chars, tokens (whitespace split)
    and, with VOCABULARY, oov (share of tokens not in it; absent for a text without
    tokens). An image file that cannot be read gives {} (its request failed anyway).
    """
    text, image, pixels = _parts(instance)
    if text is not None:
        return _text_features(text, vocabulary)
    if image is not None:
        return _image_file_features(image)
    if pixels is not None:
        return _pixel_features(np.asarray(pixels, dtype=np.float32))
    return {}


def _parts(instance: Any) -> tuple[str | None, bytes | None, Any]:
    if isinstance(instance, str):
        return instance, None, None
    if isinstance(instance, bytes | bytearray):
        return None, bytes(instance), None
    if isinstance(instance, np.ndarray | list):
        return None, None, instance
    return (getattr(instance, "text", None), getattr(instance, "image", None),
            getattr(instance, "pixels", None))


def _text_features(text: str, vocabulary: Collection[str] | None) -> dict[str, float]:
    tokens = text.split()
    out = {"chars": float(len(text)), "tokens": float(len(tokens))}
    if vocabulary is not None and tokens:
        unknown = sum(1 for t in tokens if not _known(t, vocabulary))
        out["oov"] = round(unknown / len(tokens), 6)
    return out


def _known(token: str, vocabulary: Collection[str]) -> bool:
    """A whitespace token is known when it, or its lowercase form without surrounding
    punctuation, is in the vocabulary: the model's tokenizer lowercases and splits
    punctuation off, so "Team." is the word "team"."""
    return token in vocabulary or token.strip(_PUNCTUATION).lower() in vocabulary


def _pixel_features(array: np.ndarray) -> dict[str, float]:
    if array.ndim == 3:
        height, width = array.shape[:2]
        array = array @ LUMA if array.shape[2] == 3 else array.mean(axis=2)
    elif array.ndim == 2:
        height, width = array.shape
    else:
        return {}
    return {**_grey_stats(array), "height": float(height), "width": float(width)}


def _grey_stats(grey: np.ndarray) -> dict[str, float]:
    """Brightness, contrast and ink of 0-255 GREY, scaled to 0..1. From one sum and one
    dot product rather than mean() and std(): a digits image costs a few microseconds
    instead of thirty (numpy's reductions have a fixed cost that dwarfs 64 values)."""
    flat = grey.ravel().astype(np.float64) if grey.size else np.zeros(1)
    n = flat.size
    mean = float(flat.sum()) / n
    variance = max(float(flat @ flat) / n - mean * mean, 0.0)
    return {"brightness": round(mean / 255.0, 6),
            "contrast": round(math.sqrt(variance) / 255.0, 6),
            "ink": round(int(np.count_nonzero(flat > 127.5)) / n, 6)}


def _image_file_features(data: bytes) -> dict[str, float]:
    """Features of an image file: its size from the header, the grey statistics from a
    copy at most MAX_SIDE a side (a JPEG decoded at that scale directly), so a large
    photo costs a fraction of its full decode."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            image.draft("L", (MAX_SIDE, MAX_SIDE))
            grey = image.convert("L")
    except (OSError, ValueError, Image.DecompressionBombError):
        return {}
    factor = math.ceil(max(grey.size) / MAX_SIDE)
    if factor > 1:
        grey = grey.reduce(factor)
    stats = _grey_stats(np.asarray(grey))
    return {**stats, "height": float(height), "width": float(width)}


# -- the reference stored with a model version ---------------------------------------------

def vocabulary_of(meta: dict) -> set[str] | None:
    """A text model's vocabulary (its tokenizer's, in the artifact's metadata), for the
    oov feature; None for other models."""
    tokenizer = ((meta or {}).get("preprocess") or {}).get("tokenizer") or {}
    vocab = tokenizer.get("vocab")
    return set(vocab) if isinstance(vocab, list) else None


def reference_sample(instances: Iterable[Any], *, vocabulary: Collection[str] | None = None,
                     labels: Iterable[Any] | None = None, limit: int = REFERENCE_LIMIT,
                     seed: int = 0) -> dict[str, Any]:
    """The reference drift is measured against, built from training inputs: per summary
    feature the values of at most LIMIT instances (a uniform sample, the same for the
    same SEED, so the stored reference stays small whatever the data set), and the
    counts of the training LABELS (all of them: counts are small) for the predicted
    class test. VOCABULARY must be the one given to the request log, or oov is not
    comparable.

    ``{"count": 1797, "total": 1797, "features": {"brightness": [...], ...},
    "labels": {"0": 178, ...} | None}``
    """
    if limit < 1:
        raise ValueError(f"reference limit must be at least 1, got {limit}")
    sample, total = reservoir(instances, limit, random.Random(seed))
    features: dict[str, list[float]] = defaultdict(list)
    for instance in sample:
        for name, value in summary_features(instance, vocabulary=vocabulary).items():
            features[name].append(value)
    counts = None if labels is None else dict(Counter(str(label) for label in labels))
    return {"count": len(sample), "total": total, "features": dict(features),
            "labels": counts}


def reservoir(items: Iterable[Any], limit: int, rng: random.Random) -> tuple[list, int]:
    """A uniform sample of LIMIT items of an iterable of unknown length (Vitter's
    algorithm R), and how many there were: a generator over a large data set is never
    held in memory."""
    sample: list[Any] = []
    seen = 0
    for seen, item in enumerate(items, start=1):
        if len(sample) < limit:
            sample.append(item)
        else:
            slot = rng.randrange(seen)
            if slot < limit:
                sample[slot] = item
    return sample, seen


# -- reading the replicas' logs ------------------------------------------------------------

class LogRecords(list):
    """The records read by ``read_log`` (a list of dicts), with ``malformed``: the lines
    that were skipped because they are not a JSON object with a numeric time."""

    malformed: int = 0


def read_log(paths: str | Path | Iterable[str | Path], since: float, until: float
             ) -> LogRecords:
    """The records of the request logs PATHS (each PATH with its rotated PATH.1) whose
    time is within [SINCE, UNTIL), oldest first. Missing files are no records (a replica
    that logged nothing yet); a line that is not a record (a torn last line, garbage) is
    skipped and counted in ``.malformed`` rather than failing the whole read."""
    if isinstance(paths, str | Path):
        paths = [paths]
    out = LogRecords()
    for path in paths:
        path = Path(path)
        for part in (path.with_name(path.name + ".1"), path):
            for record in _records(part, out):
                if since <= record["time"] < until:
                    out.append(record)
    out.sort(key=lambda record: record["time"])
    return out


def _records(path: Path, out: LogRecords) -> Iterator[dict]:
    try:
        handle = path.open(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            if not line.strip():
                continue
            record = _parse(line)
            if record is None:
                out.malformed += 1
            else:
                yield record


def _parse(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    stamp = record.get("time")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) \
            or not math.isfinite(stamp):
        return None
    return record


# -- traffic --------------------------------------------------------------------------------

def summarize(records: list[dict], *, window_s: float, by_version: bool = True
              ) -> dict[str, Any]:
    """The traffic of RECORDS over a window of WINDOW_S seconds: requests and requests
    per second, latency percentiles, answers by status with 4xx (the client's fault)
    apart from 5xx (ours), the predicted classes and a histogram of the confidence, and
    with BY_VERSION the same per served version (a canary beside its champion).

    ``{"requests": 120, "requests_per_s": 2.0, "instances": 130,
    "latency_ms": {"p50": 1.2, "p95": 3.4, "p99": 5.0, "mean": 1.5},
    "status": {"200": 117, "400": 2, "500": 1},
    "errors": {"client": 2, "server": 1}, "error_rate": 0.025,
    "client_error_rate": 0.0167, "server_error_rate": 0.0083,
    "classes": {"3": 40, "7": 90},
    "confidence": {"edges": [0.0, 0.1, ..., 1.0], "counts": [0, ..., 88]},
    "versions": {"digits@v3": {...the same but versions...}}}``
    """
    if not window_s > 0:
        raise ValueError(f"the window must be a positive number of seconds, got {window_s}")
    out = _traffic(records, window_s)
    if by_version:
        groups: dict[str, list[dict]] = defaultdict(list)
        for record in records:
            groups[str(record.get("version") or UNVERSIONED)].append(record)
        out["versions"] = {v: _traffic(group, window_s) for v, group in sorted(groups.items())}
    return out


MAX_BUCKETS = 720  # points per line of a dashboard's chart


def timeseries(records: list[dict], since: float, until: float, bucket_s: float
               ) -> dict[str, Any]:
    """RECORDS (oldest first) in buckets of BUCKET_S seconds from SINCE to UNTIL: per
    bucket start ``t``, overall and per version, requests per second, p50/p95/p99
    latency and the error rate (None where a bucket had no request: a gap, not a zero).

    ``{"bucket_s": 60, "t": [1700000000.0, ...], "all": {"requests_per_s": [...],
    "p50": [...], "p95": [...], "p99": [...], "error_rate": [...]},
    "versions": {"digits@v3": {...the same...}}}``
    """
    if not bucket_s > 0 or not until > since:
        raise ValueError(f"buckets of {bucket_s} s over [{since}, {until}) make no series")
    count = math.ceil((until - since) / bucket_s)
    if count > MAX_BUCKETS:
        raise ValueError(f"{count} buckets of {bucket_s:g} s: at most {MAX_BUCKETS}; use "
                         "larger buckets for a longer window")
    grouped: dict[str, list[list[dict]]] = defaultdict(lambda: [[] for _ in range(count)])
    for record in records:
        index = int((record["time"] - since) // bucket_s)
        if 0 <= index < count:
            grouped["all"][index].append(record)
            grouped[str(record.get("version") or UNVERSIONED)][index].append(record)
    lines = {name: _series(buckets, bucket_s) for name, buckets in grouped.items()}
    empty = _series([[] for _ in range(count)], bucket_s)
    return {"bucket_s": bucket_s, "t": [since + i * bucket_s for i in range(count)],
            "all": lines.pop("all", empty), "versions": dict(sorted(lines.items()))}


def _series(buckets: list[list[dict]], bucket_s: float) -> dict[str, list]:
    out: dict[str, list] = {"requests_per_s": [], "p50": [], "p95": [], "p99": [],
                            "error_rate": []}
    for bucket in buckets:
        latency = _latency([r["latency_ms"] for r in bucket if _number(r.get("latency_ms"))])
        errors = sum(1 for r in bucket if _number(r.get("status")) and r["status"] >= 400)
        out["requests_per_s"].append(len(bucket) / bucket_s)
        for p in ("p50", "p95", "p99"):
            out[p].append(latency[p])
        out["error_rate"].append(_share(errors, len(bucket)))
    return out


def recent_errors(records: list[dict], limit: int = 20) -> list[dict]:
    """The last LIMIT answered-with-an-error requests, newest first: time, status, version,
    latency (never their inputs: a dashboard shows what failed, not who sent what)."""
    failed = [r for r in records if _number(r.get("status")) and r["status"] >= 400]
    return [{"time": r["time"], "status": r["status"], "version": r.get("version"),
             "latency_ms": r.get("latency_ms"), "id": r.get("id")}
            for r in reversed(failed[-limit:])]


def _traffic(records: list[dict], window_s: float) -> dict[str, Any]:
    statuses = Counter(int(r["status"]) if _number(r.get("status")) else 0 for r in records)
    requests = len(records)
    client = sum(n for status, n in statuses.items() if 400 <= status < 500)
    server = sum(n for status, n in statuses.items() if status >= 500)
    classes: Counter[str] = Counter()
    scores: list[float] = []
    for record in records:
        labels, confidences = _predictions(record)
        classes.update(labels)
        scores.extend(confidences)
    return {
        "requests": requests, "requests_per_s": requests / window_s,
        "instances": sum(len(r.get("inputs") or r.get("outputs") or []) for r in records),
        "latency_ms": _latency([r["latency_ms"] for r in records if _number(r.get("latency_ms"))]),
        "status": {str(s): n for s, n in sorted(statuses.items())},
        "errors": {"client": client, "server": server},
        "error_rate": _share(client + server, requests),
        "client_error_rate": _share(client, requests),
        "server_error_rate": _share(server, requests),
        "classes": dict(sorted(classes.items())),
        "confidence": _histogram(scores),
    }


def _predictions(record: dict) -> tuple[list[str], list[float]]:
    """The predicted labels of a record and their scores: a classifier's one label per
    instance, a detector's or tagger's each box or span (as the metrics count them)."""
    labels: list[str] = []
    scores: list[float] = []
    for output in record.get("outputs") or []:
        if "label" in output:
            labels.append(str(output["label"]))
            scores.append(output.get("score"))
        else:
            labels.extend(str(label) for label in output.get("labels", []))
            scores.extend(output.get("scores", []))
    return labels, [float(s) for s in scores if _number(s)]


def _latency(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {f"p{p}": None for p in PERCENTILES} | {"mean": None}
    points = np.percentile(np.asarray(values, dtype=np.float64), PERCENTILES)
    return {f"p{p}": float(v) for p, v in zip(PERCENTILES, points, strict=True)} \
        | {"mean": float(np.mean(values))}


def _histogram(scores: list[float]) -> dict[str, list]:
    counts, edges = np.histogram(np.clip(scores, 0.0, 1.0), bins=CONFIDENCE_BINS,
                                 range=(0.0, 1.0))
    return {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()}


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value)


# -- drift ------------------------------------------------------------------------------------

def drift(reference: dict, records: list[dict], *, ks_p: float = 0.01,
          psi_threshold: float = 0.2, chi2_p: float = 0.01, min_samples: int = 50,
          version: str | None = None) -> dict[str, Any]:
    """Whether the inputs and predictions of RECORDS (those of VERSION when given: a
    reference belongs to one version) have drifted from REFERENCE (``reference_sample``).

    A numeric feature is drifted when the KS test rejects at KS_P **and** its PSI exceeds
    PSI_THRESHOLD: KS alone flags negligible shifts once thousands of requests are in the
    window, PSI alone is noisy on a small one (with no drift it averages about
    (bins - 1) * (1/n + 1/m), 0.18 for 50 requests). The predicted classes are drifted
    when a chi-squared test of homogeneity of their counts against the training labels'
    rejects at CHI2_P. A test with fewer than MIN_SAMPLES current values (or reference
    values) is not run: it says why in ``insufficient`` and ``drifted`` is None. The
    overall ``drifted`` is whether any test that ran says so, None if none ran.

    ``{"drifted": True, "insufficient": None, "samples": {"records": 300, "instances": 300},
    "thresholds": {"ks_p": 0.01, "psi": 0.2, "chi2_p": 0.01, "min_samples": 50},
    "features": {"brightness": {"test": "ks", "n": 300, "reference_n": 2000,
    "statistic": 0.62, "p_value": 1.3e-90, "psi": 3.1, "drifted": True}, ...},
    "classes": {"test": "chi2", "n": 300, "statistic": 412.0, "p_value": 2e-83, "dof": 9,
    "drifted": True, "current": {...}, "reference": {...}}}``
    """
    if min_samples < 1:
        raise ValueError(f"min_samples must be at least 1, got {min_samples}")
    if version is not None:
        records = [r for r in records if r.get("version") == version]
    current = _current_features(records)
    features = {name: _numeric_drift(np.asarray(values, dtype=np.float64),
                                     np.asarray(current.get(name, []), dtype=np.float64),
                                     ks_p=ks_p, psi_threshold=psi_threshold,
                                     min_samples=min_samples)
                for name, values in sorted(reference.get("features", {}).items())}
    classes = _class_drift(reference.get("labels"), records, chi2_p=chi2_p,
                           min_samples=min_samples)
    verdicts = [t["drifted"] for t in (*features.values(), classes) if t["drifted"] is not None]
    return {
        "drifted": any(verdicts) if verdicts else None,
        "insufficient": None if verdicts else _why_not(features, classes),
        "samples": {"records": len(records),
                    "instances": sum(len(r.get("features") or []) for r in records)},
        "thresholds": {"ks_p": ks_p, "psi": psi_threshold, "chi2_p": chi2_p,
                       "min_samples": min_samples},
        "features": features,
        "classes": classes,
    }


def _current_features(records: list[dict]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for record in records:
        for features in record.get("features") or []:
            for name, value in (features or {}).items():
                if _number(value):
                    out[name].append(float(value))
    return out


def _why_not(features: dict[str, dict], classes: dict) -> str:
    reasons = [f"{name}: {test['insufficient']}" for name, test in features.items()]
    reasons.append(f"classes: {classes['insufficient']}")
    return "no test could run (" + "; ".join(reasons) + ")"


def _numeric_drift(reference: np.ndarray, current: np.ndarray, *, ks_p: float,
                   psi_threshold: float, min_samples: int) -> dict[str, Any]:
    base: dict[str, Any] = {"test": "ks", "n": int(current.size),
                            "reference_n": int(reference.size)}
    short = _too_few(current.size, reference.size, min_samples)
    if short:
        return base | {"statistic": None, "p_value": None, "psi": None, "drifted": None,
                       "insufficient": short}
    from scipy.stats import ks_2samp

    result = ks_2samp(reference, current)
    psi_value = psi(reference, current)
    p_value = _finite(result.pvalue)
    drifted = p_value is not None and p_value < ks_p and psi_value > psi_threshold
    return base | {"statistic": _finite(result.statistic), "p_value": p_value,
                   "psi": _finite(psi_value), "drifted": bool(drifted), "insufficient": None}


def _too_few(current: int, reference: int, min_samples: int) -> str | None:
    if current < min_samples:
        return f"{current} current values, {min_samples} needed"
    if reference < min_samples:
        return f"{reference} reference values, {min_samples} needed"
    return None


def psi(reference: np.ndarray, current: np.ndarray, bins: int = PSI_BINS) -> float:
    """The population stability index of CURRENT against REFERENCE, sum((q - p) *
    ln(q / p)) over bins of the reference's quantiles (so each holds about 1/BINS of it;
    tied quantiles merge, so a constant feature has one bin), plus a bin below the
    reference's minimum and one above its maximum, where current values outside the
    reference's range land. A share of 0 counts as PSI_EPSILON (the log would be
    infinite): an empty bin on one side adds a large but finite amount."""
    cuts = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)))
    # the maximum belongs to the top bin: the last cut sits just above it
    top = np.nextafter(cuts[-1], np.inf)
    cuts = np.append(cuts[:-1] if cuts.size > 1 else cuts, top)
    p = _shares(np.searchsorted(cuts, reference, side="right"), cuts.size + 1)
    q = _shares(np.searchsorted(cuts, current, side="right"), cuts.size + 1)
    return float(np.sum((q - p) * np.log(q / p)))


def _shares(bin_of: np.ndarray, bins: int) -> np.ndarray:
    shares = np.bincount(bin_of, minlength=bins) / max(bin_of.size, 1)
    return np.where(shares > 0, shares, PSI_EPSILON)


def _class_drift(reference: dict[str, int] | None, records: list[dict], *, chi2_p: float,
                 min_samples: int) -> dict[str, Any]:
    current: Counter[str] = Counter()
    for record in records:
        current.update(_predictions(record)[0])
    n = sum(current.values())
    base: dict[str, Any] = {"test": "chi2", "n": n, "current": dict(sorted(current.items())),
                            "reference": dict(sorted((reference or {}).items()))}
    short = "the reference has no label distribution" if not reference \
        else _too_few(n, sum(reference.values()), min_samples)
    classes = sorted(set(current) | {k for k, v in (reference or {}).items() if v > 0})
    if not short and len(classes) < 2:
        short = "a single class on both sides: nothing to compare"
    if short:
        return base | {"statistic": None, "p_value": None, "dof": None, "drifted": None,
                       "insufficient": short}
    from scipy.stats import chi2_contingency

    table = [[reference.get(c, 0) for c in classes], [current.get(c, 0) for c in classes]]
    result = chi2_contingency(table)
    p_value = _finite(result.pvalue)
    return base | {"statistic": _finite(result.statistic), "p_value": p_value,
                   "dof": int(result.dof),
                   "drifted": bool(p_value is not None and p_value < chi2_p),
                   "insufficient": None}


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
