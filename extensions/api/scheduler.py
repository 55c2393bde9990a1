"""Scheduler routes: thin adapters over the shell (shell.py) and SchedulerService."""

from __future__ import annotations

import time

from loophub.errors import InvalidInput, NotFound, PermissionDenied
from loophub.scheduler.spec import SPEC_SCHEMA, RequestSpec

from .base import ApiHandler, Op
from .shell import SchedulerShell, fingerprint

REQUEST_VIEW = {"type": "object", "required": ["id", "state", "kind", "owner"], "properties": {
    "id": {"type": "string"}, "key": {"type": ["string", "null"]},
    "kind": {"type": "string"}, "owner": {"type": "string"}, "tenant": {"type": "string"},
    "state": {"enum": ["queued", "running", "done", "cancelled"]},
    "reason": {"type": "string"}, "position": {"type": ["integer", "null"]},
    "blocking": {"type": ["string", "null"]}, "message": {"type": "string"},
    "allocation": {"type": ["object", "null"]}, "fingerprint": {"type": "string"},
    "estimated_start": {"type": ["number", "null"]}}}
TRANSITION = {"type": "object", "properties": {
    "at": {"type": "number"}, "action": {"enum": ["submit", "start", "preempt", "end"]},
    "state": {"type": "string"}, "reason": {"type": "string"}, "stimulus": {"type": "string"},
    "actor": {"type": "string"}}}
REQUEST_ID = {"type": "string", "maxLength": 64}


class SchedulerHandler(ApiHandler):
    @property
    def shell(self) -> SchedulerShell:
        return self.ctx.scheduler

    def may_act_for_others(self) -> bool:
        a = self.actor
        return a.admin or (a.kind == "service" and a.name in self.ctx.trusted_services)

    def visible(self, view: dict) -> bool:
        return view["owner"] == self.actor.name or self.may_act_for_others()

    def own_view(self, request_id: str) -> dict:
        view = self.shell.service.get(request_id)
        if not self.visible(view):
            raise NotFound(f"no scheduler request {request_id!r} of yours")
        return view


class RequestsHandler(SchedulerHandler):
    openapi = {
        "post": Op(
            "Submit a resource request (idempotent per what it belongs to); 201 queued or "
            "running, 422 when it can never fit", body=SPEC_SCHEMA, response=REQUEST_VIEW,
            status=201, errors={422: "can never fit here (larger than any node, or over "
                                     "quota)"},
            body_example={"kind": "service", "release": "example", "replica": "0",
                          "demand": {"cpu": 0.1, "mem": 1}}),
        "get": Op(
            "Your requests, newest first (admins: everyone's), active and ended; "
            "?key= finds the requests of one server, kernel, job or replica",
            query={"key": {"type": "string", "maxLength": 1024},
                   "owner": {"type": "string", "maxLength": 255},
                   "state": {"enum": ["queued", "running", "done", "cancelled"]},
                   "limit": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
            response={"type": "object", "properties": {
                "requests": {"type": "array", "items": REQUEST_VIEW}}}),
    }

    async def post(self) -> None:
        body = self.body
        owner, groups = self.actor.name, list(self.actor.groups)
        if body.get("owner", owner) != owner:
            if not self.may_act_for_others():
                raise PermissionDenied("only admins and the hub's spawner submit requests for "
                                       "other users")
            owner, groups = body["owner"], body.get("groups") or []
        spec = RequestSpec.from_json(body, owner=owner, groups=groups)
        self.write_json(await self.shell.submit(spec, actor=self.actor.name))

    def get(self) -> None:
        owner = self.query["owner"]
        if not self.may_act_for_others():
            if owner not in (None, self.actor.name):
                raise PermissionDenied("you can list only your own requests")
            owner = self.actor.name
        self.write_json({"requests": self.shell.service.find(
            owner=owner, key=self.query["key"], state=self.query["state"],
            limit=self.query["limit"])})


class RequestHandler(SchedulerHandler):
    openapi = {
        "get": Op("A request's state, queue position, reason and ETA; ?wait=S long-polls "
                  "until it differs from ?known=<fingerprint> (at most 60 s)", access="own",
                  query={"wait": {"type": "number", "minimum": 0, "maximum": 60, "default": 0},
                         "known": {"type": "string", "maxLength": 200, "default": ""}},
                  response=REQUEST_VIEW),
        "delete": Op("Withdraw a queued request or release a running one (stops its server "
                     "or kernel when you are not its holder)", access="own",
                     query={"reason": {"type": "string", "maxLength": 500}},
                     response=REQUEST_VIEW),
    }

    async def get(self, request_id: str) -> None:
        view = self.own_view(request_id)
        self.shell.last_seen[request_id] = time.time()
        wait, known = self.query["wait"], self.query["known"]
        if wait > 0 and view["state"] in ("queued", "running") and known == fingerprint(view):
            changed, _ = await self.shell.watch({request_id: known}, wait, self.visible)
            view = changed[0] if changed else view
        view["fingerprint"] = fingerprint(view)
        self.write_json(view)

    def delete(self, request_id: str) -> None:
        self.own_view(request_id)
        reason = self.query["reason"] or f"released by {self.actor.name}"
        self.write_json(self.shell.release(request_id, reason=reason, actor=self.actor.name))


class HistoryHandler(SchedulerHandler):
    openapi = {"get": Op("Every transition of a request with its cause (stimulus, actor, "
                         "reason): why it waited, started, was preempted or stopped",
                         access="own", response={"type": "object", "properties": {
                             "transitions": {"type": "array", "items": TRANSITION}}})}

    def get(self, request_id: str) -> None:
        self.own_view(request_id)
        self.write_json({"transitions": self.shell.service.history(request_id)})


class WatchHandler(SchedulerHandler):
    openapi = {"post": Op(
        "Long-poll many requests at once: {requests: {id: fingerprint seen}, wait: s}; "
        "answers the views that differ (at once, or when one changes within wait) and the "
        "ids you cannot see. One watcher per process replaces a long-poll per waiter.",
        body={"type": "object", "required": ["requests"], "additionalProperties": False,
              "properties": {
                  "requests": {"type": "object", "maxProperties": 10000,
                               "propertyNames": {"maxLength": 64},
                               "additionalProperties": {"type": "string", "maxLength": 200}},
                  "wait": {"type": "number", "minimum": 0, "maximum": 60}}},
        max_body=4 * 1024 * 1024,
        response={"type": "object", "properties": {
            "requests": {"type": "array", "items": REQUEST_VIEW},
            "missing": {"type": "array", "items": {"type": "string"}}}},
        body_example={"requests": {}, "wait": 0})}

    async def post(self) -> None:
        changed, missing = await self.shell.watch(self.body["requests"],
                                                  self.body.get("wait", 0), self.visible)
        self.write_json({"requests": changed, "missing": missing})


class QueueHandler(SchedulerHandler):
    openapi = {"get": Op("Active requests in service order (admins see everyone's), and the "
                         "pool", response={"type": "object", "properties": {
                             "requests": {"type": "array", "items": REQUEST_VIEW},
                             "pool": {"type": "object"}}})}

    def get(self) -> None:
        owner = None if self.may_act_for_others() else self.actor.name
        self.write_json({"requests": self.shell.service.queue(owner),
                         "pool": self.shell.service.pool_view()})


class UsageHandler(SchedulerHandler):
    openapi = {"get": Op("CPU-, GPU- and memory-hours per user and group over ?since=&until= "
                         "(epoch seconds; default the last 7 days), and current dominant "
                         "shares", query={"since": {"type": "number", "minimum": 0},
                                          "until": {"type": "number", "minimum": 0}},
                         response={"type": "object"})}

    def get(self) -> None:
        until = self.query["until"] or time.time()
        since = self.query["since"] if self.query["since"] is not None else until - 7 * 86400
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


R = "scheduler/requests/(?P<request_id>[^/]+)"
ROUTES: list[tuple[str, type]] = [
    ("scheduler/requests", RequestsHandler),
    (R, RequestHandler),
    (R + "/history", HistoryHandler),
    ("scheduler/watch", WatchHandler),
    ("scheduler/queue", QueueHandler),
    ("scheduler/usage", UsageHandler),
]
