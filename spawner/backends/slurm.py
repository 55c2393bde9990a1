"""SlurmBackend: each single-user server runs as a Slurm batch job, built on batchspawner.

What comes from batchspawner: the sbatch script template (its jinja style and its
variable names: nprocs, memory, gres, runtime, partition, options, keepvars, prologue,
epilogue, cmd), ``sbatch --parsable``, ``squeue -o '%T %B'`` for state and host,
``scancel``, and its ``batchspawner-singleuser`` wrapper, which picks a port inside the
job and POSTs it to the hub at ``/hub/api/batchspawner``.

What loophub does differently, for batchspawner's known problems:

- resources come from the fair scheduler's Placement (--cpus-per-task, --mem, --gres,
  --time), never from raw ``user_options``; admin-set directives are checked against an
  allow-list;
- one shared :class:`SqueuePoller` per hub process asks ``squeue`` about all servers in
  one call, instead of one squeue per spawner per poll (jupyterhub#4646);
- a failing squeue (slurmctld restarting, timeouts) keeps each job's last known state for
  ``SqueuePoller.grace`` seconds instead of declaring the server dead (batchspawner #171,
  #315, #329); cancellations that fail meanwhile are retried (orphaned jobs, #253, #314);
- the port callback (:class:`PortCallbackHandler`) accepts an integer port for the
  caller's own server while it starts, nothing else (batchspawner's handler sets any
  spawner attribute named in the request body).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import os
import re
import shlex
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import batchspawner
from jupyterhub import apihandlers
from jupyterhub.apihandlers import APIHandler
from tornado import web
from traitlets import Any as AnyTrait
from traitlets import Dict, Enum, Float, Integer, List, Unicode, validate
from traitlets.config import SingletonConfigurable

from .base import Backend, Placement

# Importing batchspawner registered its API handler (any attribute from the request body)
# among the hub's default handlers; take it out so only PortCallbackHandler can answer.
apihandlers.default_handlers[:] = [
    h for h in apihandlers.default_handlers
    if h[1] is not batchspawner.api.BatchSpawnerAPIHandler
]

# -- running commands -------------------------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


Runner = Callable[..., Awaitable[CommandResult]]


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


# -- the sbatch script -------------------------------------------------------------------

# batchspawner's SlurmSpawner template, extended with account/qos/nodelist and one
# directive per line for `options` (a list here).
DEFAULT_BATCH_SCRIPT = """#!/bin/bash
#SBATCH --job-name={{job_name}}
#SBATCH --output={{output}}
{% if workdir %}#SBATCH --chdir={{workdir}}
{% endif %}#SBATCH --export={{keepvars}}
#SBATCH --cpus-per-task={{nprocs}}
#SBATCH --mem={{memory}}
{% if gres %}#SBATCH --gres={{gres}}
{% endif %}{% if runtime %}#SBATCH --time={{runtime}}
{% endif %}{% if partition %}#SBATCH --partition={{partition}}
{% endif %}{% if nodelist %}#SBATCH --nodelist={{nodelist}}
{% endif %}{% if account %}#SBATCH --account={{account}}
{% endif %}{% if qos %}#SBATCH --qos={{qos}}
{% endif %}{% for option in options %}#SBATCH {{option}}
{% endfor %}
set -euo pipefail

{{prologue}}
{% if srun %}{{srun}} {% endif %}{{cmd}}
{{epilogue}}
"""

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DIRECTIVE_RE = re.compile(r"--(?P<name>[a-z][a-z-]*)(?:=(?P<value>[A-Za-z0-9_.,:@%+/=-]+))?")
DEFAULT_ALLOWED_DIRECTIVES = [
    "constraint", "reservation", "exclusive", "exclude", "licenses", "comment", "nice",
    "mail-type", "mail-user", "signal", "tmp", "hint", "cluster", "clusters", "wckey",
]


class SlurmConfigError(ValueError):
    """A value that would end up in the sbatch script is not acceptable."""


def check_name(value: str, what: str) -> str:
    """Partition, account, qos, GRES and node names: one token from a small alphabet."""
    if not NAME_RE.fullmatch(value):
        raise SlurmConfigError(
            f"{what} {value!r} is not a Slurm name (letters, digits, '_.+-', at most 64)")
    return value


def check_directive(directive: str, allowed: Iterable[str]) -> str:
    """An extra '#SBATCH --name[=value]' line: allow-listed name, value of safe characters."""
    match = DIRECTIVE_RE.fullmatch(directive)
    if not match:
        raise SlurmConfigError(
            f"extra directive {directive!r} must look like --name or --name=value "
            "(value of letters, digits and _.,:@%+/=-)")
    if match["name"] not in set(allowed):
        raise SlurmConfigError(
            f"extra directive --{match['name']} is not in SlurmBackend.allowed_directives")
    return directive


def slurm_time(seconds: float) -> str:
    """Seconds as Slurm's D-HH:MM:SS, rounded up to whole minutes (Slurm's granularity)."""
    if not seconds > 0:
        raise SlurmConfigError(f"runtime must be positive, not {seconds!r}")
    days, minutes = divmod(math.ceil(seconds / 60), 24 * 60)
    return f"{days}-{minutes // 60:02d}:{minutes % 60:02d}:00"


def resource_vars(placement: Placement, gres_name: str, default_runtime: float) -> dict:
    """--cpus-per-task, --mem, --gres and --time from one placement unit."""
    if not placement.cpu > 0:
        raise SlurmConfigError(f"the allocation has no CPU ({placement.cpu!r})")
    if not placement.mem > 0:
        raise SlurmConfigError(f"the allocation has no memory ({placement.mem!r})")
    runtime = placement.runtime or default_runtime
    gpus = len(placement.gpus)
    return {
        "nprocs": math.ceil(placement.cpu),
        "memory": f"{math.ceil(placement.mem / 2**20)}M",
        "gres": f"{check_name(gres_name, 'gres_name')}:{gpus}" if gpus else "",
        "runtime": slurm_time(runtime) if runtime else "",
    }


def safe_job_name(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", "-".join(p for p in parts if p))[:100]


def render_script(template: str, variables: dict) -> str:
    """batchspawner's own renderer (jinja2 for '{{' templates, str.format otherwise)."""
    return batchspawner.format_template(template, **variables)


def parse_job_id(output: str) -> str:
    """`sbatch --parsable` prints 'ID' or 'ID;cluster' (last line: Slurm may warn first)."""
    lines = output.strip().splitlines()
    job_id = lines[-1].split(";")[0].strip() if lines else ""
    if not job_id.isdigit():
        raise RuntimeError(f"sbatch printed no job id: {output.strip()!r}")
    return job_id


# -- the shared squeue poller -------------------------------------------------------------

ALIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
                   "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
                   "RESV_DEL_HOLD", "UNKNOWN"})  # UNKNOWN: not heard of since watched
SQUEUE_FORMAT = "%i %T %B"
GONE_MARKERS = ("Invalid job id specified",)  # squeue/scancel: the job is purged
DONE_MARKERS = (*GONE_MARKERS, "already completing or completed")


@dataclass
class JobRecord:
    """What the poller last learnt about one job."""

    job_id: str
    state: str = "UNKNOWN"  # a squeue %T, or UNKNOWN, GONE (not listed), LOST (grace over)
    host: str = ""
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
        self._failing_since: float | None = None

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
        if self._failing_since is not None:
            self.log.info("squeue answers again after %.0f s", now - self._failing_since)
            self._failing_since = None
        for job_id in ids:
            record = self.jobs.get(job_id)
            if record is None:
                continue  # unwatched while squeue ran
            record.state, record.host = listed.get(job_id, ("GONE", ""))
            record.confirmed, record.queried = now, True

    def _failed(self, ids: list[str], result: CommandResult) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
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
        result = await self.runner(argv, timeout=self.timeout)
        if result.returncode == 0 or any(m in result.stderr for m in DONE_MARKERS):
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


def parse_squeue(stdout: str) -> dict[str, tuple[str, str]]:
    """'%i %T %B' lines -> {job id: (state, batch host or '')}."""
    jobs = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            host = parts[2] if len(parts) > 2 and parts[2] not in ("n/a", "(null)") else ""
            jobs[parts[0]] = (parts[1].upper(), host)
    return jobs


# -- the port callback ----------------------------------------------------------------------

# Servers whose backend is waiting for batchspawner-singleuser to report a port.
_AWAITING_PORT: weakref.WeakKeyDictionary[Any, SlurmBackend] = weakref.WeakKeyDictionary()


class PortReportError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def parse_port(body: object) -> int:
    """Only {"port": <int 1..65535>}: other keys are refused, not ignored."""
    if not isinstance(body, dict) or set(body) != {"port"}:
        raise PortReportError(400, 'expected a JSON object {"port": <integer>} and nothing else')
    port = body["port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise PortReportError(400, f"port must be an integer in 1..65535, not {port!r}")
    return port


def find_spawner(spawners: Iterable[Any], token: str) -> Any | None:
    """The server whose API token made the request (the wrapper uses the server's token)."""
    for spawner in spawners:
        if token and spawner.api_token and hmac.compare_digest(spawner.api_token, token):
            return spawner
    return None


def report_port(spawner: Any, body: object) -> int:
    """Hand a reported port to the backend launching SPAWNER."""
    backend = _AWAITING_PORT.get(spawner)
    if backend is None:
        raise PortReportError(409, "this server is not starting on Slurm; port not accepted")
    port = parse_port(body)
    backend.port_reported(port)
    return port


class PortCallbackHandler(APIHandler):
    """POST /hub/api/batchspawner {"port": N}, as batchspawner-singleuser sends it.

    Authenticated by the server's own API token; sets the port of that server only while
    its Slurm job starts. Register with ``c.JupyterHub.extra_handlers``.
    """

    @web.authenticated
    def post(self) -> None:
        spawners = getattr(self.current_user, "spawners", None)
        if not spawners:
            raise web.HTTPError(403, "only a user's server may report its port")
        spawner = find_spawner(spawners.values(), self.get_auth_token() or "")
        if spawner is None:
            raise web.HTTPError(403, "this token belongs to none of the user's servers")
        try:
            port = report_port(spawner, self.get_json_body())
        except PortReportError as exc:
            raise web.HTTPError(exc.status, exc.message) from exc
        self.set_status(201)
        self.finish(json.dumps({"message": f"port {port} accepted"}))


# -- the backend ------------------------------------------------------------------------------


class SlurmBackend(Backend):
    """Runs the server as a Slurm batch job sized from the fair scheduler's placement."""

    batch_script = Unicode(
        DEFAULT_BATCH_SCRIPT,
        help="""The sbatch script (jinja2, as batchspawner's). Variables: job_name, output,
        workdir, keepvars, nprocs, memory, gres, runtime, partition, nodelist, account,
        qos, options (list of extra directives), prologue, srun, cmd, epilogue. Every value
        is validated before it is rendered; user_options never reach the template.""",
    ).tag(config=True)
    partition = Unicode("", help="--partition for every server job ('' : Slurm's default).").tag(
        config=True)
    account = Unicode("", help="--account for every server job.").tag(config=True)
    qos = Unicode("", help="--qos for every server job.").tag(config=True)
    extra_directives = List(
        Unicode(),
        help="""More '#SBATCH' lines, e.g. ['--constraint=a100', '--exclusive']. Each must be
        --name or --name=value with name in allowed_directives.""",
    ).tag(config=True)
    allowed_directives = List(
        Unicode(), DEFAULT_ALLOWED_DIRECTIVES,
        help="Option names extra_directives may use. Resource, identity and output options "
             "(--mem, --gres, --uid, --export, --output, ...) are set by the backend only.",
    ).tag(config=True)
    gres_name = Unicode(
        "gpu",
        help="GRES name GPUs are requested as (--gres=NAME:N); e.g. 'vgpu' for a count-only "
             "GRES. Slurm chooses the devices and sets CUDA_VISIBLE_DEVICES where gres.conf "
             "names device files.",
    ).tag(config=True)
    default_runtime = Float(
        8 * 3600.0,
        help="--time in seconds when the profile sets no max_runtime; 0 leaves it to the "
             "partition's default.",
    ).tag(config=True)
    node_directive = Enum(
        ["none", "nodelist", "partition"], "none",
        help="""How the scheduler's chosen pool node reaches Slurm: 'none' (Slurm picks a node
        of the partition), 'nodelist' (pool nodes are Slurm nodes: --nodelist=NODE) or
        'partition' (pool nodes are Slurm partitions: --partition=NODE).""",
    ).tag(config=True)
    node_addresses = Dict(
        Unicode(),
        help="Slurm node name -> address the hub connects to, for node names the hub cannot "
             "resolve (like batchspawner's MultiSlurmSpawner.daemon_resolver).",
    ).tag(config=True)
    bind_ip = Unicode(
        "0.0.0.0", help="Address the server listens on inside the job.",
    ).tag(config=True)
    singleuser_cmd = List(
        Unicode(), ["batchspawner-singleuser"],
        help="Wrapper that reports the server's port to the hub, then runs the server.",
    ).tag(config=True)
    server_cmd = List(
        Unicode(),
        help="""The server command inside the job; empty: Spawner.cmd. batchspawner-singleuser
        runs its first item as a Python script found on PATH, so use e.g.
        ['jupyterhub-singleuser'], not ['python', '-m', 'jupyterhub.singleuser'].""",
    ).tag(config=True)
    srun = Unicode(
        "",
        help="Prefix of the server command, e.g. 'srun --cpu-bind=none' to run it as a job "
             "step. Empty by default: since Slurm 22.05 a plain srun step gets one CPU.",
    ).tag(config=True)
    prologue = Unicode("", help="Shell lines run in the job before the server.").tag(config=True)
    epilogue = Unicode("", help="Shell lines run in the job after the server.").tag(config=True)
    output = Unicode(
        "loophub-slurm-%j.log",
        help="--output of the job (relative to its working folder; %j is the job id).",
    ).tag(config=True)
    exec_prefix = List(
        Unicode(),
        help="""Prefix of sbatch and scancel, formatted with {username}, e.g.
        ['sudo', '-E', '-u', '{username}'] to submit as the user (batchspawner's default).
        Empty: jobs are submitted as the hub's user.""",
    ).tag(config=True)
    sbatch_cmd = List(Unicode(), ["sbatch", "--parsable"], help="sbatch command.").tag(
        config=True)
    scancel_cmd = List(Unicode(), ["scancel"], help="scancel command.").tag(config=True)
    submit_timeout = Float(60.0, help="Seconds sbatch may take.").tag(config=True)
    stop_timeout = Float(
        30.0, help="Seconds stop() waits for the job to leave the queue; cancelling goes on "
                   "in the background if slurmctld does not answer.",
    ).tag(config=True)
    runner = AnyTrait(run_command, help="Runs sbatch (tests pass a fake one).")

    job_id = Unicode("")
    host = Unicode("")
    port = Integer(0)

    @validate("partition", "account", "qos")
    def _check_name(self, proposal: dict) -> str:
        value = proposal["value"]
        return check_name(value, proposal["trait"].name) if value else value

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._port_future: asyncio.Future | None = None

    def poller(self) -> SqueuePoller:
        return SqueuePoller.instance(config=self.config, log=self.log)

    # -- the script -------------------------------------------------------------------------

    def job_env(self, spawner: Any, placement: Placement) -> dict[str, str]:
        """The server's environment. Slurm sets CUDA_VISIBLE_DEVICES from the GRES it
        grants, so the scheduler's device indices are not passed on."""
        env = {**spawner.get_env(), **placement.env()}
        env.pop("CUDA_VISIBLE_DEVICES", None)
        env.pop("LOOPHUB_ALLOC_GPUS", None)
        env["LOOPHUB_ALLOC_GPU_COUNT"] = str(len(placement.gpus))
        url = env.get("JUPYTERHUB_SERVICE_URL")
        if url:  # the wrapper replaces the port; the host must be reachable from the hub
            parsed = urlparse(url)
            host = f"[{self.bind_ip}]" if ":" in self.bind_ip else self.bind_ip
            env["JUPYTERHUB_SERVICE_URL"] = urlunparse(
                parsed._replace(netloc=f"{host}:{parsed.port or 0}"))
        return {k: v for k, v in env.items() if v is not None}

    def script_vars(self, spawner: Any, placement: Placement, env: dict[str, str]) -> dict:
        names = sorted(env)
        bad = [n for n in names if not ENV_NAME_RE.fullmatch(n)]
        if bad:
            raise SlurmConfigError(f"environment variable names not exportable: {bad}")
        partition = self.partition
        nodelist = ""
        if self.node_directive == "partition":
            partition = check_name(placement.node, "node (as partition)")
        elif self.node_directive == "nodelist":
            nodelist = check_name(placement.node, "node (as nodelist)")
        server = list(self.server_cmd or spawner.cmd)
        return {
            **resource_vars(placement, self.gres_name, self.default_runtime),
            "job_name": safe_job_name("loophub", spawner.user.name, spawner.name),
            "output": self._checked_path(self.output, "output"),
            "workdir": self._checked_path(self.workdir(spawner), "workdir"),
            "keepvars": ",".join(names),
            "partition": partition, "nodelist": nodelist,
            "account": self.account, "qos": self.qos,
            "options": [check_directive(d, self.allowed_directives)
                        for d in self.extra_directives],
            "prologue": self.prologue, "epilogue": self.epilogue, "srun": self.srun,
            "cmd": shlex.join([*self.singleuser_cmd, *server, *spawner.get_args()]),
        }

    @staticmethod
    def _checked_path(path: str, what: str) -> str:
        if any(c.isspace() for c in path):
            raise SlurmConfigError(f"{what} {path!r}: Slurm directives cannot hold whitespace")
        return path

    @staticmethod
    def workdir(spawner: Any) -> str:
        server_home = getattr(spawner, "server_home", None)
        return server_home() if callable(server_home) else ""

    def build_script(self, spawner: Any, placement: Placement, env: dict[str, str]) -> str:
        return render_script(self.batch_script, self.script_vars(spawner, placement, env))

    def _prefix(self, spawner: Any) -> list[str]:
        return [part.format(username=spawner.user.name) for part in self.exec_prefix]

    # -- launch ---------------------------------------------------------------------------------

    async def launch(self, spawner: Any, placement: Placement) -> tuple[str, int]:
        self.clear_state()
        env = self.job_env(spawner, placement)
        script = self.build_script(spawner, placement, env)
        workdir = self.workdir(spawner)
        if workdir:
            Path(workdir).mkdir(parents=True, exist_ok=True)
        self._port_future = asyncio.get_running_loop().create_future()
        _AWAITING_PORT[spawner] = self
        # shielded: a launch cancelled while sbatch runs must still learn the job id to
        # cancel it, or the job would be orphaned
        submit = asyncio.ensure_future(self._submit(spawner, script, env, workdir))
        try:
            self.job_id = await asyncio.shield(submit)
            self.log.info("%s's server is Slurm job %s (%s)", spawner.user.name, self.job_id,
                          placement)
            self.host, self.port = await self._wait_started()
        except BaseException as exc:
            await asyncio.shield(self._abandon(spawner, submit, exc))
            raise
        finally:
            _AWAITING_PORT.pop(spawner, None)
            self._port_future = None
            if self.job_id:
                self.poller().watch(self.job_id)  # back to the slow pace
        return self.node_addresses.get(self.host, self.host), self.port

    async def _submit(self, spawner: Any, script: str, env: dict[str, str],
                      workdir: str) -> str:
        argv = [*self._prefix(spawner), *self.sbatch_cmd]
        result = await self.runner(argv, input=script, env={**os.environ, **env},
                                   cwd=workdir or None, timeout=self.submit_timeout)
        if result.returncode != 0:
            raise RuntimeError(f"sbatch failed (exit {result.returncode}): "
                               f"{result.stderr.strip()[:500]}")
        return parse_job_id(result.stdout)

    async def _wait_started(self) -> tuple[str, int]:
        """Until the job RUNS and its wrapper reported the port; fails if the job ends."""
        poller = self.poller()
        poller.watch(self.job_id, fast=True)
        assert self._port_future is not None
        while True:
            record = await poller.status(self.job_id)
            if not record.alive:
                raise RuntimeError(
                    f"Slurm job {self.job_id} ended ({record.state}) before the server "
                    f"started; see its log ({self.output}) in the server's folder")
            if record.running and self._port_future.done():
                return record.host, self._port_future.result()
            if self._port_future.done():
                await poller.refresh()  # the port is known; the host not yet
                continue
            refresh = asyncio.ensure_future(poller.refresh())
            try:
                await asyncio.wait([refresh, self._port_future],
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                refresh.cancel()

    async def _abandon(self, spawner: Any, submit: asyncio.Future,
                       exc: BaseException) -> None:
        if not self.job_id:
            try:
                self.job_id = await submit
            except Exception:
                return  # nothing was submitted
        record = self.poller().jobs.get(self.job_id)
        if record is not None and record.running and not self.port:
            self.log.warning("Slurm job %s ran on %s but reported no port: is "
                             "PortCallbackHandler in c.JupyterHub.extra_handlers?",
                             self.job_id, record.host)
        self.log.info("cancelling Slurm job %s: launch did not complete (%r)", self.job_id, exc)
        await self.poller().cancel(self.job_id, [*self._prefix(spawner), *self.scancel_cmd,
                                                 self.job_id])

    def port_reported(self, port: int) -> None:
        if self._port_future is not None and not self._port_future.done():
            self._port_future.set_result(port)

    # -- poll / stop ------------------------------------------------------------------------------

    async def poll(self, spawner: Any) -> int | None:
        if not self.job_id:
            return 0
        record = await self.poller().status(self.job_id)
        return record.exit_status()

    async def stop(self, spawner: Any, now: bool = False) -> None:
        if not self.job_id:
            return
        poller = self.poller()
        poller.watch(self.job_id)
        argv = [*self._prefix(spawner), *self.scancel_cmd, self.job_id]
        cancelled = await poller.cancel(self.job_id, argv)
        if now:
            return
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline:
            await poller.refresh()
            if not poller.jobs[self.job_id].alive:
                return
        self.log.warning("Slurm job %s still %s after %.0f s (scancel %s); the hub keeps "
                         "cancelling it", self.job_id, poller.jobs[self.job_id].state,
                         self.stop_timeout, "sent" if cancelled else "pending")

    # -- state ------------------------------------------------------------------------------------

    def get_state(self) -> dict:
        if not self.job_id:
            return {}
        return {"job_id": self.job_id, "host": self.host, "port": self.port}

    def load_state(self, state: dict) -> None:
        self.job_id = str(state.get("job_id", ""))
        self.host = state.get("host", "")
        self.port = int(state.get("port", 0))
        if self.job_id:
            self.poller().watch(self.job_id)  # the next poll finds it through the shared query

    def clear_state(self) -> None:
        if self.job_id:
            self.poller().unwatch(self.job_id)
        self.job_id, self.host, self.port = "", "", 0
