"""Monitoring a release without a replica: the summary features of known inputs, the
request log carrying them (real RequestLog, instances from the real request checker), the
window and rotation of read_log, summarize's figures against numpy's, and drift on
scikit-learn's digits: a sample from the reference's own distribution is not flagged, a
brightened one is (KS and PSI), a changed class mix is (chi-squared), and too few
requests give no verdict but a reason."""

from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from loophub.models.signature import signature
from loophub.serving.monitoring import (
    drift,
    psi,
    read_log,
    reference_sample,
    summarize,
    summary_features,
)
from loophub.serving.requestlog import RequestLog
from loophub.serving.validation import Instance, RequestChecker

LABELS = [str(d) for d in range(10)]
GREY8 = {"mode": "L", "size": [8, 8], "mean": [0.0], "std": [1.0]}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as the server receives them: 0-255 intensities, 8x8."""
    data = load_digits()
    return (data.images * 255 / 16).astype(np.float32), data.target


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def record(features: dict, label: str, *, score: float = 0.9, time: float = 1.0,
           version: str | None = None) -> dict:
    """A request log line of one instance, as RequestLog writes it."""
    out = {"time": time, "status": 200, "latency_ms": 1.0, "inputs": [{}],
           "features": [features], "outputs": [{"label": label, "score": score}]}
    return out | ({"version": version} if version else {})


def records_of(images: np.ndarray, labels: np.ndarray) -> list[dict]:
    return [record(summary_features(image), str(label)) for image, label in zip(
        images, labels, strict=True)]


def strict_json(value: object) -> object:
    """VALUE through JSON with NaN refused: what the release side will store."""
    return json.loads(json.dumps(value, allow_nan=False))


# -- features ---------------------------------------------------------------------------

def test_the_features_of_known_images():
    grey = np.array([[0, 255], [255, 255]], dtype=np.float32)
    expected = {"brightness": 0.75, "contrast": round(math.sqrt(0.1875), 6), "ink": 0.75,
                "height": 2.0, "width": 2.0}
    assert summary_features(Instance(pixels=grey)) == expected
    assert summary_features(Instance(image=png(grey))) == expected  # the file, decoded
    assert summary_features(grey.tolist()) == expected               # a bare value
    red = np.zeros((3, 5, 3), dtype=np.float32)
    red[..., 0] = 255
    assert summary_features(Instance(pixels=red)) == pytest.approx(
        {"brightness": 0.299, "contrast": 0.0, "ink": 0.0, "height": 3.0, "width": 5.0})
    dark = np.full((4, 4), 127, dtype=np.float32)   # scaled by 1/255, not by its maximum
    assert summary_features(dark)["ink"] == 0.0
    assert summary_features(Instance(image=b"not an image")) == {}


def test_a_large_image_file_is_measured_reduced_but_sized_whole():
    stripes = np.zeros((300, 200), dtype=np.uint8)
    stripes[:, ::2] = 255
    features = summary_features(png(stripes))
    assert features["height"] == 300.0 and features["width"] == 200.0
    assert features["brightness"] == pytest.approx(0.5, abs=0.01)


def test_the_features_of_texts():
    vocabulary = {"the", "coach", "team"}
    features = summary_features(Instance(text="The coach praised the team."),
                                vocabulary=vocabulary)
    assert features == {"chars": 27.0, "tokens": 5.0, "oov": 0.2}  # "praised" unknown
    assert summary_features("two  words") == {"chars": 10.0, "tokens": 2.0}
    assert summary_features("   ", vocabulary=vocabulary) == {"chars": 3.0, "tokens": 0.0}


def test_the_reference_is_a_bounded_sample_with_the_label_counts(digits):
    images, labels = digits
    reference = reference_sample(iter(images), labels=labels, limit=500, seed=3)
    assert reference["count"] == 500 and reference["total"] == len(images)
    assert set(reference["features"]) == {"brightness", "contrast", "ink", "height", "width"}
    assert all(len(values) == 500 for values in reference["features"].values())
    assert reference["labels"] == {str(d): int(n) for d, n in enumerate(np.bincount(labels))}
    assert reference == reference_sample(list(images), labels=labels, limit=500, seed=3)
    assert strict_json(reference) == reference


# -- the request log ----------------------------------------------------------------------

def test_the_request_log_writes_features_and_version(tmp_path):
    image = np.arange(64, dtype=np.float32).reshape(8, 8) * 4
    body = {"instances": [{"pixels": image.astype(int).tolist()},
                          {"image": base64.b64encode(png(image)).decode()}]}
    checker = RequestChecker(signature("image_classification", LABELS, GREY8)["request"],
                             GREY8)
    instances = checker.check(json.dumps(body).encode())
    log = RequestLog(tmp_path / "r.jsonl", version="digits@v3")
    prediction = {"label": "3", "index": 3, "scores": [0.1] * 9 + [0.7]}
    log.write(status=200, seconds=0.002, instances=instances,
              predictions=[prediction, prediction])
    log.write(status=400, seconds=0.001, instances=None, predictions=None)
    log.close()
    ok, refused = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text()
                   .splitlines()]
    assert ok["version"] == refused["version"] == "digits@v3"
    assert ok["features"] == [summary_features(i) for i in instances]
    assert ok["features"][0] == ok["features"][1]  # the pixels and their PNG agree
    assert ok["features"][0]["height"] == 8.0 and ok["inputs"][0]["shape"] == [8, 8]
    assert ok["outputs"] == [{"label": "3", "score": 0.7}] * 2
    assert "features" not in refused and refused["status"] == 400


def test_a_text_log_has_the_oov_share_and_no_version_unless_given(tmp_path):
    checker = RequestChecker(signature("text_classification", ["a", "b"])["request"])
    instances = checker.check(b'{"instances": [{"text": "The coach praised the team."}]}')
    log = RequestLog(tmp_path / "t.jsonl", vocabulary={"the", "coach", "praised"})
    log.write(status=200, seconds=0.001, instances=instances,
              predictions=[{"label": "a", "index": 0, "scores": [0.8, 0.2]}])
    log.close()
    line = json.loads((tmp_path / "t.jsonl").read_text())
    assert "version" not in line
    assert line["inputs"] == [{"text": "The coach praised the team."}]  # unchanged
    assert line["features"] == [{"chars": 27.0, "tokens": 5.0, "oov": 0.2}]


# -- reading the logs ---------------------------------------------------------------------

def test_read_log_honours_the_window_and_rotation_and_skips_malformed_lines(tmp_path):
    path, other = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    lines = {path.with_name("a.jsonl.1"): [{"time": 5.0, "status": 200},
                                          {"time": 15.0, "status": 200}],
             path: [{"time": 25.0, "status": 500}, {"time": 30.0, "status": 200}],
             other: [{"time": 20.0, "status": 200}]}
    for file, records in lines.items():
        file.write_text("".join(json.dumps(r) + "\n" for r in records))
    with path.open("a") as handle:  # garbage, a record without a time, a torn last line
        handle.write('not json\n{"status": 200}\n\n{"time": 31.0, "sta')
    found = read_log([path, other, tmp_path / "missing.jsonl"], since=10.0, until=30.0)
    assert [r["time"] for r in found] == [15.0, 20.0, 25.0]  # 5 and 30 outside, merged
    assert found.malformed == 3
    assert [r["time"] for r in read_log(other, 0, 100)] == [20.0]


def test_a_log_round_trip_through_summarize_and_drift(tmp_path, digits):
    images, labels = digits
    log = RequestLog(tmp_path / "r.jsonl", version="digits@v1", max_bytes=60_000)
    for image, label in zip(images[:300], labels[:300], strict=True):
        log.write(status=200, seconds=0.001, instances=[Instance(pixels=image)],
                  predictions=[{"label": str(label), "index": int(label),
                                "scores": [0.95]}])
    log.close()
    assert (tmp_path / "r.jsonl.1").exists()  # rotated once at least
    records = read_log(tmp_path / "r.jsonl", since=0, until=math.inf)
    assert records.malformed == 0 and 0 < len(records) <= 300
    summary = summarize(records, window_s=60)
    assert summary["versions"]["digits@v1"]["requests"] == len(records)
    result = drift(reference_sample(images[300:], labels=labels[300:]), records)
    assert result["drifted"] is False and result["samples"]["instances"] == len(records)


# -- traffic ------------------------------------------------------------------------------

def test_summarize_agrees_with_numpy():
    rng = np.random.default_rng(7)
    latencies = rng.lognormal(0.5, 0.8, size=200).round(3)
    statuses = [200] * 180 + [400] * 12 + [413] * 2 + [500] * 5 + [503]
    scores = rng.uniform(0, 1, size=200)
    records = []
    for n, (latency, status, score) in enumerate(zip(latencies, statuses, scores,
                                                      strict=True)):
        line = {"time": float(n), "status": status, "latency_ms": float(latency),
                "version": "d@v2" if n % 4 == 0 else "d@v1"}
        if status == 200:
            line["outputs"] = [{"label": str(n % 3), "score": float(score)}]
        records.append(line)
    summary = strict_json(summarize(records, window_s=40.0))
    assert summary["requests"] == 200 and summary["requests_per_s"] == 5.0
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    assert summary["latency_ms"] == {"p50": p50, "p95": p95, "p99": p99,
                                     "mean": float(latencies.mean())}
    assert summary["status"] == {"200": 180, "400": 12, "413": 2, "500": 5, "503": 1}
    assert summary["errors"] == {"client": 14, "server": 6}
    assert summary["error_rate"] == 20 / 200
    assert (summary["client_error_rate"], summary["server_error_rate"]) == (14 / 200, 6 / 200)
    assert summary["classes"] == {str(c): sum(1 for n in range(180) if n % 3 == c)
                                  for c in range(3)}
    counts, edges = np.histogram(scores[:180], bins=10, range=(0, 1))
    assert summary["confidence"]["counts"] == counts.tolist()
    assert summary["confidence"]["edges"] == pytest.approx(edges.tolist())  # rounded
    v2 = summary["versions"]["d@v2"]
    assert v2["requests"] == 50 and v2["requests_per_s"] == 50 / 40
    assert v2["latency_ms"]["p95"] == np.percentile(latencies[::4], 95)
    assert set(summary["versions"]) == {"d@v1", "d@v2"}


def test_summarize_of_nothing_is_defined():
    summary = strict_json(summarize([], window_s=10, by_version=False))
    assert summary["requests"] == 0 and summary["error_rate"] is None
    assert summary["latency_ms"]["p99"] is None and "versions" not in summary
    with pytest.raises(ValueError, match="positive"):
        summarize([], window_s=0)


# -- drift --------------------------------------------------------------------------------

def split(digits: tuple, seed: int = 0) -> tuple:
    images, labels = digits
    order = np.random.default_rng(seed).permutation(len(labels))
    train, test = order[:1000], order[1000:]
    return images[train], labels[train], images[test], labels[test]


def test_a_sample_from_the_reference_distribution_is_not_flagged(digits):
    train_x, train_y, test_x, test_y = split(digits)
    result = strict_json(drift(reference_sample(train_x, labels=train_y),
                               records_of(test_x, test_y)))
    assert result["drifted"] is False and result["insufficient"] is None
    assert all(test["drifted"] is False for test in result["features"].values())
    assert result["classes"]["drifted"] is False
    assert result["thresholds"] == {"ks_p": 0.01, "psi": 0.2, "chi2_p": 0.01,
                                    "min_samples": 50}


def test_brightened_digits_are_flagged_by_ks_and_psi(digits):
    train_x, train_y, test_x, test_y = split(digits)
    brighter = np.clip(test_x * 1.4 + 30, 0, 255)
    result = strict_json(drift(reference_sample(train_x, labels=train_y),
                               records_of(brighter, test_y)))
    brightness = result["features"]["brightness"]
    assert brightness["drifted"] is True and brightness["test"] == "ks"
    assert brightness["p_value"] < 0.01 and brightness["psi"] > 0.2
    assert result["features"]["height"]["drifted"] is False  # the size did not change
    assert result["drifted"] is True and result["classes"]["drifted"] is False


def test_chi_squared_flags_a_changed_class_mix(digits):
    images, labels = digits
    low = labels < 5
    reference = reference_sample(images, labels=labels)
    result = strict_json(drift(reference, records_of(images[low][:400], labels[low][:400])))
    classes = result["classes"]
    assert classes["test"] == "chi2" and classes["drifted"] is True
    assert classes["p_value"] < 0.01 and classes["dof"] == 9
    assert set(classes["current"]) == {"0", "1", "2", "3", "4"}
    assert result["drifted"] is True


def test_a_text_drift_in_the_oov_share(digits):
    vocabulary = {f"w{n}" for n in range(50)}
    rng = np.random.default_rng(1)

    def texts(unknown_share: float, count: int) -> list[str]:
        return [" ".join(f"x{w}" if rng.random() < unknown_share else f"w{w}"
                         for w in rng.integers(0, 50, size=rng.integers(5, 15)))
                for _ in range(count)]

    reference = reference_sample(texts(0.05, 800), vocabulary=vocabulary)
    same = [record(summary_features(t, vocabulary=vocabulary), "a") for t in texts(0.05, 200)]
    new = [record(summary_features(t, vocabulary=vocabulary), "a") for t in texts(0.5, 200)]
    assert drift(reference, same)["features"]["oov"]["drifted"] is False
    changed = drift(reference, new)
    assert changed["features"]["oov"]["drifted"] is True
    assert changed["features"]["tokens"]["drifted"] is False
    assert changed["classes"]["insufficient"] == "the reference has no label distribution"


def test_too_few_requests_give_no_verdict_but_a_reason(digits):
    train_x, train_y, test_x, test_y = split(digits)
    brighter = np.clip(test_x[:20] * 1.4 + 30, 0, 255)
    result = strict_json(drift(reference_sample(train_x, labels=train_y),
                               records_of(brighter, test_y[:20])))
    assert result["drifted"] is None
    assert "brightness: 20 current values, 50 needed" in result["insufficient"]
    assert result["features"]["brightness"]["drifted"] is None
    assert result["features"]["brightness"]["p_value"] is None
    assert result["classes"]["insufficient"] == "20 current values, 50 needed"
    flagged = drift(reference_sample(train_x, labels=train_y),
                    records_of(brighter, test_y[:20]), min_samples=10)
    assert flagged["drifted"] is True  # the same requests, a lower bar


def test_drift_takes_one_versions_records(digits):
    train_x, train_y, test_x, test_y = split(digits)
    reference = reference_sample(train_x, labels=train_y)
    same = records_of(test_x[:300], test_y[:300])
    brighter = records_of(np.clip(test_x[300:600] * 1.4 + 30, 0, 255), test_y[300:600])
    records = [r | {"version": "d@v1"} for r in same] + \
        [r | {"version": "d@v2"} for r in brighter]
    assert drift(reference, records, version="d@v1")["drifted"] is False
    assert drift(reference, records, version="d@v2")["drifted"] is True


def test_psi_on_quantile_bins_of_the_reference():
    rng = np.random.default_rng(2)
    reference = rng.normal(0, 1, 5000)
    assert psi(reference, reference) == pytest.approx(0.0, abs=1e-12)
    assert psi(reference, rng.normal(0, 1, 5000)) < 0.02
    assert psi(reference, rng.normal(1, 1, 5000)) > 0.2
    # a constant reference still tells a different constant from itself
    eights = np.full(100, 8.0)
    assert psi(eights, eights) == 0.0
    assert psi(eights, np.full(100, 16.0)) > 1.0
    assert psi(eights, np.full(100, 4.0)) > 1.0
    # the hand computation: all current values in the lowest decile of 0..99
    uniform = np.arange(100.0)
    p, q = np.full(10, 0.1), np.array([1.0] + [1e-4] * 9)
    assert psi(uniform, np.zeros(50)) == pytest.approx(float(np.sum((q - p) * np.log(q / p))))


# -- over time, and the latest errors (the dashboard's) ------------------------------------

def test_the_series_buckets_requests_per_version_with_gaps_left_empty():
    from loophub.serving.monitoring import recent_errors, timeseries

    records = [{"time": 100.0 + i, "status": 200, "latency_ms": 10.0 + i, "version": "m@v1"}
               for i in range(10)]
    records += [{"time": 125.0, "status": 500, "latency_ms": 99.0, "version": "m@v2",
                 "id": "abcdefgh"}]
    series = timeseries(records, 100.0, 130.0, 10.0)
    assert series["t"] == [100.0, 110.0, 120.0]
    assert series["all"]["requests_per_s"] == [1.0, 0.0, 0.1]
    assert series["all"]["p50"][0] == pytest.approx(14.5) and series["all"]["p50"][1] is None
    assert series["all"]["error_rate"] == [0.0, None, 1.0]
    assert series["versions"]["m@v1"]["requests_per_s"] == [1.0, 0.0, 0.0]
    assert series["versions"]["m@v2"]["error_rate"] == [None, None, 1.0]
    assert recent_errors(records) == [{"time": 125.0, "status": 500, "version": "m@v2",
                                      "latency_ms": 99.0, "id": "abcdefgh"}]
    with pytest.raises(ValueError, match="at most 720"):
        timeseries(records, 0.0, 1000.0, 1.0)
