"""One shared squeue poller per hub process, for every Slurm server (SlurmBackend).

batchspawner runs ``squeue -j ID`` per spawner per poll, which overloads slurmctld with
many servers (jupyterhub#4646), and takes one failed squeue for a dead server
(batchspawner #171, #315, #329). Here one call asks about all watched jobs, backends read
the cached records, and a failing squeue keeps each job's last known state for a grace
period. Cancellations slurmctld did not take are retried on every round (#253, #314).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from traitlets import Any as AnyTrait
from traitlets import Float, List, Unicode
from traitlets.config import SingletonConfigurable

# -- running commands -------------------------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


async def run_command(argv: list[str], *, input: str | None = None,
                      env: dict[str, str] | None = None, cwd: str | None = None,
                      timeout: float = 30) -> CommandResult:
    """Run ARGV without a shell; a timeout or a missing binary is a failed result, not an
    exception, so callers treat every Slurm failure alike."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, cwd=cwd or None)
    except OSError as exc:
        return CommandResult(127, "", f"{argv[0]}: {exc}")
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(input.encode() if input is not None else None), timeout)
    except (TimeoutError, asyncio.CancelledError) as exc:
        proc.kill()
        await proc.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        return CommandResult(-1, "", f"{argv[0]} timed out after {timeout:g} s")
    return CommandResult(proc.returncode or 0, out.decode(errors="replace"),
                         err.decode(errors="replace"))


# -- the shared squeue poller -------------------------------------------------------------

ALIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
                   "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
                   "RESV_DEL_HOLD", "UNKNOWN"})  # UNKNOWN: not heard of since watched
SQUEUE_FORMAT = "%i %T %B %r"  # %r (pending reason) last: it may hold spaces
GONE_MARKERS = ("Invalid job id specified",)  # squeue/scancel: the job is purged
DONE_MARKERS = (*GONE_MARKERS, "already completing or completed")
REFUSED_MARKERS = ("Access/permission denied",)  # retrying scancel would not help


@dataclass
class JobRecord:
    """What the poller last learnt about one job."""

    job_id: str
    state: str = "UNKNOWN"  # a squeue %T, or UNKNOWN, GONE (not listed), LOST (grace over)
    host: str = ""
    reason: str = ""  # why a pending job waits (squeue %r), e.g. 'Resources'
    confirmed: float = field(default_factory=time.monotonic)  # squeue last answered for it
    queried: bool = False  # a query ran since the job was watched

    @property
    def alive(self) -> bool:
        return self.state in ALIVE

    @property
    def running(self) -> bool:
        return self.state == "RUNNING" and bool(self.host)

    def exit_status(self) -> int | None:
        """Spawner.poll's answer: None while the job may still run."""
        if self.alive:
            return None
        return 0 if self.state == "COMPLETED" else 1


class SqueuePoller(SingletonConfigurable):
    """One squeue for every Slurm server of this hub process, every few seconds.

    Backends watch their job ids and read the cached records; nothing else calls squeue.
    """

    interval = Float(
        10.0, help="Seconds between squeue calls while no server is starting.",
    ).tag(config=True)
    fast_interval = Float(
        1.0, help="Seconds between squeue calls while a server is starting (and the least "
                  "time between any two calls).",
    ).tag(config=True)
    grace = Float(
        300.0,
        help="""Seconds a job keeps its last known state while squeue fails (slurmctld
        restarting or overloaded, timeouts). After that, a job squeue has not confirmed is
        treated as gone and its server as stopped.""",
    ).tag(config=True)
    timeout = Float(30.0, help="Seconds one squeue or scancel call may take.").tag(config=True)
    squeue_cmd = List(Unicode(), ["squeue"], help="squeue and any leading arguments.").tag(
        config=True)
    runner = AnyTrait(run_command, help="Runs a command (tests pass a fake one).")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.jobs: dict[str, JobRecord] = {}
        self.cancels: dict[str, list[str]] = {}  # job id -> scancel argv still to succeed
        self.calls = 0  # squeue calls made (tests and logs)
        self._fast: set[str] = set()
        self._waiters: list[asyncio.Future] = []
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_query = 0.0
        self.failing_since: float | None = None  # squeue has failed since

    # -- what backends call ------------------------------------------------------------

    def watch(self, job_id: str, *, fast: bool = False) -> JobRecord:
        record = self.jobs.setdefault(job_id, JobRecord(job_id))
        if fast:
            self._fast.add(job_id)
        else:
            self._fast.discard(job_id)
        return record

    def unwatch(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)
        self._fast.discard(job_id)

    async def status(self, job_id: str) -> JobRecord:
        """The cached record; waits for one query if none ran since the job was watched."""
        record = self.watch(job_id, fast=job_id in self._fast)
        self._ensure_task()
        if not record.queried:
            await self.refresh()
        return record

    async def refresh(self) -> None:
        """Wait for a query that starts after this call (shared with other callers)."""
        loop = self._ensure_task()
        waiter = loop.create_future()
        self._waiters.append(waiter)
        assert self._wake is not None
        self._wake.set()
        await asyncio.shield(waiter)

    async def cancel(self, job_id: str, argv: list[str]) -> bool:
        """scancel now; if Slurm does not answer, keep retrying on every poll."""
        if await self._scancel(job_id, argv):
            self.cancels.pop(job_id, None)
            return True
        self.cancels[job_id] = argv
        self._ensure_task()
        return False

    # -- the query -----------------------------------------------------------------------

    async def query_once(self) -> bool:
        """One squeue for all watched jobs; True if squeue answered."""
        ids = sorted(self.jobs, key=lambda j: (len(j), j))
        if not ids:
            return True
        self.calls += 1
        self._last_query = time.monotonic()
        argv = [*self.squeue_cmd, "-h", "-t", "all", "-o", SQUEUE_FORMAT, "-j", ",".join(ids)]
        result = await self.runner(argv, timeout=self.timeout)
        answered = result.returncode == 0 or any(m in result.stderr for m in GONE_MARKERS)
        if answered:
            self._update(ids, result.stdout if result.returncode == 0 else "")
        else:
            self._failed(ids, result)
        return answered

    def _update(self, ids: list[str], stdout: str) -> None:
        now = time.monotonic()
        listed = parse_squeue(stdout)
        if self.failing_since is not None:
            self.log.info("squeue answers again after %.0f s", now - self.failing_since)
            self.failing_since = None
        for job_id in ids:
            record = self.jobs.get(job_id)
            if record is None:
                continue  # unwatched while squeue ran
            record.state, record.host, record.reason = listed.get(job_id, ("GONE", "", ""))
            record.confirmed, record.queried = now, True

    def _failed(self, ids: list[str], result: CommandResult) -> None:
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
            self.log.warning("squeue failed (exit %s: %s); keeping the last known state of "
                             "%d job(s) for up to %.0f s", result.returncode,
                             result.stderr.strip()[:300], len(ids), self.grace)
        for job_id in ids:
            record = self.jobs.get(job_id)
            if record is None:
                continue
            record.queried = True
            if record.alive and now - record.confirmed > self.grace:
                self.log.error("Slurm job %s: squeue has not confirmed it for %.0f s; "
                               "treating it as gone", job_id, now - record.confirmed)
                record.state = "LOST"

    async def _scancel(self, job_id: str, argv: list[str]) -> bool:
        """True when there is nothing more to do: cancelled, already over, or refused."""
        result = await self.runner(argv, timeout=self.timeout)
        if result.returncode == 0 or any(m in result.stderr for m in DONE_MARKERS):
            return True
        if any(m in result.stderr for m in REFUSED_MARKERS):
            self.log.error("scancel %s refused: %s (see SlurmBackend.exec_prefix)", job_id,
                           result.stderr.strip()[:300])
            return True
        self.log.warning("scancel %s failed (exit %s: %s); will retry", job_id,
                         result.returncode, result.stderr.strip()[:300])
        return False

    async def _retry_cancels(self) -> None:
        for job_id, argv in list(self.cancels.items()):
            if await self._scancel(job_id, argv):
                self.log.info("Slurm job %s cancelled on retry", job_id)
                self.cancels.pop(job_id, None)

    # -- the loop ------------------------------------------------------------------------

    def _ensure_task(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop, self._wake = loop, asyncio.Event()
            self._waiters = [w for w in self._waiters if w.get_loop() is loop]
            self._task = loop.create_task(self._run())
        return loop

    async def _run(self) -> None:
        try:
            while True:
                waiters, self._waiters = self._waiters, []
                try:
                    await self.query_once()
                    await self._retry_cancels()
                except Exception:
                    self.log.exception("squeue poller")
                finally:
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(None)
                if not (self.jobs or self.cancels or self._waiters):
                    return
                await self._sleep()
        finally:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _sleep(self) -> None:
        """Until the interval is over or someone asks for a refresh, never more often than
        fast_interval."""
        assert self._wake is not None
        if not self._waiters:
            self._wake.clear()
            interval = self.fast_interval if self._fast else self.interval
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except TimeoutError:
                pass
        spacing = self._last_query + self.fast_interval - time.monotonic()
        if spacing > 0:
            await asyncio.sleep(spacing)


def parse_squeue(stdout: str) -> dict[str, tuple[str, str, str]]:
    """'%i %T %B %r' lines -> {job id: (state, batch host or '', pending reason or '')}."""
    jobs = {}
    for line in stdout.splitlines():
        parts = [*line.split(maxsplit=3), "", "", ""]
        if parts[0].isdigit() and parts[1]:
            host = "" if parts[2] in ("n/a", "(null)") else parts[2]
            reason = "" if parts[3] in ("None", "(null)") else parts[3].strip()
            jobs[parts[0]] = (parts[1].upper(), host, reason)
    return jobs
