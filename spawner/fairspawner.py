"""FairSpawner: every server gets its resources from loophub's fair scheduler.

start() rebuilds the resource request from the user's options, submits it to the
scheduler in the loophub API service and waits in the queue (its own time limit,
``queue_timeout``), streaming the position, the blocking resource and the shares to
the spawn-pending page; then an execution backend (local process, or Slurm) runs the
server on exactly the placement the scheduler chose. stop() and the pending page's
Stop button release the request. The queue lives in the API service's database, so
a hub restart loses nothing.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

from jupyterhub.spawner import Spawner, SpawnException
from traitlets import Bool, Dict, Float, Instance, List, Unicode, default
from traitlets.utils.importstring import import_item

from loophub.client import Client
from loophub.client.core import api_message
from loophub.client.scheduler import QueueWatcher
from loophub.errors import InvalidInput, LoophubError, Unavailable
from loophub.pool import parse_mem
from loophub.runtime import placements
from loophub.scheduler.keys import server_key
from loophub.scheduler.model import Resources
from loophub.scheduler.spec import RequestSpec

from .backends import BACKENDS, Backend
from .form import render_form
from .home import seed_home
from .profiles import Choice, Limits, options_from_form, parse_profiles, resolve_choice


class FairSpawner(Spawner):
    profiles = List(
        Dict(),
        help="""Server sizes users choose from. Each: slug, display_name, cpu (cores),
        mem (bytes or '8G'), gpu (count), gpu_type, max_runtime (s), backend
        ('local'|'slurm'), groups (who sees it; empty: everyone), description, default,
        preemptible. Example::

            c.FairSpawner.profiles = [
                {"slug": "small", "display_name": "Small", "cpu": 1, "mem": "2G", "default": True},
                {"slug": "gpu", "display_name": "1 GPU", "cpu": 4, "mem": "16G", "gpu": 1,
                 "groups": ["ml"]},
            ]
        """,
    ).tag(config=True)
    allow_custom = Bool(True, help="Offer a custom size within custom_limits.").tag(config=True)
    custom_limits = Dict(
        {"cpu": 2, "mem": "4G", "gpu": 0},
        help="""Largest custom size: cpu, mem, gpu, max_runtime (s). Per group with
        JupyterHub's group_overrides, e.g. {"ml": {"custom_limits": {"cpu": 8, "mem": "64G",
        "gpu": 2}}}.""",
    ).tag(config=True)
    scheduler_url = Unicode(
        help="The loophub API root the spawner talks to (default: $LOOPHUB_API_URL)."
    ).tag(config=True)
    scheduler_token = Unicode(
        help="Token of the hub service allowed to queue on users' behalf "
             "(default: $LOOPHUB_SPAWNER_TOKEN).",
    ).tag(config=True)
    queue_timeout = Float(
        24 * 3600.0,
        help="Seconds a request may wait in the queue before the spawn gives up. This, not "
             "start_timeout, bounds queue time; start_timeout defaults to "
             "queue_timeout + launch_timeout.",
    ).tag(config=True)
    launch_timeout = Float(
        120.0, help="Seconds the backend may take to launch once resources are allocated."
    ).tag(config=True)
    backend = Unicode(
        "local",
        help="Default execution backend: 'local', 'slurm', or an import string of a Backend "
             "subclass. A profile's 'backend' overrides it.",
    ).tag(config=True)
    home_dir_template = Unicode(
        "", help="Working folder of each server, e.g. '/srv/home/{username}'; empty: "
                 "the user's home (run_as_user) or the hub's folder.",
    ).tag(config=True)
    tutorials_dir = Unicode(
        "", help="A folder of notebooks copied into each server's home (home_dir_template) "
                 "on its first spawn, each once and never over a file already there; "
                 "empty: none.",
    ).tag(config=True)
    long_poll = Float(20.0, help="Seconds per long-poll while queued.").tag(config=True)
    api_patience = Float(
        120.0, help="Seconds to ride out an unreachable loophub API (it restarts) before a "
                    "spawn fails; the spawn page says it is waiting.").tag(config=True)

    _backend = Instance(Backend, allow_none=True)
    backend_name = Unicode("")
    request_id = Unicode("")

    @default("start_timeout")
    def _default_start_timeout(self) -> int:
        return int(self.queue_timeout + self.launch_timeout)

    @default("scheduler_url")
    def _default_scheduler_url(self) -> str:
        return os.environ.get("LOOPHUB_API_URL", "")

    @default("scheduler_token")
    def _default_scheduler_token(self) -> str:
        return os.environ.get("LOOPHUB_SPAWNER_TOKEN", "")

    @default("options_form")
    def _default_options_form(self):
        return self._render_options_form

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._events: list[dict] = []
        self._events_changed = asyncio.Event()
        self._start_done = True
        self._client: Client | None = None

    # -- options ----------------------------------------------------------------

    def _user_groups(self) -> set[str]:
        return {g.name for g in getattr(self.user, "groups", [])}

    def _profiles(self):
        groups = self._user_groups()
        all_profiles = parse_profiles(self.profiles)
        admin = bool(getattr(self.user, "admin", False))
        return [p for p in all_profiles if admin or not p.groups or groups & set(p.groups)]

    def _limits(self) -> Limits:
        raw = dict(self.custom_limits)
        return Limits(cpu=float(raw.get("cpu", 2)), mem=parse_mem(raw.get("mem", "4G"),
                      "custom_limits"), gpu=int(raw.get("gpu", 0)),
                      max_runtime=raw.get("max_runtime"))

    async def _render_options_form(self, spawner=None) -> str:
        profiles = self._profiles()
        if len(profiles) + bool(self.allow_custom) <= 1:
            return ""  # nothing to choose
        return render_form(profiles, self._limits(), self.allow_custom, self.user_options,
                           pool_note=await self.last_stop())

    def options_from_form(self, formdata: dict) -> dict:
        return options_from_form(formdata)

    def resolve_choice(self) -> Choice:
        try:
            return resolve_choice(self.user_options or {}, self._profiles(), self._limits(),
                                  self.allow_custom)
        except InvalidInput as exc:
            raise SpawnException(f"Invalid server options: {exc.message}", reason="options",
                                 status_code=400) from exc

    # -- talking to the scheduler -------------------------------------------------

    @property
    def client(self) -> Client:
        """The SDK client as the hub's ``loophub-spawner`` service, riding out restarts of
        the API service for ``api_patience`` s (the user sees why they wait)."""
        if not self.scheduler_url or not self.scheduler_token:
            raise SpawnException("FairSpawner is not configured: set scheduler_url and "
                                 "scheduler_token (hub_config does)", reason="config")
        if self._client is None:
            self._client = Client(self.scheduler_url, self.scheduler_token,
                                  patience=self.api_patience)
        return self._client

    async def _call(self, func, *args, **kwargs):
        """One SDK call off the hub's event loop; API errors become spawn errors."""
        kwargs.setdefault("on_retry", lambda why: self.emit_progress(
            5, f"The scheduler is restarting ({why}); your place is kept ..."))
        try:
            return await asyncio.to_thread(func, *args, **kwargs)
        except Unavailable as exc:
            raise SpawnException(f"the loophub scheduler is unreachable: {exc.message}",
                                 reason="scheduler", status_code=503) from exc
        except LoophubError as exc:
            raise SpawnException(api_message(exc), reason="scheduler",
                                 status_code=getattr(exc, "status", 400)) from exc

    @property
    def request_key(self) -> str:
        return server_key(self.user.name, self.name)

    def request_spec(self, choice: Choice) -> RequestSpec:
        """What this start asks the scheduler for: the user's choice, as their server."""
        return RequestSpec(
            kind="server", owner=self.user.name, groups=tuple(sorted(self._user_groups())),
            demand=Resources.from_dict(choice.demand()), gpu_type=choice.gpu_type,
            runtime=choice.runtime, preemptible=choice.preemptible, server=self.name,
            labels={"profile": choice.profile})

    async def last_stop(self) -> str:
        """Why this server last stopped, when its user did not stop it (a preemption, an
        admin's release): shown on the options form and the spawn page."""
        try:
            found = await asyncio.to_thread(self.client.scheduler.find,
                                            key=self.request_key, limit=1)
        except Exception:  # a note, never a reason for a spawn to fail
            return ""
        last = found[0] if found else None
        if not last or last["state"] != "done" or last.get("ended_by") in (
                None, last.get("submitted_by")):
            return ""
        when = datetime.fromtimestamp(last["ended_at"], UTC).strftime("%Y-%m-%d %H:%M UTC")
        return f"Your last server was stopped at {when}: {last.get('reason') or 'released'}."

    # -- progress -----------------------------------------------------------------

    def emit_progress(self, progress: int, message: str) -> None:
        """Show a line on the spawn-pending page (backends call this too)."""
        if self._events and self._events[-1]["message"] == message:
            return  # long-polls that changed nothing the user sees
        self._events.append({"progress": progress, "message": message})
        self._events_changed.set()

    async def progress(self):
        seen = 0
        while True:
            while seen < len(self._events):
                yield self._events[seen]
                seen += 1
            if self._start_done:
                return
            self._events_changed.clear()
            try:
                await asyncio.wait_for(self._events_changed.wait(), 1)
            except TimeoutError:
                pass

    # -- lifecycle ------------------------------------------------------------------

    def _make_backend(self, name: str) -> Backend:
        return import_item(BACKENDS.get(name, name))(parent=self, log=self.log)

    def server_home(self) -> str:
        if not self.home_dir_template:
            return ""
        return self.home_dir_template.format(username=self.user.name)

    async def start(self) -> tuple[str, int]:
        self._events, self._start_done = [], False
        try:
            return await self._start()
        finally:
            self._start_done = True
            self._events_changed.set()

    async def _start(self) -> tuple[str, int]:
        choice = self.resolve_choice()
        self.user_options = {**(self.user_options or {}), "profile": choice.profile}
        self.backend_name = choice.backend or self.backend
        self._backend = self._make_backend(self.backend_name)
        self.emit_progress(1, f"Requesting {choice.cpu:g} CPU, {choice.mem / 2**30:g} GiB"
                      + (f", {choice.gpu} GPU" if choice.gpu else "") + " ...")
        if note := await self.last_stop():
            self.emit_progress(1, note)
        view = await self._call(self.client.scheduler.submit, self.request_spec(choice))
        self.request_id = view["id"]
        try:
            view = await self._wait_in_queue(view)
            [placement] = placements(view["allocation"], choice.runtime)  # a server is one unit
            gpus = f", GPUs {list(placement.gpus)}" if placement.gpus else ""
            self.emit_progress(60, f"Resources allocated on {placement.node}{gpus}; "
                                   "starting server ...")
            await self._seed_home()
            ip, port = await asyncio.wait_for(self._backend.launch(self, placement),
                                              self.launch_timeout)
            self.emit_progress(80, "Server process started; waiting for it to answer ...")
            return ip, port
        except BaseException:
            await asyncio.shield(self._release("spawn did not complete"))
            raise

    async def _seed_home(self) -> None:
        """The tutorials, into a home that has not had them (a failure only logs: the
        server matters more than its tutorials)."""
        home = self.server_home()
        if not (home and self.tutorials_dir):
            return
        try:
            copied = await asyncio.to_thread(seed_home, Path(home), Path(self.tutorials_dir))
        except (OSError, ValueError) as exc:  # ValueError: a damaged note
            self.log.warning("could not copy the tutorials into %s: %s", home, exc)
            return
        if copied:
            self.emit_progress(70, f"Copied into your home folder: {', '.join(copied)}")

    async def _wait_in_queue(self, view: dict) -> dict:
        """Wait through the process's one queue watcher (N waiting spawns: one long-poll)."""
        watcher = QueueWatcher.shared(self.scheduler_url, self.scheduler_token,
                                      long_poll=self.long_poll, patience=self.api_patience)
        return await watcher.wait_running(
            view, give_up=self._queue_failure, queue_timeout=self.queue_timeout,
            on_wait=lambda v: self.emit_progress(10, v.get("message") or "Queued"))

    def _queue_failure(self, why: str, view: dict) -> SpawnException:
        if why == "timeout":
            return SpawnException(
                f"Gave up after waiting {self.queue_timeout / 60:.0f} min in the queue "
                f"({view.get('message', '')}). Try a smaller size or later.",
                reason="queue_timeout", status_code=503)
        return SpawnException(f"Your request was {view['state']}: {view.get('reason', '')}",
                              reason="scheduler",
                              status_code=503 if view["state"] == "unreachable" else 409)

    async def _release(self, reason: str) -> None:
        if not self.request_id:
            return
        try:
            await asyncio.to_thread(self.client.scheduler.release, self.request_id, reason,
                                    patience=min(self.api_patience, 30))
        except Exception as exc:  # the API's reconciliation releases it later
            self.log.warning("could not release %s (%s): %s", self.request_id, reason, exc)
        self.request_id = ""

    async def poll(self) -> int | None:
        if not self._start_done:
            return None  # queued or launching: the hub must see it as pending, not dead
        if self._backend is None:
            return 0
        status = await self._backend.poll(self)
        if status is not None and self.request_id:
            # the hub does not call stop() for a server that died: release here
            await self._release(f"server exited with {status}")
        return status

    async def stop(self, now: bool = False) -> None:
        if self._backend is not None:
            await self._backend.stop(self, now=now)
        await self._release("server stopped")

    # -- state (saved in the hub database) -----------------------------------------

    def get_state(self) -> dict:
        state = super().get_state()
        if self.request_id:
            state["request_id"] = self.request_id
        if self._backend is not None:
            state["backend"] = self.backend_name
            state["backend_state"] = self._backend.get_state()
        return state

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.request_id = state.get("request_id", "")
        if state.get("backend"):
            self.backend_name = state["backend"]
            self._backend = self._make_backend(self.backend_name)
            self._backend.load_state(state.get("backend_state") or {})

    def clear_state(self) -> None:
        super().clear_state()
        self.request_id = ""
        if self._backend is not None:
            self._backend.clear_state()
        self._backend = None


