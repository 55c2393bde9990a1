"""Platform routes: health, identity, the resource pool, accounts."""

from __future__ import annotations

from datetime import datetime

from loophub import audit
from loophub.accounts import Accounts
from loophub.errors import InvalidInput

from .base import ApiHandler, Op, in_thread

NODE_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"}, "cpu": {"type": "number"},
        "mem": {"type": "integer", "description": "bytes"}, "gpu": {"type": "integer"},
        "gpu_type": {"type": ["string", "null"]}, "backend": {"type": "string"},
    },
}


class HealthHandler(ApiHandler):
    openapi = {"get": Op("Liveness and the state of the database and blob store",
                         access="public", response={"type": "object", "properties": {
                             "status": {"enum": ["ok", "degraded"]}, "version": {"type": "string"},
                             "checks": {"type": "object",
                                        "additionalProperties": {"type": "boolean"}}}},
                         errors={503: "degraded: a check failed"})}

    async def get(self) -> None:
        checks = await in_thread(self.ctx.health)
        self.write_json({"status": "ok" if all(checks.values()) else "degraded",
                         "version": self.ctx.version, "checks": checks},
                        200 if all(checks.values()) else 503)


class MeHandler(ApiHandler):
    openapi = {"get": Op("Who the caller is", response={
        "type": "object", "required": ["name", "groups", "admin"],
        "properties": {"name": {"type": "string"}, "kind": {"type": "string"},
                       "groups": {"type": "array", "items": {"type": "string"}},
                       "admin": {"type": "boolean"}}})}

    def get(self) -> None:
        a = self.actor
        self.write_json({"name": a.name, "kind": a.kind, "groups": list(a.groups),
                         "admin": a.admin})


class PoolHandler(ApiHandler):
    openapi = {"get": Op("Nodes of the resource pool and their capacity", response={
        "type": "object", "properties": {
            "nodes": {"type": "array", "items": NODE_SCHEMA},
            "total": {"type": "object"}}})}

    def get(self) -> None:
        nodes = [n.to_dict() for n in self.ctx.pool]
        total = {k: sum(n[k] for n in nodes) for k in ("cpu", "mem", "gpu")}
        sched = self.ctx.scheduler.service.pool_view()
        free = {n["name"]: n["free"] for n in sched["nodes"]}
        for node in nodes:
            node["free"] = free.get(node["name"])
        self.write_json({"nodes": nodes, "total": total, "policy": sched["policy"],
                         "queued": sched["queued"], "running": sched["running"]})


class AccountsHandler(ApiHandler):
    openapi = {
        "get": Op("List loophub login accounts", access="admin", response={
            "type": "object", "required": ["accounts"], "properties": {
                "accounts": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "admin": {"type": "boolean"},
                    "created": {"type": "string"}}}}}}),
        "post": Op("Create a login account; the generated password is returned once",
                   access="admin", status=201, response={
                       "type": "object", "required": ["name", "password"], "properties": {
                           "name": {"type": "string"}, "admin": {"type": "boolean"},
                           "password": {"type": "string"}}},
                   body={"type": "object", "required": ["name"], "additionalProperties": False,
                         "properties": {"name": {"type": "string", "maxLength": 64},
                                        "admin": {"type": "boolean"}}},
                   errors={409: "the account exists"}, body_example={"name": "matrixuser"}),
    }

    def get(self) -> None:
        self.write_json({"accounts": Accounts(self.ctx.db).list()})

    def post(self) -> None:
        name, admin = self.body["name"], self.body.get("admin", False)
        password = Accounts(self.ctx.db).create(name, admin=admin, actor=self.actor.name)
        self.write_json({"name": name, "admin": admin, "password": password})


class AccountResetHandler(ApiHandler):
    openapi = {"post": Op(
        "Give an account a new generated password, returned once (creates the account of a "
        "hub user added on the hub's admin page)", access="admin", response={
            "type": "object", "required": ["name", "password"], "properties": {
                "name": {"type": "string"}, "password": {"type": "string"}}},
        errors={400: "not a valid user name"})}

    def post(self, name: str) -> None:
        password = Accounts(self.ctx.db).reset(name, actor=self.actor.name)
        self.write_json({"name": name, "password": password})


class AuditHandler(ApiHandler):
    openapi = {"get": Op(
        "The audit trail, newest first, filtered by actor, action (exact, or a prefix ending "
        "in '.'), target (exact, or everything under it, e.g. dataset:pets) and time (ISO "
        "8601 with a time zone); page with before=<id>", access="admin",
        query={"actor": {"type": "string", "maxLength": 255},
               "action": {"type": "string", "maxLength": 100},
               "target": {"type": "string", "maxLength": 512},
               "since": {"type": "string", "maxLength": 64},
               "until": {"type": "string", "maxLength": 64},
               "before": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
               "limit": {"type": "integer", "minimum": 1, "maximum": audit.MAX_PAGE,
                         "default": 100}},
        response={"type": "object", "properties": {"events": {"type": "array"}}})}

    def get(self) -> None:
        q = self.query
        with self.ctx.db.transaction() as s:
            events = audit.events(s, actor=q["actor"], action=q["action"], target=q["target"],
                                  since=self._time("since"), until=self._time("until"),
                                  before=q["before"], limit=q["limit"])
        self.write_json({"events": events})

    def _time(self, name: str) -> datetime | None:
        raw = self.query[name]
        if not raw:
            return None
        try:
            value = datetime.fromisoformat(raw)
        except ValueError as exc:
            raise InvalidInput(f"{name}: expected an ISO 8601 time such as "
                               "2026-12-06T14:00:00+00:00") from exc
        if value.tzinfo is None:
            raise InvalidInput(f"{name}: give a time zone (e.g. +00:00 or Z)")
        return value


class OpenAPIHandler(ApiHandler):
    openapi = {"get": Op("This document", response={"type": "object"})}

    def get(self) -> None:
        self.write_json(self.ctx.openapi)


ROUTES: list[tuple[str, type]] = [
    ("health", HealthHandler),
    ("me", MeHandler),
    ("pool", PoolHandler),
    ("accounts", AccountsHandler),
    ("accounts/(?P<name>[^/]+)/reset", AccountResetHandler),
    ("audit", AuditHandler),
    ("openapi.json", OpenAPIHandler),
]
