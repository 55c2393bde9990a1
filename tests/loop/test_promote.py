"""Promote safely (real replicas, real evaluation jobs): a challenger whose tests fail gets
no traffic; one that passes serves a canary until enough requests are answered, then the
release moves to it and the champion alias follows, its history saying why."""

from __future__ import annotations

import base64
import io
import threading
import time

import pytest
import requests
import torch
from PIL import Image

from tests.serving.test_releases import LABELS, PRE, digit_nets  # noqa: F401 (fixture)
from tests.training.conftest import digits, pool  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.serving, pytest.mark.training]
TESTS = [{"kind": "metric", "metric": "accuracy", "min": 0.5, "dataset": "digits@v1",
          "split": "test"}]


def register(client, net, **extra) -> dict:
    return client.models.register("mlp", net, example_input=torch.zeros(1, 1, 16, 16),
                                  task="image_classification", labels=LABELS,
                                  preprocess=PRE, dataset="digits@v1", **extra)


def traffic_to_canary(client, images, stop: threading.Event) -> None:
    """Requests straight to the canary's replicas while there is one (the gateway that
    splits traffic by percent is not in this in-process API)."""
    buffer = io.BytesIO()
    Image.fromarray(images[0]).save(buffer, format="PNG")
    body = {"instances": [{"image": base64.b64encode(buffer.getvalue()).decode()}]}
    while not stop.is_set():
        view = client.request("GET", "releases/serve")
        for replica in view["replica_list"]:
            if replica["role"] == "canary" and replica["state"] == "ready":
                requests.post(f"{replica['url']}/predict", json=body, timeout=30)
        time.sleep(0.05)


def test_a_challenger_is_promoted_only_through_its_tests_and_a_canary(digits, digit_nets):  # noqa: F811
    client = digits
    images, net = digit_nets
    champion = register(client, net)
    client.models.set_tests(champion["ref"], TESTS)
    assert client.models.test(champion["ref"], progress=False)["status"] == "passed"
    client.models.alias("mlp", "champion", champion["version"])
    client.serving.release("serve", "mlp@champion", per_replica={"cpu": 0.5, "mem": "1G"})

    torch.manual_seed(1)
    untrained = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10)).eval()
    weak = register(client, untrained)
    refused = client.loop.promote("serve", weak["ref"], progress=False)
    assert refused["promoted"] is False and refused["stage"] == "tests", refused
    lent = client.models.get(weak["ref"])["tests"]  # the champion's
    assert lent == client.models.get(champion["ref"])["tests"] and lent[0]["min"] == 0.5
    assert client.serving.view("serve")["canary"] is None  # no request reached it

    strong = register(client, net)
    quiet = client.loop.promote("serve", strong["ref"], observe_s=3, min_requests=50,
                                progress=False)
    assert quiet["promoted"] is False and "too little to judge" in quiet["why"], quiet
    client.serving.get("serve").rollback("the test sends traffic next")

    stop = threading.Event()
    sender = threading.Thread(target=traffic_to_canary, args=(client, images, stop))
    sender.start()
    try:
        done = client.loop.promote("serve", strong["ref"], min_requests=30, observe_s=120,
                                   progress=False)
    finally:
        stop.set()
        sender.join(30)
    assert done["promoted"] is True and done["canary"]["requests"] >= 30, done
    assert client.serving.view("serve")["version"] == strong["ref"]
    assert client.models.get("mlp@champion")["ref"] == strong["ref"]
    moved = client.models.history("mlp")[-1]  # the alias history says why it moved
    assert "champion" in str(moved["subject"]) and moved["to"], moved
    assert "promoted on release serve after a 10% canary" in moved["reason"], moved

    # the chain behind the release, and what used the data
    chain = client.loop.lineage("serve")
    version = chain["version"]
    assert chain["release"]["version"] == version["ref"] == strong["ref"]
    assert "champion" in version["aliases"] and version["test_status"] == "passed"
    [data] = [d for d in version["datasets"] if d["relation"] == "trained_on"]
    assert (data["dataset"], data["number"]) == ("digits", 1)
    assert data["sources"]["records"] == 300 and data["sources"]["labels"]["import"] == 300
    used = client.loop.used_by("digits", 1)
    assert {m["model_version"] for m in used["models"] if m["model"] == "mlp"} >= {
        f"v{v['version']}" for v in (champion, weak, strong)}
    assert [r["name"] for r in used["releases"]] == ["serve"]
    from loophub.widgets.lineage import LineageView, lineage_sections

    titles = [title for title, _ in lineage_sections(chain)]
    assert titles[:2] == ["Release serve", f"Model version {strong['ref']}"]
    assert "Dataset digits@v1 (trained_on)" in titles
    view = LineageView("serve", client=client)
    assert "serve" in str(view.show_used_by("digits", 1)["releases"])
    assert "serve" in view.used.value
    # another user may call the release (access hub) but not read ann's private model
    other = api_client(client, "ben").loop.lineage("serve")
    assert other["version"]["readable"] is False and "mlp" in other["version"]["why"]


def api_client(client, user: str):
    from loophub.client import Client

    return Client(client.url, f"user:{user}")
