"""The model server's pure parts, without processes: the request checker (its fast pixel
path refuses exactly what the signature refuses), the batcher (each request its own
answers, passes bounded, a lone caller never waits, one bad request fails alone), the
OpenAPI document, the request log's bound, and the command line."""

from __future__ import annotations

import asyncio
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import fastjsonschema
import numpy as np
import pytest

from loophub.errors import InvalidInput
from loophub.models.signature import signature
from loophub.serving import openapi
from loophub.serving.batching import Batcher, Direct
from loophub.serving.requestlog import RequestLog
from loophub.serving.server import ServerConfig, config_from_args, parse_ref
from loophub.serving.validation import Instance, PixelShape, RequestChecker, fast_pixels
from loophub.store.blobs import BlobStore

LABELS = [str(d) for d in range(10)]
GREY = {"mode": "L", "size": [4, 3], "mean": [0.0], "std": [1.0]}
RGB = {"mode": "RGB", "size": 2, "mean": [0.0] * 3, "std": [1.0] * 3}


def checker(preprocess: dict) -> RequestChecker:
    return RequestChecker(signature("image_classification", LABELS, preprocess)["request"],
                          preprocess)


def random_pixels(rng: random.Random, shape: tuple[int, ...]) -> object:
    """Mostly valid pixel arrays, with one of many ways to be wrong now and then."""
    if len(shape) == 1:
        return [random_value(rng) for _ in range(shape[0] + rng.choice([0] * 12 + [-1, 1]))]
    rows = [random_pixels(rng, shape[1:]) for _ in range(shape[0])]
    if rng.random() < 0.03:
        rows = rows[:-1] if rng.random() < 0.5 else [*rows, rows[0]]
    return rows


def random_value(rng: random.Random) -> object:
    roll = rng.random()
    if roll < 0.97:
        return rng.choice([rng.randint(0, 255), rng.uniform(0, 255)])
    return rng.choice([True, False, None, "7", -1, 256, 255.5, 2**70, [1], {}])


@pytest.mark.parametrize("preprocess", [GREY, RGB])
def test_the_fast_pixel_check_refuses_exactly_what_the_signature_refuses(preprocess):
    check = checker(preprocess)
    full = fastjsonschema.compile(check.schema)
    shape = PixelShape.from_preprocess(preprocess).shape
    rng = random.Random(7)
    outcomes = set()
    for _ in range(600):
        body = {"instances": [{"pixels": random_pixels(rng, shape)}
                              for _ in range(rng.randint(1, 3))]}
        try:
            full(body)
            valid = True
        except fastjsonschema.JsonSchemaValueException:
            valid = False
        try:
            instances = check.check(json.dumps(body).encode())
        except InvalidInput:
            assert not valid, body
            outcomes.add("refused")
            continue
        assert valid, body
        outcomes.add("taken")
        for instance, item in zip(instances, body["instances"], strict=True):
            assert instance.pixels.dtype == np.float32 and instance.pixels.shape == shape
            np.testing.assert_array_equal(instance.pixels,
                                          np.asarray(item["pixels"], dtype=np.float32))
    assert outcomes == {"refused", "taken"}


def test_fast_pixels_leaves_booleans_and_odd_forms_to_the_validator():
    shape = PixelShape(2, 2, 1)
    assert fast_pixels([[1, 2], [3, 4]], shape, maybe_bools=False) is not None
    assert fast_pixels([[1, 2], [3, 4]], shape, maybe_bools=True) is None
    for value in ([[1, 2], [3]], [[1, 2], [3, "4"]], [[1, 2], [3, 2**70]], [[1, 2], [3, 256]],
                  [[1, 2]], [[[1], [2]], [[3], [4]]]):
        assert fast_pixels(value, shape, maybe_bools=False) is None, value


def test_errors_name_the_field():
    check = checker(GREY)
    cases = {b'{"instances": [{"pixels": [[1, 2, 3]]}]}': "instances[0].pixels",
             b'{"instances": [{"pixels": [[1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, true]]}]}':
                 "instances[0].pixels[3][2]",
             b'{"instances": [{"image": "@@@@"}]}': "instances[0].image",
             b'{"instances": [{"image": "aGk=", "extra": 1}]}': "instances[0]",
             b'{"nothing": 1}': "instances", b"[1, 2]": "body", b"": "body"}
    for raw, field in cases.items():
        with pytest.raises(InvalidInput) as error:
            check.check(raw)
        assert error.value.detail == {"field": field}, raw
        assert str(error.value).startswith(f"{field}: "), str(error.value)
    # url-safe base64 without padding is taken
    assert check.check(b'{"instances": [{"image": "_-_-AA"}]}')[0].image == \
        b"\xff\xef\xfe\x00"


def test_a_text_checker_takes_texts():
    schema = signature("text_classification", ["a", "b"])["request"]
    check = RequestChecker(schema)
    assert [i.text for i in check.check('{"instances": [{"text": "ünï"}, {"text": ""}]}'
                                        .encode())] == ["ünï", ""]
    with pytest.raises(InvalidInput, match=r"instances\[0\]\.text: must be string"):
        check.check(b'{"instances": [{"text": 1.5}]}')


# -- batching ------------------------------------------------------------------------------

class Recorder:
    """A run function that answers each instance with (its value, the pass number)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.passes: list[int] = []
        self.delay = delay

    def __call__(self, jobs):
        time.sleep(self.delay)
        number = len(self.passes)
        self.passes.append(sum(len(job) for job in jobs))
        return [InvalidInput(f"job {job[0]} is bad") if job[0] == "bad" else
                [(value, number) for value in job] for job in jobs]


def run_async(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_passes_and_each_gets_its_own():
    async def scenario():
        recorder = Recorder(delay=0.002)
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(recorder, executor, max_batch_size=8, max_wait_ms=2)
            batcher.start()
            jobs = [[f"r{n}-{k}" for k in range(1 + n % 3)] for n in range(40)]
            results = await asyncio.gather(*(batcher.submit(job) for job in jobs))
            await batcher.stop()
        for job, result in zip(jobs, results, strict=True):
            assert [value for value, _ in result] == job
        assert max(recorder.passes) <= 8 and sum(recorder.passes) == sum(map(len, jobs))
        assert len(recorder.passes) < len(jobs)  # passes held several requests

    run_async(scenario())


def test_a_request_larger_than_a_batch_is_a_pass_of_its_own_and_bad_ones_fail_alone():
    async def scenario():
        recorder = Recorder()
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(recorder, executor, max_batch_size=4, max_wait_ms=0)
            batcher.start()
            big, bad, fine = list("abcdefg"), ["bad"], ["x"]
            results = await asyncio.gather(batcher.submit(big), batcher.submit(bad),
                                           batcher.submit(fine), return_exceptions=True)
            await batcher.stop()
        assert [v for v, _ in results[0]] == big and recorder.passes[0] == 7
        assert isinstance(results[1], InvalidInput) and "job bad is bad" in str(results[1])
        assert [v for v, _ in results[2]] == fine

    run_async(scenario())


def test_a_lone_caller_never_waits_for_a_batch():
    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(Recorder(), executor, max_batch_size=32, max_wait_ms=200)
            batcher.start()
            start = time.perf_counter()
            for n in range(5):
                await batcher.submit([n])
            elapsed = time.perf_counter() - start
            await batcher.stop()
        assert elapsed < 0.2, elapsed  # 5 sequential calls: far less than one wait

    run_async(scenario())


def test_direct_mode_is_one_pass_per_request():
    async def scenario():
        recorder = Recorder()
        seen = []
        with ThreadPoolExecutor(1) as executor:
            direct = Direct(recorder, executor, on_batch=seen.append)
            results = await asyncio.gather(*(direct.submit([n, n]) for n in range(4)))
            with pytest.raises(InvalidInput):
                await direct.submit(["bad"])
        assert [[v for v, _ in r] for r in results] == [[n, n] for n in range(4)]
        assert recorder.passes == [2, 2, 2, 2, 1] and seen == [2, 2, 2, 2]

    run_async(scenario())


def test_a_failing_model_fails_every_request_of_its_pass():
    def broken(jobs):
        raise RuntimeError("shape mismatch")

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(broken, executor)
            batcher.start()
            results = await asyncio.gather(batcher.submit([1]), batcher.submit([2]),
                                           return_exceptions=True)
            await batcher.stop()
        assert all(isinstance(r, RuntimeError) for r in results)

    run_async(scenario())


# -- documents, log, command line ------------------------------------------------------------

def test_the_openapi_document_carries_the_signature():
    sig = signature("text_classification", ["a", "b"])
    doc = openapi.document(title="t", version="2", task="text_classification", signature=sig,
                           base_path="/services/model-t/", max_body=10)
    assert doc["servers"] == [{"url": "/services/model-t"}]
    post = doc["paths"]["/predict"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == sig["request"]
    assert post["responses"]["200"]["content"]["application/json"]["schema"] == \
        sig["response"]
    assert set(doc["paths"]) == {"/predict", "/health", "/ready", "/metadata", "/metrics",
                                 "/openapi.json"}


def test_the_request_log_is_sampled_and_bounded(tmp_path):
    log = RequestLog(tmp_path / "r.jsonl", rate=0.5, max_bytes=2000, seed=1)
    kept = 0
    for n in range(200):
        if log.sampled():
            kept += 1
            log.write(status=200, seconds=0.001, instances=[Instance(text=f"t{n}")],
                      predictions=[{"label": "a", "index": 0, "scores": [0.9, 0.1]}])
    log.close()
    assert 60 < kept < 140
    assert (tmp_path / "r.jsonl").stat().st_size <= 2000
    assert (tmp_path / "r.jsonl.1").exists()
    line = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[-1])
    assert line["outputs"] == [{"label": "a", "score": 0.9}] and line["status"] == 200
    with pytest.raises(ValueError, match="within 0 and 1"):
        RequestLog(tmp_path / "x.jsonl", rate=2)


def test_the_request_log_stores_an_image_before_the_line_that_names_it(tmp_path):
    """A collection reading the log never meets an image the blob store does not hold
    yet; a failing blob store loses no line."""
    path, seen = tmp_path / "r.jsonl", []

    class Watched(BlobStore):
        def put_bytes(self, data: bytes) -> str:
            seen.append(path.read_text())  # what a reader of the log saw at that moment
            return super().put_bytes(data)

    blobs = Watched(str(tmp_path / "blobs"))
    log = RequestLog(path, blobs=blobs)
    answer = [{"label": "a", "index": 0, "scores": [0.9, 0.1]}]
    log.write(status=200, seconds=0.001, instances=[Instance(image=b"\x89PNG one")],
              predictions=answer)
    log.write(status=200, seconds=0.001, instances=[Instance(text="no image")],
              predictions=answer)
    log.flush()
    [before_the_image] = seen  # the text's line was out, the image's line was not
    assert [json.loads(t)["inputs"] for t in before_the_image.splitlines()] == [
        [{"text": "no image"}]]
    image_line = json.loads(path.read_text().splitlines()[-1])
    digest = image_line["inputs"][0]["image_sha256"]
    assert image_line["inputs"][0]["stored"] and blobs.exists(digest)

    class Broken(BlobStore):
        def put_bytes(self, data: bytes) -> str:
            raise OSError("disk full")

    log.blobs = Broken(str(tmp_path / "broken"))
    log.write(status=200, seconds=0.001, instances=[Instance(image=b"\x89PNG two")],
              predictions=answer)
    with pytest.raises(OSError, match="disk full"):
        log.flush()
    assert len(path.read_text().splitlines()) == 3  # the line is there all the same
    log.close()


def test_a_failing_request_log_is_logged_once_then_reminded_then_recovered(monkeypatch, caplog):
    """The replica's flusher keeps flushing through failures, with one traceback, a reminder
    each FAILING_REMINDER seconds, and a line when writing works again (not a traceback a
    second for as long as the disk is full)."""
    from loophub.serving import server as replica

    clock = iter(range(0, 1000, 10))  # each of the flusher's readings is 10 s after the last
    monkeypatch.setattr(replica, "time", SimpleNamespace(monotonic=lambda: float(next(clock))))
    monkeypatch.setattr(replica, "FLUSH_EVERY", 0.0)
    monkeypatch.setattr(replica, "FAILING_REMINDER", 30.0)
    outcomes = [OSError("disk full")] * 8 + [None, None]

    class Log:
        path = "r.jsonl"

        def flush(self) -> None:
            outcome = outcomes.pop(0)
            if not outcomes:
                fake.request_log = None  # the replica stops after this flush
            if outcome:
                raise outcome

    class Fake:
        request_log = Log()

    fake = Fake()
    caplog.set_level("INFO", logger=replica.log.name)
    run_async(replica._flush_log(fake))
    assert not outcomes  # every flush was tried
    records = [r for r in caplog.records if r.name == replica.log.name]
    assert [bool(r.exc_info) for r in records] == [True, False, False, False]
    assert [r.getMessage().split(" still fails")[0] for r in records[1:3]] == [
        "writing the request log r.jsonl"] * 2  # at 30 s and 60 s of 8 failures
    assert "disk full" in records[1].getMessage()
    assert "written again after 80 s" in records[3].getMessage()


def test_the_command_line(monkeypatch):
    assert parse_ref("digits@v3") == ("digits", 3)
    assert parse_ref("digits@champion") == ("digits", None)
    assert parse_ref(None) == (None, None)
    monkeypatch.setenv("LOOPHUB_ALLOC_CPU", "2.5")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/services/model-d")
    config = config_from_args(["--artifact", "m.pt", "--meta", "m.json", "--port", "9000",
                               "--no-batching", "--max-wait-ms", "1"])
    assert (config.threads, config.batching, config.base_path, config.max_wait_ms) == (
        2, False, "/services/model-d/", 1.0)
    with pytest.raises(ValueError, match="max-batch-size"):
        ServerConfig(artifact="m.pt", meta={}, port=1, max_batch_size=0)
