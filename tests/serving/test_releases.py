"""Releases through the API (in process): a registered digits model released, its replicas
queued in the fair scheduler and started as model servers, rolled out, canaried,
promoted, rolled back, scaled and stopped; keys and history; the domain rules."""

from __future__ import annotations

import base64
import hashlib
import os
import time

import numpy as np
import pytest
import requests
import torch

from loophub import errors
from tests.serving.test_server import digits_images, train_digits_mlp

pytestmark = pytest.mark.serving
LABELS = [str(i) for i in range(10)]
PRE = {"kind": "image", "mode": "L", "size": [16, 16], "scale": 1 / 255, "mean": [0.1],
       "std": [0.3]}


@pytest.fixture(scope="module")
def digit_nets():
    images, targets = digits_images()
    return images, train_digits_mlp(images, targets)


def register(client, name: str, net, **extra) -> dict:
    return client.models.register(name, net, example_input=torch.zeros(1, 1, 16, 16),
                                  task="image_classification", labels=LABELS,
                                  preprocess=PRE, **extra)


def wait_for(client, name: str, check, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        view = client.request("GET", f"releases/{name}")
        if check(view):
            return view
        assert time.monotonic() < deadline, (view["status"], view["replica_list"])
        time.sleep(0.3)



def _monitoring_once_logged(user, requests_: int, window) -> dict:
    """The release's monitoring once the replica's log holds REQUESTS_ requests in the
    window (it flushes once a second; 30 s at most on a busy machine)."""
    deadline = time.monotonic() + 30
    while True:
        report = user.request("GET", "releases/watched/monitoring",
                              params={"window": window()})
        if report["summary"]["requests"] >= requests_ or time.monotonic() > deadline:
            return report
        time.sleep(0.25)


def test_a_release_serves_and_stops(api, digit_nets):
    images, net = digit_nets
    ann = api.client("ann")
    register(ann, "digits", net)
    view = ann.request("POST", "releases", json={
        "name": "digits", "model": "digits@latest", "per_replica": {"cpu": 0.5, "mem": "1G"}})
    assert view["version"] == "digits@v1" and view["status"] == "waiting"
    view = wait_for(ann, "digits", lambda v: v["status"] == "serving")
    [replica] = view["replica_list"]
    assert replica["state"] == "ready" and replica["request_id"]
    resp = requests.post(f"{replica['url']}/predict", json={"instances": [
        {"pixels": images[0].tolist()}]}, timeout=30)
    assert resp.status_code == 200, resp.text
    [target] = api.client("root").request("GET", "serving/targets")  # Prometheus http_sd
    assert target == {"targets": [replica["url"].removeprefix("http://")], "labels": {
        "release": "digits", "version": "digits@v1", "role": "stable",
        "replica": replica["id"]}}
    with pytest.raises(errors.PermissionDenied):
        ann.request("GET", "serving/targets")
    stopped = ann.request("DELETE", "releases/digits")
    assert stopped["status"] == "stopped" and stopped["replica_list"] == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{replica['url']}/health", timeout=5)
    history = ann.request("GET", "releases/digits/history")["history"]
    assert [h["action"] for h in history] == ["release", "stop"]
    ben = api.client("ben")  # access "hub": every hub user may call it, not change it
    assert ben.request("GET", "releases/digits")["owner"] == "ann"
    with pytest.raises(errors.PermissionDenied):
        ben.request("POST", "releases/digits/scale", json={"replicas": 2})


def test_a_release_waits_in_the_fair_queue_until_the_pool_frees(api, digit_nets):
    _, net = digit_nets
    ann = api.client("ann")
    register(ann, "queued", net)
    node_cpu = max(n["cpu"] for n in ann.request("GET", "pool")["nodes"])
    blocker = api.client("ben").request("POST", "scheduler/requests", json={
        "kind": "service", "release": "other", "replica": "0", "demand": {"cpu": node_cpu}})
    ann.request("POST", "releases", json={"name": "queued", "model": "queued@v1",
                                          "per_replica": {"cpu": 1, "mem": "1G"}})
    time.sleep(1)
    view = ann.request("GET", "releases/queued")
    [replica] = view["replica_list"]
    assert (view["status"], replica["state"]) == ("waiting", "queued")
    request = ann.request("GET", f"scheduler/requests/{replica['request_id']}")
    assert request["state"] == "queued" and request["kind"] == "service"
    api.client("ben").request("DELETE", f"scheduler/requests/{blocker['id']}")
    wait_for(ann, "queued", lambda v: v["status"] == "serving")
    ann.request("DELETE", "releases/queued")


def test_a_slow_canary_is_rolled_back_by_its_guard(api, digit_nets):
    """The guard compares the canary's predict p99 with the stable side's (replicas'
    metrics) and rolls back by itself a canary three times slower and 50 ms slower."""
    from tests.serving.test_server import Slow

    images, net = digit_nets
    ann = api.client("ann")
    register(ann, "guarded", net)
    register(ann, "guarded", Slow(net, rounds=1000))  # far over the 50 ms floor
    ann.request("POST", "releases", json={"name": "guarded", "model": "guarded@v1",
                                          "per_replica": {"cpu": 0.5, "mem": "1G"}})
    wait_for(ann, "guarded", lambda v: v["status"] == "serving")
    ann.request("POST", "releases/guarded/canary", json={
        "model": "guarded@v2", "percent": 20, "guard": {"min_requests": 20}})
    view = wait_for(ann, "guarded", lambda v: any(
        r["role"] == "canary" and r["state"] == "ready" for r in v["replica_list"]))
    assert view["canary"]["guard"]["latency_ratio"] == 3.0
    api.run(api.ctx.release_manager.guard_canaries())  # the baselines: nothing judged yet
    assert ann.request("GET", "releases/guarded")["canary"] is not None
    body = {"instances": [{"pixels": images[0].tolist()}]}
    with requests.Session() as session:
        for replica in view["replica_list"]:
            for _ in range(25):
                assert session.post(f"{replica['url']}/predict", json=body,
                                    timeout=30).status_code == 200
    api.run(api.ctx.release_manager.guard_canaries())
    view = ann.request("GET", "releases/guarded")
    assert view["canary"] is None and [r["role"] for r in view["replica_list"]] == ["stable"]
    [event] = [h for h in ann.request("GET", "releases/guarded/history")["history"]
               if h["action"] == "rollback"]
    assert event["actor"] == "loophub" and "p99 latency" in event["detail"]["reason"]
    ann.request("DELETE", "releases/guarded")


def test_monitoring_summarises_requests_and_flags_drift_from_the_training_data(
        api, digit_nets, tmp_path, monkeypatch, capsys):
    """The release's figures per version, and its inputs compared with the dataset
    version the model learnt from: digits as trained pass, inverted digits drift."""
    from sklearn.datasets import load_digits

    from tests.training.conftest import digits_folder

    _, net = digit_nets
    # the requests' images made exactly as the training images were (digits_folder): a
    # rounding difference (127 against 128 for a middle grey) is drift, rightly
    images = np.kron((load_digits().images * 255 / 16).astype(np.uint8),
                     np.ones((1, 2, 2), dtype=np.uint8))
    ann = api.client("ann")
    schema = digits_folder(tmp_path / "digits", count=400)
    ann.datasets.create("mdigits", label_schema=schema)
    ann.datasets.import_("mdigits", tmp_path / "digits", "loophub", progress=False)
    ann.datasets.commit("mdigits", "400 digits")
    register(ann, "watched", net, dataset="mdigits@v1")
    ann.request("POST", "releases", json={"name": "watched", "model": "watched@v1",
                                          "per_replica": {"cpu": 0.5, "mem": "1G"}})
    view = wait_for(ann, "watched", lambda v: v["status"] == "serving")
    url = view["replica_list"][0]["url"]
    with requests.Session() as session:
        for i in range(120):
            body = {"instances": [{"pixels": images[i].tolist()}]}
            assert session.post(f"{url}/predict", json=body, timeout=30).status_code == 200
        assert session.post(f"{url}/predict", json={"instances": [{"pixels": "x"}]},
                            timeout=30).status_code == 400
        png = (tmp_path / "digits" / sorted(os.listdir(tmp_path / "digits"))[0]).read_bytes()
        assert session.post(f"{url}/predict", timeout=30, json={"instances": [
            {"image": base64.b64encode(png).decode()}]}).status_code == 200
    report = _monitoring_once_logged(ann, 122, lambda: 600)  # flushed once a second
    summary = report["summary"]
    assert summary["requests"] == 122 and summary["status"] == {"200": 121, "400": 1}
    assert summary["latency_ms"]["p99"] > 0 and sum(summary["classes"].values()) == 121
    # the image of an image request is kept in the platform's blob store, once
    assert api.ctx.blobs.exists(hashlib.sha256(png).hexdigest())
    assert list(summary["versions"]) == ["watched@v1"]
    calm = report["drift"]["watched@v1"]
    assert calm["drifted"] is False, calm
    assert calm["features"]["brightness"]["drifted"] is False

    started = time.time()
    time.sleep(1.1)
    with requests.Session() as session:
        for i in range(120):
            body = {"instances": [{"pixels": (255 - images[i]).tolist()}]}
            assert session.post(f"{url}/predict", json=body, timeout=30).status_code == 200
    report = _monitoring_once_logged(ann, 120, lambda: time.time() - started)
    assert report["summary"]["requests"] == 120
    shifted = report["drift"]["watched@v1"]
    assert shifted["drifted"] is True and shifted["features"]["brightness"]["drifted"], shifted
    # the SDK and the CLI say the same
    release = ann.serving.get("watched")
    assert release.monitoring(window=600)["summary"]["requests"] == 242
    from loophub.cli import main

    monkeypatch.setenv("LOOPHUB_API_URL", api.url)
    monkeypatch.setenv("LOOPHUB_TOKEN", "user:ann")
    capsys.readouterr()
    assert main(["serve", "monitor", "watched", "--window", "600"]) == 0
    out = capsys.readouterr().out
    assert "242 requests" in out and "watched@v1" in out and "DRIFT" in out, out
    with pytest.raises(errors.NotFound):
        api.client("eve").request("GET", "releases/zzz/monitoring")
    ann.request("DELETE", "releases/watched")


def test_replicas_stop_with_the_api_and_start_again_with_it(api, digit_nets):
    """Stopping the API stops its replicas (nothing is left running); the next start
    finds their requests still allocated and starts them again."""
    _, net = digit_nets
    ann = api.client("ann")
    register(ann, "restarted", net)
    ann.request("POST", "releases", json={"name": "restarted", "model": "restarted@v1",
                                          "per_replica": {"cpu": 0.5, "mem": "1G"}})
    [before] = wait_for(ann, "restarted", lambda v: v["status"] == "serving")["replica_list"]
    manager = api.ctx.release_manager
    api.run(manager.close())
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{before['url']}/health", timeout=5)
    running = {v["id"]: v["allocation"] for v in api.ctx.scheduler.service.queue()
               if v["kind"] == "service" and v["state"] == "running"}
    assert before["request_id"] in running
    api.run(manager.recover(running))
    [after] = wait_for(ann, "restarted", lambda v: v["status"] == "serving" and v[
        "replica_list"][0]["url"] != before["url"])["replica_list"]
    assert after["id"] == before["id"]
    assert requests.get(f"{after['url']}/ready", timeout=5).status_code == 200
    ann.request("DELETE", "releases/restarted")
