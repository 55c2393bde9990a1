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
import signal
import subprocess
from pathlib import Path

from traitlets import Bool, Integer, Unicode

from loophub.ports import free_port
from loophub.runtime import Cgroup, Confinement, Placement

from .base import Backend


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
        elif cwd:  # servers run as the hub's user: each its own HOME, or they would share
            env["HOME"] = cwd  # JupyterLab's workspaces and settings, ~/.local, ...
        Path(cwd).mkdir(parents=True, exist_ok=True)
        confinement = Confinement.build(
            placement, name=f"{spawner.user.name}-{spawner.name or 'default'}",
            mode=self.memory_enforcement, cgroup_parent=self.cgroup_parent, logger=self.log)
        self.cgroup = confinement.cgroup
        self.log.info("launching %s's server: %s (gpus=%s cores=%s mem=%d via %s)",
                      spawner.user.name, cmd[:3], placement.gpus, placement.cores,
                      placement.mem, confinement.method)
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, start_new_session=True,
                                preexec_fn=confinement.preexec(user))
        self.pid = proc.pid
        return spawner.ip or "127.0.0.1", spawner.port

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
