"""A release's replicas as jobs of a real single-node Slurm: the model server listens on
its node at a port it picks, the API finds it through the state file, a killed job is
started again as a new job, and a stopped release leaves nothing in squeue."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.serving.test_releases import digit_nets, register, wait_for  # noqa: F401 (fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.serving]
POOL = '[{"name": "debug", "cpu": 2, "mem": "3G", "gpu": 2, "backend": "slurm"}]'


def squeue(slurm) -> list[str]:
    return slurm.run("squeue", "-h", "-o", "%i %T %j").split("\n")[:-1]


def test_a_release_runs_its_replicas_as_slurm_jobs(slurm, api, monkeypatch, tmp_path,
                                                   digit_nets):  # noqa: F811
    # the API builds its training runner too; dask_jobqueue must be imported in the main
    # thread (it sets a signal handler), as the real API does at start
    import loophub.spawner.backends.dask_workers  # noqa: F401
    from loophub.spawner.backends.replicas import SlurmReplicaLauncher
    from loophub.spawner.backends.squeue import SqueuePoller

    images, net = digit_nets
    monkeypatch.setenv("LOOPHUB_POOL", POOL)
    SqueuePoller.clear_instance()
    api.ctx.replica_launchers = {"slurm": SlurmReplicaLauncher(
        pool_nodes="partition", gres_name=slurm.gres_name)}
    api.run(api.ctx.start_serving())  # the replica watch, as the API runs it at start
    ann = api.client("ann")
    register(ann, "digits", net)
    ann.request("POST", "releases", json={
        "name": "digits", "model": "digits@latest", "per_replica": {"cpu": 1, "mem": "1G"}})
    view = wait_for(ann, "digits", lambda v: v["status"] == "serving", timeout=180)
    [replica] = view["replica_list"]
    assert replica["job"] and replica["node"] == "debug", replica
    assert not replica["url"].startswith("http://127.0.0.1"), replica  # the node's name
    [line] = squeue(slurm)
    assert line.split()[:2] == [replica["job"], "RUNNING"], line
    pixels = {"instances": [{"pixels": images[0].tolist()}]}
    resp = requests.post(f"{replica['url']}/predict", json=pixels, timeout=30)
    assert resp.status_code == 200, resp.text
    meta = requests.get(f"{replica['url']}/metadata", timeout=10)
    assert meta.status_code == 200 and "digits@v1" in meta.text, meta.text

    slurm.run("scancel", replica["job"])  # the job dies: the manager starts a new one
    view = wait_for(ann, "digits", lambda v: v["status"] == "serving" and v["replica_list"][0][
        "job"] not in (None, replica["job"]), timeout=180)
    [again] = view["replica_list"]
    assert again["restarts"] == 1 and again["id"] == replica["id"], again
    assert requests.post(f"{again['url']}/predict", json=pixels, timeout=30).status_code == 200
    log = ann.raw("GET", f"releases/digits/replicas/{again['id']}/log").text
    assert log.count("listening on http://0.0.0.0") == 2, log[-2000:]  # both jobs' output

    # the API restarts: the job that still serves is adopted, not started again
    manager = api.ctx.release_manager
    manager.running.clear()
    request = {v["id"]: v["allocation"] for v in api.ctx.scheduler.service.queue()
               if v["kind"] == "service" and v["state"] == "running"}
    api.run(manager.recover(request))
    assert manager.running[again["id"]].job == again["job"]
    assert [x.split()[0] for x in squeue(slurm)] == [again["job"]]

    stopped = ann.request("DELETE", "releases/digits")
    assert stopped["status"] == "stopped"
    deadline = time.monotonic() + 60
    while squeue(slurm):
        assert time.monotonic() < deadline, squeue(slurm)
        time.sleep(0.5)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{again['url']}/health", timeout=5)
    state = manager.log_path("digits", again["id"]).with_suffix(".state.json")
    assert json.loads(state.read_text())["exit_code"] == 0  # drained by SIGTERM, not killed
