"""Releases through the real platform: JupyterHub, its proxy, the gateway service and
replica processes started on the fair scheduler's allocations. A digits model trained
here is released, called by every kind of caller, rolled out under continuous traffic,
canaried, rolled back, survives a killed replica, and stops."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter

import pytest
import requests
import torch

from loophub.client import Client
from tests.serving.test_releases import register, wait_for
from tests.serving.test_server import digits_images, train_digits_mlp

pytestmark = [pytest.mark.hub, pytest.mark.serving]


@pytest.fixture(scope="module")
def platform(hub, admin_token):
    """An owner, a member of the owner's group, another user; the digits model v1 and v2."""
    tag = uuid.uuid4().hex[:6]
    names = {who: f"rl-{who}-{tag}" for who in ("owner", "member", "other")}
    tokens = {who: hub.token(name) for who, name in names.items()}
    group = f"rl-team-{tag}"
    resp = hub.hub_api(admin_token, "POST", f"groups/{group}",
                       json={"users": [names["owner"], names["member"]]})
    assert resp.status_code == 201, resp.text
    images, targets = digits_images()
    v1 = train_digits_mlp(images, targets)
    torch.manual_seed(1)
    v2 = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10)).eval()
    owner = Client(hub.api, tokens["owner"])
    model = f"rl-digits-{tag}"
    register(owner, model, v1)
    register(owner, model, v2)
    tokens["admin"] = admin_token
    return {"tokens": tokens, "group": group, "model": model, "owner": owner,
            "images": images, "v1": v1, "name": f"rl-{tag}"}


def call(hub, platform, name: str, who: str | None = None, *, key: str | None = None,
         n: int = 4, headers: dict | None = None) -> requests.Response:
    sent = dict(headers or {})
    if who:
        sent["Authorization"] = f"token {platform['tokens'][who]}"
    if key:
        sent["Authorization"] = f"Bearer {key}"
    body = {"instances": [{"pixels": platform["images"][i].tolist()} for i in range(n)]}
    return requests.post(f"{hub.url}/services/models/{name}/predict", json=body,
                         headers=sent, timeout=60)


class Traffic:
    """Requests sent back to back from THREADS threads until stopped; every answer kept."""

    def __init__(self, hub, platform, name: str, threads: int = 4) -> None:
        self.answers: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(hub, platform, name))
                         for _ in range(threads)]

    def _run(self, hub, platform, name) -> None:
        with requests.Session() as session:
            headers = {"Authorization": f"token {platform['tokens']['owner']}"}
            body = {"instances": [{"pixels": platform["images"][0].tolist()}]}
            while not self._stop.is_set():
                try:
                    resp = session.post(f"{hub.url}/services/models/{name}/predict",
                                        json=body, headers=headers, timeout=60)
                    self.answers.append((resp.status_code,
                                         resp.headers.get("X-Loophub-Version", "")))
                except requests.RequestException as exc:
                    self.answers.append((0, str(exc)))

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def failures(self) -> list:
        return [a for a in self.answers if a[0] != 200]


def test_a_release_behind_the_hub(hub, platform):
    owner, name, model = platform["owner"], platform["name"], platform["model"]
    view = owner.request("POST", "releases", json={
        "name": name, "model": f"{model}@v1", "replicas": 2, "access": f"group:{platform['group']}",
        "per_replica": {"cpu": 0.25, "mem": "768M"}})
    assert view["url"] == f"{hub.url}/services/models/{name}/"
    wait_for(owner, name, lambda v: v["status"] == "serving")

    # predictions equal the model's own, through proxy, gateway and replica
    resp = call(hub, platform, name, "owner", n=16)
    assert resp.status_code == 200, resp.text
    assert resp.headers["X-Loophub-Version"] == f"{model}@v1"
    served = [p["label"] for p in resp.json()["predictions"]]
    x = (torch.tensor(platform["images"][:16], dtype=torch.float32).unsqueeze(1) / 255
         - 0.1) / 0.3
    assert served == [str(int(i)) for i in platform["v1"](x).argmax(1)]

    # who may call it: the group's members and admins; API keys; nobody else
    assert call(hub, platform, name).status_code == 401
    assert call(hub, platform, name, "other").status_code == 404
    assert call(hub, platform, name, "member").status_code == 200
    assert call(hub, platform, name, "admin").status_code == 200
    bad = call(hub, platform, name, "owner", headers={}, n=1)
    assert bad.status_code == 200
    wrong = requests.post(f"{hub.url}/services/models/{name}/predict",
                          json={"instances": [{"pixels": [[1, 2], [3]]}]}, timeout=30,
                          headers={"Authorization": f"token {platform['tokens']['owner']}"})
    assert wrong.status_code == 400 and "instances[0]" in wrong.text, wrong.text
    key = owner.request("POST", f"releases/{name}/keys", json={"note": "app"})
    assert call(hub, platform, name, key=key["key"]).status_code == 200
    owner.request("DELETE", f"releases/{name}/keys/{key['id']}")
    time.sleep(2.5)  # the gateway caches a key's answer for 2 s at most
    assert call(hub, platform, name, key=key["key"]).status_code == 401

    # a rollout under continuous traffic: no request fails, v2 serves after
    with Traffic(hub, platform, name) as traffic:
        owner.request("POST", f"releases/{name}/rollout", json={"model": f"{model}@v2"})
        wait_for(owner, name, lambda v: v["status"] == "serving"
                    and v["version"] == f"{model}@v2"
                    and all(r["version"] == f"{model}@v2" for r in v["replica_list"]))
        time.sleep(1.5)
    assert traffic.failures() == [] and len(traffic.answers) > 50
    versions = [v for _, v in traffic.answers]
    assert versions[-1] == f"{model}@v2" and f"{model}@v1" in versions

    # a canary of v1 at 30%: the split within tolerance over 1,000 requests
    owner.request("POST", f"releases/{name}/canary", json={"model": f"{model}@v1",
                                                          "percent": 30, "guard": False})
    wait_for(owner, name, lambda v: any(r["role"] == "canary" and r["state"] == "ready"
                                           for r in v["replica_list"]))
    time.sleep(1)
    seen: Counter = Counter()
    with requests.Session() as session:
        for _ in range(1000):
            resp = session.post(f"{hub.url}/services/models/{name}/predict", timeout=30,
                                json={"instances": [{"pixels": platform["images"][1].tolist()}]},
                                headers={"Authorization": f"token {platform['tokens']['owner']}"})
            assert resp.status_code == 200, resp.text
            seen[resp.headers["X-Loophub-Version"]] += 1
    assert 240 <= seen[f"{model}@v1"] <= 360, seen
    owner.request("POST", f"releases/{name}/rollback", json={"reason": "test"})
    deadline = time.monotonic() + 30  # the gateway reloads its routes every 0.25 s
    while call(hub, platform, name, "owner", n=1).headers["X-Loophub-Version"] != \
            f"{model}@v2" and time.monotonic() < deadline:
        time.sleep(0.25)
    assert all(call(hub, platform, name, "owner", n=1).headers["X-Loophub-Version"]
               == f"{model}@v2" for _ in range(20))

    # a replica killed: the other keeps the release available, the killed one restarts
    view = owner.request("GET", f"releases/{name}")
    victim = view["replica_list"][0]
    with Traffic(hub, platform, name, threads=2) as traffic:
        os.kill(victim["pid"], signal.SIGKILL)
        wait_for(owner, name, lambda v: any(
            r["id"] == victim["id"] and r["restarts"] == 1 and r["state"] == "ready"
            for r in v["replica_list"]), timeout=120)
    assert traffic.failures() == [] and len(traffic.answers) > 20

    # stop: replicas drain and end, the URL answers 503 or 404, the history says it all
    owner.request("DELETE", f"releases/{name}")
    assert call(hub, platform, name, "owner").status_code in (404, 503)
    actions = [h["action"] for h in owner.request("GET", f"releases/{name}/history")["history"]]
    assert actions[:1] == ["release"] and actions[-1] == "stop"
    assert {"rollout", "canary", "rollback", "replica_failed"} <= set(actions)
    queue = owner.request("GET", "scheduler/requests")["requests"]
    assert not [(r["replica"], r["state"]) for r in queue
                if r.get("release") == name and r["state"] in ("queued", "running")]


@pytest.mark.browser
def test_the_admins_page_lists_releases_and_scales_them(hub, platform):
    """The fairness page's Releases table: status, replicas and where they run, and
    buttons that scale through the fair scheduler (signed in with the hub cookie)."""
    from tests.browser import chromium_page, hub_login, require_chromium, screenshot

    require_chromium()
    owner, name = platform["owner"], platform["name"] + "-admin"
    owner.request("POST", "releases", json={
        "name": name, "model": f"{platform['model']}@v1", "replicas": 1,
        "per_replica": {"cpu": 0.25, "mem": "768M"}})
    wait_for(owner, name, lambda v: v["status"] == "serving")
    try:
        with chromium_page(viewport=(1400, 900)) as page:
            hub_login(page, hub.url, "admin", hub.admin_password)
            page.goto(f"{hub.url}/services/loophub/fairness")
            page.wait_for_function(f"document.querySelector('#releases tbody').innerText"
                                   f".includes('{name}')", timeout=30_000)
            row = page.locator("#releases tbody tr", has_text=name)
            assert "serving" in row.inner_text() and "1 / 1" in row.inner_text()
            screenshot(page, "serving/admin-releases.png")
            row.locator("button[title^='one more replica']").click()
            wait_for(owner, name, lambda v: v["replicas"] == 2, timeout=30)
            page.wait_for_function("document.querySelector('#releases tbody').innerText"
                                   ".includes('/ 2')", timeout=30_000)
            page.locator("#releases tbody tr", has_text=name).locator(
                "button[title^='one replica fewer']").click()
            wait_for(owner, name, lambda v: v["replicas"] == 1 and v["status"] == "serving"
                     and len(v["replica_list"]) == 1, timeout=60)
            assert not page.is_visible("#error")
            see_the_dashboard(page, hub, platform, name)
    finally:
        owner.request("DELETE", f"releases/{name}")


def see_the_dashboard(page, hub, platform, name: str) -> None:
    """Requests through the gateway (one refused), then the release's dashboard draws them
    and the releases page shows its health (the admin signed in)."""
    from tests.browser import screenshot

    headers = {"Authorization": f"token {platform['tokens']['owner']}"}
    url = f"{hub.url}/services/models/{name}/predict"
    for _ in range(30):
        requests.post(url, json={"instances": [{"pixels": platform["images"][0].tolist()}]},
                      headers=headers, timeout=60).raise_for_status()
    assert requests.post(url, json={"instances": [{"pixels": "no"}]}, headers=headers,
                         timeout=60).status_code == 400
    page.goto(f"{hub.url}/services/loophub/releases/{name}/dashboard")
    page.wait_for_function("document.querySelector('#recent-errors tbody').innerText"
                           ".includes('400')", timeout=30_000)  # logs flush once a second
    for chart in ("traffic", "latency", "errors", "classes", "confidence"):
        page.wait_for_selector(f"#{chart}-chart .main-svg", timeout=10_000)
    assert page.locator("#traffic-chart .scatterlayer .trace").count() >= 1
    totals = page.inner_text("#totals")
    assert int(totals.split(" requests")[0]) >= 31, totals
    assert "ready" in page.inner_text("#replicas tbody")
    assert not page.is_visible("#error")
    screenshot(page, "serving/dashboard.png")
    page.goto(f"{hub.url}/services/loophub/releases")
    row = page.locator("#release-health tbody tr", has_text=name)
    assert "serving" in row.inner_text() and "dashboard" in row.inner_text()
    screenshot(page, "serving/releases.png")
