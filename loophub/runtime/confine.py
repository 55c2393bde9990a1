"""Holding a process to its placement: core affinity, a cgroup (v2, or v1's memory and
cpu controllers) capping memory and CPU time (fractional CPUs get a CFS quota), RLIMIT_AS
where no cgroup can be made, and dropping to a system user.

``Confinement.build`` decides what can be enforced here; ``preexec`` applies it in the
child between fork and exec. Used by servers, kernels, and next Dask workers and model
servers, so every process on an allocation is held the same way.
"""

from __future__ import annotations

import logging
import os
import pwd
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loophub.runtime.placement import Placement

CGROUP_ROOT = Path("/sys/fs/cgroup")
CFS_PERIOD = 100_000  # microseconds
MODES = ("auto", "cgroup", "rlimit", "none")
log = logging.getLogger("loophub.runtime")


class ConfinementError(RuntimeError):
    """What was asked cannot be enforced on this machine."""


class Cgroup:
    """A process's cgroup: memory cap and CPU quota, on cgroup v2 or v1 hierarchies."""

    def __init__(self, paths: dict[str, Path], version: int) -> None:
        self.paths, self.version = paths, version  # controller -> folder

    @classmethod
    def create(cls, parent: str, name: str) -> Cgroup | None:
        """Make the folders, or None where cgroups are not writable here."""
        try:
            if (CGROUP_ROOT / "cgroup.controllers").exists():
                base = CGROUP_ROOT / parent
                base.mkdir(exist_ok=True)
                # a child can only be limited if its parent delegates the controllers
                (base / "cgroup.subtree_control").write_text("+memory +cpu")
                path = base / name
                path.mkdir(exist_ok=True)
                return cls({"memory": path, "cpu": path}, 2)
            paths = {}
            for controller in ("memory", "cpu"):
                if (CGROUP_ROOT / controller).is_dir():
                    path = CGROUP_ROOT / controller / parent / name
                    path.mkdir(parents=True, exist_ok=True)
                    paths[controller] = path
            return cls(paths, 1) if "memory" in paths else None
        except OSError:
            return None

    def limit(self, mem: int, cpu: float) -> None:
        quota = max(1000, int(cpu * CFS_PERIOD))
        if self.version == 2:
            (self.paths["memory"] / "memory.max").write_text(str(mem))
            (self.paths["cpu"] / "cpu.max").write_text(f"{quota} {CFS_PERIOD}")
            return
        (self.paths["memory"] / "memory.limit_in_bytes").write_text(str(mem))
        if "cpu" in self.paths:
            (self.paths["cpu"] / "cpu.cfs_period_us").write_text(str(CFS_PERIOD))
            (self.paths["cpu"] / "cpu.cfs_quota_us").write_text(str(quota))

    def procs_files(self) -> list[str]:
        return sorted({str(p / "cgroup.procs") for p in self.paths.values()})

    def to_state(self) -> dict:
        return {"version": self.version, "paths": {k: str(v) for k, v in self.paths.items()}}

    @classmethod
    def from_state(cls, state: dict) -> Cgroup | None:
        if not state:
            return None
        return cls({k: Path(v) for k, v in state["paths"].items()}, state["version"])

    def remove(self) -> None:
        for path in set(self.paths.values()):
            try:
                path.rmdir()
            except OSError:
                pass  # still has processes, or already gone: the next start reuses it


def pinnable_cores(cores: tuple[int, ...] | None,
                   logger: logging.Logger | logging.LoggerAdapter | None = None
                   ) -> tuple[int, ...] | None:
    """The allocated core ids, if this machine has them all. A declared pool larger than
    the machine (tests, demos) cannot be pinned; the cgroup CPU quota still applies."""
    if not cores:
        return None
    if set(cores) <= os.sched_getaffinity(0):
        return cores
    (logger or log).warning("cores %s are not all on this machine: not pinning", cores)
    return None


def confine_preexec(cores: tuple[int, ...] | None, cgroup_procs: list[str],
                    mem_rlimit: int | None, user: pwd.struct_passwd | None
                    ) -> Callable[[], None]:
    """Runs in the child between fork and exec: join the cgroup, pin, cap, drop privileges."""
    def preexec() -> None:
        for procs in cgroup_procs:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        if cores:
            os.sched_setaffinity(0, cores)
        if mem_rlimit:
            resource.setrlimit(resource.RLIMIT_AS, (mem_rlimit, mem_rlimit))
        if user:
            os.setgid(user.pw_gid)
            os.initgroups(user.pw_name, user.pw_gid)
            os.setuid(user.pw_uid)
    return preexec


@dataclass
class Confinement:
    """What holds one process to its placement here (built once per launch)."""

    cores: tuple[int, ...] | None = None
    cgroup: Cgroup | None = None
    mem_rlimit: int | None = None

    @classmethod
    def build(cls, placement: Placement, *, name: str, mode: str = "auto",
              cgroup_parent: str = "loophub", rlimit_fallback: bool = True,
              logger: logging.Logger | logging.LoggerAdapter | None = None) -> Confinement:
        """MODE 'cgroup' requires a writable cgroup; 'rlimit' caps virtual memory; 'auto'
        takes a cgroup where one can be made, else RLIMIT_AS if ``rlimit_fallback`` (a
        kernel inside a server is already under the server's caps, so it needs none);
        'none' only pins cores. Whole allocated cores are pinned in every mode."""
        if mode not in MODES:
            raise ConfinementError(f"memory_enforcement must be one of {MODES}, got {mode!r}")
        cgroup = None
        if mode in ("auto", "cgroup"):
            cgroup = Cgroup.create(cgroup_parent, name)
            if cgroup is None and mode == "cgroup":
                raise ConfinementError("memory_enforcement='cgroup' but no writable cgroup here")
            if cgroup is not None:
                cgroup.limit(placement.mem, placement.cpu)
        use_rlimit = mode == "rlimit" or (mode == "auto" and cgroup is None and rlimit_fallback)
        return cls(cores=pinnable_cores(placement.cores, logger), cgroup=cgroup,
                   mem_rlimit=placement.mem if use_rlimit else None)

    @property
    def method(self) -> str:
        """How memory is capped: 'cgroup', 'rlimit' or 'none' (for logs)."""
        return "cgroup" if self.cgroup else "rlimit" if self.mem_rlimit else "none"

    def preexec(self, user: pwd.struct_passwd | None = None) -> Callable[[], None] | None:
        """The function to run in the child, or None when there is nothing to apply."""
        procs = self.cgroup.procs_files() if self.cgroup else []
        if not (self.cores or procs or self.mem_rlimit or user):
            return None
        return confine_preexec(self.cores, procs, self.mem_rlimit, user)

    def release(self) -> None:
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None
