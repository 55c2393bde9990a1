"""Slurm options shared by the launchers that run one allocated unit as one Slurm job:
training workers (dask_workers.py) and model replicas (replicas.py).

A unit is sized as a notebook server is (SlurmBackend's ``resource_vars``), and the pool's
node is mapped to Slurm the same way (a partition, a node list, or nothing)."""

from __future__ import annotations

from typing import Any

from traitlets import Enum, List, Unicode
from traitlets.config import LoggingConfigurable

from loophub.runtime import Placement

from .slurm import check_name, resource_vars
from .squeue import SqueuePoller


class SlurmUnitLauncher(LoggingConfigurable):
    partition = Unicode("", help="--partition for every job ('': Slurm's default).").tag(
        config=True)
    account = Unicode("", help="--account for every job.").tag(config=True)
    gres_name = Unicode("gpu", help="GRES name GPUs are requested as (--gres=NAME:N)."
                        ).tag(config=True)
    pool_nodes = Enum(["none", "nodelist", "partition"], "partition",
                      help="What the pool's nodes are in Slurm: 'partition' (--partition=NODE),"
                           " 'nodelist' (--nodelist=NODE) or 'none'.").tag(config=True)
    extra_directives = List(Unicode(), help="More #SBATCH lines, e.g. ['--qos=train']."
                            ).tag(config=True)
    log_directory = Unicode("", help="Where the jobs' Slurm output goes.").tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.poller = SqueuePoller.instance()

    def directives(self, unit: Placement) -> list[str]:
        """#SBATCH options of one unit: its cores, GPUs and where it runs (the memory
        and time limits are the caller's: dask-jobqueue writes its own)."""
        res = resource_vars(unit, self.gres_name, default_runtime=0)
        out = [f"--cpus-per-task={res['nprocs']}"]
        if res["gres"]:
            out.append(f"--gres={res['gres']}")
        if self.pool_nodes == "partition":
            out.append(f"--partition={check_name(unit.node, 'node')}")
        elif self.pool_nodes == "nodelist":
            out.append(f"--nodelist={check_name(unit.node, 'node')}")
        elif self.partition:
            out.append(f"--partition={check_name(self.partition, 'partition')}")
        if self.account:
            out.append(f"--account={check_name(self.account, 'account')}")
        return out + list(self.extra_directives)
