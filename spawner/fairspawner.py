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
import json
import os
import time
from urllib.parse import urlencode

from jupyterhub.spawner import Spawner, SpawnException
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Bool, Dict, Float, Instance, List, Unicode, default
from traitlets.utils.importstring import import_item

from loophub.errors import InvalidInput
from loophub.pool import parse_mem

from .backends import BACKENDS, Backend, Placement
from .form import render_form
from .profiles import Choice, Limits, options_from_form, parse_profiles, resolve_choice
from .queueing import wait_until_running

TRANSIENT = (599, 502, 503, 504)  # the API service restarting: keep waiting


class SchedulerUnavailable(Exception):
    pass


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
    long_poll = Float(20.0, help="Seconds per long-poll while queued.").tag(config=True)

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

    def _render_options_form(self, spawner=None) -> str:
        profiles = self._profiles()
        if len(profiles) + bool(self.allow_custom) <= 1:
            return ""  # nothing to choose
        return render_form(profiles, self._limits(), self.allow_custom, self.user_options)

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

    async def _api(self, method: str, path: str, body: dict | None = None,
                   timeout: float = 30) -> dict:
        if not self.scheduler_url or not self.scheduler_token:
            raise SpawnException("FairSpawner is not configured: set scheduler_url and "
                                 "scheduler_token (hub_config does)", reason="config")
        req = HTTPRequest(
            f"{self.scheduler_url.rstrip('/')}/{path}", method=method, request_timeout=timeout,
            headers={"Authorization": f"token {self.scheduler_token}",
                     "Content-Type": "application/json"},
            body=json.dumps(body) if body is not None else None,
            allow_nonstandard_methods=True,
        )
        try:
            resp = await AsyncHTTPClient().fetch(req)
        except HTTPClientError as exc:
            if exc.code in TRANSIENT:
                raise SchedulerUnavailable(str(exc)) from exc
            try:
                message = json.loads(exc.response.body)["error"]
            except (AttributeError, TypeError, ValueError, KeyError):
                message = str(exc)
            raise SpawnException(message, reason="scheduler", status_code=exc.code) from exc
        except OSError as exc:
            raise SchedulerUnavailable(str(exc)) from exc
        return json.loads(resp.body)

    async def _api_retrying(self, method: str, path: str, body: dict | None = None,
                            timeout: float = 30, patience: float = 120) -> dict:
        """Ride out a restart of the API service instead of failing the spawn."""
        deadline = time.monotonic() + patience
        while True:
            try:
                return await self._api(method, path, body, timeout)
            except SchedulerUnavailable as exc:
                if time.monotonic() > deadline:
                    raise SpawnException("the loophub scheduler is unreachable: " + str(exc),
                                         reason="scheduler") from exc
                self.emit_progress(5, "The scheduler is restarting; your place is kept ...")
                await asyncio.sleep(2)

    @property
    def request_key(self) -> str:
        return f"server:{self.user.name}/{self.name}"

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
        view = await self._api_retrying("POST", "scheduler/requests", {
            "kind": "server", "demand": choice.demand(), "gpu_type": choice.gpu_type,
            "runtime": choice.runtime, "preemptible": choice.preemptible,
            "tenant": self.user.name, "groups": sorted(self._user_groups()),
            "key": self.request_key,
            "meta": {"user": self.user.name, "server_name": self.name,
                     "profile": choice.profile},
        })
        self.request_id = view["id"]
        try:
            view = await self._wait_in_queue(view)
            unit = view["allocation"]["units"][0]
            placement = Placement.from_unit(unit, choice.runtime)
            gpus = f", GPUs {list(placement.gpus)}" if placement.gpus else ""
            self.emit_progress(60, f"Resources allocated on {placement.node}{gpus}; "
                                   "starting server ...")
            ip, port = await asyncio.wait_for(self._backend.launch(self, placement),
                                              self.launch_timeout)
            self.emit_progress(80, "Server process started; waiting for it to answer ...")
            return ip, port
        except BaseException:
            await asyncio.shield(self._release("spawn did not complete"))
            raise

    async def _wait_in_queue(self, view: dict) -> dict:
        return await wait_until_running(
            view, poll=self._poll_request, give_up=self._queue_failure,
            on_wait=lambda v: self.emit_progress(10, v.get("message") or "Queued"),
            queue_timeout=self.queue_timeout, long_poll=self.long_poll)

    async def _poll_request(self, view: dict, wait: float) -> dict:
        query = urlencode({"wait": wait, "known": view.get("fingerprint", "")})
        return await self._api_retrying("GET", f"scheduler/requests/{view['id']}?{query}",
                                        timeout=self.long_poll + 30)

    def _queue_failure(self, why: str, view: dict) -> SpawnException:
        if why == "timeout":
            return SpawnException(
                f"Gave up after waiting {self.queue_timeout / 60:.0f} min in the queue "
                f"({view.get('message', '')}). Try a smaller size or later.",
                reason="queue_timeout", status_code=503)
        return SpawnException(f"Your request was {view['state']}: {view.get('reason', '')}",
                              reason="scheduler")

    async def _release(self, reason: str) -> None:
        if not self.request_id:
            return
        try:
            await self._api_retrying("DELETE", f"scheduler/requests/{self.request_id}",
                                     patience=30)
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


