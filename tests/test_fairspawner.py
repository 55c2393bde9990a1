"""FairSpawner on a real hub with a declared pool (2 CPU, 8 GiB, 4 GPUs): fair order,
visible queue, Stop, refusals, enforced limits, restart, dead servers."""

import json
import os
import time

import pytest
import requests

from tests.hubtest import pids, run_in_kernel, start_hub

pytestmark = pytest.mark.hub
POOL = '[{"name": "node1", "cpu": 2, "mem": "8G", "gpu": 4}]'
EXTRA_CONFIG = """
c.Spawner.poll_interval = 2
c.FairSpawner.long_poll = 2
c.FairSpawner.profiles = [
    {"slug": "small", "display_name": "Small", "cpu": 0.25, "mem": "512M", "default": True},
    {"slug": "huge", "display_name": "Huge", "cpu": 1, "mem": "1G", "gpu": 8},
]
c.FairSpawner.custom_limits = {"cpu": 2, "mem": "4G", "gpu": 4}
"""


def custom(cpu=0.25, mem="512M", gpu=0):
    return {"profile": "custom", "cpu": cpu, "mem": mem, "gpu": gpu}


@pytest.fixture(scope="module")
def fair_hub(tmp_path_factory):
    home = tmp_path_factory.mktemp("fair") / "home"
    config = home.parent / "extra_config.py"
    config.write_text(EXTRA_CONFIG)
    env = {"LOOPHUB_POOL": POOL, "LOOPHUB_HUB_CONFIG": str(config)}
    hub = start_hub(home, env=env, args=("--keep-servers",))
    hub.env = env
    hub.admin = hub.token("root", admin=True)
    yield hub
    hub.stop()
    _kill_servers(home)


def _kill_servers(home):
    """--keep-servers leaves servers running: end the ones this module started."""
    import signal

    for pid in pids("jupyterhub.singleuser", str(home)):
        os.killpg(pid, signal.SIGKILL)


def spawn(hub, user, name="", options=None):
    hub.token(user)
    path = f"users/{user}/servers/{name}" if name else f"users/{user}/server"
    return hub.hub_api(hub.admin, "POST", path, json=options or {})


def stop(hub, user, name=""):
    path = f"users/{user}/servers/{name}" if name else f"users/{user}/server"
    return hub.hub_api(hub.admin, "DELETE", path)


def server(hub, user, name=""):
    return hub.hub_api(hub.admin, "GET", f"users/{user}").json()["servers"].get(name)


def wait_ready(hub, user, name="", timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = server(hub, user, name)
        if s and s["ready"]:
            return s
        time.sleep(0.5)
    raise TimeoutError(f"{user}/{name} not ready")


def wait_stopped(hub, user, name="", timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server(hub, user, name) is None:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{user}/{name} still there")


def queue(hub):
    resp = requests.get(f"{hub.api}/scheduler/queue", timeout=30,
                        headers={"Authorization": f"token {hub.admin}"})
    return {(r["owner"], r.get("server")): r for r in resp.json()["requests"]
            if r["kind"] == "server"}


def wait_queue(hub, key, state, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = queue(hub).get(key)
        if entry and entry["state"] == state:
            return entry
        time.sleep(0.5)
    raise TimeoutError(f"{key} never {state}: {queue(hub).get(key)}")


def progress_events(hub, user, name="", until="position", timeout=30):
    path = f"users/{user}/servers/{name}/progress" if name else f"users/{user}/server/progress"
    events = []
    with requests.get(f"{hub.url}/hub/api/{path}", stream=True, timeout=timeout,
                      headers={"Authorization": f"token {hub.admin}"}) as resp:
        for line in resp.iter_lines(decode_unicode=True):
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if until in events[-1].get("message", ""):
                    break
    return events


def test_lower_dominant_share_starts_first_with_visible_queue(fair_hub):
    hub = fair_hub
    assert spawn(hub, "zed", options=custom(gpu=4)).status_code in (201, 202)
    wait_ready(hub, "zed")
    assert spawn(hub, "alice", options=custom(cpu=1)).status_code in (201, 202)
    wait_ready(hub, "alice")
    # alice holds half the CPUs; she asks first, bob (share 0) second, for all 4 GPUs
    assert spawn(hub, "alice", "big", custom(gpu=4)).status_code == 202
    wait_queue(hub, ("alice", "big"), "queued")
    assert spawn(hub, "bob", options=custom(gpu=4)).status_code == 202
    bob = wait_queue(hub, ("bob", ""), "queued")
    assert bob["position"] == 1 and bob["blocking"] == "gpu"
    assert queue(hub)[("alice", "big")]["position"] == 2

    events = progress_events(hub, "bob")
    message = events[-1]["message"]
    assert "position 1 of 2" in message and "waiting for gpu" in message
    assert "your share 0%" in message

    assert stop(hub, "zed").status_code in (202, 204)
    wait_ready(hub, "bob")
    assert queue(hub)[("alice", "big")]["state"] == "queued"
    model = hub.hub_api(hub.admin, "GET", "users/bob").json()["servers"][""]
    assert model["user_options"]["profile"] == "custom"


def test_stop_on_the_pending_page_leaves_the_queue(fair_hub):
    hub = fair_hub
    entry = wait_queue(hub, ("alice", "big"), "queued")
    assert stop(hub, "alice", "big").status_code in (202, 204)
    wait_stopped(hub, "alice", "big")
    after = requests.get(f"{hub.api}/scheduler/requests/{entry['id']}", timeout=30,
                         headers={"Authorization": f"token {hub.admin}"}).json()
    assert after["state"] == "cancelled"
    assert ("alice", "big") not in queue(hub)


LIMITS_PROBE = """
import json, os, resource
def cgroup_file(controller, v1_name, v2_name):
    for line in open('/proc/self/cgroup'):
        _, ctrls, path = line.strip().split(':', 2)
        if controller in ctrls.split(','):
            return f'/sys/fs/cgroup/{controller}{path}/{v1_name}'
        if ctrls == '':
            return f'/sys/fs/cgroup{path}/{v2_name}'
def read(path):
    return open(path).read().strip() if path and os.path.exists(path) else None
print(json.dumps({
    "gpus": os.environ["CUDA_VISIBLE_DEVICES"],
    "cores": sorted(os.sched_getaffinity(0)),
    "mem": read(cgroup_file("memory", "memory.limit_in_bytes", "memory.max")),
    "cpu_quota": read(cgroup_file("cpu", "cpu.cfs_quota_us", "cpu.max")),
    "rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0],
    "home": os.environ.get("HOME"),
}))
"""


def probe_limits(hub, user):
    import asyncio

    out = asyncio.run(run_in_kernel(hub, user, hub.token(user), LIMITS_PROBE))
    return json.loads(out)


def test_the_server_sees_its_allocation_enforced(fair_hub):
    hub = fair_hub
    wait_ready(hub, "bob")  # 0.25 CPU, 512 MiB, 4 GPUs
    alloc = queue(hub)[("bob", "")]["allocation"]["units"][0]
    seen = probe_limits(hub, "bob")
    # each server its own HOME (JupyterLab's workspaces and settings are not shared)
    assert seen["home"] == str(hub.home / "users" / "bob"), seen["home"]
    assert seen["gpus"] == ",".join(map(str, alloc["gpus"])) and len(alloc["gpus"]) == 4
    assert int(seen["mem"] or seen["rlimit_as"]) == alloc["mem"] == 512 * 2**20
    if seen["cpu_quota"] is not None:  # a fractional CPU is a CFS quota, not a core
        assert seen["cpu_quota"].split()[0] == "25000"

    alloc = queue(hub)[("alice", "")]["allocation"]["units"][0]  # 1 whole CPU, no GPU
    seen = probe_limits(hub, "alice")
    assert seen["gpus"] == "" and alloc["gpus"] == []
    assert seen["cores"] == alloc["cores"] and len(seen["cores"]) == 1


def test_impossible_requests_are_refused_at_once(fair_hub):
    hub = fair_hub
    started = time.monotonic()
    resp = spawn(hub, "carol", options={"profile": "huge"})
    assert resp.status_code >= 400
    assert "larger than the pool" in resp.json()["message"]
    assert time.monotonic() - started < 10
    resp = spawn(hub, "carol", options=custom(gpu=5))
    assert resp.status_code == 400 and "more than your limit" in resp.json()["message"]
    resp = spawn(hub, "carol", options={"profile": "custom", "cpu": 1, "rm -rf": 1})
    assert resp.status_code == 400 and "unknown options" in resp.json()["message"]
    # a group quota from hub group properties
    hub.hub_api(hub.admin, "POST", "groups/interns", json={"users": ["carol"]})
    resp = hub.hub_api(hub.admin, "PUT", "groups/interns/properties",
                       json={"loophub": {"quota": {"gpu": 1}}})
    assert resp.status_code == 200, resp.text
    resp = spawn(hub, "carol", options=custom(gpu=2))
    assert resp.status_code >= 400 and "quota" in resp.json()["message"]
    assert server(hub, "carol") is None


def test_dead_server_releases_its_allocation(fair_hub):
    hub = fair_hub
    assert spawn(hub, "dave", options=custom(cpu=0.25, gpu=0)).status_code in (201, 202)
    wait_ready(hub, "dave")
    entry = queue(hub)[("dave", "")]
    pid = hub.hub_api(hub.admin, "GET", "users/dave?include_stopped_servers")
    state = server(hub, "dave")["state"]
    os.killpg(state["backend_state"]["pid"], 9)
    wait_stopped(hub, "dave")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and ("dave", "") in queue(hub):
        time.sleep(0.5)
    assert ("dave", "") not in queue(hub), entry
    assert pid.status_code == 200


def test_hub_restart_keeps_queued_and_running(fair_hub):
    """Restart with bob running (4 GPUs) and erin queued: neither is lost; erin starts
    by herself once bob stops, though no spawner waited for her across the restart."""
    hub = fair_hub
    wait_ready(hub, "bob")
    assert spawn(hub, "erin", options=custom(gpu=2)).status_code == 202
    queued = wait_queue(hub, ("erin", ""), "queued")
    running = queue(hub)[("bob", "")]
    port = int(hub.url.rsplit(":", 1)[1])
    hub.stop()
    hub2 = start_hub(hub.home, env=hub.env, args=("--keep-servers",), port=port)
    fair_hub.proc, fair_hub.output = hub2.proc, hub2.output
    assert wait_ready(hub, "bob", timeout=30)
    after = queue(hub)
    assert after[("bob", "")]["id"] == running["id"]
    assert after[("bob", "")]["state"] == "running"
    assert after[("erin", "")]["id"] == queued["id"]
    assert after[("erin", "")]["state"] == "queued"
    assert stop(hub, "bob").status_code in (202, 204)
    wait_queue(hub, ("erin", ""), "running", timeout=60)
    wait_ready(hub, "erin", timeout=90)
    assert queue(hub)[("erin", "")]["id"] == queued["id"]
