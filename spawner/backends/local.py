"""LocalBackend: one single-user server process per allocation on this machine.

The allocation is enforced, not just advertised: CUDA_VISIBLE_DEVICES names the
allocated GPUs, the process is pinned to the allocated whole cores, and a cgroup
(v2, or v1's memory and cpu controllers) caps memory and CPU time (fractional CPUs
get a CFS quota) where one can be created; elsewhere RLIMIT_AS caps memory.
Processes run in their own session so a hub restart leaves them running; the hub
finds them again through the pid saved in its database.
"""

from __future__ import annotations

import asyncio
import errno
import os
import pwd
import resource
import signal
import subprocess
from pathlib import Path

from traitlets import Bool, Integer, Unicode

from loophub.ports import free_port

from .base import Backend, Placement

CGROUP_ROOT = Path("/sys/fs/cgroup")
CFS_PERIOD = 100_000  # microseconds


class Cgroup:
    """A server's cgroup: memory cap and CPU quota, on cgroup v2 or v1 hierarchies."""

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


class LocalBackend(Backend):
    run_as_user = Bool(
        False,
        help="Run each server as the system user of the same name (like LocalProcessSpawner; "
             "the hub must run as root). Off: servers run as the hub's user.",
    ).tag(config=True)
    memory_enforcement = Unicode(
        "auto",
        help="How to cap memory (and CPU time): 'cgroup' (memory cap and CPU quota), 'rlimit' "
             "(RLIMIT_AS: virtual memory, so leave headroom), 'auto' (cgroup where writable, "
             "else rlimit) or 'none'. Allocated whole cores are pinned with CPU affinity either "
             "way.",
    ).tag(config=True)
    cgroup_parent = Unicode("loophub", help="cgroup folder for servers").tag(config=True)
    stop_grace = Integer(10, help="Seconds between SIGTERM and SIGKILL on stop").tag(config=True)

    pid = Integer(0)
    cgroup: Cgroup | None = None

    # -- launch -------------------------------------------------------------------

    async def launch(self, spawner, placement: Placement) -> tuple[str, int]:
        spawner.port = free_port(spawner.ip or "")
        cmd = [*spawner.cmd, *spawner.get_args()]
        env = {**spawner.get_env(), **placement.env()}
        cwd = spawner.server_home()
        user = pwd.getpwnam(spawner.user.name) if self.run_as_user else None
        if user:
            env.update(HOME=user.pw_dir, USER=user.pw_name, SHELL=user.pw_shell)
            cwd = cwd or user.pw_dir
        Path(cwd).mkdir(parents=True, exist_ok=True)
        self.cgroup = self._make_cgroup(spawner, placement)
        rlimit = placement.mem if self._use_rlimit() else None
        self.log.info("launching %s's server: %s (gpus=%s cores=%s mem=%d via %s)",
                      spawner.user.name, cmd[:3], placement.gpus, placement.cores,
                      placement.mem, "cgroup" if self.cgroup else "rlimit" if rlimit else "none")
        procs = self.cgroup.procs_files() if self.cgroup else []
        proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, start_new_session=True,
            preexec_fn=confine_preexec(pinnable_cores(placement.cores, self.log), procs, rlimit,
                                       user),
        )
        self.pid = proc.pid
        return spawner.ip or "127.0.0.1", spawner.port

    def _use_rlimit(self) -> bool:
        mode = self.memory_enforcement
        return mode == "rlimit" or (mode == "auto" and not self.cgroup)

    def _make_cgroup(self, spawner, placement: Placement) -> Cgroup | None:
        if self.memory_enforcement not in ("auto", "cgroup"):
            return None
        name = f"{spawner.user.name}-{spawner.name or 'default'}"
        cgroup = Cgroup.create(self.cgroup_parent, name)
        if cgroup is None:
            if self.memory_enforcement == "cgroup":
                raise RuntimeError("memory_enforcement='cgroup' but no writable cgroup here")
            return None
        cgroup.limit(placement.mem, placement.cpu)
        return cgroup

    # -- poll / stop ----------------------------------------------------------------

    async def poll(self, spawner) -> int | None:
        if not self.pid:
            return 0
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                return os.waitstatus_to_exitcode(status) or 1
            return None  # our child, still running
        except ChildProcessError:
            pass  # not our child (the hub restarted): ask the kernel
        try:
            os.kill(self.pid, 0)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return 1
        return None

    async def stop(self, spawner, now: bool = False) -> None:
        if not self.pid:
            return
        for sig, wait in ((signal.SIGTERM, 0 if now else self.stop_grace), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            for _ in range(int(wait * 10)):
                if await self.poll(spawner) is not None:
                    break
                await asyncio.sleep(0.1)
            if await self.poll(spawner) is not None:
                break
        self._remove_cgroup()

    def _remove_cgroup(self) -> None:
        if self.cgroup:
            self.cgroup.remove()
            self.cgroup = None

    # -- state --------------------------------------------------------------------

    def get_state(self) -> dict:
        if not self.pid:
            return {}
        return {"pid": self.pid, "cgroup": self.cgroup.to_state() if self.cgroup else None}

    def load_state(self, state: dict) -> None:
        self.pid = int(state.get("pid", 0))
        self.cgroup = Cgroup.from_state(state.get("cgroup") or {})

    def clear_state(self) -> None:
        self.pid = 0
        self.cgroup = None


def pinnable_cores(cores: tuple[int, ...] | None, log) -> tuple[int, ...] | None:
    """The allocated core ids, if this machine has them all. A declared pool larger than
    the machine (tests, demos) cannot be pinned; the cgroup CPU quota still applies."""
    if not cores:
        return None
    if set(cores) <= os.sched_getaffinity(0):
        return cores
    log.warning("cores %s are not all on this machine: not pinning", cores)
    return None


def confine_preexec(cores, cgroup_procs: list[str], mem_rlimit: int | None,
             user: pwd.struct_passwd | None):
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
