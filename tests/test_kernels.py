"""Sized kernels (spawner/kernels.py): pure parts without a hub, then a real hub whose
declared pool has 4 (fake) GPUs, a small CPU server, and GPU kernels started through
the server's REST API that queue, run on and release their own allocations."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import requests

from loophub.errors import InvalidInput, LoophubError
from loophub.pool import GIB
from loophub.runtime import Placement
from loophub.spawner.kernels import (
    EVENT_SCHEMA_ID,
    PROVISIONER_NAME,
    FairKernelProvisioner,
    KernelSize,
    api_message,
    idle_seconds,
    install_kernelspec,
    kernel_env,
    kernelspec,
    register,
    request_key,
    wrong_node,
)

# --- pure parts ------------------------------------------------------------------------


def test_kernel_size_parses_and_describes_itself():
    size = KernelSize.parse(2, "8G", 1, "a100")
    assert size == KernelSize(2.0, 8 * GIB, 1, "a100")
    assert size.demand() == {"cpu": 2.0, "mem": 8 * GIB, "gpu": 1}
    assert size.label() == "1 a100 GPU"
    assert size.summary() == "2 CPU, 8 GiB, 1 a100 GPU"
    assert size.config() == {"cpu": 2.0, "mem": 8 * GIB, "gpu": 1, "gpu_type": "a100"}
    assert KernelSize.parse(4, 2**30).label() == "4 CPU"


@pytest.mark.parametrize(("args", "field"), [
    ((0, "4G", 0), "cpu"), ((True, "4G", 0), "cpu"), ((1, "4G", -1), "gpu"),
    ((1, "4G", 1.5), "gpu"), ((1, "lots", 0), "mem"), ((1, 0, 0), "mem"),
    ((1, "4G", 1, ""), "gpu_type"),
])
def test_kernel_size_errors_name_the_field(args, field):
    with pytest.raises(InvalidInput, match=field):
        KernelSize.parse(*args)


def test_kernel_env_reuses_the_placement_and_names_the_request():
    placement = Placement.from_unit({"node": "n1", "cpu": 2, "mem": GIB, "gpus": [1, 3],
                                     "cores": [0, 1]})
    env = kernel_env(placement, "req1")
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    assert env["LOOPHUB_KERNEL_REQUEST"] == "req1"
    assert placement.env().items() <= env.items()
    assert request_key("ann", "", "k1") == "kernel:ann//k1"


def test_kernels_run_only_on_their_servers_node():
    placement = Placement.from_unit({"node": "gpu2", "cpu": 1, "mem": GIB, "gpus": [0]})
    assert wrong_node(placement, "gpu2") == wrong_node(placement, "") == ""
    assert "placed this kernel on gpu2, but its server runs on gpu1" in wrong_node(placement,
                                                                                    "gpu1")


def test_idle_seconds_ignores_busy_kernels_only():
    now = datetime.now(UTC)
    quiet = now - timedelta(seconds=90)
    assert idle_seconds("idle", quiet, now) == pytest.approx(90)
    assert idle_seconds("busy", quiet, now) == 0
    assert idle_seconds("starting", quiet, now) == pytest.approx(90)  # never connected
    assert idle_seconds("idle", None, now) == 0


def test_api_message_drops_the_client_prefix():
    exc = LoophubError("POST http://h:1/services/loophub/api/scheduler/requests: refused: too big")
    assert api_message(exc) == "refused: too big"
    assert api_message(LoophubError("plain")) == "plain"


def test_kernelspec_names_the_provisioner_and_its_size():
    spec = kernelspec(KernelSize(2, 8 * GIB, 1), python="/py", extra_config={"idle_timeout": 60})
    assert spec["display_name"] == "Python 3 (1 GPU)"
    assert spec["argv"][:3] == ["/py", "-m", "ipykernel_launcher"]
    prov = spec["metadata"]["kernel_provisioner"]
    assert prov == {"provisioner_name": PROVISIONER_NAME, "config": {
        "cpu": 2.0, "mem": 8 * GIB, "gpu": 1, "idle_timeout": 60}}


def _specs(prefix: Path) -> dict:
    """kernel.json files as written (KernelSpecManager hides specs whose provisioner is not
    installed, and the entry point may not be yet)."""
    return {p.parent.name: {"spec": json.loads(p.read_text())}
            for p in (prefix / "share/jupyter/kernels").glob("*/kernel.json")}


def test_install_and_cli(tmp_path, capsys):
    path = install_kernelspec(KernelSize(1, GIB, 2), prefix=str(tmp_path))
    assert Path(path, "logo-64x64.png").exists()
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["kernels", "install", "--cpu", "4", "--mem", "16G",
                              "--prefix", str(tmp_path), "--idle-timeout", "600"])
    assert args.func(args) == 0
    specs = _specs(tmp_path)
    assert {n: s["spec"]["display_name"] for n, s in specs.items()} == {
        "python3-gpu2": "Python 3 (2 GPU)", "python3-cpu4": "Python 3 (4 CPU)"}
    config = specs["python3-cpu4"]["spec"]["metadata"]["kernel_provisioner"]["config"]
    assert config == {"cpu": 4.0, "mem": 16 * GIB, "gpu": 0, "idle_timeout": 600.0}
    assert "installed 'python3-cpu4'" in capsys.readouterr().out
    bare = parser.parse_args(["kernels", "install", "--prefix", str(tmp_path / "std")])
    assert bare.func(bare) == 0
    assert set(_specs(tmp_path / "std")) == {"python3-gpu1", "python3-cpu4"}


def test_loophub_cli_runs_the_subcommands(tmp_path, monkeypatch, capsys):
    from loophub import cli

    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share/jupyter"))
    assert cli.main(["kernels", "install", "--gpu", "1", "--gpu-type", "a100",
                     "--prefix", str(tmp_path)]) == 0
    assert cli.main(["kernels", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()[-1].split("\t")
    assert listed[:2] == ["python3-gpu1-a100", "Python 3 (1 a100 GPU)"]
    assert cli.main(["kernels", "install", "--gpu", "-1", "--prefix", str(tmp_path)]) == 2
    assert "kernel.gpu: must be a whole number >= 0, got -1" in capsys.readouterr().err


def test_provisioner_takes_its_config_from_the_kernelspec(monkeypatch):
    monkeypatch.setenv("LOOPHUB_KERNEL_IDLE_TIMEOUT", "120")
    prov = FairKernelProvisioner(kernel_id="k1", gpu=1, mem="2G", cpu=0.5, gpu_type="a100",
                                 queue_timeout=5)
    assert prov.size == KernelSize(0.5, 2 * GIB, 1, "a100")
    assert (prov.idle_timeout, prov.queue_timeout) == (120, 5)
    monkeypatch.delenv("LOOPHUB_KERNEL_IDLE_TIMEOUT")
    assert FairKernelProvisioner(kernel_id="k2").idle_timeout == 3600
    # a (user-writable) kernelspec cannot move kernels out of the cgroup hierarchy
    prov = FairKernelProvisioner(kernel_id="k3", cgroup_parent="../..", memory_enforcement="none")
    assert (prov.cgroup_parent, prov.memory_enforcement) == ("loophub", "auto")


def test_a_dead_kernel_nobody_restarts_counts_as_gone():
    prov = FairKernelProvisioner(kernel_id="k", dead_grace=0)
    prov.process = subprocess.Popen(["true"])
    prov.process.wait()
    prov._restarting = True  # jupyter's restarter is at work: keep the allocation
    assert not prov._dead_too_long()
    prov._restarting = False
    assert prov._dead_too_long()


def test_provisioner_entry_point_is_registered():
    """Needs setup.cfg's jupyter_client.kernel_provisioners entry (and a re-install)."""
    found = entry_points(group="jupyter_client.kernel_provisioners", name=PROVISIONER_NAME)
    assert [ep.load() for ep in found] == [FairKernelProvisioner]


# --- the real platform --------------------------------------------------------------

POOL = '[{"name": "node1", "cpu": 2, "mem": "8G", "gpu": 4}]'
USER = "kim"
SPECS = {  # name -> (size, extra provisioner config)
    "python3-gpu1": (KernelSize(1, GIB, 1), {"watch_interval": 1}),
    "python3-gpu8": (KernelSize(0.5, GIB, 8), {}),
    "python3-gpu1-wait": (KernelSize(0.5, GIB, 1), {"queue_timeout": 2}),
    "python3-gpu1-idle": (KernelSize(0.5, GIB, 1), {"idle_timeout": 2, "watch_interval": 0.5}),
    "python3-gpu1-unclaimed": (KernelSize(0.5, GIB, 1), {"unclaimed_timeout": 2,
                                                         "watch_interval": 0.5}),
}


def _entry_point_dir(root: Path) -> str:
    """Until setup.cfg declares the entry point, a dist-info on the server's PYTHONPATH
    declares it (importlib.metadata finds it there); unused once the package has it."""
    if entry_points(group="jupyter_client.kernel_provisioners", name=PROVISIONER_NAME):
        return ""
    info = root / "loophub_kernel_provisioner_test-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: loophub-kernel-provisioner-test"
                                   "\nVersion: 0\n")
    (info / "entry_points.txt").write_text(
        f"[jupyter_client.kernel_provisioners]\n"
        f"{PROVISIONER_NAME} = loophub.spawner.kernels:FairKernelProvisioner\n")
    return str(root)


def _start_khub(root: Path, extra_config: str = ""):
    """A hub with the test kernelspecs and USER's small server running."""
    from tests.hubtest import start_hub

    prefix = root / "kernels"
    for name, (size, extra) in SPECS.items():
        install_kernelspec(size, name=name, prefix=str(prefix), extra_config=extra)
    env = {"JUPYTER_PATH": str(prefix / "share/jupyter")}
    if path := _entry_point_dir(root / "ep"):
        env["PYTHONPATH"] = path
    config = root / "extra_config.py"
    # merged into the shipped config's environment (this file is loaded last)
    config.write_text(f"c.Spawner.environment.update({env!r})\n{extra_config}")
    hub = start_hub(root / "home", env={"LOOPHUB_POOL": POOL, "LOOPHUB_HUB_CONFIG": str(config)})
    admin = hub.token("root", admin=True)
    token = hub.token(USER)
    resp = hub.hub_api(admin, "POST", f"users/{USER}/server", json={"profile": "small"})
    assert resp.status_code in (201, 202), resp.text
    _until(lambda: hub.hub_api(admin, "GET", f"users/{USER}").json()["servers"]
           .get("", {}).get("ready"), 120, "small server ready")
    return hub, admin, token


def _stop_khub(hub, admin: str) -> None:
    hub.hub_api(admin, "DELETE", f"users/{USER}/server")
    hub.stop()


@pytest.fixture(scope="module")
def khub(tmp_path_factory):
    hub, admin, token = _start_khub(tmp_path_factory.mktemp("khub"))
    yield hub, admin, token
    _stop_khub(hub, admin)


def _until(check, timeout: float, what: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout} s")


def _queue(hub, admin: str) -> list[dict]:
    resp = requests.get(f"{hub.api}/scheduler/queue", timeout=30,
                        headers={"Authorization": f"token {admin}"})
    return resp.json()["requests"]


def _kernel_requests(hub, admin: str) -> list[dict]:
    return [r for r in _queue(hub, admin) if r["kind"] == "kernel"]


def _kernels_api(hub, token: str, method: str, path: str = "", **kw) -> requests.Response:
    return requests.request(method, f"{hub.url}/user/{USER}/api/kernels{path}", timeout=120,
                            headers={"Authorization": f"token {token}"}, **kw)


PROBE = """
import json, os
from loophub.client import Client
mine = [r for r in Client().request("GET", "scheduler/queue")["requests"]
        if r["id"] == os.environ["LOOPHUB_KERNEL_REQUEST"]]
cgroup = [line for line in open("/proc/self/cgroup") if ":memory:" in line or line[:2] == "0:"]
print(json.dumps({"cuda": os.environ["CUDA_VISIBLE_DEVICES"], "omp": os.environ["OMP_NUM_THREADS"],
                  "request": mine, "affinity": sorted(os.sched_getaffinity(0)),
                  "cgroup": cgroup}))
"""


@pytest.mark.hub
async def test_gpu_kernel_gets_and_releases_its_allocation(khub):
    from tests.hubtest import run_in_kernel

    hub, admin, token = khub
    server_cuda = await run_in_kernel(
        hub, USER, token, "import os; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')))")
    assert server_cuda.strip() == "''"  # the small server itself holds no GPU
    out = json.loads(await run_in_kernel(hub, USER, token, PROBE, kernel_name="python3-gpu1"))
    [request] = out["request"]
    assert request["kind"] == "kernel" and request["state"] == "running"
    assert request["key"].startswith(f"kernel:{USER}//")
    [unit] = request["allocation"]["units"]
    assert len(unit["gpus"]) == 1 and out["cuda"] == str(unit["gpus"][0])
    assert out["omp"] == "1"
    if unit.get("cores"):
        assert out["affinity"] == unit["cores"]
    assert "loophub/" not in "".join(out["cgroup"]) or "kernel-" in "".join(out["cgroup"])
    # run_in_kernel shut the kernel down: the allocation is released
    assert not _kernel_requests(hub, admin)
    done = requests.get(f"{hub.api}/scheduler/requests/{request['id']}", timeout=30,
                        headers={"Authorization": f"token {admin}"}).json()
    assert done["state"] == "done"


async def _subscribe_events(hub, token: str, seen: list[dict]):
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    url = f"{hub.url}/user/{USER}/api/events/subscribe".replace("http", "ws", 1)
    conn = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {token}"}))

    async def read() -> None:
        while (raw := await conn.read_message()) is not None:
            seen.append(json.loads(raw))
    return conn, asyncio.ensure_future(read())


def _block_all_gpus(hub, admin: str) -> str:
    resp = requests.post(f"{hub.api}/scheduler/requests", timeout=30,
                         headers={"Authorization": f"token {admin}"},
                         json={"kind": "job", "owner": "hog", "job": f"hog-{uuid.uuid4().hex}",
                               "demand": {"cpu": 0.5, "mem": GIB, "gpu": 4}})
    assert resp.status_code == 201 and resp.json()["state"] == "running", resp.text
    return resp.json()["id"]


def _release(hub, admin: str, request_id: str) -> None:
    requests.delete(f"{hub.api}/scheduler/requests/{request_id}", timeout=30,
                    headers={"Authorization": f"token {admin}"})


@pytest.mark.hub
async def test_queued_kernel_waits_visibly_then_starts_when_gpus_free(khub):
    hub, admin, token = khub
    hog = _block_all_gpus(hub, admin)
    events: list[dict] = []
    conn, reader = await _subscribe_events(hub, token, events)
    result: dict = {}
    start = threading.Thread(target=lambda: result.update(
        resp=_kernels_api(hub, token, "POST", json={"name": "python3-gpu1"})))
    start.start()
    try:
        [queued] = await asyncio.to_thread(
            _until, lambda: [r for r in _kernel_requests(hub, admin) if r["state"] == "queued"],
            30, "kernel request queued")
        assert queued["owner"] == USER and queued["blocking"] == "gpu"
        await asyncio.to_thread(_until, lambda: any(
            e.get("schema_id") == EVENT_SCHEMA_ID and e.get("state") == "queued"
            for e in events), 15, "queued event")
        note = next(e for e in events if e.get("state") == "queued")["message"]
        assert "waiting for 1 CPU, 1 GiB, 1 GPU: Queued: position 1" in note
        assert "waiting for gpu" in note
        assert "waiting for 1 CPU, 1 GiB, 1 GPU" in (hub.home / "jupyterhub.log").read_text()
        assert start.is_alive()  # the kernel start is still waiting
    finally:
        _release(hub, admin, hog)
        await asyncio.to_thread(start.join, 60)
        conn.close()
        reader.cancel()
    resp = result["resp"]
    assert resp.status_code == 201, resp.text
    [running] = _kernel_requests(hub, admin)
    assert running["state"] == "running" and len(running["allocation"]["units"][0]["gpus"]) == 1
    assert _kernels_api(hub, token, "DELETE", f"/{resp.json()['id']}").status_code == 204
    assert not _kernel_requests(hub, admin)


@pytest.mark.hub
def test_queue_timeout_fails_the_start_with_the_reason(khub):
    hub, admin, token = khub
    hog = _block_all_gpus(hub, admin)
    try:
        resp = _kernels_api(hub, token, "POST", json={"name": "python3-gpu1-wait"})
    finally:
        _release(hub, admin, hog)
    assert resp.status_code == 503, resp.text
    assert "gave up after" in resp.json()["message"]
    assert "waiting for gpu" in resp.json()["message"]
    assert not _kernel_requests(hub, admin)


@pytest.mark.hub
def test_kernel_that_can_never_fit_is_refused_with_the_reason(khub):
    hub, admin, token = khub
    resp = _kernels_api(hub, token, "POST", json={"name": "python3-gpu8"})
    assert resp.status_code == 422, resp.text
    message = resp.json()["message"]
    assert message.startswith("0.5 CPU, 1 GiB, 8 GPU kernel: refused:"), message
    assert "gpu" in message.split("refused:", 1)[1]
    assert not _kernel_requests(hub, admin)


@pytest.mark.hub
def test_idle_gpu_kernel_is_shut_down_and_released(khub):
    hub, admin, token = khub
    resp = _kernels_api(hub, token, "POST", json={"name": "python3-gpu1-idle"})
    assert resp.status_code == 201, resp.text
    kernel_id = resp.json()["id"]
    assert [r["state"] for r in _kernel_requests(hub, admin)] == ["running"]
    _until(lambda: _kernels_api(hub, token, "GET", f"/{kernel_id}").status_code == 404, 30,
           "idle kernel shut down")
    assert not _kernel_requests(hub, admin)
    assert "idle for 0 min (idle_timeout 2 s): shutting the kernel down to free 1 GPU" in \
        (hub.home / "jupyterhub.log").read_text()


@pytest.mark.hub
async def test_gpu_kernel_nobody_connects_to_is_released_but_a_used_one_is_not(khub):
    """The user gave up waiting and closed the tab: the kernel that started later goes."""
    from tests.hubtest import run_in_kernel

    hub, admin, token = khub
    resp = _kernels_api(hub, token, "POST", json={"name": "python3-gpu1-unclaimed"})
    assert resp.status_code == 201, resp.text
    await asyncio.to_thread(_until, lambda: _kernels_api(
        hub, token, "GET", f"/{resp.json()['id']}").status_code == 404, 30, "unclaimed kernel gone")
    assert not _kernel_requests(hub, admin)
    # a notebook connected (run_in_kernel does): it keeps running past the unclaimed time
    out = await run_in_kernel(hub, USER, token, "import time; time.sleep(4); print('kept')",
                              kernel_name="python3-gpu1-unclaimed")
    assert out.strip() == "kept"


@pytest.mark.hub
def test_restart_keeps_the_allocation(khub):
    hub, admin, token = khub
    resp = _kernels_api(hub, token, "POST", json={"name": "python3-gpu1"})
    assert resp.status_code == 201, resp.text
    kernel_id = resp.json()["id"]
    [before] = _kernel_requests(hub, admin)
    assert _kernels_api(hub, token, "POST", f"/{kernel_id}/restart").status_code == 200
    [after] = _kernel_requests(hub, admin)
    assert (after["id"], after["allocation"]) == (before["id"], before["allocation"])
    assert _kernels_api(hub, token, "DELETE", f"/{kernel_id}").status_code == 204
    assert not _kernel_requests(hub, admin)


@pytest.mark.hub
def test_a_kernel_whose_allocation_ends_under_it_is_shut_down(khub):
    """An admin releases a running kernel's request: the API shuts the kernel down through
    its server (the scheduler must not count the GPU free while the kernel holds it)."""
    hub, admin, token = khub
    resp = _kernels_api(hub, token, "POST", json={"name": "python3-gpu1"})
    assert resp.status_code == 201, resp.text
    kernel_id = resp.json()["id"]
    [request] = _kernel_requests(hub, admin)
    assert request["kernel"] == kernel_id
    released = requests.delete(f"{hub.api}/scheduler/requests/{request['id']}", timeout=30,
                               params={"reason": "GPU needed for maintenance"},
                               headers={"Authorization": f"token {admin}"})
    assert released.status_code == 200 and released.json()["state"] == "done"
    _until(lambda: _kernels_api(hub, token, "GET", f"/{kernel_id}").status_code == 404, 30,
           "kernel shut down")
    assert "GPU needed for maintenance" in (hub.home / "jupyterhub.log").read_text()
    assert not _kernel_requests(hub, admin)


@pytest.mark.hub
def test_stopping_the_server_releases_its_kernels(khub):
    """Last: stops the server. Earlier refused and timed-out starts must not break its stop."""
    hub, admin, token = khub
    resp = _kernels_api(hub, token, "POST", json={"name": "python3-gpu1"})
    assert resp.status_code == 201, resp.text
    assert len(_kernel_requests(hub, admin)) == 1
    assert hub.hub_api(admin, "DELETE", f"users/{USER}/server").status_code in (202, 204)
    _until(lambda: not hub.hub_api(admin, "GET", f"users/{USER}").json()["servers"], 60,
           "server stopped")
    _until(lambda: not _kernel_requests(hub, admin), 30, "kernel released")
    assert "Exception in callback" not in (hub.home / "jupyterhub.log").read_text()


@pytest.mark.hub
def test_with_pending_kernels_the_queue_reason_shows_in_the_kernel_model(tmp_path):
    """jupyter-server's pending kernels: the start returns at once and GET shows why it waits."""
    hub, admin, token = _start_khub(
        tmp_path, "c.Spawner.args.append('--MappingKernelManager.use_pending_kernels=True')\n")
    try:
        hog = _block_all_gpus(hub, admin)
        resp = _kernels_api(hub, token, "POST", json={"name": "python3-gpu1"})
        assert resp.status_code == 201 and resp.json()["execution_state"] == "starting"
        kernel = f"/{resp.json()['id']}"
        reason = _until(lambda: _kernels_api(hub, token, "GET", kernel).json().get("reason"), 60,
                        "queue reason in the kernel model")
        assert reason.startswith("waiting for 1 CPU, 1 GiB, 1 GPU: Queued: position 1"), reason
        _release(hub, admin, hog)
        _until(lambda: [r["state"] for r in _kernel_requests(hub, admin)] == ["running"], 60,
               "kernel allocated")
        _until(lambda: "reason" not in _kernels_api(hub, token, "GET", kernel).json(), 60,
               "reason cleared")
        assert _kernels_api(hub, token, "DELETE", kernel).status_code == 204
        # pending kernels shut down in the background too
        _until(lambda: not _kernel_requests(hub, admin), 60, "kernel released")
        # shutting down a kernel that still waits in the queue ends the wait at once
        hog = _block_all_gpus(hub, admin)
        queued = _kernels_api(hub, token, "POST", json={"name": "python3-gpu1"}).json()["id"]
        _until(lambda: _kernel_requests(hub, admin), 60, "kernel queued")
        started = time.monotonic()
        assert _kernels_api(hub, token, "DELETE", f"/{queued}").status_code == 204
        assert time.monotonic() - started < 10
        _until(lambda: not _kernel_requests(hub, admin), 60, "queued kernel withdrawn")
        _release(hub, admin, hog)
    finally:
        _stop_khub(hub, admin)

