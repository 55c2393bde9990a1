"""Model replicas as Slurm batch jobs, one per allocated unit.

The fair scheduler allocated the unit; the job is sized from it as a notebook server or a
training worker is (``SlurmUnitLauncher``), and Slurm picks the GPUs and sets
CUDA_VISIBLE_DEVICES itself. The model server in the job listens on every interface of its
node on a port it chooses (no port can be reserved from here for another machine) and
writes where, and later its exit code, to a state file on the shared file system: the
platform's home must be visible on the nodes, as notebook servers' homes are. The shared
squeue poller watches the jobs; a replica is drained with SIGTERM to the batch step (the
server ``exec``s into the script's process, so the signal reaches it) and cancelled after
the grace.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from traitlets import Any as AnyTrait
from traitlets import Float, List, Unicode

from loophub.runtime import Placement
from loophub.serving.statefile import read_state

from .slurm import parse_job_id, resource_vars, safe_job_name
from .squeue import JobRecord, run_command
from .units import SlurmUnitLauncher

# Slurm grants the devices on its node; the scheduler's indices do not apply there.
SET_BY_SLURM = ("CUDA_VISIBLE_DEVICES", "LOOPHUB_ALLOC_GPUS")
Tell = Callable[[str], Any]  # progress for the replica's status line


class ReplicaJobError(RuntimeError):
    """The job could not be submitted, or ended before its server listened."""


class SlurmReplicaLauncher(SlurmUnitLauncher):
    bind_host = Unicode("0.0.0.0", help="Address the model server listens on in its job "
                                        "(the API and the gateway reach it from another "
                                        "machine).").tag(config=True)
    advertise_host = Unicode("", help="Host name the API and the gateway reach replicas "
                                      "by; '' for each node's own host name.").tag(config=True)
    start_timeout = Float(600.0, help="Seconds a replica's job may wait in Slurm's queue "
                                      "and take to listen before it counts as failed."
                          ).tag(config=True)
    stop_grace = Float(5.0, help="Seconds after the server's own drain timeout before the "
                                 "job is cancelled outright.").tag(config=True)
    sbatch_cmd = List(Unicode(), ["sbatch", "--parsable"], help="sbatch command.").tag(
        config=True)
    scancel_cmd = List(Unicode(), ["scancel"], help="scancel command.").tag(config=True)
    runner = AnyTrait(run_command, help="Runs sbatch and scancel (tests pass a fake one).")

    # -- submitting ------------------------------------------------------------------------

    def script(self, name: str, cmd: list[str], unit: Placement, env: dict[str, str],
               output: Path) -> str:
        """The batch script: resources as #SBATCH lines, the environment exported by name
        (--export=NONE: nothing of the API's own environment, its hub token included,
        reaches the job), then the server in the script's own process."""
        res = resource_vars(unit, self.gres_name, default_runtime=0)
        lines = ["#!/bin/bash", f"#SBATCH --job-name={safe_job_name(name)}",
                 f"#SBATCH --output={output}", "#SBATCH --open-mode=append",
                 "#SBATCH --export=NONE", f"#SBATCH --mem={res['memory']}"]
        if res["runtime"]:
            lines.append(f"#SBATCH --time={res['runtime']}")
        lines += [f"#SBATCH {d}" for d in self.directives(unit)]
        lines += ["set -eu"]
        lines += [f"export {key}={shlex.quote(value)}" for key, value in sorted(env.items())
                  if key not in SET_BY_SLURM]
        lines.append("exec " + shlex.join(cmd))
        return "\n".join(lines) + "\n"

    def server_args(self, state_file: Path) -> list[str]:
        """What the model server's command line gets instead of a local port."""
        args = ["--host", self.bind_host, "--port", "0", "--state-file", str(state_file)]
        return args + (["--advertise-host", self.advertise_host] if self.advertise_host else [])

    async def submit(self, name: str, cmd: list[str], unit: Placement, env: dict[str, str],
                     output: Path) -> str:
        """sbatch the replica's job; its id."""
        result = await self.runner([*self.sbatch_cmd], input=self.script(
            name, cmd, unit, env, output), timeout=60)
        if result.returncode != 0:
            raise ReplicaJobError(f"sbatch failed (exit {result.returncode}): "
                                  f"{result.stderr.strip()[:500]}")
        job_id = parse_job_id(result.stdout)
        self.poller.watch(job_id, fast=True)
        return job_id

    async def wait_listening(self, job_id: str, state_file: Path, tell: Tell) -> str:
        """The replica's URL once its job runs and its server listens."""
        deadline, said = time.monotonic() + self.start_timeout, ""
        while time.monotonic() < deadline:
            record = await self.poller.status(job_id)
            state = read_state(state_file)
            if "exit_code" in state:
                raise ReplicaJobError(f"the model server of Slurm job {job_id} exited with "
                                      f"code {state['exit_code']} (see the replica's log)")
            if state.get("port"):
                return f"http://{state['host']}:{state['port']}"
            if not record.alive:
                raise ReplicaJobError(f"Slurm job {job_id} ended ({record.state}) before its "
                                      "model server listened")
            now = progress(job_id, record)
            if now != said:
                said = now
                await tell(now)
            await self.poller.refresh()
        raise ReplicaJobError(f"Slurm job {job_id} did not start its model server in "
                              f"{self.start_timeout:.0f} s")

    # -- stopping ----------------------------------------------------------------------------

    def alive(self, job_id: str) -> bool:
        return self.poller.watch(job_id).alive

    async def stop(self, job_id: str, grace: float) -> None:
        """SIGTERM to the server (it answers what it holds), then cancel after GRACE."""
        await self.runner([*self.scancel_cmd, "--batch", "--signal=TERM", job_id], timeout=30)
        deadline = time.monotonic() + grace + self.stop_grace
        while self.alive(job_id) and time.monotonic() < deadline:
            await self.poller.refresh()
        await self.poller.cancel(job_id, [*self.scancel_cmd, job_id])
        self.poller.unwatch(job_id)


def progress(job_id: str, record: JobRecord) -> str:
    if record.running:
        return f"Slurm job {job_id} runs on {record.host}; starting the model server"
    why = f" ({record.reason})" if record.reason else ""
    return f"Slurm job {job_id} is {record.state.lower()}{why}"
