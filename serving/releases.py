"""Releases: the domain side of serving models (rows, rules, history, keys, routes).

A release serves one model version (``model`` as asked, e.g. digits@champion, resolved to
``version`` digits@v3) with ``replicas`` replicas of ``per_replica`` resources each, at
/services/models/NAME/ behind the hub. Its replicas are rows here and ``service``
requests in the fair scheduler; the manager (manager.py) starts and stops their
processes and moves their states, this module decides nothing about processes.

Rollouts keep serving: a new version's replicas are added beside the old ones, and only
when as many of them are ready as the release wants are the others drained
(``to_drain``). A canary is a second role of replicas that takes ``percent`` of traffic;
promoting it makes its version the release's, rolling back drains it. Every change is
in the append-only history; API keys are kept as their sha256.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from typing import Any

from sqlalchemy import func, select

from loophub import access, audit
from loophub.errors import Conflict, InvalidInput, NotFound
from loophub.identity import Actor
from loophub.pool import PoolConfigError, parse_mem
from loophub.releases.logformat import REQUEST_ID
from loophub.releases.tables import (
    Release,
    ReleaseEvent,
    ReleaseFeedback,
    ReleaseKey,
    ReleaseReplica,
)
from loophub.store import Database
from loophub.store.models import iso, utcnow

from .canary import guard_options
from .routing import Backend, ReleaseRoute, RouteTable

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # a path part of its URL, as typed
MAX_REPLICAS = 16
KEY_PREFIX = "lhk_"
LIVE = ("queued", "starting", "ready", "failed")  # replicas the release still counts on
ENDED_MOVES = {("stopped", s) for s in ("queued", "starting", "ready", "draining", "failed")}
OPTIONS: dict[str, tuple[type, Any, Any]] = {  # name: (type, lowest, highest)
    "batching": (bool, None, None),
    "max_batch_size": (int, 1, 1024),
    "max_wait_ms": (float, 0, 1000),
    "log_sample_rate": (float, 0, 1),
    "sticky_header": (str, None, None),
}
DEFAULT_PER_REPLICA = {"cpu": 1.0, "mem": 1 << 30}


def key_digest(key: str) -> str:
    """What is stored of an API key (a 256-bit random key needs no slow hash)."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_access(value: str) -> tuple[str, str | None]:
    """(visibility, group) of hub | group:NAME | public-token."""
    if value == "hub":
        return "public", None
    if value == "public-token":
        return "private", None
    if isinstance(value, str) and value.startswith("group:") and len(value) > 6:
        return "group", value[6:]
    raise InvalidInput(f"access {value!r}: use 'hub' (every hub user), 'group:NAME' (a "
                       "group's members) or 'public-token' (API keys only, besides you)",
                       detail={"field": "access"})


def access_of(release: Release) -> str:
    return {"public": "hub", "private": "public-token"}.get(
        release.visibility, f"group:{release.group_name}")


def parse_per_replica(raw: dict | None) -> dict[str, float]:
    """One replica's demand: cpu (cores), mem (bytes or '2G'), gpu (devices)."""
    demand = dict(DEFAULT_PER_REPLICA)
    for key, value in (raw or {}).items():
        if key == "mem":
            try:
                demand["mem"] = parse_mem(value, "per_replica")
            except PoolConfigError as exc:
                raise InvalidInput(str(exc), detail={"field": "per_replica.mem"}) from None
        elif key in ("cpu", "gpu") and isinstance(value, int | float) \
                and not isinstance(value, bool) and 0 <= value <= 1024:
            demand[key] = float(value)
        else:
            raise InvalidInput(f"per_replica.{key}: {value!r} is not a cpu or gpu count or a "
                               "mem size (e.g. {'cpu': 1, 'mem': '2G'})",
                               detail={"field": f"per_replica.{key}"})
    if demand["cpu"] <= 0 or demand["mem"] <= 0:
        raise InvalidInput("per_replica: a replica needs some cpu and mem",
                           detail={"field": "per_replica"})
    return demand


def parse_options(raw: dict | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        if key not in OPTIONS:
            raise InvalidInput(f"options.{key}: unknown; use {', '.join(OPTIONS)}",
                               detail={"field": f"options.{key}"})
        kind, low, high = OPTIONS[key]
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok or (low is not None and not low <= value <= high):
            raise InvalidInput(f"options.{key}: {value!r} must be a {kind.__name__}"
                               + (f" within {low} and {high}" if low is not None else ""),
                               detail={"field": f"options.{key}"})
        out[key] = value
    return out


def check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidInput(f"release name {name!r}: use 1-63 lower-case letters, digits and "
                           "'-' (it is part of the release's URL)", detail={"field": "name"})


def check_replicas(count: Any, field: str = "replicas") -> int:
    if not isinstance(count, int) or isinstance(count, bool) \
            or not 1 <= count <= MAX_REPLICAS:
        raise InvalidInput(f"{field}: {count!r} must be a whole number from 1 to "
                           f"{MAX_REPLICAS}", detail={"field": field})
    return count


def check_guard(raw: Any) -> dict[str, float]:
    """The canary guard's thresholds (serving/canary.py), defaults filled in."""
    if raw is None or raw is True:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidInput("guard: an object of thresholds, or false for no automatic "
                           "rollback", detail={"field": "guard"})
    limits = {"error_margin": (0.0, 1.0), "latency_ratio": (1.0, 1000.0),
              "latency_floor_ms": (0.0, 600_000.0), "min_requests": (1, 1_000_000)}
    for key, value in raw.items():
        low, high = limits.get(key, (None, None))
        if low is None or isinstance(value, bool) or not isinstance(value, int | float) \
                or not low <= value <= high:
            raise InvalidInput(f"guard.{key}: {value!r} is not one of {', '.join(limits)} "
                               "within its range", detail={"field": f"guard.{key}"})
    return guard_options(raw)


def check_percent(percent: Any) -> float:
    if isinstance(percent, bool) or not isinstance(percent, int | float) \
            or not 0 < percent < 100:
        raise InvalidInput(f"percent: {percent!r} must be above 0 and below 100 (the "
                           "canary's share of requests)", detail={"field": "percent"})
    return float(percent)


class ReleaseStore:
    """Reads and changes releases; every change bumps the release's ``generation`` when
    the routes move and is recorded in its history."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- reading -------------------------------------------------------------------------

    def _row(self, s, actor: Actor, name: str, need: access.Need = "read") -> Release:
        release = s.scalars(select(Release).where(Release.name == name)).first()
        if release is None:
            raise NotFound(f"no release named {name!r} that you can see; "
                           "GET releases lists yours")
        access.require(actor, release, need, noun="release", name=name)
        return release

    def check(self, actor: Actor, name: str, need: access.Need = "read") -> None:
        with self.db.session() as s:
            self._row(s, actor, name, need)

    def _replicas(self, s, release: Release, states: tuple[str, ...] | None = None
                  ) -> list[ReleaseReplica]:
        query = select(ReleaseReplica).where(ReleaseReplica.release_id == release.id)
        if states is not None:
            query = query.where(ReleaseReplica.state.in_(states))
        return list(s.scalars(query.order_by(ReleaseReplica.created, ReleaseReplica.id)))

    def view(self, s, release: Release) -> dict:
        replicas = self._replicas(s, release)
        live = [r for r in replicas if r.state != "stopped"]
        # the last replicas that stopped by themselves say why a release is failing
        gave_up = sorted((r for r in replicas if r.state == "stopped"
                          and r.message not in ("stopped", "")), key=lambda r: r.updated)
        return {
            "name": release.name, "owner": release.owner, "access": access_of(release),
            "model": release.model, "version": release.version,
            "task": release.meta.get("task"), "replicas": release.replicas,
            "per_replica": release.per_replica, "options": release.options,
            "canary": release.canary and {k: v for k, v in release.canary.items()
                                          if k not in ("artifact", "meta")},
            "state": release.state, "status": self._status(release, live),
            "ready": sum(r.state == "ready" for r in live), "generation": release.generation,
            "replica_list": [replica_view(r) for r in live],
            "stopped_replicas": [replica_view(r) for r in gave_up[-3:]],
            "created": iso(release.created), "updated": iso(release.updated),
        }

    @staticmethod
    def _status(release: Release, live: list[ReleaseReplica]) -> str:
        """One word for people: stopped, waiting (nothing ready yet), serving, updating
        (a rollout in progress), degraded (fewer ready than wanted) or failed (every
        replica gave up: ``stopped_replicas`` says why)."""
        if release.state == "stopped":
            return "stopped"
        if not any(r.state in LIVE for r in live):
            return "failed"  # every replica gave up: see stopped_replicas
        ready = [r for r in live if r.state == "ready"]
        if not ready:
            return "waiting"
        stable = [r for r in ready if r.role == "stable" and r.version == release.version]
        if any(r.version != release.version and r.role == "stable" and r.state in LIVE
               for r in live):
            return "updating"
        return "serving" if len(stable) >= release.replicas else "degraded"

    def get(self, actor: Actor, name: str) -> dict:
        with self.db.session() as s:
            return self.view(s, self._row(s, actor, name))

    def list(self, actor: Actor, *, owner: str | None = None,
             include_stopped: bool = False) -> list[dict]:
        with self.db.session() as s:
            query = select(Release).where(access.readable_filter(actor, Release))
            if owner:
                query = query.where(Release.owner == owner)
            if not include_stopped:
                query = query.where(Release.state != "stopped")
            return [self.view(s, r) for r in s.scalars(query.order_by(Release.name))]

    def history(self, actor: Actor, name: str) -> list[dict]:
        with self.db.session() as s:
            release = self._row(s, actor, name)
            return [{"at": iso(e.at), "actor": e.actor, "action": e.action,
                     "detail": e.detail} for e in s.scalars(
                select(ReleaseEvent).where(ReleaseEvent.release_id == release.id)
                .order_by(ReleaseEvent.id))]

    def replica(self, replica_id: str) -> dict | None:
        """A replica with what its process needs (the manager's read, no access check)."""
        with self.db.session() as s:
            r = s.get(ReleaseReplica, replica_id)
            if r is None:
                return None
            release = s.get(Release, r.release_id)
            return {**replica_view(r), "release": release.name, "owner": release.owner,
                    "artifact": r.artifact, "meta": r.meta, "options": release.options,
                    "release_state": release.state, "wanted": self._wanted(release, r)}

    @staticmethod
    def _wanted(release: Release, replica: ReleaseReplica) -> bool:
        return release.state == "active" and replica.state in LIVE

    def replicas_of(self, name: str, states: tuple[str, ...] | None = None) -> list[dict]:
        with self.db.session() as s:
            release = s.scalars(select(Release).where(Release.name == name)).first()
            return [replica_view(r) for r in self._replicas(s, release, states)] \
                if release else []

    def live_replicas(self) -> list[dict]:
        """Every replica a process may belong to (the manager's recovery and watch)."""
        with self.db.session() as s:
            rows = s.execute(select(ReleaseReplica, Release.name).join(
                Release, Release.id == ReleaseReplica.release_id).where(
                ReleaseReplica.state.in_(("starting", "ready", "draining"))))
            return [{**replica_view(r), "release": name} for r, name in rows]

    # -- routes (the gateway's reads) -----------------------------------------------------

    def generation(self) -> int:
        """Moves whenever any release's routing changes (a release is never deleted, and
        each change adds to its own generation)."""
        with self.db.session() as s:
            return int(s.scalar(select(func.coalesce(func.sum(Release.generation), 0)
                                       + func.count(Release.id))) or 0)

    def route_table(self) -> RouteTable:
        with self.db.session() as s:
            generation = self.generation()
            releases = list(s.scalars(select(Release).where(Release.state == "active")))
            ready: dict[int, list[ReleaseReplica]] = {}
            for r in s.scalars(select(ReleaseReplica).where(ReleaseReplica.state == "ready")
                               .order_by(ReleaseReplica.id)):
                ready.setdefault(r.release_id, []).append(r)
            routes = {}
            for release in releases:
                mine = ready.get(release.id, [])
                side = {role: tuple(Backend(r.url, r.id, r.version) for r in mine
                                    if r.role == role and r.url) for role in ("stable",
                                                                             "canary")}
                canary = release.canary or {}
                routes[release.name] = ReleaseRoute(
                    release.name, release.owner, release.visibility, release.group_name,
                    stable=side["stable"], canary=side["canary"],
                    canary_percent=float(canary.get("percent", 0.0)),
                    sticky_header=release.options.get("sticky_header"),
                    state=self._status(release, mine))
            return RouteTable(routes, generation)

    def guarded_canaries(self) -> list[dict]:
        """Releases whose canary has a guard, with their ready replicas' URLs by role."""
        with self.db.session() as s:
            out = []
            for release in s.scalars(select(Release).where(Release.state == "active",
                                                           Release.canary.is_not(None))):
                canary = release.canary or {}
                if not canary.get("guard"):
                    continue
                ready = self._replicas(s, release, ("ready",))
                out.append({"name": release.name, "since": canary["since"],
                            "version": canary["version"], "guard": canary["guard"],
                            "replicas": [{"id": r.id, "role": r.role, "url": r.url}
                                         for r in ready if r.url]})
            return out

    def key_release(self, digest: str) -> str | None:
        with self.db.session() as s:
            return s.scalar(select(Release.name).join(
                ReleaseKey, ReleaseKey.release_id == Release.id).where(
                ReleaseKey.digest == digest, ReleaseKey.revoked.is_(None),
                Release.state == "active"))

    # -- changing -------------------------------------------------------------------------

    def _event(self, s, release: Release, actor: Actor, action: str, **detail: Any) -> None:
        s.add(ReleaseEvent(release_id=release.id, actor=actor.name, action=action,
                           detail=detail, at=utcnow()))
        audit.record(s, actor, f"release.{action}", f"release:{release.name}", **detail)

    @staticmethod
    def _moved(release: Release) -> None:
        release.generation += 1
        release.updated = utcnow()

    def create(self, actor: Actor, name: str, *, model: str, version: dict, replicas: int,
               per_replica: dict | None, access_: str, options: dict | None) -> list[dict]:
        """A new release (or a stopped one of the same name and owner, again) and its
        replicas' rows (queued); returns the replicas to request from the scheduler."""
        check_name(name)
        count = check_replicas(replicas)
        visibility, group = parse_access(access_)
        if group is not None and group not in actor.groups and not actor.admin:
            raise InvalidInput(f"access group:{group}: you are not in group {group!r}; "
                               "share with one of your groups", detail={"field": "access"})
        demand, opts = parse_per_replica(per_replica), parse_options(options)
        with self.db.transaction() as s:
            release = s.scalars(select(Release).where(Release.name == name)).first()
            if release is not None and (release.state != "stopped" or (
                    release.owner != actor.name and not actor.admin)):
                raise Conflict(f"a release named {name!r} exists (owner {release.owner}, "
                               f"{release.state}); pick another name, or change it with "
                               "rollout/scale")
            if release is None:
                release = Release(name=name, owner=actor.name, generation=1,
                                  created=utcnow())
                s.add(release)
            release.visibility, release.group_name = visibility, group
            release.model, release.version = model, version["ref"]
            release.artifact, release.meta = version["artifact"]["blob"], version["meta"]
            release.replicas, release.per_replica, release.options = count, demand, opts
            release.canary, release.state = None, "active"
            self._moved(release)
            s.flush()
            self._event(s, release, actor, "release", model=model, version=version["ref"],
                        replicas=count, access=access_)
            return [self._add_replica(s, release, "stable", release.version,
                                      release.artifact, release.meta)
                    for _ in range(count)]

    @staticmethod
    def _add_replica(s, release: Release, role: str, version: str, artifact: str,
                     meta: dict) -> dict:
        replica = ReleaseReplica(id=uuid.uuid4().hex[:12], release_id=release.id, role=role,
                                 version=version, artifact=artifact, meta=meta,
                                 state="queued", restarts=0, message="waiting for resources",
                                 created=utcnow(), updated=utcnow())
        s.add(replica)
        s.flush()
        return {**replica_view(replica), "release": release.name, "owner": release.owner,
                "per_replica": release.per_replica}

    def rollout(self, actor: Actor, name: str, *, model: str, version: dict) -> list[dict]:
        """Move the release to VERSION: its replicas are added; the old ones are drained
        once they are ready (``to_drain``). A canary in progress is dropped."""
        with self.db.transaction() as s:
            release = self._row(s, actor, name, "write")
            self._active(release)
            release.model, release.version = model, version["ref"]
            release.artifact, release.meta = version["artifact"]["blob"], version["meta"]
            release.canary = None
            self._moved(release)
            self._event(s, release, actor, "rollout", model=model, version=version["ref"])
            return [self._add_replica(s, release, "stable", release.version,
                                      release.artifact, release.meta)
                    for _ in range(release.replicas)]

    def scale(self, actor: Actor, name: str, replicas: int) -> list[dict]:
        """Change the number of replicas: more are added, the surplus drained."""
        count = check_replicas(replicas)
        with self.db.transaction() as s:
            release = self._row(s, actor, name, "write")
            self._active(release)
            before, release.replicas = release.replicas, count
            self._moved(release)
            self._event(s, release, actor, "scale", replicas=count, before=before)
            current = [r for r in self._replicas(s, release, LIVE)
                       if r.role == "stable" and r.version == release.version]
            return [self._add_replica(s, release, "stable", release.version,
                                      release.artifact, release.meta)
                    for _ in range(count - len(current))]

    def canary(self, actor: Actor, name: str, *, model: str, version: dict, percent: float,
               replicas: int = 1, guard: dict | bool | None = None) -> list[dict]:
        """A canary of VERSION taking PERCENT of requests; GUARD: the automatic rollback's
        thresholds (canary.GUARD_DEFAULTS when None; False: no automatic rollback)."""
        percent = check_percent(percent)
        guard = None if guard is False else check_guard(guard)
        count = check_replicas(replicas, "canary replicas")
        with self.db.transaction() as s:
            release = self._row(s, actor, name, "write")
            self._active(release)
            if release.canary:
                raise Conflict(f"release {name!r} already has a canary "
                               f"({release.canary['version']}); promote or roll it back first")
            if version["ref"] == release.version:
                raise InvalidInput(f"{version['ref']} is what {name!r} serves already; a "
                                   "canary needs another version", detail={"field": "model"})
            release.canary = {"model": model, "version": version["ref"], "percent": percent,
                              "replicas": count, "artifact": version["artifact"]["blob"],
                              "meta": version["meta"], "since": iso(utcnow()),
                              "guard": guard}
            self._moved(release)
            self._event(s, release, actor, "canary", model=model, version=version["ref"],
                        percent=percent)
            return [self._add_replica(s, release, "canary", version["ref"],
                                      version["artifact"]["blob"], version["meta"])
                    for _ in range(count)]

    def set_canary_percent(self, actor: Actor, name: str, percent: float) -> dict:
        percent = check_percent(percent)
        with self.db.transaction() as s:
            release = self._row(s, actor, name, "write")
            if not release.canary:
                raise Conflict(f"release {name!r} has no canary")
            release.canary = {**release.canary, "percent": percent}
            self._moved(release)
            self._event(s, release, actor, "canary_percent", percent=percent)
            return self.view(s, release)

    def promote(self, actor: Actor, name: str) -> list[dict]:
        """The canary's version becomes the release's: its replicas turn stable, more are
        added up to the release's count, the old version drains once they are ready."""
        with self.db.transaction() as s:
            release = self._row(s, actor, name, "write")
            canary = release.canary
            if not canary:
                raise Conflict(f"release {name!r} has no canary to promote")
            release.model, release.version = canary["model"], canary["version"]
            release.artifact, release.meta = canary["artifact"], canary["meta"]
            release.canary = None
            turned = [r for r in self._replicas(s, release, LIVE) if r.role == "canary"]
            for r in turned:
                r.role, r.updated = "stable", utcnow()
            self._moved(release)
            self._event(s, release, actor, "promote", version=release.version)
            return [self._add_replica(s, release, "stable", release.version,
                                      release.artifact, release.meta)
                    for _ in range(release.replicas - len(turned))]

    def rollback(self, actor: Actor, name: str, *, reason: str = "") -> list[dict]:
        """Drop the canary: its replicas leave the route at once; returns them to stop."""
        with self.db.transaction() as s:
            release = self._row(s, actor, name, "write")
            if not release.canary:
                raise Conflict(f"release {name!r} has no canary to roll back")
            version = release.canary["version"]
            release.canary = None
            out = self._drain(s, release, [r for r in self._replicas(s, release, LIVE)
                                           if r.role == "canary"])
            self._moved(release)
            self._event(s, release, actor, "rollback", version=version, reason=reason)
            return out

    def stop(self, actor: Actor, name: str) -> list[dict]:
        """Stop serving: every replica leaves the route and is drained; the name stays the
        owner's (release it again to serve)."""
        with self.db.transaction() as s:
            release = self._row(s, actor, name, "manage")
            if release.state == "stopped":
                raise Conflict(f"release {name!r} is already stopped")
            release.state, release.canary = "stopped", None
            out = self._drain(s, release, self._replicas(s, release, LIVE))
            self._moved(release)
            self._event(s, release, actor, "stop")
            return out

    @staticmethod
    def _active(release: Release) -> None:
        if release.state != "active":
            raise Conflict(f"release {release.name!r} is stopped; release it again first")

    def _drain(self, s, release: Release, replicas: list[ReleaseReplica]) -> list[dict]:
        for r in replicas:
            r.state, r.updated = "draining", utcnow()
            r.message = "draining: out of the route, finishing its requests"
        return [{**replica_view(r), "release": release.name} for r in replicas]

    def to_drain(self, name: str) -> list[dict]:
        """Replicas to take out of the route now: once as many replicas of the release's
        version are ready as it wants, the stable ones of other versions and the surplus
        of its own (newest kept). Marks them draining (one transaction)."""
        with self.db.transaction() as s:
            release = s.scalars(select(Release).where(Release.name == name)).first()
            if release is None or release.state != "active":
                return []
            stable = [r for r in self._replicas(s, release, LIVE) if r.role == "stable"]
            current = [r for r in stable if r.version == release.version]
            ready = [r for r in current if r.state == "ready"]
            if len(ready) < release.replicas:
                others = []
            else:
                others = [r for r in stable if r.version != release.version]
            surplus = len(current) - release.replicas
            if surplus > 0:  # the waiting ones go first, then the oldest ready ones
                order = sorted(current, key=lambda r: (r.state == "ready", r.created))
                others += order[:surplus]
            if not others:
                return []
            out = self._drain(s, release, others)
            self._moved(release)
            return out

    def set_replica(self, replica_id: str, state: str, *, message: str = "",
                    routes: bool = False, **fields: Any) -> dict | None:
        """Move a replica (the manager's writes); ROUTES: the gateway must see it."""
        with self.db.transaction() as s:
            r = s.get(ReleaseReplica, replica_id)
            if r is None or (r.state, state) in ENDED_MOVES or (
                    r.state == "draining" and state not in ("draining", "stopped")):
                return None  # stopped stays stopped; a drained replica never serves again
            was_ready = r.state == "ready"
            r.state, r.message, r.updated = state, message, utcnow()
            for key, value in fields.items():
                setattr(r, key, value)
            if routes or was_ready or state == "ready":
                release = s.get(Release, r.release_id)
                self._moved(release)
            return replica_view(r)

    def set_request(self, replica_id: str, request_id: str) -> None:
        """Its scheduler request (the scheduler may have started it already)."""
        with self.db.transaction() as s:
            r = s.get(ReleaseReplica, replica_id)
            if r is not None:
                r.request_id = request_id
                if r.state == "queued":
                    r.message = "waiting in the fair queue"

    def record(self, name: str, actor: Actor, action: str, **detail: Any) -> None:
        """A history entry by the platform (an automatic rollback, a replica restart)."""
        with self.db.transaction() as s:
            release = s.scalars(select(Release).where(Release.name == name)).first()
            if release is not None:
                self._event(s, release, actor, action, **detail)

    # -- feedback on answers -------------------------------------------------------------------

    def add_feedback(self, actor: Actor, name: str, request_id: Any, *, instance: Any = 0,
                     label: Any = None, note: Any = "") -> dict:
        """A caller flags an answer (whoever may call the release may flag): REQUEST_ID
        as the answer gave it, the INSTANCE's index, the LABEL they say is right (one of
        the model's labels), a NOTE."""
        check_feedback(request_id, instance, note)
        with self.db.transaction() as s:
            release = self._row(s, actor, name, "read")
            labels = release.meta.get("labels") or []
            if label is not None and (not isinstance(label, str) or (labels and label not in
                                                                     labels)):
                raise InvalidInput(f"label: {label!r} is not one of the model's labels "
                                   f"({', '.join(map(str, labels[:20]))})",
                                   detail={"field": "label"})
            row = ReleaseFeedback(release_id=release.id, request_id=request_id,
                                  instance=instance, label=label, note=note, by=actor.name,
                                  created=utcnow())
            s.add(row)
            s.flush()
            return feedback_view(row)

    def feedback(self, actor: Actor, name: str, *, limit: int = 1000) -> list[dict]:
        """The flags on a release's answers, newest first (owners and admins: they name
        who flagged what)."""
        with self.db.session() as s:
            release = self._row(s, actor, name, "manage")
            return [feedback_view(f) for f in s.scalars(
                select(ReleaseFeedback).where(ReleaseFeedback.release_id == release.id)
                .order_by(ReleaseFeedback.id.desc()).limit(max(1, min(limit, 10000))))]

    # -- API keys ---------------------------------------------------------------------------

    def create_key(self, actor: Actor, name: str, note: str = "") -> dict:
        if not isinstance(note, str) or len(note) > 255:
            raise InvalidInput("note: up to 255 characters", detail={"field": "note"})
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self.db.transaction() as s:
            release = self._row(s, actor, name, "manage")
            row = ReleaseKey(id=uuid.uuid4().hex[:12], release_id=release.id,
                             digest=key_digest(key), prefix=key[:12], note=note,
                             created_by=actor.name, created=utcnow())
            s.add(row)
            self._event(s, release, actor, "key", key=row.id, note=note)
            return {**key_view(row), "key": key}

    def keys(self, actor: Actor, name: str) -> list[dict]:
        with self.db.session() as s:
            release = self._row(s, actor, name, "manage")
            return [key_view(k) for k in s.scalars(select(ReleaseKey).where(
                ReleaseKey.release_id == release.id).order_by(ReleaseKey.created))]

    def revoke_key(self, actor: Actor, name: str, key_id: str) -> dict:
        with self.db.transaction() as s:
            release = self._row(s, actor, name, "manage")
            row = s.get(ReleaseKey, key_id)
            if row is None or row.release_id != release.id:
                raise NotFound(f"release {name!r} has no key {key_id!r}; GET its keys")
            if row.revoked is None:
                row.revoked = utcnow()
                self._event(s, release, actor, "revoke_key", key=key_id)
            return key_view(row)


def replica_view(r: ReleaseReplica) -> dict:
    return {"id": r.id, "role": r.role, "version": r.version, "state": r.state,
            "request_id": r.request_id, "node": r.node, "url": r.url, "pid": r.pid,
            "job": r.job, "restarts": r.restarts, "message": r.message, "created": iso(r.created),
            "updated": iso(r.updated)}


def check_feedback(request_id: Any, instance: Any, note: Any) -> None:
    if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
        raise InvalidInput("request_id: the 'request_id' of the answer you flag (8-64 "
                           "letters, digits, '-' or '_')", detail={"field": "request_id"})
    if isinstance(instance, bool) or not isinstance(instance, int) or not 0 <= instance < 256:
        raise InvalidInput("instance: the index of the flagged instance in its request "
                           "(0-255)", detail={"field": "instance"})
    if not isinstance(note, str) or len(note) > 1000:
        raise InvalidInput("note: up to 1000 characters", detail={"field": "note"})


def feedback_view(f: ReleaseFeedback) -> dict:
    return {"id": f.id, "request_id": f.request_id, "instance": f.instance, "label": f.label,
            "note": f.note, "by": f.by, "created": iso(f.created)}


def key_view(k: ReleaseKey) -> dict:
    return {"id": k.id, "prefix": k.prefix, "note": k.note, "created_by": k.created_by,
            "created": iso(k.created), "revoked": iso(k.revoked)}
