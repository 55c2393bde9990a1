"""Releases through the API (in process): a registered digits model released, its replicas
queued in the fair scheduler and started as model servers, rolled out, canaried,
promoted, rolled back, scaled and stopped; keys and history; the domain rules."""

from __future__ import annotations

import time

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
