"""Platform routes: health, identity, the resource pool, accounts."""

from __future__ import annotations

from loophub.accounts import Accounts
from loophub.store.models import AuditEvent

from .base import ApiHandler

NODE_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"}, "cpu": {"type": "number"},
        "mem": {"type": "integer", "description": "bytes"}, "gpu": {"type": "integer"},
        "gpu_type": {"type": ["string", "null"]}, "backend": {"type": "string"},
    },
}


class HealthHandler(ApiHandler):
    auth = "none"
    openapi = {"get": {"summary": "Liveness and the state of the database and blob store",
                       "response": {"type": "object"}}}

    def get(self) -> None:
        checks = self.ctx.health()
        self.write_json({"status": "ok" if all(checks.values()) else "degraded",
                         "version": self.ctx.version, "checks": checks},
                        200 if all(checks.values()) else 503)


class MeHandler(ApiHandler):
    openapi = {"get": {"summary": "Who the caller is", "response": {
        "type": "object", "required": ["name", "groups", "admin"],
        "properties": {"name": {"type": "string"}, "kind": {"type": "string"},
                       "groups": {"type": "array", "items": {"type": "string"}},
                       "admin": {"type": "boolean"}}}}}

    def get(self) -> None:
        a = self.actor
        self.write_json({"name": a.name, "kind": a.kind, "groups": list(a.groups),
                         "admin": a.admin})


class PoolHandler(ApiHandler):
    openapi = {"get": {"summary": "Nodes of the resource pool and their capacity", "response": {
        "type": "object", "properties": {
            "nodes": {"type": "array", "items": NODE_SCHEMA},
            "total": {"type": "object"}}}}}

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
    auth = "admin"
    openapi = {
        "get": {"summary": "List loophub login accounts", "response": {"type": "object"}},
        "post": {"summary": "Create a login account; the generated password is returned once",
                 "requestBody": {"content": {"application/json": {"schema": {
                     "type": "object", "required": ["name"],
                     "properties": {"name": {"type": "string"}, "admin": {"type": "boolean"}}}}}},
                 "responses": {"201": {"description": "created"},
                               "409": {"description": "exists"}}},
    }

    def get(self) -> None:
        with self.ctx.db.transaction() as s:
            from loophub.store.models import Account

            rows = [{"name": a.name, "admin": a.admin, "created": a.created}
                    for a in s.query(Account).order_by(Account.name)]
        self.write_json({"accounts": rows})

    def post(self) -> None:
        body = self.json_body()
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            self.write_json({"error": "expected {\"name\": str, \"admin\": bool}",
                             "detail": None}, 400)
            return
        admin = body.get("admin", False)
        if not isinstance(admin, bool):
            self.write_json({"error": "'admin' must be true or false", "detail": None}, 400)
            return
        password = Accounts(self.ctx.db).create(body["name"], admin=admin,
                                                actor=self.actor.name)
        self.write_json({"name": body["name"], "admin": admin, "password": password}, 201)


class AuditHandler(ApiHandler):
    auth = "admin"
    openapi = {"get": {"summary": "The audit trail, newest first (?limit=100)",
                       "response": {"type": "object"}}}

    def get(self) -> None:
        try:
            limit = min(int(self.get_argument("limit", "100")), 1000)
        except ValueError:
            self.write_json({"error": "limit must be a whole number", "detail": None}, 400)
            return
        with self.ctx.db.transaction() as s:
            rows = s.query(AuditEvent).order_by(AuditEvent.id.desc()).limit(max(limit, 1))
            events = [{"at": e.at, "actor": e.actor, "action": e.action, "target": e.target,
                       "detail": e.detail} for e in rows]
        self.write_json({"events": events})


class OpenAPIHandler(ApiHandler):
    openapi = {"get": {"summary": "This document", "response": {"type": "object"}}}

    def get(self) -> None:
        self.write_json(self.ctx.openapi)


ROUTES: list[tuple[str, type]] = [
    ("health", HealthHandler),
    ("me", MeHandler),
    ("pool", PoolHandler),
    ("accounts", AccountsHandler),
    ("audit", AuditHandler),
    ("openapi.json", OpenAPIHandler),
]
