"""Sized kernels: a kernel gets its own allocation from loophub's fair scheduler.

A user on a small CPU server picks the "Python 3 (1 GPU)" kernel; its kernelspec names
the ``loophub-provisioner`` kernel provisioner (a ``jupyter_client.kernel_provisioners``
entry point) with the kernel's size in ``metadata.kernel_provisioner.config``::

    {"provisioner_name": "loophub-provisioner",
     "config": {"cpu": 2, "mem": "8G", "gpu": 1, "gpu_type": "a100"}}

``FairKernelProvisioner`` is jupyter_client's ``LocalProvisioner`` plus the scheduler:

- ``pre_launch`` submits ``kind="kernel"`` as the notebook's user (the server's token
  carries the user's rights), keyed ``kernel:USER/SERVER/KERNEL_ID`` so a restart finds
  its allocation again, and long-polls until it runs. While queued it reports the
  scheduler's explanation in the server log, as the kernel's ``reason`` (shown by
  ``GET /api/kernels/ID`` when the server uses pending kernels) and as a jupyter-server
  event (``EVENT_SCHEMA_ID`` on ``/api/events/subscribe``, for UIs). A refusal or a
  queue timeout fails the start with an HTTP error whose message JupyterLab shows in
  its "Error Starting Kernel" dialog.
- The kernel process runs with the placement's environment (``Placement.env()``:
  CUDA_VISIBLE_DEVICES, thread counts), pinned to the allocated cores, and in a cgroup of
  its own capping memory and CPU time at the allocation (LocalBackend's ``Cgroup``, where
  cgroups are writable) -- otherwise it would stay under the small server's caps.
- ``cleanup`` (kernel shut down, server stopping) releases the allocation; a restart
  keeps it. A watcher task releases it when the process died and nothing restarted it
  (jupyter-server drops dead kernels without calling ``cleanup``).

Idle release: why a per-kernel watcher, not jupyter-server's culler. The
MappingKernelManager culler (``cull_idle_timeout``) is one switch for every kernel of
the server and is off by default; turning it on to free GPUs would also cull users'
CPU kernels, and its per-kernelspec ``cull_idle_timeout`` metadata only works once the
global culler runs. The provisioner instead watches its own kernel: the server keeps
``execution_state`` and ``last_activity`` (from iopub traffic) on the kernel manager,
which is the provisioner's parent, so a GPU kernel that is not busy and has been quiet
for ``idle_timeout`` is shut down through the MappingKernelManager (so it leaves the
server's kernel list) and its allocation released. Busy kernels (a long training cell)
are never culled; a connected but quiet notebook is, since holding a GPU for an open
browser tab is what this is for. The same watcher shuts down a GPU kernel that no client
connected to within ``unclaimed_timeout`` of its start: its user gave up waiting in the
queue and closed the notebook, and the start (which jupyter-server cannot cancel then)
completed later.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from tornado import web
from traitlets import Float, Integer, Unicode, Union, default

from loophub.client import Client
from loophub.client.core import api_message
from loophub.client.scheduler import QueueWatcher, wait_until_running
from loophub.errors import InvalidInput, LoophubError, Unavailable
from loophub.pool import (
    GIB,
    PoolConfigError,
    check_cpu_gpu,
    check_gpu_type,
    load_pool,
    parse_mem,
)
from loophub.runtime import Confinement, Placement, placements
from loophub.runtime.confine import ConfinementError
from loophub.scheduler.keys import kernel_key
from loophub.scheduler.model import Resources
from loophub.scheduler.spec import RequestSpec

PROVISIONER_NAME = "loophub-provisioner"
EVENT_SCHEMA_ID = "https://events.loophub.dev/kernel_allocation/v1"
EVENT_SCHEMA = {
    "$id": EVENT_SCHEMA_ID,
    "version": "1",
    "title": "loophub kernel allocation",
    "description": "A sized kernel's progress through loophub's scheduler.",
    "type": "object",
    "required": ["kernel_id", "state", "message"],
    "properties": {
        "kernel_id": {"type": "string"},
        "kernel_name": {"type": "string"},
        "request_id": {"type": "string"},
        "state": {"enum": ["queued", "running", "refused", "timeout", "released"]},
        "message": {"type": "string"},
    },
}
ADMIN_ONLY = ("memory_enforcement", "cgroup_parent")  # not from (user-writable) kernelspecs


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        return default


# --- pure parts: sizes, keys, environment, idleness, kernelspecs ---------------------


@dataclass(frozen=True)
class KernelSize:
    """What one kernel asks the scheduler for."""

    cpu: float = 1.0
    mem: int = 4 * GIB
    gpu: int = 0
    gpu_type: str | None = None

    @classmethod
    def parse(cls, cpu: Any = 1.0, mem: Any = "4G", gpu: Any = 0,
              gpu_type: str | None = None) -> KernelSize:
        """Validate kernelspec/CLI values; errors name the field."""
        try:
            cpu_cores, gpus = check_cpu_gpu(cpu, gpu, "kernel")
            mem_bytes = parse_mem(mem, "kernel")
            gpu_type = check_gpu_type(gpu_type, "kernel")
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
        if mem_bytes <= 0:
            raise InvalidInput("kernel.mem: must be positive")
        return cls(cpu_cores, mem_bytes, gpus, gpu_type)

    def demand(self) -> dict[str, float]:
        return {"cpu": self.cpu, "mem": self.mem, "gpu": self.gpu}

    def label(self) -> str:
        """'1 GPU', '2 a100 GPU', '4 CPU'."""
        if self.gpu:
            return f"{self.gpu} {self.gpu_type} GPU" if self.gpu_type else f"{self.gpu} GPU"
        return f"{self.cpu:g} CPU"

    def summary(self) -> str:
        gpu = f", {self.label()}" if self.gpu else ""
        return f"{self.cpu:g} CPU, {self.mem / GIB:g} GiB{gpu}"

    def config(self) -> dict[str, Any]:
        """The provisioner config written into a kernelspec."""
        out: dict[str, Any] = {"cpu": self.cpu, "mem": self.mem, "gpu": self.gpu}
        if self.gpu_type:
            out["gpu_type"] = self.gpu_type
        return out


request_key = kernel_key  # one active request per kernel; a restart finds it again by it


def kernel_env(placement: Placement, request_id: str) -> dict[str, str]:
    """What the kernel process sees of its allocation (overrides the server's own)."""
    return {**placement.env(), "LOOPHUB_KERNEL_REQUEST": request_id}


def wrong_node(placement: Placement, server_node: str) -> str:
    """Why the kernel cannot run on this placement, or ''. Kernels run beside their server,
    and the scheduler has no node affinity (yet), so on a multi-node pool it may place a
    kernel elsewhere; running it here with another node's GPU indices would be wrong."""
    if not server_node or placement.node == server_node:
        return ""
    return (f"the scheduler placed this kernel on {placement.node}, but its server runs on "
            f"{server_node}; start a server with the resources instead (or ask an admin to "
            "give this kernel's node its own pool)")


def idle_seconds(state: str | None, last_activity: datetime | None, now: datetime) -> float:
    """How long a kernel has been idle; 0 while busy. A kernel nobody ever connected to
    stays 'starting' in jupyter-server, so that counts as idle (as in its own culler)."""
    if state == "busy" or last_activity is None:
        return 0.0
    return max(0.0, (now - last_activity).total_seconds())



def default_name(size: KernelSize) -> str:
    kind = f"gpu{size.gpu}" if size.gpu else f"cpu{size.cpu:g}".replace(".", "_")
    return f"python3-{kind}" + (f"-{size.gpu_type}" if size.gpu and size.gpu_type else "")


def kernelspec(size: KernelSize, *, display_name: str | None = None,
               python: str | None = None, extra_config: dict | None = None) -> dict:
    """kernel.json for an ipykernel kernel that runs on its own allocation."""
    return {
        "argv": [python or sys.executable, "-m", "ipykernel_launcher", "-f",
                 "{connection_file}"],
        "display_name": display_name or f"Python 3 ({size.label()})",
        "language": "python",
        "metadata": {
            "debugger": True,
            "kernel_provisioner": {"provisioner_name": PROVISIONER_NAME,
                                   "config": {**size.config(), **(extra_config or {})}},
        },
    }


def install_kernelspec(size: KernelSize, *, name: str | None = None,
                       display_name: str | None = None, prefix: str | None = None,
                       user: bool = False, python: str | None = None,
                       extra_config: dict | None = None) -> str:
    """Install the kernelspec (with ipykernel's logos) under PREFIX/share/jupyter/kernels
    (default sys.prefix: every server of this Python sees it) or the user's data dir."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager

    name = name or default_name(size)
    spec = kernelspec(size, display_name=display_name, python=python,
                      extra_config=extra_config)
    with tempfile.TemporaryDirectory() as tmp:
        staged = write_kernel_spec(Path(tmp) / name, overrides=spec)
        return KernelSpecManager().install_kernel_spec(
            staged, kernel_name=name, user=user,
            prefix=None if user else (prefix or sys.prefix))


# --- the provisioner ------------------------------------------------------------------


class KernelAllocationError(web.HTTPError):
    """The kernel got no allocation; jupyter-server sends the message to the frontend."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, log_message=message.replace("%", "%%"))
        self.message = message

    def __str__(self) -> str:
        return self.message


class FairKernelProvisioner(LocalProvisioner):
    """LocalProvisioner whose kernels wait for, run on and release a scheduler allocation.

    Every option below can be set per kernelspec (``metadata.kernel_provisioner.config``)
    or for all such kernels of a server (``c.FairKernelProvisioner.idle_timeout = 600``).
    """

    cpu = Float(1.0, help="CPU cores the kernel asks for.").tag(config=True)
    mem = Union([Integer(), Unicode()], default_value="4G",
                help="Memory the kernel asks for: bytes or e.g. '8G'.").tag(config=True)
    gpu = Integer(0, help="GPUs the kernel asks for.").tag(config=True)
    gpu_type = Unicode(None, allow_none=True,
                       help="GPU type, e.g. 'a100' or 'a100|h100'; None: any.").tag(config=True)
    queue_timeout = Float(
        help="Seconds the kernel start may wait in the queue before it fails with the "
             "scheduler's reason (default $LOOPHUB_KERNEL_QUEUE_TIMEOUT or 1800).",
    ).tag(config=True)
    idle_timeout = Float(
        help="Seconds a GPU kernel may stay idle (not busy, no messages) before it is shut "
             "down and its allocation released; 0 turns this off (default "
             "$LOOPHUB_KERNEL_IDLE_TIMEOUT or 3600). CPU-only kernels are never culled here.",
    ).tag(config=True)
    unclaimed_timeout = Float(
        600.0,
        help="Seconds after its start within which a GPU kernel must get a client (an open "
             "notebook); else it is shut down and released -- its user gave up waiting in the "
             "queue and closed the tab. 0 turns this off.",
    ).tag(config=True)
    watch_interval = Float(
        30.0, help="Seconds between the watcher's checks for idleness and a dead process."
    ).tag(config=True)
    dead_grace = Float(
        30.0, help="Seconds a dead kernel process may wait for jupyter's auto-restart before "
                   "its allocation is released.",
    ).tag(config=True)
    long_poll = Float(20.0, help="Seconds per long-poll while queued.").tag(config=True)
    api_patience = Float(
        120.0, help="Seconds to ride out an unreachable loophub API (it restarts) before the "
                    "kernel start fails.",
    ).tag(config=True)
    memory_enforcement = Unicode(
        "auto",
        help="'auto': run the kernel in a cgroup of its own capping memory and CPU time at "
             "the allocation where one can be made (else it stays under the server's caps); "
             "'cgroup': require that; 'none': do not. Server config only.",
    ).tag(config=True)
    cgroup_parent = Unicode("loophub", help="cgroup folder for kernels (as for servers). "
                                            "Server config only.").tag(config=True)

    request_id = Unicode("", help="The scheduler request holding this kernel's allocation.")

    @default("queue_timeout")
    def _default_queue_timeout(self) -> float:
        return _env_seconds("LOOPHUB_KERNEL_QUEUE_TIMEOUT", 1800.0)

    @default("idle_timeout")
    def _default_idle_timeout(self) -> float:
        return _env_seconds("LOOPHUB_KERNEL_IDLE_TIMEOUT", 3600.0)

    def __init__(self, **kwargs: Any) -> None:
        # jupyter_client passes the kernelspec's config as keyword arguments; kernelspecs
        # are user-writable, so what touches the host stays with server config.
        ignored = sorted(k for k in ADMIN_ONLY if kwargs.pop(k, None) is not None)
        super().__init__(**kwargs)
        if ignored:
            self.log.warning("kernelspec %s: ignoring %s (set them in server config)",
                             self.kernel_spec.display_name if self.kernel_spec else "?", ignored)
        self._client: Any = None
        self._watcher: asyncio.Task | None = None
        self._restarting = False
        self._dead_since: float | None = None
        self._confinement: Confinement | None = None
        self._last_note: tuple[str, str] = ("", "")
        self._shown_reason = ""
        self._claimed = False  # a client connected to the kernel at some point

    # -- the loophub API, off the event loop -------------------------------------------

    @property
    def size(self) -> KernelSize:
        return KernelSize.parse(self.cpu, self.mem, self.gpu, self.gpu_type)

    @property
    def client(self) -> Client:
        """The SDK client, as the notebook's user (the server's token), riding out API
        restarts for ``api_patience`` s."""
        if self._client is None:
            self._client = Client(patience=self.api_patience)
        return self._client

    async def _call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One SDK call off the event loop (the SDK is blocking)."""
        try:
            return await asyncio.to_thread(func, *args, **kwargs)
        except Unavailable as exc:
            raise KernelAllocationError(503, f"the loophub scheduler is unreachable ({exc}); "
                                             "try again later") from exc

    def _spec(self, size: KernelSize) -> RequestSpec:
        name = self.kernel_spec.display_name if self.kernel_spec else ""
        return RequestSpec(
            kind="kernel", owner=os.environ.get("JUPYTERHUB_USER", "") or "?",
            demand=Resources.from_dict(size.demand()), gpu_type=size.gpu_type,
            server=os.environ.get("JUPYTERHUB_SERVER_NAME", ""), kernel=self.kernel_id or "",
            labels={"kernelspec": name})

    # -- telling the user --------------------------------------------------------------

    def _note(self, state: str, message: str) -> None:
        """Server log, the kernel's ``reason`` and a jupyter-server event."""
        if (state, message) == self._last_note:
            return  # a long-poll that changed nothing the user sees
        self._last_note = (state, message)
        log = self.log.warning if state in ("refused", "timeout") else self.log.info
        log("kernel %s (%s): %s", self.kernel_id, state, message)
        km = self.parent
        if km is not None and hasattr(km, "reason") and state in ("queued", "refused", "timeout"):
            km.reason = self._shown_reason = message  # cleared once the kernel runs
        self._emit(state, message)

    def _emit(self, state: str, message: str) -> None:
        logger = getattr(self.parent, "event_logger", None)
        if logger is None:
            return
        try:
            if EVENT_SCHEMA_ID not in logger.schemas.schema_ids:
                logger.register_event_schema(EVENT_SCHEMA)
            logger.emit(schema_id=EVENT_SCHEMA_ID, data={
                "kernel_id": self.kernel_id or "", "state": state, "message": message,
                "kernel_name": getattr(self.parent, "kernel_name", "") or "",
                "request_id": self.request_id})
        except Exception as exc:  # events are a courtesy; never fail a kernel over them
            self.log.debug("could not emit kernel allocation event: %s", exc)

    # -- acquiring ---------------------------------------------------------------------

    async def _acquire(self) -> dict:
        """Submit (or find again, on restart) the request and wait until it runs."""
        try:
            size = self.size
        except InvalidInput as exc:
            raise KernelAllocationError(400, f"bad kernelspec {self._spec_name()}: "
                                             f"{exc.message}") from exc
        try:
            view = await self._call(self.client.scheduler.submit, self._spec(size))
        except KernelAllocationError:
            raise
        except LoophubError as exc:
            self._note("refused", api_message(exc))
            raise KernelAllocationError(getattr(exc, "status", 400),
                                        f"{size.summary()} kernel: {api_message(exc)}") from exc
        self.request_id = view["id"]
        try:
            return await self._wait_running(view, size)
        except BaseException:
            await asyncio.shield(self._release("kernel start did not complete"))
            raise

    async def _wait_running(self, view: dict, size: KernelSize) -> dict:
        def on_wait(queued: dict) -> None:
            self._note("queued", f"waiting for {size.summary()}: "
                                 f"{queued.get('message') or 'Queued'}")

        watcher = QueueWatcher.shared(self.client.url, self.client.token,
                                      long_poll=self.long_poll, patience=self.api_patience)

        async def poll(queued: dict, wait: float) -> dict:
            return await self._unless_abandoned(watcher.next_view(queued, wait))

        def give_up(why: str, last: dict) -> KernelAllocationError:
            if why == "timeout":
                text = (f"gave up after {self.queue_timeout / 60:.0f} min in the queue for "
                        f"{size.summary()} ({last.get('message') or 'Queued'}); try a smaller "
                        "kernel or later")
                self._note("timeout", text)
                return KernelAllocationError(503, text)
            text = f"kernel request was {last['state']}: {last.get('reason') or 'no reason'}"
            self._note("refused", text)
            return KernelAllocationError(503 if last["state"] == "unreachable" else 409, text)

        try:
            return await wait_until_running(view, poll=poll, on_wait=on_wait, give_up=give_up,
                                            queue_timeout=self.queue_timeout,
                                            long_poll=self.long_poll)
        finally:
            watcher.forget(view["id"])

    async def _unless_abandoned(self, call: Coroutine[Any, Any, dict]) -> dict:
        """Await CALL, unless the user shuts the starting kernel down meanwhile.

        With pending kernels, jupyter-server cancels its finish-start task for the kernel
        on shutdown but then waits for the start itself, so a queued kernel's shutdown
        would hang until the kernel got its turn. Failing the start ends it at once."""
        mapping = getattr(self.parent, "parent", None)
        tasks = getattr(mapping, "_pending_kernel_tasks", None)
        finish = tasks.get(self.kernel_id) if isinstance(tasks, dict) else None
        poll = asyncio.ensure_future(call)
        if isinstance(finish, asyncio.Future):
            await asyncio.wait({poll, finish}, return_when=asyncio.FIRST_COMPLETED)
            if finish.done() and not poll.done():  # it only ends before us when cancelled
                poll.cancel()
                raise KernelAllocationError(409, "kernel shut down while waiting in the queue")
        return await poll

    async def _release(self, reason: str) -> None:
        if not self.request_id:
            return
        request_id, self.request_id = self.request_id, ""
        try:
            # short patience: a stopping server is killed after a few seconds anyway
            await self._call(self.client.scheduler.release, request_id, reason, timeout=10,
                             patience=min(self.api_patience, 10))
            self._note("released", f"released {request_id}: {reason}")
        except Exception as exc:  # nothing else to do; the admin sees it in the queue
            self.log.warning("could not release kernel request %s (%s): %s", request_id,
                             reason, exc)

    # -- confinement -------------------------------------------------------------------

    def _confine(self, placement: Placement) -> Callable[[], None] | None:
        """A cgroup of the kernel's own, so it gets its allocation, not the server's cap
        (no RLIMIT_AS fallback: without a cgroup it stays under the server's caps)."""
        if self._confinement is None:
            try:
                self._confinement = Confinement.build(
                    placement, name=f"kernel-{self.kernel_id}", mode=self.memory_enforcement,
                    cgroup_parent=self.cgroup_parent, rlimit_fallback=False, logger=self.log)
            except ConfinementError as exc:
                raise KernelAllocationError(500, str(exc)) from exc
        return self._confinement.preexec()

    def _remove_cgroup(self) -> None:
        if self._confinement is not None:
            self._confinement.release()
            self._confinement = None

    # -- provisioner hooks -------------------------------------------------------------

    def _spec_name(self) -> str:
        return getattr(self.parent, "kernel_name", "") or "?"

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        try:
            view = await self._acquire()
        except BaseException:
            self._forget_failed_start()
            raise
        try:
            [placement] = placements(view["allocation"])  # a kernel is one unit
            if problem := wrong_node(placement, os.environ.get("LOOPHUB_ALLOC_NODE", "")):
                self._note("refused", problem)
                raise KernelAllocationError(409, problem)
            kwargs = await super().pre_launch(**kwargs)
            kwargs["env"].update(kernel_env(placement, self.request_id))
            preexec = self._confine(placement)
            if preexec is not None:
                kwargs["preexec_fn"] = preexec
        except BaseException:
            self._forget_failed_start()
            await asyncio.shield(self._release("kernel launch failed"))
            raise
        gpus = f", GPUs {list(placement.gpus)}" if placement.gpus else ""
        self._note("running", f"allocated {self.size.summary()} on {placement.node}{gpus}")
        self._restarting, self._dead_since = False, None
        return kwargs

    def _forget_failed_start(self) -> None:
        """Work around jupyter_client keeping a failed start in the MultiKernelManager's
        ``_pending_kernels``: the server's ``shutdown_all`` then fails on it (404) and the
        server never finishes stopping. Refusals and queue timeouts make failed starts
        common, so drop the entry once the start task is over."""
        pending = getattr(getattr(self.parent, "parent", None), "_pending_kernels", None)
        task = pending.get(self.kernel_id) if isinstance(pending, dict) else None
        if not isinstance(task, asyncio.Future):
            return
        kernel_id = self.kernel_id

        def forget(done: asyncio.Future) -> None:
            if pending.get(kernel_id) is done:
                pending.pop(kernel_id, None)
        task.add_done_callback(forget)

    async def post_launch(self, **kwargs: Any) -> None:
        await super().post_launch(**kwargs)
        if self._shown_reason and getattr(self.parent, "reason", "") == self._shown_reason:
            self.parent.reason = self._shown_reason = ""  # the wait is over
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch())

    async def cleanup(self, restart: bool = False) -> None:
        await super().cleanup(restart=restart)
        if restart:
            self._restarting = True  # keep the allocation for the restarted process
            return
        self._stop_watcher()
        await self._release("kernel shut down")
        self._remove_cgroup()

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info["request_id"] = self.request_id
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.request_id = provisioner_info.get("request_id", "")

    # -- the watcher: idle GPU kernels and dead processes -------------------------------

    def _stop_watcher(self) -> None:
        if self._watcher is not None and self._watcher is not asyncio.current_task():
            self._watcher.cancel()
        self._watcher = None

    async def _watch(self) -> None:
        started = time.monotonic()
        while self.request_id:
            await asyncio.sleep(self.watch_interval)
            if self._dead_too_long():
                await self._release("kernel process exited and was not restarted")
                self._remove_cgroup()
                return
            if reason := self._why_give_back(time.monotonic() - started):
                await self._shutdown(reason)
                return

    def _why_give_back(self, age: float) -> str:
        """Why a GPU kernel should give its allocation back now, or ''."""
        if not self.gpu:
            return ""
        self._claimed = self._claimed or self._connections() > 0
        if not self._claimed and 0 < self.unclaimed_timeout < age:
            return f"nobody connected within {self.unclaimed_timeout:g} s of its start"
        idle = self._idle_for()
        if 0 < self.idle_timeout < idle:
            return f"idle for {idle / 60:.0f} min (idle_timeout {self.idle_timeout:g} s)"
        return ""

    def _connections(self) -> int:
        """Open websockets to the kernel (from the server's kernel map)."""
        try:
            return int(self.parent.parent.kernel_model(self.kernel_id).get("connections", 0))
        except Exception:  # not under jupyter-server: nothing to go by, count it as used
            return 1

    def _dead_too_long(self) -> bool:
        proc = self.process
        if proc is None or self._restarting or proc.poll() is None:
            self._dead_since = None
            return False
        self._dead_since = self._dead_since or time.monotonic()
        return time.monotonic() - self._dead_since >= self.dead_grace

    def _idle_for(self) -> float:
        km = self.parent
        return idle_seconds(getattr(km, "execution_state", None),
                            getattr(km, "last_activity", None), datetime.now(UTC))

    async def _shutdown(self, reason: str) -> None:
        """Shut the kernel down through the server's kernel map so it leaves the list."""
        self._note("released", f"{reason}: shutting the kernel down to free "
                               f"{self.size.label()}")
        km = self.parent
        mapping = getattr(km, "parent", None)
        self._watcher = None  # detach: the cleanup() this shutdown runs must not cancel it
        try:
            if mapping is not None and hasattr(mapping, "shutdown_kernel") \
                    and self.kernel_id in mapping:
                await _maybe_await(mapping.shutdown_kernel(self.kernel_id))
            else:
                await _maybe_await(km.shutdown_kernel())
        finally:
            await self._release(reason)


async def _maybe_await(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) or asyncio.isfuture(value) else value


# --- the CLI: `loophub kernels install|list` ------------------------------------------

STANDARD = (KernelSize(cpu=2, mem=8 * GIB, gpu=1), KernelSize(cpu=4, mem=8 * GIB))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``loophub kernels`` (called by loophub.cli through COMMAND_MODULES)."""
    kernels = subparsers.add_parser("kernels", help="kernels with their own allocation")
    sub = kernels.add_subparsers(dest="action", required=True)
    install = sub.add_parser(
        "install", help="install a sized kernelspec, e.g. 'Python 3 (1 GPU)'; without "
                        "--gpu/--cpu/--mem: the standard 1-GPU and 4-CPU kernels")
    install.add_argument("--gpu", type=int, help="GPUs (default 0)")
    install.add_argument("--cpu", type=float, help="CPU cores (default 1)")
    install.add_argument("--mem", help="memory, e.g. 8G (default 4G)")
    install.add_argument("--gpu-type", help="GPU type, e.g. a100")
    install.add_argument("--name", help="kernelspec name (default e.g. python3-gpu1)")
    install.add_argument("--display-name", help="default e.g. 'Python 3 (1 GPU)'")
    where = install.add_mutually_exclusive_group()
    where.add_argument("--prefix", help="install under PREFIX/share/jupyter/kernels "
                                        "(default: this Python's prefix)")
    where.add_argument("--user", action="store_true", help="install for the current user")
    install.add_argument("--idle-timeout", type=float,
                         help="seconds before an idle GPU kernel is shut down")
    install.add_argument("--queue-timeout", type=float,
                         help="seconds a kernel start may wait in the queue")
    install.set_defaults(func=cmd_install)
    listing = sub.add_parser("list", help="list installed loophub kernelspecs")
    listing.set_defaults(func=cmd_list)


def _sizes(args: argparse.Namespace) -> list[KernelSize]:
    if args.gpu is None and args.cpu is None and args.mem is None:
        if args.name or args.display_name:
            raise InvalidInput("--name/--display-name need a size (--gpu, --cpu or --mem)")
        return list(STANDARD)
    return [KernelSize.parse(args.cpu if args.cpu is not None else 1.0, args.mem or "4G",
                             args.gpu or 0, args.gpu_type)]


def cmd_install(args: argparse.Namespace) -> int:
    extra = {k: v for k, v in (("idle_timeout", args.idle_timeout),
                               ("queue_timeout", args.queue_timeout)) if v is not None}
    for size in _sizes(args):
        _warn_if_unplaceable(size)
        path = install_kernelspec(size, name=args.name, display_name=args.display_name,
                                  prefix=args.prefix, user=args.user, extra_config=extra)
        print(f"installed {Path(path).name!r} ({size.summary()}) in {path}")
    return 0


def _warn_if_unplaceable(size: KernelSize) -> None:
    """Warn (on stderr; the kernelspec is still installed, the pool may grow) when no
    node of the pool has SIZE's GPUs: such a kernel would wait in the queue forever."""
    if not size.gpu:
        return
    try:
        nodes = load_pool()
    except PoolConfigError:
        return  # `loophub doctor` reports a bad pool
    fitting = [n.gpu for n in nodes if size.gpu_type in (None, n.gpu_type)]
    most = max(fitting, default=0)
    if most < size.gpu:
        kind = f"{size.gpu_type} " if size.gpu_type else ""
        print(f"warning: this kernel asks for {size.gpu} {kind}GPUs but no node of the pool "
              f"has more than {most} {kind}GPU{'s' if most != 1 else ''} (pool: "
              f"{'LOOPHUB_POOL' if os.environ.get('LOOPHUB_POOL') else 'this machine'}); "
              "its starts would wait in the queue until the pool grows: declare the pool "
              "in LOOPHUB_POOL or install a smaller size", file=sys.stderr)


def cmd_list(args: argparse.Namespace) -> int:
    """Reads kernel.json itself: KernelSpecManager hides specs whose provisioner is missing,
    which is exactly what an admin needs to see."""
    from jupyter_client.kernelspec import KernelSpecManager

    for name, folder in sorted(KernelSpecManager().find_kernel_specs().items()):
        spec = json.loads((Path(folder) / "kernel.json").read_text())
        prov = spec.get("metadata", {}).get("kernel_provisioner", {})
        if prov.get("provisioner_name") == PROVISIONER_NAME:
            print(f"{name}\t{spec['display_name']}\t{json.dumps(prov.get('config'))}\t{folder}")
    return 0
