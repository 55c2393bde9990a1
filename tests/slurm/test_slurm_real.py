"""SlurmBackend against a real single-node Slurm (see conftest.py): real sbatch, squeue and
scancel, the real batchspawner-singleuser wrapper reporting its port, a 30 s slurmctld outage.

The job runs a tiny HTTP server instead of jupyterhub-singleuser (no hub here): it listens
where JUPYTERHUB_SERVICE_URL says after the wrapper rewrote the port, and answers with its
environment, which proves the port reached the backend and shows what Slurm granted.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from pathlib import Path

import pytest
import pytest_asyncio
import requests
from tornado import web
from tornado.httpserver import HTTPServer

from loophub.ports import free_port
from loophub.spawner.backends import Placement
from loophub.spawner.backends.slurm import (
    PortReportError,
    SlurmBackend,
    find_spawner,
    report_port,
)
from loophub.spawner.backends.squeue import SqueuePoller

from .fakes import FakeSpawner

pytestmark = pytest.mark.slurm

GIB = 2**30
WRAPPER = str(Path(sys.executable).parent / "batchspawner-singleuser")
ENV_SHOWN = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_CPUS_PER_TASK", "SLURM_MEM_PER_NODE",
             "JUPYTERHUB_SERVICE_URL", "LOOPHUB_ALLOC_GPU_COUNT", "JUPYTERHUB_API_TOKEN",
             "HUB_ONLY_SECRET")
FAKE_SERVER = f"""
import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlparse

url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
shown = {{k: os.environ.get(k) for k in {ENV_SHOWN!r}}}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(shown).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)


print("fake server on", url.hostname, url.port, flush=True)
HTTPServer((url.hostname, url.port), Handler).serve_forever()
"""


class CallbackHandler(web.RequestHandler):
    """The hub's /hub/api/batchspawner in miniature: token -> server -> report_port, the same
    functions PortCallbackHandler calls (tests/slurm/test_slurm_hub.py runs the real one)."""

    def initialize(self, spawners: list, bodies: list) -> None:
        self.spawners, self.bodies = spawners, bodies

    def post(self) -> None:
        token = self.request.headers.get("Authorization", "").removeprefix("token ").strip()
        spawner = find_spawner(self.spawners, token)
        if spawner is None:
            raise web.HTTPError(403)
        body = json.loads(self.request.body or b"null")
        self.bodies.append(body)
        try:
            report_port(spawner, body)
        except PortReportError as exc:
            raise web.HTTPError(exc.status, exc.message) from exc
        self.set_status(201)


@pytest_asyncio.fixture(loop_scope="function")  # the test's own loop must serve it
async def hub_api():
    """A callback endpoint on this test's event loop; yields (api_url, spawners, bodies)."""
    spawners: list = []
    bodies: list = []
    port = free_port()
    app = web.Application([(r"/hub/api/batchspawner", CallbackHandler,
                            {"spawners": spawners, "bodies": bodies})])
    server = HTTPServer(app)
    server.listen(port, "127.0.0.1")
    yield f"http://127.0.0.1:{port}/hub/api", spawners, bodies
    server.stop()


@pytest.fixture
def poller(slurm):
    SqueuePoller.clear_instance()
    instance = SqueuePoller.instance(interval=2.0, fast_interval=0.5, grace=300.0, timeout=10.0)
    yield instance
    SqueuePoller.clear_instance()


@pytest.fixture
def fake_server(tmp_path) -> str:
    path = tmp_path / "fake-server"
    path.write_text(FAKE_SERVER)
    path.chmod(0o755)  # the wrapper looks its command up with shutil.which
    return str(path)


def make(slurm, hub_api, fake_server, tmp_path, user: str) -> tuple[FakeSpawner, SlurmBackend]:
    api_url, spawners, _ = hub_api
    spawner = FakeSpawner(api_url=api_url, home=str(tmp_path / user), cmd=[fake_server])
    spawner.user.name = user
    spawners.append(spawner)
    backend = SlurmBackend(gres_name=slurm.gres_name, singleuser_cmd=[WRAPPER], server_cmd=[],
                           node_addresses={"rtest": "127.0.0.1"}, stop_timeout=20)
    return spawner, backend


def job_info(slurm, job_id: str) -> str:
    return slurm.run("scontrol", "show", "job", job_id)


def squeue_state(slurm, job_id: str) -> str:
    return slurm.run("squeue", "-h", "-t", "all", "-o", "%T", "-j", job_id, check=False).strip()


def job_log(spawner: FakeSpawner, job_id: str) -> str:
    log = Path(spawner.home) / f"loophub-slurm-{job_id}.log"
    return log.read_text() if log.exists() else "(no job log)"


async def get_json(url: str) -> dict:
    resp = await asyncio.to_thread(requests.get, url, timeout=10)
    resp.raise_for_status()
    return resp.json()


async def test_a_server_runs_as_a_job_with_its_allocation_and_stops(slurm, poller, hub_api,
                                                                     fake_server, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("HUB_ONLY_SECRET", "s3cret")  # in the hub's environment, not the job's
    spawner, backend = make(slurm, hub_api, fake_server, tmp_path, "alice")
    placement = Placement(node="rtest", cpu=1.5, mem=512 * 2**20, gpus=(1,), runtime=600)
    try:
        ip, port = await asyncio.wait_for(backend.launch(spawner, placement), 60)
    finally:
        print(job_log(spawner, backend.job_id))
    job_id = backend.job_id
    try:
        assert (ip, port) == ("127.0.0.1", hub_api[2][0]["port"])
        assert hub_api[2] == [{"port": port}]  # the real wrapper sent the port, only the port
        info = job_info(slurm, job_id)
        assert "JobState=RUNNING" in info, info
        assert "CPUs/Task=2" in info and "MinMemoryNode=512M" in info, info
        assert f"TresPerNode=gres:{slurm.gres_name}:1" in info, info
        assert "TimeLimit=00:10:00" in info and "JobName=loophub-alice" in info, info
        shown = await get_json(f"http://{ip}:{port}/")  # the server answers on that port
        assert shown["SLURM_JOB_ID"] == job_id and shown["SLURM_CPUS_PER_TASK"] == "2"
        assert shown["JUPYTERHUB_SERVICE_URL"] == f"http://0.0.0.0:{port}/user/alice/"
        assert shown["JUPYTERHUB_API_TOKEN"] == spawner.api_token  # via the environment
        assert shown["LOOPHUB_ALLOC_GPU_COUNT"] == "1" and shown["HUB_ONLY_SECRET"] is None
        if slurm.has_gpu_files:  # Slurm chose the device and says so
            assert shown["CUDA_VISIBLE_DEVICES"] == "0"
        assert await backend.poll(spawner) is None
        state = backend.get_state()
        assert state == {"job_id": job_id, "host": "rtest", "port": port}
    except BaseException:
        print(job_log(spawner, job_id))
        raise
    finally:
        await backend.stop(spawner)
    assert await backend.poll(spawner) == 1  # cancelled
    assert squeue_state(slurm, job_id) in ("CANCELLED", "")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{ip}:{port}/", timeout=5)


async def test_the_server_survives_slurmctld_down_for_30_s(slurm, poller, hub_api,
                                                            fake_server, tmp_path):
    spawner, backend = make(slurm, hub_api, fake_server, tmp_path, "bob")
    placement = Placement(node="rtest", cpu=1, mem=256 * 2**20)
    ip, port = await asyncio.wait_for(backend.launch(spawner, placement), 60)
    job_id = backend.job_id
    try:
        slurm.stop_controller()
        calls_before = poller.calls
        outage_end = time.monotonic() + 30
        while time.monotonic() < outage_end:
            assert await backend.poll(spawner) is None  # not declared dead
            await asyncio.sleep(2)
        # squeue hangs until its timeout while slurmctld is down: a few failed calls
        assert poller.calls >= calls_before + 2 and poller.failing_since is not None
        assert (await get_json(f"http://{ip}:{port}/"))["SLURM_JOB_ID"] == job_id
        slurm.start_controller()
        await poller.refresh()
        record = poller.jobs[job_id]
        assert record.state == "RUNNING" and poller.failing_since is None
        assert await backend.poll(spawner) is None

        # a hub restart: a new backend and poller find the job from the saved state
        state = backend.get_state()
        SqueuePoller.clear_instance()
        SqueuePoller.instance(interval=2.0, fast_interval=0.5, timeout=10.0)
        backend = SlurmBackend(stop_timeout=20)
        backend.load_state(state)
        assert await backend.poll(spawner) is None
    except BaseException:
        print(job_log(spawner, job_id), slurm.logs())
        raise
    finally:
        if slurm.procs.get("slurmctld") is None:
            slurm.start_controller()
        await backend.stop(spawner)
    assert await backend.poll(spawner) is not None
    assert squeue_state(slurm, job_id) in ("CANCELLED", "")


async def test_a_launch_that_times_out_cancels_its_job(slurm, poller, hub_api, tmp_path):
    spawner, backend = make(slurm, hub_api, "/bin/sleep", tmp_path, "carol")
    backend.singleuser_cmd = []  # sleep reports no port: the launch times out
    spawner.args = ["300"]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(backend.launch(spawner, Placement("rtest", 1, 128 * 2**20)), 5)
    job_id = backend.job_id
    assert re.fullmatch(r"\d+", job_id)
    deadline = time.monotonic() + 20
    while squeue_state(slurm, job_id) not in ("CANCELLED", "") and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert squeue_state(slurm, job_id) in ("CANCELLED", "")
