"""SlurmBackend: each single-user server runs as a Slurm batch job, built on batchspawner.

What comes from batchspawner: the sbatch script template (its jinja style, its renderer
and its variable names: nprocs, memory, gres, runtime, partition, options, keepvars,
prologue, epilogue, srun, cmd), ``sbatch --parsable``, squeue's ``%T %B`` for state and
host, ``scancel``, and its ``batchspawner-singleuser`` wrapper, which picks a port inside
the job and POSTs it to the hub at ``/hub/api/batchspawner``.

What loophub does differently, for batchspawner's known problems:

- resources come from the fair scheduler's Placement (--cpus-per-task, --mem, --gres,
  --time), never from raw ``user_options``; admin-set names and directives are checked
  against allow-lists before they reach the script;
- one shared :class:`~.squeue.SqueuePoller` per hub process asks squeue about all servers
  at once and rides out slurmctld outages for a grace period (see squeue.py);
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
import sys
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import batchspawner
from jupyterhub import apihandlers
from jupyterhub.apihandlers import APIHandler
from tornado import web
from traitlets import Any as AnyTrait
from traitlets import Dict, Enum, Float, Integer, List, Unicode, default, validate

from .base import Backend, Placement
from .squeue import JobRecord, SqueuePoller, run_command

# Importing batchspawner registered its API handler (any attribute from the request body)
# among the hub's default handlers; take it out so only PortCallbackHandler can answer.
apihandlers.default_handlers[:] = [
    h for h in apihandlers.default_handlers
    if h[1] is not batchspawner.api.BatchSpawnerAPIHandler
]

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
    if not (seconds > 0 and math.isfinite(seconds)):
        raise SlurmConfigError(f"runtime must be a positive number of seconds, not {seconds!r}")
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


def beside_python(script: str) -> str:
    """SCRIPT from the hub's environment if it is there, else the bare name (job's PATH)."""
    path = Path(sys.executable).parent / script
    return str(path) if path.exists() else script


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
        if token and spawner.api_token and hmac.compare_digest(spawner.api_token.encode(),
                                                               token.encode()):
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
        Unicode(),
        help="""Wrapper that reports the server's port to the hub, then runs the server.
        Default: batchspawner-singleuser beside the hub's Python if it is there (compute
        nodes usually share the hub's environment), else from the job's PATH.""",
    ).tag(config=True)
    server_cmd = List(
        Unicode(),
        help="""The server command inside the job; [] means Spawner.cmd. batchspawner-singleuser
        runs its first item as a Python script found on PATH, so it must be a script like
        jupyterhub-singleuser, not ['python', '-m', 'jupyterhub.singleuser'] (which the
        local backend may use). Default: jupyterhub-singleuser, found like singleuser_cmd.""",
    ).tag(config=True)

    @default("singleuser_cmd")
    def _default_singleuser_cmd(self) -> list[str]:
        return [beside_python("batchspawner-singleuser")]

    @default("server_cmd")
    def _default_server_cmd(self) -> list[str]:
        return [beside_python("jupyterhub-singleuser")]

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
            self.host, self.port = await self._wait_started(spawner)
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

    async def _wait_started(self, spawner: Any) -> tuple[str, int]:
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
            self._tell(spawner, record)
            if self._port_future.done():
                await poller.refresh()  # the port is known; the host not yet
                continue
            refresh = asyncio.ensure_future(poller.refresh())
            try:
                await asyncio.wait([refresh, self._port_future],
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                refresh.cancel()

    def _tell(self, spawner: Any, record: JobRecord) -> None:
        """Show the job's progress on the spawn-pending page (FairSpawner's event stream)."""
        emit = spawner.emit_progress
        if record.running:
            emit(70, f"Slurm job {self.job_id} runs on {record.host}; waiting for the server "
                     "to report its port ...")
        elif record.state != "UNKNOWN":
            why = f" ({record.reason})" if record.reason else ""
            emit(65, f"Slurm job {self.job_id} is {record.state.lower()}{why} ...")

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
        job_id = self.job_id
        if not job_id:
            return
        poller = self.poller()
        poller.watch(job_id)
        argv = [*self._prefix(spawner), *self.scancel_cmd, job_id]
        cancelled = await poller.cancel(job_id, argv)
        if now:
            return
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline:
            await poller.refresh()
            if not poller.watch(job_id).alive:
                return
        self.log.warning("Slurm job %s still %s %.0f s after %s", job_id,
                         poller.watch(job_id).state, self.stop_timeout,
                         "scancel" if cancelled else "a failed scancel (retried in the background)")

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
