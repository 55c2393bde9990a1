"""Training workers as jobs of a real single-node Slurm (dask-jobqueue), one per unit."""

from __future__ import annotations

import pytest

from tests.training.conftest import digits_folder

pytestmark = [pytest.mark.slurm, pytest.mark.training]
POOL = '[{"name": "debug", "cpu": 2, "mem": "3G", "gpu": 2, "backend": "slurm"}]'


def reports_slurm(ctx):
    import os

    ctx.log(f"slurm job {os.environ.get('SLURM_JOB_ID')} cpus "
            f"{os.environ.get('SLURM_CPUS_PER_TASK')} gpus {os.environ.get('SLURM_JOB_GPUS')}")
    ctx.final(world=float(ctx.world_size))
    return {}


def test_a_job_runs_its_ranks_as_slurm_jobs(slurm, api, monkeypatch, tmp_path):
    from loophub.spawner.backends.dask_workers import SlurmWorkerLauncher
    from loophub.spawner.backends.squeue import SqueuePoller

    monkeypatch.setenv("LOOPHUB_POOL", POOL)
    SqueuePoller.clear_instance()
    api.ctx.worker_launchers = {"slurm": SlurmWorkerLauncher(
        pool_nodes="partition", gres_name=slurm.gres_name,
        log_directory=str(tmp_path / "slurm-logs"))}
    client = api.client("ann")
    schema = digits_folder(tmp_path / "digits", count=60)
    client.datasets.create("sdigits", label_schema=schema)
    client.datasets.import_("sdigits", tmp_path / "digits", "loophub", progress=False)
    client.datasets.commit("sdigits", "60 digits")
    job = client.training.run(reports_slurm, dataset="sdigits@v1", workers=2,
                              per_worker={"cpu": 1, "mem": "1G", "gpu": 1})
    result = job.wait(progress=False, timeout=300)
    assert result["metrics"]["world"] == 2.0
    lines = [x for x in job.logs().splitlines() if "slurm job" in x]
    assert len(lines) == 2 and all("slurm job None" not in x for x in lines), lines
    assert all("cpus 1" in x for x in lines), lines
    assert slurm.run("squeue", "-h").strip() == ""  # nothing left queued or running
