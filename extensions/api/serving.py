"""Release routes (models served as REST services, serving/releases.py) and the handler
that turns the scheduler's decisions on ``service`` requests into replica processes
(serving/manager.py).

A release is checked whole (name, model reference and read access to it, replicas,
per-replica resources that can ever fit, access, options) before anything is written;
then each replica is a row plus a ``service`` request in the same fair queue as notebook
servers, kernels and training jobs. Authorised like datasets and models: owner, group,
hub-wide, admin (``release:read|write|manage``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import quote

from loophub.errors import NotFound
from loophub.releases.apps import template_for
from loophub.scheduler.model import Resources
from loophub.scheduler.service import Transition, Unschedulable
from loophub.scheduler.spec import RequestSpec
from loophub.serving.releases import parse_per_replica

from .base import ApiHandler, Op, in_thread

log = logging.getLogger("loophub.api")
SERVING = "loophub-serving"  # the holder of replicas' requests
MODEL_REF = {"type": "string", "minLength": 1, "maxLength": 300,
             "description": "NAME, NAME@VERSION or NAME@ALIAS (followed when given)"}
PER_REPLICA = {"type": "object", "additionalProperties": False, "properties": {
    "cpu": {"type": "number", "minimum": 0, "maximum": 1024},
    "mem": {"type": ["number", "string"], "maxLength": 32},
    "gpu": {"type": "number", "minimum": 0, "maximum": 64}}}
OPTIONS = {"type": "object", "additionalProperties": False, "properties": {
    "batching": {"type": "boolean"},
    "max_batch_size": {"type": "integer", "minimum": 1, "maximum": 1024},
    "max_wait_ms": {"type": "number", "minimum": 0, "maximum": 1000},
    "log_sample_rate": {"type": "number", "minimum": 0, "maximum": 1},
    "sticky_header": {"type": "string", "maxLength": 64, "pattern": "^[A-Za-z0-9-]+$"}}}
REPLICAS = {"type": "integer", "minimum": 1, "maximum": 16}
GUARD = {"description": "automatic rollback when the canary is worse than the stable "
                        "version (defaults: error_margin 0.05, latency_ratio 3, "
                        "latency_floor_ms 50, min_requests 50); false: none",
         "oneOf": [{"type": "boolean"}, {
             "type": "object", "additionalProperties": False, "properties": {
                 "error_margin": {"type": "number", "minimum": 0, "maximum": 1},
                 "latency_ratio": {"type": "number", "minimum": 1, "maximum": 1000},
                 "latency_floor_ms": {"type": "number", "minimum": 0, "maximum": 600000},
                 "min_requests": {"type": "integer", "minimum": 1, "maximum": 1000000}}}]}
PERCENT = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 100}
REPLICA_VIEW = {"type": "object", "properties": {
    "id": {"type": "string"}, "role": {"type": "string"}, "version": {"type": "string"},
    "state": {"type": "string"}, "node": {"type": ["string", "null"]},
    "restarts": {"type": "integer"}, "message": {"type": "string"}}}
RELEASE_VIEW = {"type": "object", "required": ["name", "owner", "version", "status"],
                "properties": {
                    "name": {"type": "string"}, "owner": {"type": "string"},
                    "access": {"type": "string"}, "model": {"type": "string"},
                    "version": {"type": "string"}, "replicas": {"type": "integer"},
                    "ready": {"type": "integer"}, "state": {"type": "string"},
                    "status": {"type": "string"}, "url": {"type": "string"},
                    "dashboard": {"type": "string"},
                    "app": {"type": "string", "description": "the release's web app for "
                            "its end users (empty for a task without an app)"},
                    "canary": {"type": ["object", "null"]},
                    "replica_list": {"type": "array", "items": REPLICA_VIEW}}}
KEY_VIEW = {"type": "object", "properties": {
    "id": {"type": "string"}, "prefix": {"type": "string"}, "note": {"type": "string"},
    "revoked": {"type": ["string", "null"]}, "key": {"type": "string"}}}


class ServiceHandler:
    """What the scheduler's decisions on ``service`` requests do: a start runs the
    replica's model server on the allocation; an end by anyone but the release manager
    (an admin, a reconciliation) stops it. A service request that names no replica of a
    release (an admin's plain hold) only holds its resources."""

    on_preempt = "end"  # a replica does not resume: the shell ends it, ``ended`` stops it

    def __init__(self, manager) -> None:
        self.manager = manager

    async def started(self, t: Transition) -> None:
        if t.spec.replica:
            await self.manager.started(t.spec.replica, t.allocation or {})

    async def preempted(self, t: Transition) -> None:
        """Ended by the shell in the same stimulus; ``ended`` stops the process."""

    async def ended(self, t: Transition) -> None:
        if not t.by_holder and t.spec.replica:
            await self.manager.ended(t.spec.replica, f"{t.reason} ({t.actor})")


class ReleasesBase(ApiHandler):
    @property
    def store(self):
        return self.ctx.releases

    @property
    def manager(self):
        return self.ctx.release_manager

    def with_url(self, view: dict) -> dict:
        """Where to call it, and its monitoring dashboard (a page of this service)."""
        name = quote(view["name"], safe="")
        return {**view, "url": f"{self.ctx.public_url}/services/models/{view['name']}/",
                "dashboard": f"{self.ctx.public_url}{self.ctx.prefix}releases/{name}/dashboard",
                "app": f"{self.ctx.public_url}/services/apps/{name}"
                if template_for(view.get("task")) else ""}

    async def resolve(self, ref: str) -> dict:
        """The model version REF names, for the caller (read access to the model)."""
        return await in_thread(self.ctx.models.resolve, self.actor, ref)

    def check_fits(self, per_replica: dict | None) -> dict[str, float]:
        """Refuse (422) what can never fit the pool, before anything is written."""
        demand = parse_per_replica(per_replica)
        request = RequestSpec(kind="service", owner=self.actor.name,
                              demand=Resources.from_dict(demand),
                              release="check", replica="check")
        if reason := self.ctx.scheduler.service.state.fits_ever(request.to_request("check")):
            raise Unschedulable(f"refused: {reason.split(': ', 1)[-1]}",
                                detail={"per_replica": per_replica})
        return demand

    async def queue(self, replicas: list[dict]) -> None:
        """Each new replica becomes a ``service`` request in the fair queue."""
        for replica in replicas:
            spec = RequestSpec(kind="service", owner=replica["owner"],
                               groups=self.actor.groups if replica["owner"] == self.actor.name
                               else (), demand=Resources.from_dict(replica["per_replica"]),
                               preemptible=False,
                               release=replica["release"], replica=replica["id"],
                               labels={"what": f"release {replica['release']}",
                                       "version": replica["version"], "role": replica["role"]})
            queued = await self.ctx.scheduler.submit(spec, actor=SERVING)
            await in_thread(self.store.set_request, replica["id"], queued["id"])

    async def answer(self, name: str, status: int = 200) -> None:
        self.set_status(status)
        self.write_json(self.with_url(await in_thread(self.store.get, self.actor, name)))


class ReleaseListHandler(ReleasesBase):
    openapi = {
        "get": Op("The releases you can call (yours, your groups', hub-wide ones); admins: "
                  "all", query={"owner": {"type": "string", "maxLength": 255},
                                "stopped": {"type": "boolean", "default": False}},
                  response={"type": "object", "properties": {
                      "releases": {"type": "array", "items": RELEASE_VIEW}}}),
        "post": Op("Release a model version as a REST service at /services/models/NAME/: "
                   "each replica waits in the fair queue, then serves", status=201,
                   response=RELEASE_VIEW,
                   body={"type": "object", "additionalProperties": False,
                         "required": ["name", "model"], "properties": {
                             "name": {"type": "string", "maxLength": 63},
                             "model": MODEL_REF, "replicas": REPLICAS,
                             "per_replica": PER_REPLICA,
                             "access": {"type": "string", "maxLength": 300},
                             "options": OPTIONS}},
                   body_example={"name": "digits", "model": "digits@champion",
                                 "replicas": 1, "per_replica": {"cpu": 1, "mem": "1G"},
                                 "access": "hub"},
                   errors={409: "a release of that name serves", 422: "can never fit"}),
    }

    async def get(self) -> None:
        views = await in_thread(self.store.list, self.actor, owner=self.query["owner"],
                                include_stopped=self.query["stopped"])
        self.write_json({"releases": [self.with_url(v) for v in views]})

    async def post(self) -> None:
        body = self.body
        model = body["model"]
        version = await self.resolve(model)
        per_replica = self.check_fits(body.get("per_replica"))
        replicas = await in_thread(
            self.store.create, self.actor, body["name"], model=model, version=version,
            replicas=body.get("replicas", 1), per_replica=per_replica,
            access_=body.get("access", "hub"), options=body.get("options"))
        await self.queue(replicas)
        await self.answer(body["name"], 201)


class ReleaseHandler(ReleasesBase):
    openapi = {
        "get": Op("A release: version, status, replicas and where each waits or runs, canary",
                  access="release:read", response=RELEASE_VIEW),
        "delete": Op("Stop a release: replicas leave the route, finish their requests and "
                     "stop; the name stays yours", access="release:manage",
                     response=RELEASE_VIEW, errors={409: "already stopped"}),
    }

    async def get(self, release: str) -> None:
        await self.answer(release)

    async def delete(self, release: str) -> None:
        drained = await in_thread(self.store.stop, self.actor, release)
        await self.manager.drain(drained)
        await self.answer(release)


class ScaleHandler(ReleasesBase):
    openapi = {"post": Op(
        "Scale a release: new replicas queue in the fair scheduler, the surplus drains",
        access="release:write", response=RELEASE_VIEW,
        body={"type": "object", "additionalProperties": False, "required": ["replicas"],
              "properties": {"replicas": REPLICAS}}, body_example={"replicas": 2})}

    async def post(self, release: str) -> None:
        added = await in_thread(self.store.scale, self.actor, release, self.body["replicas"])
        await self.queue(added)
        await self.manager.settle(release)
        await self.answer(release)


class RolloutHandler(ReleasesBase):
    openapi = {"post": Op(
        "Move a release to another version without downtime: its replicas start beside the "
        "old ones, traffic switches once they are ready, the old ones drain",
        access="release:write", response=RELEASE_VIEW,
        body={"type": "object", "additionalProperties": False, "required": ["model"],
              "properties": {"model": MODEL_REF}}, body_example={"model": "digits@v1"})}

    async def post(self, release: str) -> None:
        await in_thread(self.store.check, self.actor, release, "write")
        model = self.body["model"]
        version = await self.resolve(model)
        added = await in_thread(self.store.rollout, self.actor, release, model=model,
                                version=version)
        await self.queue(added)
        await self.answer(release)


class CanaryHandler(ReleasesBase):
    openapi = {
        "post": Op("Start a canary: another version takes PERCENT of the requests (the same "
                   "side per sticky key); promote or roll back later, or it is rolled back "
                   "by itself when its guard finds it worse than the stable version",
                   access="release:write", response=RELEASE_VIEW,
                   body={"type": "object", "additionalProperties": False,
                         "required": ["model", "percent"], "properties": {
                             "model": MODEL_REF, "percent": PERCENT,
                             "replicas": REPLICAS, "guard": GUARD}},
                   body_example={"model": "digits@v1", "percent": 10},
                   errors={409: "a canary runs already"}),
        "patch": Op("Change the canary's share of requests", access="release:write",
                    response=RELEASE_VIEW,
                    body={"type": "object", "additionalProperties": False,
                          "required": ["percent"], "properties": {"percent": PERCENT}},
                    body_example={"percent": 25}, errors={409: "no canary"}),
    }

    async def post(self, release: str) -> None:
        await in_thread(self.store.check, self.actor, release, "write")
        model = self.body["model"]
        version = await self.resolve(model)
        added = await in_thread(self.store.canary, self.actor, release, model=model,
                                version=version, percent=self.body["percent"],
                                replicas=self.body.get("replicas", 1),
                                guard=self.body.get("guard"))
        await self.queue(added)
        await self.answer(release)

    async def patch(self, release: str) -> None:
        await in_thread(self.store.set_canary_percent, self.actor, release,
                        self.body["percent"])
        await self.answer(release)


class PromoteHandler(ReleasesBase):
    openapi = {"post": Op(
        "Promote the canary: its version becomes the release's, the old version drains "
        "once enough replicas of the new one are ready", access="release:write",
        response=RELEASE_VIEW, errors={409: "no canary"})}

    async def post(self, release: str) -> None:
        added = await in_thread(self.store.promote, self.actor, release)
        await self.queue(added)
        await self.manager.settle(release)
        await self.answer(release)


class RollbackHandler(ReleasesBase):
    openapi = {"post": Op(
        "Roll the canary back: it leaves the route at once and stops",
        access="release:write", response=RELEASE_VIEW,
        body={"type": "object", "additionalProperties": False, "properties": {
            "reason": {"type": "string", "maxLength": 2000}}},
        body_example={"reason": "error rate"}, errors={409: "no canary"})}

    async def post(self, release: str) -> None:
        drained = await in_thread(self.store.rollback, self.actor, release,
                                  reason=(self.body or {}).get("reason", ""))
        await self.manager.drain(drained)
        await self.answer(release)


class HistoryHandler(ReleasesBase):
    openapi = {"get": Op("Every change to a release, oldest first (append-only)",
                         access="release:read", response={"type": "object", "properties": {
                             "history": {"type": "array"}}})}

    async def get(self, release: str) -> None:
        self.write_json({"history": await in_thread(self.store.history, self.actor,
                                                    release)})


class KeysHandler(ReleasesBase):
    openapi = {
        "get": Op("A release's API keys (never the keys themselves)", access="release:manage",
                  response={"type": "object", "properties": {
                      "keys": {"type": "array", "items": KEY_VIEW}}}),
        "post": Op("A new API key for applications outside the hub: shown this once "
                   "(send it as 'Authorization: Bearer KEY')", access="release:manage",
                   status=201, response=KEY_VIEW,
                   body={"type": "object", "additionalProperties": False, "properties": {
                       "note": {"type": "string", "maxLength": 255}}},
                   body_example={"note": "shop front-end"}),
    }

    async def get(self, release: str) -> None:
        self.write_json({"keys": await in_thread(self.store.keys, self.actor, release)})

    async def post(self, release: str) -> None:
        self.set_status(201)
        self.write_json(await in_thread(self.store.create_key, self.actor, release,
                                        (self.body or {}).get("note", "")))


class KeyHandler(ReleasesBase):
    openapi = {"delete": Op("Revoke an API key (refused by the gateway within seconds)",
                            access="release:manage", response=KEY_VIEW)}

    async def delete(self, release: str, key_id: str) -> None:
        self.write_json(await in_thread(self.store.revoke_key, self.actor, release, key_id))


class ReplicaLogHandler(ReleasesBase):
    openapi = {"get": Op("A replica's log (its model server's output), the last 256 KB",
                         access="release:manage", produces="text/plain")}

    async def get(self, release: str, replica: str) -> None:
        await in_thread(self.store.check, self.actor, release, "manage")
        ids = {r["id"] for r in await in_thread(self.store.replicas_of, release)}
        path = self.manager.log_path(release, replica)
        if replica not in ids or not path.is_file():
            raise NotFound(f"release {release!r} has no replica {replica!r} with a log; GET "
                           "the release for its replicas")
        text = await in_thread(_tail_bytes, path, 256 * 1024)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(text)


class MonitoringHandler(ReleasesBase):
    openapi = {"get": Op(
        "A release's requests over a window: requests/s, p50/p95/p99 latency, errors by "
        "status, classes predicted, confidence histogram, per version, and the same over "
        "time (series); input drift against each version's training data (KS and PSI per "
        "summary feature, chi-squared on classes) with a flag and its thresholds; the "
        "latest errors", access="release:read",
        query={"window": {"type": "number", "minimum": 1, "maximum": 30 * 86400,
                          "default": 3600, "description": "seconds back from now"},
               "bucket": {"type": "number", "minimum": 1, "maximum": 86400,
                          "description": "seconds per point of the series (default: "
                                         "60 points per window, at least 10 s)"}},
        response={"type": "object", "required": ["summary", "drift"], "properties": {
            "summary": {"type": "object"}, "drift": {"type": "object"},
            "series": {"type": "object"}, "recent_errors": {"type": "array"},
            "window_s": {"type": "number"}}})}

    async def get(self, release: str) -> None:
        view = await in_thread(self.store.get, self.actor, release)
        bucket = self.query["bucket"]
        self.write_json(await in_thread(
            self.ctx.monitor.report, view, float(self.query["window"]),
            bucket_s=float(bucket) if bucket is not None else None))


class TargetsHandler(ReleasesBase):
    openapi = {"get": Op(
        "Prometheus HTTP service discovery: every ready replica's metrics endpoint, labelled "
        "with its release, version, role and replica (http_sd_configs; admins)",
        access="admin", response={"type": "array", "items": {"type": "object"}})}

    async def get(self) -> None:
        table = await in_thread(self.store.route_table)
        groups = [{"targets": [backend.url.removeprefix("http://")],
                   "labels": {"release": name, "version": backend.version, "role": role,
                              "replica": backend.replica}}
                  for name, route in sorted(table.routes.items())
                  for role, side in (("stable", route.stable), ("canary", route.canary))
                  for backend in side]
        self.write_json(groups)


def _tail_bytes(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - size))
        return f.read()


R = "releases/(?P<release>[^/]+)"
ROUTES: list[tuple[str, type]] = [
    ("releases", ReleaseListHandler),
    ("serving/targets", TargetsHandler),
    (R, ReleaseHandler),
    (R + "/scale", ScaleHandler),
    (R + "/rollout", RolloutHandler),
    (R + "/canary", CanaryHandler),
    (R + "/promote", PromoteHandler),
    (R + "/rollback", RollbackHandler),
    (R + "/history", HistoryHandler),
    (R + "/keys", KeysHandler),
    (R + "/keys/(?P<key_id>[^/]+)", KeyHandler),
    (R + "/replicas/(?P<replica>[^/]+)/log", ReplicaLogHandler),
    (R + "/monitoring", MonitoringHandler),
]
