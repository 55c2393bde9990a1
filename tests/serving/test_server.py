"""The model server as a real process on a free port (python -m loophub.serving.server),
serving models trained here: an MLP on scikit-learn's digits (plain torch, a second) and
the text-classifier recipe on generated topic snippets (a few short epochs).

Checked over HTTP: predictions equal the in-process Predictor's on the same inputs (as
base64 files and as pixel arrays), signature violations are 400s naming the field before
the model runs, /ready only after the warm-up, /metadata, /metrics parsed with
prometheus_client's parser and matching the requests sent, 32 concurrent requests
batched with each answer its own, and SIGTERM during a burst of slow requests losing
none and exiting 0.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from loophub.client.models import to_torchscript
from loophub.models.predictor import Predictor
from loophub.models.signature import signature
from loophub.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
DIGIT_META = {"format": "torchscript", "task": "image_classification",
              "labels": [str(d) for d in range(10)],
              "preprocess": {"kind": "image", "mode": "L", "size": [16, 16],
                             "scale": 1 / 255, "mean": [0.1], "std": [0.3]}}


# -- models -------------------------------------------------------------------------------

@dataclass
class Model:
    artifact: Path
    meta: Path
    predictor: Predictor
    images: np.ndarray = field(default_factory=lambda: np.zeros(0))  # uint8 [n, 16, 16]

    def png(self, n: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(self.images[n]).save(buffer, format="PNG")
        return buffer.getvalue()

    def b64(self, n: int) -> str:
        return base64.b64encode(self.png(n)).decode()


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as 16x16 uint8 images, and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.kron(digits.images, np.ones((1, 2, 2))) * 255 / 16
    return np.clip(pixels.round(), 0, 255).astype(np.uint8), digits.target


def save(folder: Path, module: torch.nn.Module, example: torch.Tensor, meta: dict) -> Model:
    folder.mkdir(parents=True, exist_ok=True)
    artifact, meta_file = folder / "model.pt", folder / "model.json"
    artifact.write_bytes(to_torchscript(module, example))
    meta_file.write_text(json.dumps(meta))
    return Model(artifact, meta_file, Predictor.load(artifact.read_bytes(), meta))


def train_digits_mlp(images: np.ndarray, targets: np.ndarray) -> torch.nn.Module:
    """An MLP on the images as the server prepares them ((x/255 - 0.1) / 0.3)."""
    torch.manual_seed(0)
    x = (torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 255 - 0.1) / 0.3
    y = torch.tensor(targets)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 64), torch.nn.ReLU(),
                              torch.nn.Linear(64, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(80):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    return net.eval()


class Slow(torch.nn.Module):
    """INNER plus ROUNDS of a 256x256 matmul per call: a model slow enough that a burst
    of requests is still in flight when the server is told to stop."""

    def __init__(self, inner: torch.nn.Module, rounds: int) -> None:
        super().__init__()
        self.inner = inner
        self.weight = torch.nn.Parameter(torch.eye(256), requires_grad=False)
        self.rounds = rounds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ones(64, 256)
        for _ in range(self.rounds):
            y = torch.tanh(y @ self.weight)
        return self.inner(x) + 0 * y.sum()


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Model:
    images, targets = digits_images()
    model = save(tmp_path_factory.mktemp("digits"), train_digits_mlp(images, targets),
                 torch.zeros(1, 1, 16, 16), DIGIT_META)
    model.images = images[:200]
    return model


@pytest.fixture(scope="module")
def slow_digits(tmp_path_factory, digits) -> Model:
    """The digits model taking about 150 ms a call (calibrated here, on one thread)."""
    torch.set_num_threads(1)
    probe = torch.jit.script(Slow(digits.predictor.module, 50))
    for _ in range(3):  # TorchScript's first calls profile and optimise
        probe(torch.zeros(1, 1, 16, 16))
    start = time.perf_counter()
    for _ in range(3):
        probe(torch.zeros(1, 1, 16, 16))
    per_round = (time.perf_counter() - start) / 150
    rounds = max(10, min(20000, int(0.15 / per_round)))
    return save(tmp_path_factory.mktemp("slow"), torch.jit.script(
        Slow(digits.predictor.module, rounds)), torch.zeros(1, 1, 16, 16), DIGIT_META)


@pytest.fixture(scope="module")
def topics(tmp_path_factory) -> Model:
    """The text-classifier recipe, trained briefly on generated topic snippets."""
    from tests.models.test_predictor import class_schema, train
    from tests.training.test_recipes import TOPICS, topic_records

    trained = train(tmp_path_factory.mktemp("text"), "text-classifier", topic_records(160),
                    class_schema("text_classification", sorted(TOPICS)),
                    {"epochs": 8, "batch_size": 16, "max_len": 32, "hidden": 32,
                     "embedding_dim": 32})
    folder = tmp_path_factory.mktemp("text-artifact")
    (folder / "model.pt").write_bytes(trained.artifact)
    (folder / "model.json").write_text(json.dumps(trained.meta))
    return Model(folder / "model.pt", folder / "model.json", trained.predictor())


# -- a replica process ------------------------------------------------------------------------

class Replica:
    """`python -m loophub.serving.server` on a free port; READY_SEEN records the /ready
    answers polled from the first /health until ready."""

    def __init__(self, model: Model, *args: str, base: str = "/") -> None:
        self.port = free_port()
        self.base = base
        self.url = f"http://127.0.0.1:{self.port}{base}"
        command = [sys.executable, "-m", "loophub.serving.server", "--artifact",
                   str(model.artifact), "--meta", str(model.meta), "--port", str(self.port),
                   "--base-path", base, *args]
        env = {**os.environ, "LOOPHUB_ALLOC_CPU": "1"}
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.ready_seen: list[int] = []
        self.session = requests.Session()

    def wait_ready(self, timeout: float = 60.0) -> Replica:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited {self.process.returncode}: "
                                     f"{self.process.stdout.read()}")
            try:
                if self.ready_seen or self.get("health").status_code == 200:
                    self.ready_seen.append(self.get("ready").status_code)
                    if self.ready_seen[-1] == 200:
                        return self
            except requests.ConnectionError:
                pass
            time.sleep(0.01)
        raise AssertionError("server not ready in time")

    def get(self, route: str) -> requests.Response:
        return self.session.get(self.url + route, timeout=30)

    def predict(self, body: dict | bytes, session: requests.Session | None = None
                ) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return (session or self.session).post(self.url + "predict", data=data, timeout=60,
                                              headers={"Content-Type": "application/json"})

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """Every sample of /metrics: (name, sorted labels) -> value."""
        text = self.get("metrics").text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.session.close()
        return self.process.returncode


def sample(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def digits_replica(digits) -> Iterator[Replica]:
    replica = Replica(digits, "--model-ref", "digits@v3", "--alias", "champion",
                      "--max-body-bytes", "1000000", "--max-batch-size", "32").wait_ready()
    yield replica
    assert replica.stop() == 0


@pytest.fixture(scope="module")
def topics_replica(topics, tmp_path_factory) -> Iterator[Replica]:
    log = tmp_path_factory.mktemp("log") / "requests.jsonl"
    replica = Replica(topics, "--model-ref", "topics@v1", "--request-log", str(log),
                      base="/services/model-topics/").wait_ready()
    replica.log_path = log  # type: ignore[attr-defined]
    yield replica
    replica.stop()


# -- predictions ------------------------------------------------------------------------------

def assert_same(served: list[dict], local: list[dict]) -> None:
    assert [p["label"] for p in served] == [p["label"] for p in local]
    assert [p["index"] for p in served] == [p["index"] for p in local]
    np.testing.assert_allclose([p["scores"] for p in served], [p["scores"] for p in local],
                               rtol=0, atol=1e-6)


def test_image_predictions_equal_the_predictors(digits, digits_replica):
    local = digits.predictor.predict_images([digits.png(n) for n in range(40)])
    as_files = digits_replica.predict({"instances": [{"image": digits.b64(n)}
                                                     for n in range(40)]})
    assert as_files.status_code == 200, as_files.text
    assert as_files.json()["model"] == "digits@v3"
    assert_same(as_files.json()["predictions"], local)
    # the same images as pixel arrays (ints), one request each, and as float64 values
    for n in range(0, 40, 7):
        pixels = digits.images[n].tolist()
        one = digits_replica.predict({"instances": [{"pixels": pixels}]})
        assert one.status_code == 200, one.text
        assert_same(one.json()["predictions"], local[n:n + 1])
    floats = (digits.images[0].astype(np.float64) + 0.25).tolist()
    response = digits_replica.predict({"instances": [{"pixels": floats}]})
    assert response.status_code == 200, response.text
    expected = torch.softmax(digits.predictor.module(
        ((torch.tensor(floats, dtype=torch.float32) / 255 - 0.1) / 0.3)[None, None]), 1)
    np.testing.assert_allclose(response.json()["predictions"][0]["scores"],
                               expected[0].tolist(), atol=1e-6)
    # the model knows its digits: the served labels are mostly right
    _, targets = digits_images()
    right = sum(p["label"] == str(t) for p, t in zip(as_files.json()["predictions"],
                                                     targets[:40], strict=True))
    assert right >= 36


def test_text_predictions_equal_the_predictors(topics, topics_replica):
    texts = ["The striker scored in the final minute of the match.",
             "Shares fell after the bank reported lower quarterly profit.",
             "Researchers sequenced the genome of a rare species.",
             "The minister lost the vote in parliament.", "", "ünïcödé ☃ words unknown"]
    response = topics_replica.predict({"instances": [{"text": t} for t in texts]})
    assert response.status_code == 200, response.text
    assert_same(response.json()["predictions"], topics.predictor.predict_texts(texts))
    # routes live under the base path only
    assert requests.get(f"http://127.0.0.1:{topics_replica.port}/health",
                        timeout=10).status_code == 404
    bad = topics_replica.predict({"instances": [{"text": "fine"}, {"text": 7}]})
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("instances[1].text: must be string")
    wrong_kind = topics_replica.predict({"instances": [{"image": "aGVsbG8="}]})
    assert wrong_kind.status_code == 400
    assert wrong_kind.json()["error"] == "instances[0].text: required"


def test_a_sample_of_requests_is_logged(topics_replica):
    topics_replica.predict({"instances": [{"text": "The coach praised the team."}]})
    deadline = time.monotonic() + 30  # the log is flushed once a second
    while True:
        lines = [json.loads(line) for line in topics_replica.log_path.read_text().splitlines()]
        if (lines and lines[-1]["inputs"] == [{"text": "The coach praised the team."}]) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    last = lines[-1]
    assert last["status"] == 200 and last["inputs"] == [{"text": "The coach praised the team."}]
    assert 0 <= last["features"][0]["oov"] <= 1  # against the model's own vocabulary
    assert last["outputs"][0]["label"] in topics_replica_labels(topics_replica)
    assert any(line["status"] == 400 for line in lines)


def topics_replica_labels(replica: Replica) -> list[str]:
    return replica.get("metadata").json()["labels"]


# -- the signature, enforced before the model runs ------------------------------------------

def test_signature_violations_are_400s_naming_the_field(digits, digits_replica):
    image = digits.b64(0)
    pixels = digits.images[0].tolist()
    cases = [
        ({}, "instances", "required"),
        ({"instances": []}, "instances", "must contain at least 1 items"),
        ({"instances": "x"}, "instances", "must be array"),
        ({"instances": [{"image": image}, {"image": 5}]}, "instances[1].image",
         "must be string"),
        ({"instances": [{"image": image}, {"image": "not*base64!"}]}, "instances[1].image",
         "not base64"),
        ({"instances": [{"image": base64.b64encode(b"plain text").decode()}]},
         "instances[0].image", "not an image that can be read"),
        ({"instances": [{"text": "a digit?"}]}, "instances[0]", "unknown field(s) 'text'"),
        ({"instances": [{}]}, "instances[0]", "must have one of image or pixels"),
        ({"instances": [{"image": image, "pixels": pixels}]}, "instances[0]",
         "only one of image or pixels"),
        ({"instances": [{"pixels": pixels[:15]}]}, "instances[0].pixels",
         "must contain at least 16 items"),
        ({"instances": [{"pixels": [[300] * 16] * 16}]}, "instances[0].pixels[0][0]",
         "must be smaller than or equal to 255"),
        ({"instances": [{"pixels": [[True] * 16] * 16}]}, "instances[0].pixels[0][0]",
         "must be number"),
        ({"instances": [{"pixels": [[1] * 16] * 15 + [[1] * 15 + ["2"]]}]},
         "instances[0].pixels[15][15]", "must be number"),
        ({"instances": [{"pixels": pixels}] * 257}, "instances",
         "must contain less than or equal to 256 items"),
        ({"instances": [{"image": image}], "extra": 1}, "body", "unknown field(s) 'extra'"),
    ]
    before = digits_replica.metrics()
    for body, where, message in cases:
        response = digits_replica.predict(body)
        assert response.status_code == 400, (body, response.text)
        error = response.json()
        assert error["detail"]["field"] == where, error
        assert error["error"].startswith(f"{where}: "), error
        assert message in error["error"], error
    for raw, message in ((b"{not json", "body: not valid JSON"),
                         (b'{"instances": [{"pixels": NaN}]}', "NaN is not JSON"),
                         (b"\xff\xfe", "not UTF-8")):
        response = digits_replica.predict(raw)
        assert response.status_code == 400 and message in response.json()["error"], raw
    too_large = digits_replica.predict(b" " * 1_000_001)
    assert too_large.status_code == 413 and "larger than 1000000 bytes" in too_large.text
    after = digits_replica.metrics()
    # none of them reached the model
    assert sample(after, "loophub_model_batch_size_count") == \
        sample(before, "loophub_model_batch_size_count")
    assert sample(after, "loophub_model_requests_total", route="predict", status="400") - \
        sample(before, "loophub_model_requests_total", route="predict", status="400") == \
        len(cases) + 3


# -- lifecycle routes --------------------------------------------------------------------------

def test_ready_only_after_the_warm_up(digits_replica):
    # polled from the first /health: loading (503) until the model was loaded and warmed
    assert digits_replica.ready_seen[0] == 503 and digits_replica.ready_seen[-1] == 200
    assert set(digits_replica.ready_seen[:-1]) == {503}
    assert digits_replica.get("metadata").json()["warm_up"]["passes"] >= 1
    assert digits_replica.get("health").json() == {"status": "ok"}


def test_metadata_and_openapi(digits, digits_replica):
    meta = digits_replica.get("metadata").json()
    assert (meta["name"], meta["version"], meta["alias"], meta["ref"]) == (
        "digits", 3, "champion", "digits@v3")
    assert meta["task"] == "image_classification" and meta["labels"] == DIGIT_META["labels"]
    assert meta["signature"] == signature("image_classification", DIGIT_META["labels"],
                                          DIGIT_META["preprocess"])
    assert meta["batching"] == {"enabled": True, "max_batch_size": 32, "max_wait_ms": 5.0}
    document = digits_replica.get("openapi.json").json()
    assert document["openapi"].startswith("3.1")
    operation = document["paths"]["/predict"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == \
        meta["signature"]["request"]
    assert set(operation["responses"]) >= {"200", "400", "413", "503"}
    missing = digits_replica.get("nope")
    assert missing.status_code == 404 and "no route GET /nope" in missing.json()["error"]


def test_metrics_count_the_requests_sent(digits, digits_replica):
    before = digits_replica.metrics()
    for n in range(7):
        assert digits_replica.predict({"instances": [{"image": digits.b64(n)}] * 2}
                                      ).status_code == 200
    for _ in range(3):
        assert digits_replica.predict({"instances": [{"image": 1}]}).status_code == 400
    for _ in range(2):
        digits_replica.get("health")
    after = digits_replica.metrics()

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("loophub_model_requests_total", route="predict", status="200") == 7
    assert delta("loophub_model_requests_total", route="predict", status="400") == 3
    assert delta("loophub_model_requests_total", route="health", status="200") == 2
    assert delta("loophub_model_request_duration_seconds_count", route="predict") == 10
    # sub-millisecond buckets exist
    assert ("loophub_model_request_duration_seconds_bucket",
            (("le", "0.00025"), ("route", "predict"))) in after
    assert sample(after, "loophub_model_requests_in_flight") == 0
    # 14 instances predicted, in passes of one request each (sequential requests)
    assert delta("loophub_model_batch_size_sum") == 14
    assert delta("loophub_model_batch_size_count") == 7
    local = digits.predictor.predict_images([digits.png(n) for n in range(7)])
    for label in set(p["label"] for p in local):
        assert delta("loophub_model_predictions_total", label=label) == \
            2 * sum(p["label"] == label for p in local)
    assert sample(after, "loophub_model_info", model="digits", version="3", alias="champion",
                  task="image_classification") == 1


# -- batching --------------------------------------------------------------------------------

def burst(replica: Replica, bodies: list[dict]) -> list[requests.Response]:
    """BODIES posted at once, one thread and connection each."""
    results: list[requests.Response | None] = [None] * len(bodies)
    gate = threading.Barrier(len(bodies))

    def post(n: int) -> None:
        with requests.Session() as session:
            session.get(replica.url + "health", timeout=10)  # connect before the gate
            gate.wait()
            results[n] = replica.predict(bodies[n], session)

    threads = [threading.Thread(target=post, args=(n,)) for n in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def test_32_concurrent_requests_are_batched_and_each_gets_its_own(digits, digits_replica):
    local = digits.predictor.predict_images([digits.png(n) for n in range(96)])
    # request n asks for 1-3 different images, some as files and some as pixels
    bodies, wanted = [], []
    for n in range(32):
        picks = [(n * 3 + k) % 96 for k in range(1 + n % 3)]
        bodies.append({"instances": [{"image": digits.b64(i)} if i % 2 else
                                     {"pixels": digits.images[i].tolist()} for i in picks]})
        wanted.append([local[i] for i in picks])
    before = digits_replica.metrics()
    for _ in range(3):  # a few bursts: batching depends on arrival order, not luck
        for response, expected in zip(burst(digits_replica, bodies), wanted, strict=True):
            assert response.status_code == 200, response.text
            assert_same(response.json()["predictions"], expected)
    after = digits_replica.metrics()
    passes = sample(after, "loophub_model_batch_size_count") - \
        sample(before, "loophub_model_batch_size_count")
    instances = sample(after, "loophub_model_batch_size_sum") - \
        sample(before, "loophub_model_batch_size_sum")
    assert instances == 3 * sum(len(b["instances"]) for b in bodies)
    assert passes < 3 * 32, "no pass held more than one request"
    singles = sample(after, "loophub_model_batch_size_bucket", le="1.0") - \
        sample(before, "loophub_model_batch_size_bucket", le="1.0")
    assert singles < passes  # batches of more than one instance were run
    assert sample(after, "loophub_model_batch_size_bucket", le="32.0") - sample(
        before, "loophub_model_batch_size_bucket", le="32.0") == passes  # <= max_batch_size


# -- graceful shutdown -------------------------------------------------------------------------

def test_sigterm_finishes_every_request_in_flight_and_exits_0(digits, slow_digits):
    replica = Replica(slow_digits, "--no-batching").wait_ready()
    try:
        count = 12
        bodies = [{"instances": [{"pixels": digits.images[n].tolist()}]} for n in range(count)]
        results: list[requests.Response | Exception | None] = [None] * count

        def post(n: int) -> None:
            try:
                results[n] = replica.predict(bodies[n], requests.Session())
            except Exception as exc:  # a dropped request shows up here
                results[n] = exc

        threads = [threading.Thread(target=post, args=(n,)) for n in range(count)]
        for thread in threads:
            thread.start()
        # SIGTERM once the whole burst is in flight (or most of it, on a busy machine
        # where the first requests may be answered before the last arrive)
        start = time.monotonic()
        while (in_flight := sample(replica.metrics(), "loophub_model_requests_in_flight")
               ) < count and not (in_flight >= count // 2 and time.monotonic() - start > 3):
            assert time.monotonic() - start < 30, "the burst never got in flight"
            time.sleep(0.005)
        replica.process.send_signal(signal.SIGTERM)
        refused_by = time.monotonic() + 5  # no new connections, once the signal is handled
        while True:
            try:
                requests.get(replica.url + "health", timeout=5)
            except requests.ConnectionError:
                break
            assert time.monotonic() < refused_by, "new connections still accepted"
            time.sleep(0.02)
        for thread in threads:
            thread.join(60)
        assert replica.process.wait(30) == 0
    finally:
        replica.stop()
    local = digits.predictor.predict_images([digits.png(n) for n in range(count)])
    for n, result in enumerate(results):
        assert isinstance(result, requests.Response), result
        assert result.status_code == 200, result.text
        assert_same(result.json()["predictions"], local[n:n + 1])
    drained = re.search(r"draining: (\d+) requests in flight", replica.process.stdout.read())
    assert drained and int(drained.group(1)) >= count // 2  # the stop came mid-burst


def test_a_bad_artifact_ends_the_process_with_the_reason(tmp_path, digits):
    (tmp_path / "model.pt").write_bytes(b"not a model")
    replica = Replica(Model(tmp_path / "model.pt", digits.meta, digits.predictor))
    assert replica.process.wait(60) == 2
    assert "not a TorchScript module" in replica.process.stdout.read()
