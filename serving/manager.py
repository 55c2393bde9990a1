"""The releases' I/O shell: replica processes started on their scheduler allocations,
watched, restarted, drained; the domain's decisions (releases.py) carried out.

The API service owns one ``ReleaseManager``. A replica's life: its row is queued and its
``service`` request submitted (by the API's routes); the scheduler's start decision reaches
``started`` (through the API shell's ServiceHandler), which runs the model server on the
allocation, confined like a notebook server, waits for /ready and marks it ready (the
gateway then routes to it); ``settle`` drains what a rollout, scale or promotion left
over; a drained replica gets SIGTERM (the server finishes what it holds) and its
request is ended. ``watch`` restarts a replica whose process died.

A replica on a local node is a confined child process listening on 127.0.0.1; on a Slurm
node it is a batch job (``launchers["slurm"]``, spawner/backends/replicas.py) whose server
says in a state file where it listens and how it ended.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from loophub.identity import Actor
from loophub.ports import free_port
from loophub.runtime import Confinement, Placement, placements
from loophub.store import BlobStore

from .canary import Stats, replica_stats, verdict
from .releases import ReleaseStore
from .statefile import read_state

log = logging.getLogger("loophub.serving")
End = Callable[[str, str], None]             # (request id, reason): the holder ends it
PLATFORM = Actor("loophub", admin=True, kind="service")  # the platform's own changes
MAX_RESTARTS = 5        # in a row, before the replica is left failed
CANNOT_SERVE = 2        # the model server's exit code when the model cannot be served
KEEP_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")


@dataclass
class Running:
    """A replica's process as this manager started (or found) it."""

    replica: str
    release: str
    pid: int
    url: str
    proc: subprocess.Popen | None = None
    confinement: Confinement | None = None
    allocation: dict = field(default_factory=dict)
    log_path: Path | None = None

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        if not self.pid:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def exit_code(self) -> int | None:
        """How it ended, where known (a process found after a restart: not known)."""
        return self.proc.poll() if self.proc is not None else None

    async def terminate(self, grace: float) -> None:
        """SIGTERM (the server drains), then SIGKILL after GRACE seconds."""
        await _terminate(self, grace)
        if self.confinement is not None:
            self.confinement.release()


@dataclass
class SlurmRunning(Running):
    """A replica running as a Slurm job (its pid is on another machine: 0 here)."""

    job: str = ""
    launcher: Any = None  # SlurmReplicaLauncher
    state_file: Path | None = None

    def alive(self) -> bool:
        return self.launcher.alive(self.job)

    def exit_code(self) -> int | None:
        code = read_state(self.state_file).get("exit_code") if self.state_file else None
        return None if self.alive() else code

    async def terminate(self, grace: float) -> None:
        await self.launcher.stop(self.job, grace)


class ReleaseManager:
    def __init__(self, store: ReleaseStore, blobs: BlobStore, *, files: Path, end: End,
                 python: str = sys.executable, ready_timeout: float = 180.0,
                 switch_grace: float = 1.0, drain_timeout: float = 30.0,
                 logs_per_release: int = 512 * 1024 * 1024,
                 memory_enforcement: str = "auto", cgroup_parent: str = "loophub",
                 backend_of: Callable[[str], str] = lambda node: "local",
                 launchers: dict[str, Any] | None = None) -> None:
        self.store, self.blobs, self.files = store, blobs, Path(files)
        self.end, self.python = end, python
        self.ready_timeout, self.switch_grace = ready_timeout, switch_grace
        self.drain_timeout, self.logs_per_release = drain_timeout, logs_per_release
        self.memory_enforcement, self.cgroup_parent = memory_enforcement, cgroup_parent
        self.backend_of = backend_of
        self.launchers = dict(launchers or {})  # backend name -> its replica launcher
        self.running: dict[str, Running] = {}
        self._tasks: set[asyncio.Task] = set()
        self._baselines: dict[tuple[str, str], Stats] = {}  # (canary since, replica)

    # -- the scheduler's decisions -----------------------------------------------------------

    async def started(self, replica_id: str, allocation: dict) -> None:
        """The scheduler allocated the replica: run its model server there."""
        replica = await asyncio.to_thread(self.store.replica, replica_id)
        if replica is None or not replica["wanted"]:
            return  # its release stopped or moved on while it waited: the settle ends it
        unit = placements(allocation)[0]
        backend = self.backend_of(unit.node)
        if backend != "local" and backend not in self.launchers:
            await self._give_up(replica, f"node {unit.node} is a {backend} node and this "
                                         f"API has no replica launcher for {backend}")
            return
        self._spawn(self._launch(replica, allocation))

    async def ended(self, replica_id: str, reason: str) -> None:
        """Its request ended by someone else (an admin, a reconciliation): stop it."""
        replica = await asyncio.to_thread(self.store.replica, replica_id)
        if replica is None or replica["state"] == "stopped":
            return
        await self._stop_process(replica_id)
        await asyncio.to_thread(self.store.set_replica, replica_id, "stopped",
                                message=f"stopped: {reason}", routes=True)

    # -- starting -----------------------------------------------------------------------------

    async def _launch(self, replica: dict, allocation: dict) -> None:
        rid = replica["id"]
        unit = placements(allocation)[0]
        launcher = self.launchers.get(self.backend_of(unit.node))
        try:
            if launcher is None:
                running = await asyncio.to_thread(self._start_process, replica, allocation)
            else:
                running = await self._start_job(launcher, replica, allocation)
                if running is None:
                    return  # stopped while it was submitted
        except Exception as exc:  # a bad artifact, a cgroup refused: the replica says why
            log.exception("replica %s of %s did not start", rid, replica["release"])
            await self._give_up(replica, f"could not start: {exc}")
            return
        self.running[rid] = running
        moved = await asyncio.to_thread(self.store.set_replica, rid, "starting",
                                        message="loading the model", url=running.url,
                                        pid=running.pid, node=unit.node)
        if moved is None:  # stopped or drained while its process started
            await self._stop_process(rid)
            return
        failure = await self._wait_ready(running)
        if failure is None:
            if await asyncio.to_thread(self.store.set_replica, rid, "ready",
                                       message="serving") is None:
                await self._stop_process(rid)  # stopped while it loaded
                return
            log.info("replica %s of %s serves %s at %s", rid, running.release,
                     replica["version"], running.url)
            await self.settle(running.release)
        elif running.exit_code() == CANNOT_SERVE:
            self.running.pop(rid, None)  # the same files will fail the same way
            await self._give_up(replica, f"the model server cannot serve {replica['version']}"
                                         f": {_tail(running.log_path, 1)}")
        elif rid in self.running:
            await self._failed(rid, failure)

    def _server_cmd(self, replica: dict, where: list[str]) -> list[str]:
        """The model server's command line; WHERE: its address options."""
        folder = self._materialize(replica["artifact"], replica["meta"])
        logs = self.files / "logs" / replica["release"]
        logs.mkdir(parents=True, exist_ok=True)
        options = replica["options"]
        cmd = [self.python, "-m", "loophub.serving.server", "--artifact",
               str(folder / "model.pt"), "--meta", str(folder / "model.json"), *where,
               "--model-ref", replica["version"],
               "--drain-timeout", str(self.drain_timeout),
               "--request-log", str(logs / f"{replica['id']}.requests.jsonl"),
               "--log-sample-rate", str(options.get("log_sample_rate", 1.0)),
               "--blob-url", self.blobs.url,
               "--max-batch-size", str(options.get("max_batch_size", 32)),
               "--max-wait-ms", str(options.get("max_wait_ms", 5.0))]
        return cmd + (["--no-batching"] if options.get("batching") is False else [])

    def _server_env(self, unit: Placement) -> dict[str, str]:
        env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
        return {**env, **unit.env(), "PYTHONUNBUFFERED": "1"}

    def _start_process(self, replica: dict, allocation: dict) -> Running:
        unit = placements(allocation)[0]
        port = free_port()
        cmd = self._server_cmd(replica, ["--port", str(port)])
        confinement = Confinement.build(unit, name=f"replica-{replica['id']}",
                                        mode=self.memory_enforcement,
                                        cgroup_parent=self.cgroup_parent,
                                        rlimit_fallback=False, logger=log)
        log_path = self.log_path(replica["release"], replica["id"])
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(cmd, env=self._server_env(unit), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=confinement.preexec())
        return Running(replica["id"], replica["release"], proc.pid, f"http://127.0.0.1:{port}",
                       proc=proc, confinement=confinement, allocation=allocation,
                       log_path=log_path)

    async def _start_job(self, launcher: Any, replica: dict,
                         allocation: dict) -> SlurmRunning | None:
        """Submit the replica's batch job and wait until its server listens; None if the
        replica was stopped meanwhile (its job cancelled)."""
        rid, unit = replica["id"], placements(allocation)[0]
        state_file = self.log_path(replica["release"], rid).with_suffix(".state.json")
        cmd = await asyncio.to_thread(self._server_cmd, replica,
                                      launcher.server_args(state_file))
        state_file.unlink(missing_ok=True)  # a restart's file says nothing of this job
        job = await launcher.submit(f"loophub-replica-{replica['release']}-{rid}", cmd, unit,
                                    self._server_env(unit),
                                    self.log_path(replica["release"], rid))
        running = SlurmRunning(rid, replica["release"], 0, "", allocation=allocation,
                               log_path=self.log_path(replica["release"], rid), job=job,
                               launcher=launcher, state_file=state_file)

        async def tell(message: str) -> dict | None:
            return await asyncio.to_thread(self.store.set_replica, rid, "starting",
                                           message=message, job=job, node=unit.node)

        if await tell(f"submitted to Slurm as job {job}") is None:
            await running.terminate(0)
            return None
        try:
            running.url = await launcher.wait_listening(job, state_file, tell)
        except BaseException:
            await running.terminate(0)
            raise
        return running

    def log_path(self, release: str, replica: str) -> Path:
        """Where a replica's model server writes its output."""
        return self.files / "logs" / release / f"{replica}.log"

    def _materialize(self, artifact: str, meta: dict) -> Path:
        """The version's files for the server, once per artifact (written, then renamed:
        a replica never reads half a file)."""
        folder = self.files / "artifacts" / artifact
        if (folder / "model.json").exists():
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / f"model.pt.{os.getpid()}.part"
        with self.blobs.open(artifact) as src, open(part, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        part.replace(folder / "model.pt")
        meta_part = folder / f"model.json.{os.getpid()}.part"
        meta_part.write_text(json.dumps(meta))
        meta_part.replace(folder / "model.json")
        return folder

    async def _wait_ready(self, running: Running) -> str | None:
        """None once the replica answers /ready; else why not."""
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.running.get(running.replica) is not running:
                return "stopped while it started"
            if not running.alive():
                return f"its process exited while loading (code {running.exit_code()})"
            try:
                resp = await AsyncHTTPClient().fetch(f"{running.url}/ready", raise_error=False,
                                              request_timeout=2)
                if resp.code == 200:
                    return None
            except (OSError, HTTPClientError):
                pass  # not listening yet, or busy loading: ask again
            await asyncio.sleep(0.2)
        return f"did not become ready in {self.ready_timeout:.0f} s"

    # -- moving traffic ------------------------------------------------------------------------

    async def settle(self, name: str) -> None:
        """Drain what the release no longer needs (after a replica became ready, a scale,
        a promotion)."""
        drained = await asyncio.to_thread(self.store.to_drain, name)
        if drained:
            await self.drain(drained)

    async def drain(self, replicas: list[dict]) -> None:
        """Replicas already out of the route (rows draining): once the gateway has seen
        that (``switch_grace``), each finishes its requests and stops; requests end."""
        if not replicas:
            return
        await asyncio.sleep(self.switch_grace)
        await asyncio.gather(*(self._retire(r) for r in replicas))

    async def _retire(self, replica: dict) -> None:
        rid = replica["id"]
        await self._stop_process(rid)
        await asyncio.to_thread(self.store.set_replica, rid, "stopped", message="stopped")
        if replica.get("request_id"):
            self.end(replica["request_id"], f"replica {rid} of {replica['release']} drained")
        await asyncio.to_thread(self.prune_logs, replica["release"])

    def prune_logs(self, release: str) -> list[Path]:
        """Keep a release's logs (request samples, servers' output) under
        ``logs_per_release`` bytes: the stopped replicas' oldest files go first; a live
        replica bounds its own (its request log rotates at 64 MiB)."""
        folder = self.files / "logs" / release
        if not folder.is_dir():
            return []
        live = {r["id"] for r in self.store.replicas_of(release, ("queued", "starting",
                                                                  "ready", "draining"))}
        files = sorted((p for p in folder.iterdir() if p.is_file()),
                       key=lambda p: p.stat().st_mtime)
        total, removed = sum(p.stat().st_size for p in files), []
        for path in files:
            if total <= self.logs_per_release:
                break
            if path.name.split(".", 1)[0] in live:
                continue
            total -= path.stat().st_size
            path.unlink(missing_ok=True)
            removed.append(path)
        return removed

    async def _stop_process(self, rid: str) -> None:
        running = self.running.pop(rid, None)
        if running is not None:
            await running.terminate(self.drain_timeout + 5)

    # -- failures -------------------------------------------------------------------------------

    async def _failed(self, rid: str, why: str) -> None:
        """A replica's process died or never got ready: out of the route, started again on
        its allocation (up to MAX_RESTARTS in a row)."""
        running = self.running.pop(rid, None)
        if running is not None:
            await running.terminate(2)
        replica = await asyncio.to_thread(self.store.replica, rid)
        if replica is None or not replica["wanted"]:
            return
        tail = _tail(running.log_path) if running else ""
        restarts = replica["restarts"] + 1
        message = f"{why}; restart {restarts}" + (f": {tail}" if tail else "")
        await asyncio.to_thread(self.store.set_replica, rid, "failed", message=message,
                                restarts=restarts, routes=True)
        await asyncio.to_thread(self.store.record, replica["release"], PLATFORM,
                                "replica_failed", replica=rid, reason=why)
        if restarts > MAX_RESTARTS or running is None:
            await self._give_up(replica, f"{why}; gave up after {restarts - 1} restarts")
            return
        await asyncio.sleep(min(2 ** restarts, 30))
        again = await asyncio.to_thread(self.store.replica, rid)
        if again is not None and again["wanted"]:  # not stopped while it waited
            self._spawn(self._launch(again, running.allocation))

    async def _give_up(self, replica: dict, why: str) -> None:
        await asyncio.to_thread(self.store.set_replica, replica["id"], "stopped",
                                message=why, routes=True)
        await asyncio.to_thread(self.store.record, replica["release"], PLATFORM,
                                "replica_stopped", replica=replica["id"], reason=why)
        if replica.get("request_id"):
            self.end(replica["request_id"], why)

    async def watch_once(self) -> None:
        for rid, running in list(self.running.items()):
            if not running.alive():
                replica = await asyncio.to_thread(self.store.replica, rid)
                if replica and replica["state"] in ("ready", "starting"):
                    await self._failed(rid, f"its process exited (code {running.exit_code()})")

    async def watch(self, every: float = 1.0, guard_every: float = 2.0) -> None:
        last_guard = 0.0
        while True:
            try:
                await self.watch_once()
                if time.monotonic() - last_guard >= guard_every:
                    last_guard = time.monotonic()
                    await self.guard_canaries()
            except Exception:  # the watch must outlive one bad round
                log.exception("replica watch failed")
            await asyncio.sleep(every)

    # -- the canary guard ----------------------------------------------------------------------

    async def guard_canaries(self) -> None:
        """Roll back every guarded canary that is worse than its stable side (canary.py)."""
        for canary in await asyncio.to_thread(self.store.guarded_canaries):
            sides = {"stable": Stats(), "canary": Stats()}
            for replica in canary["replicas"]:
                now = await self._scrape(replica["url"])
                if now is None:
                    continue
                # a stable replica counts from the canary's start; a canary one from zero
                key = (canary["since"], replica["id"])
                start = self._baselines.setdefault(key, now if replica["role"] == "stable"
                                                   else Stats())
                sides[replica["role"]] = sides[replica["role"]] + (now - start)
            reason = verdict(sides["stable"], sides["canary"], canary["guard"])
            if reason:
                log.warning("release %s: rolling back canary %s: %s", canary["name"],
                            canary["version"], reason)
                drained = await asyncio.to_thread(self.store.rollback, PLATFORM,
                                                  canary["name"], reason=f"automatic: {reason}")
                await self.drain(drained)

    async def _scrape(self, url: str) -> Stats | None:
        try:
            resp = await AsyncHTTPClient().fetch(f"{url}/metrics", request_timeout=2)
        except (OSError, HTTPClientError):
            return None  # gone or busy: judged on the next round
        return replica_stats(resp.body.decode())

    # -- life of the manager -----------------------------------------------------------------

    async def recover(self, running_requests: dict[str, dict]) -> None:
        """After an API restart: replicas whose process still answers are adopted, those
        whose request still runs are started again, the rest are stopped."""
        for replica in await asyncio.to_thread(self.store.live_replicas):
            rid, url = replica["id"], replica["url"]
            alive = self._found(replica)
            if url and alive.alive() and await self._answers(url):
                self.running[rid] = alive
                continue
            if alive.alive():  # a job or process that never got to serve: start afresh
                await alive.terminate(2)
            if replica["request_id"] in running_requests:
                full = await asyncio.to_thread(self.store.replica, rid)
                self._spawn(self._launch(full, running_requests[replica["request_id"]]))
            else:
                await asyncio.to_thread(self.store.set_replica, rid, "stopped",
                                        message="the API restarted and its request was gone",
                                        routes=True)

    def _found(self, replica: dict) -> Running:
        """A replica's process or job as the store last knew it (after a restart)."""
        rid, release, url = replica["id"], replica["release"], replica["url"] or ""
        launcher = self.launchers.get(self.backend_of(replica["node"] or ""))
        if replica["job"] and launcher is not None:
            launcher.poller.watch(replica["job"])
            return SlurmRunning(rid, release, 0, url, job=replica["job"], launcher=launcher,
                                log_path=self.log_path(release, rid))
        return Running(rid, release, replica["pid"] or 0, url)

    async def _answers(self, url: str) -> bool:
        try:
            resp = await AsyncHTTPClient().fetch(f"{url}/health", raise_error=False,
                                          request_timeout=2)
            return resp.code == 200
        except (OSError, HTTPClientError):
            return False

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a replica task failed", exc_info=task.exception())

    async def close(self, *, keep: bool = False) -> None:
        """The API stops: its launches end, and so do the replicas' processes (drained:
        what they hold is answered), unless KEEP (``loophub up --keep-servers``). Their
        rows and requests stay: the next start finds the requests running and starts the
        replicas again (``recover``)."""
        for task in list(self._tasks):
            task.cancel()
        if keep:
            return
        running, self.running = list(self.running.values()), {}
        await asyncio.gather(*(r.terminate(10) for r in running))


async def _terminate(running: Running, grace: float) -> None:
    """SIGTERM (the server drains), then SIGKILL after GRACE seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not running.alive():
            break
        try:
            os.killpg(running.pid, sig) if running.proc else os.kill(running.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while running.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    if running.proc is not None:
        running.proc.poll()


def _tail(path: Path | None, lines: int = 3) -> str:
    if path is None or not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 4096))
        return " | ".join(f.read().decode(errors="replace").strip().splitlines()[-lines:])

