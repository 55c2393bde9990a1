"""LocalBackend: one single-user server process per allocation on this machine.

The allocation is enforced, not just advertised: CUDA_VISIBLE_DEVICES names the
allocated GPUs, the process is pinned to the allocated cores, and memory is capped
by a cgroup (v2, or v1's memory controller) where one can be created, else by
RLIMIT_AS. Processes run in their own session so a hub restart leaves them running;
the hub finds them again through the pid saved in its database.
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

from jupyterhub.utils import random_port
from traitlets import Bool, Integer, Unicode

from .base import Backend, Placement

CGROUP_V2 = Path("/sys/fs/cgroup")
CGROUP_V1_MEMORY = Path("/sys/fs/cgroup/memory")


def cgroup_root(parent: str) -> tuple[Path, str] | None:
    """A writable cgroup folder for loophub and its kind, or None."""
    candidates = [(CGROUP_V2 / parent, "v2")] if (CGROUP_V2 / "cgroup.controllers").exists() \
        else [(CGROUP_V1_MEMORY / parent, "v1")]
    for path, kind in candidates:
        try:
            path.mkdir(exist_ok=True)
            if kind == "v2":
                # children can only limit memory if the parent delegates the controller
                (path / "cgroup.subtree_control").write_text("+memory +cpuset")
            return path, kind
        except OSError:
            continue
    return None


class LocalBackend(Backend):
    run_as_user = Bool(
        False,
        help="Run each server as the system user of the same name (like LocalProcessSpawner; "
             "the hub must run as root). Off: servers run as the hub's user.",
    ).tag(config=True)
    memory_enforcement = Unicode(
        "auto",
        help="How to cap memory: 'cgroup', 'rlimit' (RLIMIT_AS: virtual memory, so leave "
             "headroom), 'auto' (cgroup where writable, else rlimit) or 'none'.",
    ).tag(config=True)
    cgroup_parent = Unicode("loophub", help="cgroup folder for servers").tag(config=True)
    stop_grace = Integer(10, help="Seconds between SIGTERM and SIGKILL on stop").tag(config=True)

    pid = Integer(0)
    cgroup = Unicode("")

    # -- launch -------------------------------------------------------------------

    async def launch(self, spawner, placement: Placement) -> tuple[str, int]:
        spawner.port = random_port()
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
        proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, start_new_session=True,
            preexec_fn=_confine(placement.cores, self.cgroup, rlimit, user),
        )
        self.pid = proc.pid
        return spawner.ip or "127.0.0.1", spawner.port

    def _use_rlimit(self) -> bool:
        mode = self.memory_enforcement
        return mode == "rlimit" or (mode == "auto" and not self.cgroup)

    def _make_cgroup(self, spawner, placement: Placement) -> str:
        if self.memory_enforcement not in ("auto", "cgroup"):
            return ""
        root = cgroup_root(self.cgroup_parent)
        if root is None:
            if self.memory_enforcement == "cgroup":
                raise RuntimeError("memory_enforcement='cgroup' but no writable cgroup")
            return ""
        parent, kind = root
        name = f"{spawner.user.name}-{spawner.name or 'default'}"
        path = parent / name
        path.mkdir(exist_ok=True)
        limit_file = "memory.max" if kind == "v2" else "memory.limit_in_bytes"
        (path / limit_file).write_text(str(placement.mem))
        if kind == "v1":
            swap = path / "memory.memsw.limit_in_bytes"
            if swap.exists():
                try:
                    swap.write_text(str(placement.mem))
                except OSError:
                    pass  # swap accounting off: the limit still bounds resident memory
        return str(path)

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
            try:
                os.rmdir(self.cgroup)
            except OSError as exc:
                self.log.warning("could not remove cgroup %s: %s", self.cgroup, exc)
            self.cgroup = ""

    # -- state --------------------------------------------------------------------

    def get_state(self) -> dict:
        return {"pid": self.pid, "cgroup": self.cgroup} if self.pid else {}

    def load_state(self, state: dict) -> None:
        self.pid = int(state.get("pid", 0))
        self.cgroup = state.get("cgroup", "")

    def clear_state(self) -> None:
        self.pid = 0
        self.cgroup = ""


def _confine(cores, cgroup: str, mem_rlimit: int | None, user: pwd.struct_passwd | None):
    """Runs in the child between fork and exec: join the cgroup, pin, cap, drop privileges."""
    def preexec() -> None:
        if cgroup:
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
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
