"""Scheduler routes, and the shell around SchedulerService that needs the hub:
long-poll waiters, the aging timer, weights/quotas from hub group properties,
and reconciliation with the servers the hub says are alive."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.ioloop import IOLoop, PeriodicCallback

from loophub.errors import InvalidInput, PermissionDenied
from loophub.pool import PoolConfigError, parse_mem
from loophub.scheduler.model import SchedulerConfig
from loophub.scheduler.service import SchedulerService, Tenancy

from .base import ApiHandler

log = logging.getLogger("loophub.api")
TRUSTED_SERVICES = set(os.environ.get("LOOPHUB_TRUSTED_SERVICES", "loophub-spawner").split(","))
UNCLAIMED_SPAWN_AFTER = 15.0  # s without a waiter before the API starts an allocated server


def scheduler_config_from_env() -> tuple[str, SchedulerConfig]:
    """LOOPHUB_SCHEDULER: JSON {"policy": ..., any SchedulerConfig field ...}."""
    raw = os.environ.get("LOOPHUB_SCHEDULER", "")
    try:
        data = json.loads(raw) if raw else {}
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"LOOPHUB_SCHEDULER: invalid JSON: {exc.msg}") from exc
    policy = data.pop("policy", "balanced-drf")
    unknown = set(data) - set(SchedulerConfig.__dataclass_fields__)
    if unknown:
        raise InvalidInput(f"LOOPHUB_SCHEDULER: unknown settings {sorted(unknown)}")
    return policy, SchedulerConfig.from_dict(data)


def quota_from_properties(raw: Any, where: str) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise PoolConfigError(f"{where}: quota must be an object like {{\"gpu\": 4}}")
    out = {}
    for key, value in raw.items():
        out[key] = float(parse_mem(value, where) if key == "mem" else value)
    return out


def tenancy_from_groups(groups: list[dict], base: SchedulerConfig) -> Tenancy:
    """Group properties {"loophub": {"weight": 2, "quota": {"gpu": 4, "mem": "64G"}}}."""
    group_weights, group_quotas = dict(base.group_weights), dict(base.group_quotas)
    for group in groups:
        props = (group.get("properties") or {}).get("loophub") or {}
        name = group["name"]
        try:
            if "weight" in props:
                group_weights[name] = float(props["weight"])
            if "quota" in props:
                group_quotas[name] = quota_from_properties(props["quota"], f"group {name}")
        except (TypeError, ValueError) as exc:
            log.warning("ignoring bad loophub properties of group %s: %s", name, exc)
    return Tenancy(dict(base.weights), group_weights, dict(base.quotas), group_quotas)


class SchedulerShell:
    """Owns the SchedulerService inside the API process and wakes long-pollers."""

    def __init__(self, service: SchedulerService, base_config: SchedulerConfig) -> None:
        self.service = service
        self.base_config = base_config
        self.version = 0
        self._changed = asyncio.Event()
        self.last_seen: dict[str, float] = {}  # request id -> last time a waiter asked
        self._timer = None
        self._missing: dict[str, int] = {}
        self.tenancy_read_at = 0.0
        self._orphans: dict[str, int] = {}

    # -- change notification ----------------------------------------------------

    def changed(self, ids: list[str]) -> None:
        if not ids:
            return
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()
        self._schedule_wakeup()
        IOLoop.current().add_callback(self._start_unclaimed_servers, ids)

    async def wait_change(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    def _schedule_wakeup(self) -> None:
        wake = self.service.state.next_wakeup()
        if self._timer is not None:
            IOLoop.current().remove_timeout(self._timer)
            self._timer = None
        if wake is not None:
            delay = max(0.5, wake - time.time())
            self._timer = IOLoop.current().call_later(min(delay, 3600), self.tick)

    def tick(self) -> None:
        self._timer = None
        self.changed(self.service.tick())
        self._schedule_wakeup()

    # -- the hub ----------------------------------------------------------------

    async def hub_api(self, method: str, path: str, body: Any = None) -> Any:
        url = os.environ["JUPYTERHUB_API_URL"].rstrip("/") + path
        req = HTTPRequest(url, method=method, request_timeout=30,
                          headers={"Authorization": f"token {os.environ['JUPYTERHUB_API_TOKEN']}"},
                          body=None if body is None and method == "GET" else json.dumps(body or {}))
        resp = await AsyncHTTPClient().fetch(req, raise_error=False)
        if resp.code >= 400:
            raise RuntimeError(f"hub API {method} {path}: {resp.code} {resp.body[:200]!r}")
        return json.loads(resp.body) if resp.body else None

    async def refresh_tenancy(self) -> None:
        try:
            groups = await self.hub_api("GET", "/groups?limit=1000")
        except Exception as exc:  # the hub may be restarting; try again next round
            log.warning("cannot read hub groups: %s", exc)
            return
        if isinstance(groups, dict):
            groups = groups.get("items", [])
        self.tenancy_read_at = time.monotonic()
        self.changed(self.service.set_tenancy(tenancy_from_groups(groups, self.base_config)))

    async def fresh_tenancy(self, max_age: float = 0.0) -> None:
        """Quotas must hold at submit time, not up to a refresh period later."""
        if os.environ.get("JUPYTERHUB_API_TOKEN") and \
                time.monotonic() - self.tenancy_read_at > max_age:
            await self.refresh_tenancy()

    async def reconcile_servers(self) -> None:
        """Release allocations of servers the hub no longer knows (two rounds in a row)."""
        try:
            users = await self.hub_api("GET", "/users?state=active&limit=10000")
        except Exception as exc:
            log.warning("cannot list hub servers: %s", exc)
            return
        if isinstance(users, dict):
            users = users.get("items", [])
        alive = {f"server:{u['name']}/{name}" for u in users for name in u.get("servers", {})}
        running = {v["key"] for v in self.service.queue() if v["kind"] == "server"
                   and v["state"] == "running" and v["key"]}
        gone = running - alive
        self._missing = {k: self._missing.get(k, 0) + 1 for k in gone}
        confirmed = {k for k, n in self._missing.items() if n >= 2}
        keep = (running - confirmed) | {k for k in running if self._recently_seen_key(k)}
        self.changed(self.service.release_missing("server", keep, grace=60))
        self._release_orphan_kernels(alive)

    def _release_orphan_kernels(self, alive: set[str]) -> None:
        """A kernel's request ends with its server (a killed server cannot release it)."""
        orphans = {v["id"] for v in self.service.queue() if v["kind"] == "kernel"
                   and (v["key"] or "").startswith("kernel:")
                   and "server:" + v["key"][len("kernel:"):].rsplit("/", 1)[0] not in alive}
        self._orphans = {i: self._orphans.get(i, 0) + 1 for i in orphans}
        for request_id in [i for i, n in self._orphans.items() if n >= 2]:
            self.changed(self.service.cancel(request_id, reason="its server is gone")[1])

    def _recently_seen_key(self, key: str) -> bool:
        view = self.service.get_by_key(key)
        return bool(view) and time.time() - self.last_seen.get(view["id"], 0) < 60

    async def _start_unclaimed_servers(self, ids: list[str]) -> None:
        """A queued server whose spawner went away (hub restart) got its turn: start it."""
        await asyncio.sleep(UNCLAIMED_SPAWN_AFTER)
        for request_id in ids:
            view = self.service.get(request_id)
            if view["kind"] != "server" or view["state"] != "running":
                continue
            if time.time() - self.last_seen.get(request_id, 0) < UNCLAIMED_SPAWN_AFTER:
                continue
            user, server = view["meta"].get("user"), view["meta"].get("server_name", "")
            if not user or view["started_at"] == view["submitted_at"]:
                continue  # started as it was submitted: its spawner got it in the answer
            try:
                model = await self.hub_api("GET", f"/users/{quote(user)}")
                if server in (model.get("servers") or {}):
                    continue  # the hub has it, running or starting
                path = f"/users/{quote(user)}/server" + (f"s/{quote(server)}" if server else "")
                log.info("starting %s's server %r: allocated while no spawner waited",
                         user, server)
                await self.hub_api("POST", path, {})
            except Exception as exc:  # reconciliation releases it if it never starts
                log.warning("could not start unclaimed server of %s: %s", user, exc)

    def start_background(self) -> None:
        PeriodicCallback(self.tick, 15_000).start()
        if os.environ.get("JUPYTERHUB_API_TOKEN"):
            IOLoop.current().add_callback(self.refresh_tenancy)
            PeriodicCallback(self.refresh_tenancy, 30_000).start()
            PeriodicCallback(self.reconcile_servers, 30_000).start()
        self._schedule_wakeup()


# --- routes ---------------------------------------------------------------------

REQUEST_VIEW = {"type": "object", "properties": {
    "id": {"type": "string"}, "state": {"enum": ["queued", "running", "done", "cancelled"]},
    "position": {"type": ["integer", "null"]}, "blocking": {"type": ["string", "null"]},
    "message": {"type": "string"}, "allocation": {"type": ["object", "null"]}}}


class SchedulerHandler(ApiHandler):
    @property
    def shell(self) -> SchedulerShell:
        return self.ctx.scheduler

    def may_act_for_others(self) -> bool:
        a = self.actor
        return a.admin or (a.kind == "service" and a.name in TRUSTED_SERVICES)

    def check_owner(self, view: dict) -> None:
        if view["tenant"] != self.actor.name and not self.may_act_for_others():
            raise PermissionDenied(f"request {view['id']} belongs to someone else")


class RequestsHandler(SchedulerHandler):
    openapi = {"post": {
        "summary": "Submit a resource request (idempotent per 'key'); 201 queued or running, "
                   "422 when it can never fit",
        "requestBody": {"content": {"application/json": {"schema": {"type": "object",
            "required": ["demand"], "properties": {
                "kind": {"enum": ["server", "kernel", "job", "service"]},
                "demand": {"type": "object", "description": "cpu cores, mem bytes, gpu devices"},
                "count": {"type": "integer"}, "gpu_type": {"type": "string"},
                "preemptible": {"type": "boolean"}, "runtime": {"type": "number"},
                "key": {"type": "string"}, "meta": {"type": "object"},
                "tenant": {"type": "string", "description": "admins and the spawner only"},
                "groups": {"type": "array", "items": {"type": "string"}}}}}}},
        "response": REQUEST_VIEW, "responses": {"422": {"description": "can never fit"}}}}

    async def post(self) -> None:
        body = self.json_body()
        if not isinstance(body, dict):
            raise InvalidInput("request: expected a JSON object")
        await self.shell.fresh_tenancy()
        tenant, groups = self.actor.name, list(self.actor.groups)
        if "tenant" in body and body["tenant"] != tenant:
            if not self.may_act_for_others():
                raise PermissionDenied("only admins and the hub's spawner submit for others")
            tenant = body["tenant"]
            groups = body.get("groups") or []
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise InvalidInput("request.groups: expected a list of group names")
        key, meta = body.get("key"), body.get("meta") or {}
        if key is not None and not isinstance(key, str):
            raise InvalidInput("request.key: must be a string")
        if not isinstance(meta, dict):
            raise InvalidInput("request.meta: must be an object")
        view, changed = self.shell.service.submit(body, tenant=tenant, groups=groups, key=key,
                                                  meta={**meta, "submitted_by": self.actor.name})
        self.shell.last_seen[view["id"]] = time.time()
        self.shell.changed(changed)
        self.write_json(view, 201)


class RequestHandler(SchedulerHandler):
    openapi = {
        "get": {"summary": "A request's state, queue position and reason; ?wait=S long-polls "
                           "until it changes (at most 60 s)", "response": REQUEST_VIEW},
        "delete": {"summary": "Withdraw a queued request or release a running one",
                   "response": REQUEST_VIEW},
    }

    async def get(self, request_id: str) -> None:
        view = self.shell.service.get(request_id)
        self.check_owner(view)
        try:
            wait = min(float(self.get_argument("wait", "0")), 60.0)
        except ValueError as exc:
            raise InvalidInput("wait: must be a number of seconds") from exc
        self.shell.last_seen[request_id] = time.time()
        if wait > 0 and view["state"] in ("queued", "running"):
            known = self.get_argument("known", "")
            if known == _fingerprint(view):
                await self.shell.wait_change(wait)
                view = self.shell.service.get(request_id)
        self.shell.last_seen[request_id] = time.time()
        view["fingerprint"] = _fingerprint(view)
        self.write_json(view)

    def delete(self, request_id: str) -> None:
        view = self.shell.service.get(request_id)
        self.check_owner(view)
        view, changed = self.shell.service.cancel(request_id,
                                                  reason=f"released by {self.actor.name}")
        self.shell.changed(changed)
        self.write_json(view)


def _fingerprint(view: dict) -> str:
    return f"{view['state']}:{view.get('position')}:{view.get('blocking')}:{view.get('share')}"


class QueueHandler(SchedulerHandler):
    openapi = {"get": {"summary": "Active requests in service order (admins see everyone's)",
                       "response": {"type": "object"}}}

    def get(self) -> None:
        tenant = None if self.may_act_for_others() else self.actor.name
        self.write_json({"requests": self.shell.service.queue(tenant),
                         "pool": self.shell.service.pool_view()})


class UsageHandler(SchedulerHandler):
    openapi = {"get": {"summary": "CPU-, GPU- and memory-hours per user and group over "
                                  "?since=&until= (epoch seconds; default the last 7 days), "
                                  "and current dominant shares", "response": {"type": "object"}}}

    def get(self) -> None:
        try:
            until = float(self.get_argument("until", str(time.time())))
            since = float(self.get_argument("since", str(until - 7 * 86400)))
        except ValueError as exc:
            raise InvalidInput("since/until: epoch seconds") from exc
        if since >= until:
            raise InvalidInput("since must be before until")
        usage = self.shell.service.usage(since, until)
        if not self.may_act_for_others():
            me = self.actor.name
            usage["users"] = {k: v for k, v in usage["users"].items() if k == me}
            usage["groups"] = {k: v for k, v in usage["groups"].items()
                               if k in self.actor.groups}
            usage["dominant_shares"] = {me: usage["dominant_shares"].get(me, 0.0)}
        self.write_json(usage)


ROUTES: list[tuple[str, type]] = [
    ("scheduler/requests", RequestsHandler),
    ("scheduler/requests/(?P<request_id>[^/]+)", RequestHandler),
    ("scheduler/queue", QueueHandler),
    ("scheduler/usage", UsageHandler),
]
