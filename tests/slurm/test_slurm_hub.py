"""End to end: a real hub (`loophub up`) whose FairSpawner runs servers on the real Slurm.

The hub gets the documented configuration (docs/spawner-slurm.md) through
LOOPHUB_HUB_CONFIG: PortCallbackHandler in extra_handlers, backend 'slurm'. The server is a
real jupyterhub-singleuser behind the real batchspawner-singleuser wrapper (both found
beside the hub's Python, SlurmBackend's defaults).
"""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.hubtest import run_in_kernel, spawn_server, start_hub

pytestmark = [pytest.mark.slurm, pytest.mark.hub]

HUB_CONFIG = """
from loophub.spawner.backends.slurm import PortCallbackHandler

c.JupyterHub.extra_handlers = [(r"/api/batchspawner", PortCallbackHandler)]
c.FairSpawner.backend = "slurm"
c.SlurmBackend.gres_name = {gres!r}
c.SlurmBackend.node_addresses = {{"rtest": "127.0.0.1"}}
c.SqueuePoller.interval = 2.0
"""


def hub_env(slurm, tmp_path) -> dict[str, str]:
    config = tmp_path / "slurm_hub_config.py"
    config.write_text(HUB_CONFIG.format(gres=slurm.gres_name))
    pool = [{"name": "rtest", "cpu": 2, "mem": "3G", "backend": "slurm"}]
    return {"LOOPHUB_HUB_CONFIG": str(config), "LOOPHUB_POOL": json.dumps(pool)}


def spawn(hub, admin: str, user: str, slurm) -> None:
    try:
        spawn_server(hub, admin, user, timeout=150)
    except TimeoutError:
        print(hub.output.read_text()[-5000:], slurm.logs())
        raise


def wait_stopped(hub, admin: str, user: str, slurm) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        server = hub.hub_api(admin, "GET", f"users/{user}").json()["servers"].get("")
        if not server and not user_jobs(slurm, user):
            return
        time.sleep(0.5)
    raise AssertionError(f"{user}'s server or job still there: {user_jobs(slurm, user)}")


def user_jobs(slurm, user: str) -> list[tuple[str, str]]:
    out = slurm.run("squeue", "-h", "-o", "%i %T", f"--name=loophub-{user}")
    return [tuple(line.split()) for line in out.splitlines()]


async def test_a_hub_server_runs_on_slurm_and_outlives_a_hub_restart(slurm, tmp_path):
    """Spawn through the hub; the job has the profile's resources and the notebook runs in
    it; with `loophub up --keep-servers` the job outlives the hub, the new hub's poll finds
    it through the saved job id and the shared poller, and stopping cancels it."""
    env, home = hub_env(slurm, tmp_path), tmp_path / "home"
    hub = start_hub(home, env=env, args=("--keep-servers",))
    try:
        admin, token = hub.token("root", admin=True), hub.token("dave")
        spawn(hub, admin, "dave", slurm)
        jobs = user_jobs(slurm, "dave")
        assert len(jobs) == 1 and jobs[0][1] == "RUNNING", jobs
        job_id = jobs[0][0]
        info = slurm.run("scontrol", "show", "job", job_id)
        assert "CPUs/Task=1" in info and "MinMemoryNode=" in info, info  # 'small' profile
        out = await run_in_kernel(hub, "dave", token, (
            "import os; print(os.environ['SLURM_JOB_ID'], os.environ['LOOPHUB_ALLOC_CPU'])"))
        assert out.split() == [job_id, "0.5"]  # the notebook's kernel runs inside the job
        # loophub's handler answers the wrapper's route: a user's token is no server's
        resp = requests.post(f"{hub.url}/hub/api/batchspawner", json={"port": 1, "ip": "x"},
                             headers={"Authorization": f"token {token}"}, timeout=30)
        assert resp.status_code == 403, resp.text
    finally:
        hub.stop()
    assert user_jobs(slurm, "dave") == [(job_id, "RUNNING")]

    hub = start_hub(home, env=env, args=("--keep-servers",))
    try:
        server = hub.hub_api(admin, "GET", "users/dave").json()["servers"].get("")
        assert server and server["ready"], server
        resp = hub.hub_api(admin, "DELETE", "users/dave/server")
        assert resp.status_code in (202, 204), resp.text
        wait_stopped(hub, admin, "dave", slurm)
    finally:
        hub.stop()
        for stray, _ in user_jobs(slurm, "dave"):  # never leave a job behind
            slurm.run("scancel", stray, check=False)
