"""The runner: the I/O shell that drives Dask for training jobs.

When the fair scheduler starts a job's request (a gang of units), the runner starts one
Dask worker per unit, confined to it exactly as notebook servers are (loophub.runtime:
CUDA_VISIBLE_DEVICES, cores, memory), with the job owner's API token; it asks rank 0's
host for a free port and dispatches one DDP rank to each worker (loophub.training.rank),
then watches: every rank done -> the job succeeds; a rank raises -> every rank is stopped
and the job fails with the error; a worker process dies -> the job retries from its last
checkpoint on the same allocation, up to ``max_retries``; the scheduler preempts it ->
the ranks checkpoint and stop within ``preempt_grace`` and the job waits in the queue
again; its owner cancels it -> the ranks stop and it ends. Nothing is left running.

Local by default (a Dask scheduler in this process, workers as local processes); an
external scheduler address (any Dask cluster) by configuration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from loophub.runtime import Confinement, Placement, placements
from loophub.training.service import TrainingService

log = logging.getLogger("loophub.training")
TokenFor = Callable[[str, str], Awaitable[str]]  # (owner, job id) -> an API token
Release = Callable[[str, str], Awaitable[None]]  # (job id, reason) -> end its request
Revoke = Callable[[str], Awaitable[None]]        # (job id) -> its workers' token revoked


@dataclass
class WorkerHandle:
    """One started worker: ``poll()`` is None while it lives, else how it ended."""

    name: str
    rank: int
    poll: Callable[[], int | None]
    log_path: Path | None = None
    proc: subprocess.Popen | None = None     # a local worker's process
    confinement: Confinement | None = None   # what holds a local worker to its unit
    job: Any = None                          # a batch system's job (Slurm)


class Launcher(Protocol):
    async def launch(self, name: str, rank: int, placement: Placement, env: dict[str, str],
                     scheduler: str) -> WorkerHandle: ...

    async def stop(self, handle: WorkerHandle, grace: float) -> None: ...


class LocalLauncher:
    """Dask workers as local processes, one per unit, confined like notebook servers
    (cgroup where writable; no RLIMIT_AS fallback: it breaks torch's address space)."""

    def __init__(self, logs: Path, *, memory_enforcement: str = "auto",
                 cgroup_parent: str = "loophub", python: str = sys.executable) -> None:
        self.logs, self.python = Path(logs), python
        self.memory_enforcement, self.cgroup_parent = memory_enforcement, cgroup_parent

    async def launch(self, name: str, rank: int, placement: Placement, env: dict[str, str],
                     scheduler: str) -> WorkerHandle:
        confinement = Confinement.build(placement, name=name, mode=self.memory_enforcement,
                                        cgroup_parent=self.cgroup_parent,
                                        rlimit_fallback=False, logger=log)
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{name}.log"
        cmd = [self.python, "-m", "distributed.cli.dask_worker", scheduler, "--nthreads", "1",
               "--no-nanny", "--name", name, "--memory-limit", "0", "--death-timeout", "60",
               "--no-dashboard"]
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=confinement.preexec())
        return WorkerHandle(name, rank, proc.poll, log_path, proc=proc, confinement=confinement)

    async def stop(self, handle: WorkerHandle, grace: float = 10.0) -> None:
        assert handle.proc is not None
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if handle.proc.poll() is not None:
                break
            try:
                os.killpg(handle.proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while handle.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        if handle.confinement is not None:
            handle.confinement.release()


@dataclass
class Attempt:
    """One start of a job on its allocation: its workers and rank futures."""

    job_id: str
    allocation: dict
    workers: list[WorkerHandle] = field(default_factory=list)
    futures: list[Any] = field(default_factory=list)
    task: asyncio.Task | None = None
    stop: str | None = None  # why it is being stopped: preempted, cancelled, ...
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    lost_reason: str = ""
    # started again (after a preemption) before this attempt finished stopping
    next_allocation: dict | None = None


class TrainingRunner:
    def __init__(self, service: TrainingService, *, api_url: str, token_for: TokenFor,
                 release: Release, launcher: Launcher, revoke: Revoke | None = None,
                 launchers: dict[str, Launcher] | None = None,
                 backend_of: Callable[[str], str] | None = None,
                 scheduler_address: str = "", scheduler_host: str = "127.0.0.1",
                 preempt_grace: float = 60.0, init_timeout: float = 120.0,
                 start_timeout: float = 120.0) -> None:
        self.service = service
        self.api_url, self.token_for, self.release = api_url, token_for, release
        self.revoke = revoke
        self.launcher = launcher  # local processes, and every backend without its own
        self.launchers = dict(launchers or {})  # backend ("slurm") -> its launcher
        self.backend_of = backend_of or (lambda node: "local")
        self.scheduler_address, self.scheduler_host = scheduler_address, scheduler_host
        self.preempt_grace, self.init_timeout = preempt_grace, init_timeout
        self.start_timeout = start_timeout
        self.attempts: dict[str, Attempt] = {}
        self._scheduler: Any = None
        self._client: Any = None

    # -- the Dask cluster ----------------------------------------------------------------

    async def client(self):
        """The Dask client (starting the platform's own scheduler on first use)."""
        if self._client is None:
            from distributed import Client, Scheduler

            address = self.scheduler_address
            if not address:
                self._scheduler = await Scheduler(host=self.scheduler_host, port=0,
                                                  dashboard=False,
                                                  dashboard_address=f"{self.scheduler_host}:0")
                address = self._scheduler.address
            self._client = await Client(address, asynchronous=True)
        return self._client

    @property
    def dask_address(self) -> str:
        return self._client.scheduler.address if self._client else self.scheduler_address

    async def close(self) -> None:
        for attempt in list(self.attempts.values()):
            await self.stop(attempt.job_id, "the platform is stopping", state=None)
        if self._client is not None:
            await self._client.close()
        if self._scheduler is not None:
            await self._scheduler.close()

    # -- decisions the shell delivers ------------------------------------------------------

    async def start(self, job_id: str, allocation: dict) -> None:
        """The scheduler allocated the job's gang: run an attempt on it."""
        current = self.attempts.get(job_id)
        if current is not None:
            if current.stop == "preempted":  # it starts once the preempted ranks stopped
                current.next_allocation = allocation
            return  # already running on this allocation
        attempt = Attempt(job_id, allocation)
        self.attempts[job_id] = attempt
        attempt.task = asyncio.ensure_future(self._run(attempt))

    async def preempt(self, job_id: str, reason: str) -> None:
        """Checkpoint and stop within the grace period; the job waits in the queue again."""
        attempt = self.attempts.get(job_id)
        if attempt is None:
            await asyncio.to_thread(self._requeue, job_id, reason)
            return
        attempt.stop = "preempted"
        self.service.request_stop(job_id, "preempted")
        await self._finish(attempt, grace=self.preempt_grace)

    async def stop(self, job_id: str, reason: str, *, state: str | None = "cancelled") -> None:
        """Stop the job's ranks (cancelled by its owner, released by an admin)."""
        attempt = self.attempts.get(job_id)
        if attempt is not None:
            attempt.stop = "cancelled"
            self.service.request_stop(job_id, "cancelled")
            await self._finish(attempt, grace=15.0)
        if state is not None:
            await asyncio.to_thread(self.service.fail, job_id, reason, state=state)

    async def _finish(self, attempt: Attempt, grace: float) -> None:
        if attempt.task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(attempt.task), grace)
        except TimeoutError:
            log.warning("job %s: ranks did not stop within %.0f s; stopping their workers",
                        attempt.job_id, grace)
            attempt.lost.set()
            await self._stop_workers(attempt)
            try:
                await asyncio.wait_for(attempt.task, 30)
            except (TimeoutError, asyncio.CancelledError):
                attempt.task.cancel()

    def _requeue(self, job_id: str, reason: str) -> None:
        state, run, _ = self.service.state_of(job_id)
        if state in ("starting", "running", "retrying"):
            self.service.move(job_id, "preempted", reason, preemptions=run.preemptions + 1)
        if self.service.state_of(job_id)[0] == "preempted":
            self.service.move(job_id, "queued", "waiting for resources again")

    # -- one attempt -------------------------------------------------------------------------

    async def _run(self, attempt: Attempt) -> None:
        job_id = attempt.job_id
        try:
            outcome = await self._attempt_until_done(attempt)
        except Exception as exc:  # the runner's own failure must not leave the job running
            log.exception("job %s: the runner failed", job_id)
            outcome = ("failed", f"the training runner failed: {exc}")
        finally:
            await self._stop_workers(attempt)
            self.attempts.pop(job_id, None)
            self.service.clear_stop(job_id)
        await self._conclude(job_id, *outcome)
        if self.revoke is not None and outcome[0] != "preempted":
            await self.revoke(job_id)
        if attempt.next_allocation is not None:
            await self.start(job_id, attempt.next_allocation)

    async def _attempt_until_done(self, attempt: Attempt) -> tuple[str, Any]:
        job_id = attempt.job_id
        while True:
            state, run, params = await asyncio.to_thread(self.service.state_of, job_id)
            if state in ("succeeded", "failed", "cancelled", "interrupted"):
                return ("ended", state)
            await asyncio.to_thread(self.service.move, job_id, "starting",
                                    f"starting attempt {run.attempt + 1}",
                                    attempt=run.attempt + 1)
            attempt.lost = asyncio.Event()
            try:
                outcome = await self._one_attempt(attempt, params, run.attempt + 1)
            finally:
                await self._stop_workers(attempt)
            if outcome[0] != "lost" or attempt.stop:
                return outcome if not attempt.stop else (attempt.stop, outcome[1])
            retries = run.retries + 1
            if retries > int(params.get("max_retries", 2)):
                return ("failed", f"lost a worker {retries} times; the last: {outcome[1]}")
            await asyncio.to_thread(self.service.move, job_id, "retrying",
                                    f"{outcome[1]}; retry {retries} of "
                                    f"{params.get('max_retries', 2)} from the last checkpoint",
                                    retries=retries)
            await asyncio.to_thread(self.service.log_line, job_id,
                                    f"retrying from the last checkpoint: {outcome[1]}")

    async def _one_attempt(self, attempt: Attempt, params: dict, number: int
                           ) -> tuple[str, Any]:
        job_id = attempt.job_id
        usable = None
        if params.get("recipe"):
            from loophub.training.recipes import recipe

            usable = recipe(params["recipe"], internal=True).usable
        folder = await asyncio.to_thread(self.service.materialize, job_id, usable)
        client = await self.client()
        owner = (await asyncio.to_thread(self.service.owner_of, job_id)).name
        token = await self.token_for(owner, job_id)
        units = placements(attempt.allocation)
        names = [f"train-{job_id[:12]}-{number}-{rank}" for rank in range(len(units))]
        for rank, (name, unit) in enumerate(zip(names, units, strict=True)):
            env = self._worker_env(unit, token, job_id)
            launcher = self.launchers.get(self.backend_of(unit.node), self.launcher)
            attempt.workers.append(await launcher.launch(
                name, rank, unit, env, client.scheduler.address))
        watcher = asyncio.ensure_future(self._watch_workers(attempt))
        try:
            addresses = await self._registered(client, names, attempt)
            if addresses is None:
                return ("lost", "a worker did not come up")
            port = await client.run(_free_port, workers=[addresses[0]])
            master = addresses[0].split("://")[-1].rsplit(":", 1)[0]
            tasks = [self._task(job_id, params, rank, len(units), master,
                                port[addresses[0]], folder, number)
                     for rank in range(len(units))]
            from loophub.training.rank import run_rank

            attempt.futures = [client.submit(run_rank, task, workers=[address],
                                             allow_other_workers=False, pure=False,
                                             key=f"{names[task['rank']]}-rank")
                               for task, address in zip(tasks, addresses, strict=True)]
            await asyncio.to_thread(self.service.move, job_id, "running",
                                    f"{len(units)} rank(s) on " + ", ".join(
                                        sorted({u.node for u in units})))
            return await self._outcome(attempt)
        finally:
            watcher.cancel()

    def _task(self, job_id: str, params: dict, rank: int, world: int, master: str, port: int,
              folder: Path, number: int) -> dict:
        return {"job_id": job_id, "rank": rank, "world_size": world, "master_addr": master,
                "master_port": port, "folder": str(folder), "params": params.get("params", {}),
                "recipe": params.get("recipe"), "function": params.get("function"),
                "checkpoint_every": params.get("checkpoint_every"),
                "init_timeout": self.init_timeout, "attempt": number}

    def _worker_env(self, unit: Placement, token: str, job_id: str) -> dict[str, str]:
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env.update(unit.env())
        env.update(LOOPHUB_API_URL=self.api_url, LOOPHUB_TOKEN=token,
                   LOOPHUB_TRAINING_JOB=job_id, PYTHONUNBUFFERED="1",
                   DASK_DISTRIBUTED__WORKER__DAEMON="False",
                   DASK_DISTRIBUTED__LOGGING__DISTRIBUTED="warning")
        return env

    async def _registered(self, client, names: list[str], attempt: Attempt
                          ) -> list[str] | None:
        """The workers' addresses in rank order, once all registered (None if one died)."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline and not attempt.lost.is_set() and not attempt.stop:
            info = await client.scheduler.identity()
            by_name = {w["name"]: address for address, w in info["workers"].items()}
            if all(n in by_name for n in names):
                return [by_name[n] for n in names]
            await asyncio.sleep(0.2)
        return None

    async def _watch_workers(self, attempt: Attempt) -> None:
        """A worker process that exits while the attempt runs is a lost worker."""
        while True:
            for handle in attempt.workers:
                code = handle.poll()
                if code is not None:
                    attempt.lost_reason = (f"rank {handle.rank}'s worker exited with "
                                           f"{code}" + _tail(handle.log_path))
                    log.warning("job %s: %s", attempt.job_id, attempt.lost_reason)
                    attempt.lost.set()
                    return
            await asyncio.sleep(0.5)

    async def _outcome(self, attempt: Attempt) -> tuple[str, Any]:
        """Watch every rank (and the workers' processes) until all are done, one fails,
        or a worker is lost; what happened. Polled: Dask's own waits hide a task whose
        only allowed worker died."""
        while True:
            if attempt.lost.is_set():
                return ("lost", attempt.lost_reason or "a worker was lost")
            statuses = [f.status for f in attempt.futures]
            if "error" in statuses:
                # a rank whose peer's process died fails too (gloo: connection reset):
                # the loss, not the rank's error, is what happened
                if dead := await self._dead_worker(attempt):
                    return ("lost", dead)
                failed = attempt.futures[statuses.index("error")]
                error = await failed.exception()
                trace = "".join(traceback.format_tb(await failed.traceback()))
                return ("error", (f"{type(error).__name__}: {error}", trace))
            if any(s in ("cancelled", "lost") for s in statuses):
                return ("lost", "a rank's task was lost")
            if all(s == "finished" for s in statuses):
                break
            try:
                await asyncio.wait_for(attempt.lost.wait(), 0.5)
            except TimeoutError:
                pass
        results = [await f.result() for f in attempt.futures]
        stopped = [r for r in results if r["status"] == "stopped"]
        if stopped:
            return (stopped[0]["reason"], f"stopped at step {stopped[0].get('step')}")
        return ("done", next(r for r in results if r["rank"] == 0))

    async def _dead_worker(self, attempt: Attempt, wait: float = 3.0) -> str:
        """Why a worker of the attempt is gone ("" if all still run, after WAIT s)."""
        deadline = time.monotonic() + wait
        while True:
            for handle in attempt.workers:
                if (code := handle.poll()) is not None:
                    return f"rank {handle.rank}'s worker exited with {code}"
            if time.monotonic() >= deadline:
                return ""
            await asyncio.sleep(0.2)

    async def _stop_workers(self, attempt: Attempt) -> None:
        pending = [f for f in attempt.futures if f.status == "pending"]
        if pending and self._client is not None:
            await self._client.cancel(pending)
        attempt.futures = []
        workers, attempt.workers = attempt.workers, []
        await asyncio.gather(*(self._launcher_of(w).stop(w, grace=5.0) for w in workers))

    def _launcher_of(self, handle: WorkerHandle) -> Launcher:
        if handle.job is not None:
            return next(lau for lau in self.launchers.values() if lau.owns(handle))
        return self.launcher

    async def _conclude(self, job_id: str, what: str, detail: Any) -> None:
        """Record the attempt's end and give the allocation back where the job ended."""
        service = self.service
        if what == "done":
            await asyncio.to_thread(service.succeed, job_id, detail.get("final") or {})
            await self.release(job_id, "training finished")
        elif what == "error":
            message, trace = detail
            await asyncio.to_thread(service.log_line, job_id, f"failed: {message}\n{trace}")
            await asyncio.to_thread(service.fail, job_id, message)
            await self.release(job_id, "training failed")
        elif what == "failed":
            await asyncio.to_thread(service.fail, job_id, str(detail))
            await self.release(job_id, "training failed")
        elif what == "preempted":
            await asyncio.to_thread(self._requeue, job_id, f"preempted: {detail}")
        elif what == "cancelled":
            await asyncio.to_thread(service.fail, job_id, "cancelled", state="cancelled")
            await self.release(job_id, "training cancelled")
        log.info("job %s: %s (%s)", job_id, what, str(detail)[:200])

    # -- after a restart -----------------------------------------------------------------------

    async def recover(self, running: dict[str, dict]) -> None:
        """At start-up: a job whose request runs (RUNNING: job id -> its allocation) lost
        its workers with the previous process; start it again from its checkpoint (not
        counted as a retry: the platform stopped, not the job)."""
        for job_id, state, _ in await asyncio.to_thread(self.service.active):
            if job_id in running:
                if state in ("starting", "running", "retrying"):
                    await asyncio.to_thread(self.service.move, job_id, "retrying",
                                            "the platform restarted; resuming from the last "
                                            "checkpoint")
                await self.start(job_id, running[job_id])
            elif state in ("starting", "running", "retrying"):
                await asyncio.to_thread(self._requeue, job_id, "the platform restarted")


def _free_port() -> int:
    from loophub.training.ddp import free_port

    return free_port()


def _tail(path: Path | None, lines: int = 5) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    return ("; its log ends: " + " | ".join(text)) if text else ""

