"""Training workers as Slurm jobs (dask-jobqueue), one per allocated unit.

The fair scheduler decided the gang and its units; each unit's Dask worker becomes one
Slurm job sized from the unit exactly as a notebook server's is (SlurmBackend's
``resource_vars``: --cpus-per-task, --mem, --gres, --time; the same pool-node mapping:
Slurm nodes or partitions), written and submitted by dask-jobqueue's SLURMJob and pointed
at the platform's Dask scheduler. Slurm picks the GPUs and sets CUDA_VISIBLE_DEVICES
itself. The shared squeue poller watches the jobs (one squeue for all), so a worker whose
job ends is a lost worker to the runner.
"""

from __future__ import annotations

import shlex

# imported at module level, in the main thread: dask_jobqueue sets a SIGINT handler when
# it is imported (signal handlers can only be set there); the API sets its own after
from dask_jobqueue.slurm import SLURMJob

from loophub.runtime import Placement
from loophub.training.runner import WorkerHandle

from .slurm import resource_vars
from .units import SlurmUnitLauncher

KEEP_FROM_SLURM = ("CUDA_VISIBLE_DEVICES",)  # Slurm assigns the devices on its node


class SlurmWorkerLauncher(SlurmUnitLauncher):
    """Each rank's Dask worker as one Slurm job (dask-jobqueue's SLURMJob)."""

    async def launch(self, name: str, rank: int, placement: Placement, env: dict[str, str],
                     scheduler: str) -> WorkerHandle:
        res = resource_vars(placement, self.gres_name, default_runtime=0)
        exports = [f"export {key}={shlex.quote(value)}" for key, value in sorted(env.items())
                   if key not in KEEP_FROM_SLURM]
        job = SLURMJob(
            scheduler=scheduler, name=name, job_name=name, cores=res["nprocs"],
            memory=res["memory"].replace("M", "MiB"), processes=1, nanny=False,
            walltime=res["runtime"] or None, job_cpu=res["nprocs"],
            job_mem=res["memory"], job_extra_directives=self.directives(placement),
            job_directives_skip=["-p", "--partition"] if self.pool_nodes != "none" else [],
            job_script_prologue=exports, worker_extra_args=["--memory-limit", "0"],
            log_directory=self.log_directory or None, death_timeout=60)
        await job.start()
        record = self.poller.watch(job.job_id, fast=True)
        return WorkerHandle(name, rank, lambda: None if record.alive else (
            record.exit_status() or 1), job=job)

    def owns(self, handle: WorkerHandle) -> bool:
        return handle.job is not None

    async def stop(self, handle: WorkerHandle, grace: float = 10.0) -> None:
        await handle.job.close()
        self.poller.unwatch(handle.job.job_id)
