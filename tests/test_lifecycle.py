"""Rights follow the hub within seconds, and stopping the platform mid-import leaves
nothing behind (real hub, proxy, API)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import requests

from loophub.client import Client
from loophub.ports import port_is_free
from tests.hubtest import start_hub

pytestmark = pytest.mark.hub


def test_leaving_a_group_takes_its_rights_away_within_seconds(hub, admin_token):
    owner, member = hub.token("gina"), hub.token("hal")
    hub.hub_api(admin_token, "POST", "groups/optics", json={"users": ["gina", "hal"]})
    try:
        Client(hub.api, owner).datasets.create("optics-data", visibility="group",
                                               group="optics")
        as_member = Client(hub.api, member)
        assert as_member.datasets.get("optics-data")["name"] == "optics-data"
        resp = hub.hub_api(admin_token, "DELETE", "groups/optics/users",
                           json={"users": ["hal"]})
        assert resp.status_code == 200, resp.text
        removed = time.monotonic()
        while True:
            status = requests.get(f"{hub.api}/datasets/optics-data", timeout=30,
                                  headers={"Authorization": f"token {member}"}).status_code
            if status == 404:
                break
            assert status == 200
            assert time.monotonic() - removed < 10, "hal still reads the group's dataset"
            time.sleep(0.5)
        writes = requests.post(f"{hub.api}/datasets/optics-data/records", timeout=30,
                               headers={"Authorization": f"token {member}"},
                               json={"record": {"id": "late", "annotations": []}})
        assert writes.status_code == 404
    finally:
        hub.hub_api(admin_token, "DELETE", "groups/optics")


def _processes_of(home) -> list[tuple[int, str]]:
    """Every process whose environment or command line names HOME (hub, proxy, API...)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                zombie = f.read().split(") ", 1)[1].startswith("Z")
        except OSError:
            continue
        if not zombie and (str(home).encode() in environ or str(home) in cmdline):
            found.append((int(entry), cmdline[:120]))
    return found


def test_stopping_the_platform_during_an_import_leaves_nothing_behind(tmp_path):
    home = tmp_path / "home"
    hub = start_hub(home)
    port = int(hub.url.rsplit(":", 1)[1])
    client = Client(hub.api, hub.token("ivy"))
    client.datasets.create("big")
    source = tmp_path / "big.jsonl"
    with open(source, "w") as out:
        for i in range(150_000):
            out.write(json.dumps({"id": f"r{i:06d}", "annotations": [],
                                  "metadata": {"n": i}}) + "\n")
    digest = client.datasets.upload(source)["digest"]
    job = client.request("POST", "datasets/big/imports",
                         json={"format": "loophub", "upload": digest})
    deadline = time.monotonic() + 60
    while (state := client.jobs.get(job["id"])["state"]) != "running":
        assert state == "queued" and time.monotonic() < deadline, state
        time.sleep(0.2)
    time.sleep(1.0)  # well inside the import
    hub.proc.send_signal(signal.SIGINT)
    hub.proc.wait(60)
    deadline = time.monotonic() + 30
    while _processes_of(home) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_of(home) == []
    assert port_is_free(port, "127.0.0.1")
    # the next start reports the job interrupted, and nothing of it was written
    again = start_hub(home, port=port)
    try:
        client = Client(again.api, again.token("ivy"))
        view = client.jobs.get(job["id"])
        assert view["state"] == "interrupted", view
        assert "run it again" in view["message"]
        assert client.datasets.get("big")["draft_records"] == 0
    finally:
        again.stop()
