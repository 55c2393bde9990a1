"""The scheduler's I/O shell: persistence, the wall clock, and the views users see.

``SchedulerState`` (state.py) is pure; this class drives it with the wall clock and
keeps the database in step: every event runs in one transaction that updates the
request rows the decisions touched and saves the core's exported state, so a
restart of the API service restores exactly what was queued and what was running.
The API service is the only owner; the hub's FairSpawner, kernels and training jobs
all reach it through the API.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from loophub.errors import InvalidInput, LoophubError, NotFound
from loophub.pool import NodeSpec
from loophub.scheduler.model import GIB, KINDS, Node, Request, Resources, SchedulerConfig
from loophub.scheduler.state import SchedulerError, SchedulerState
from loophub.store import Database
from loophub.store.models import SchedRequest, SchedSnapshot

log = logging.getLogger("loophub.scheduler")
ACTIVE = ("queued", "running")
SNAPSHOT_ID = 1


class Unschedulable(LoophubError):
    """The request can never start here (larger than any node, or over quota)."""

    status = 422


@dataclass(frozen=True)
class Tenancy:
    """Weights and quotas, from JupyterHub group properties or config."""

    weights: dict[str, float]
    group_weights: dict[str, float]
    quotas: dict[str, dict[str, float]]
    group_quotas: dict[str, dict[str, float]]


def _number(spec: dict, key: str, where: str, *, default: float | None = None,
            integer: bool = False, minimum: float = 0) -> float | None:
    value = spec.get(key, default)
    if value is None:
        return None
    ok_type = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type) or value < minimum:
        kind = "a whole number" if integer else "a number"
        raise InvalidInput(f"{where}.{key}: must be {kind} >= {minimum}, got {value!r}")
    return value


def parse_request_spec(spec: Any, *, request_id: str, tenant: str,
                       groups: Iterable[str]) -> Request:
    """A Request from client JSON; every mistake named with its field."""
    if not isinstance(spec, dict):
        raise InvalidInput("request: expected a JSON object with kind, demand and count")
    unknown = set(spec) - {"kind", "demand", "count", "gpu_type", "preemptible", "runtime",
                           "key", "meta", "tenant", "groups"}
    if unknown:
        raise InvalidInput(f"request: unknown fields {sorted(unknown)}")
    kind = spec.get("kind", "job")
    if kind not in KINDS:
        raise InvalidInput(f"request.kind: {kind!r} is not one of {sorted(KINDS)}")
    demand = spec.get("demand")
    if not isinstance(demand, dict) or not demand:
        raise InvalidInput("request.demand: expected {\"cpu\": cores, \"mem\": bytes, "
                           "\"gpu\": devices}")
    values = {}
    for key in demand:
        if not isinstance(key, str) or not key.isidentifier():
            raise InvalidInput(f"request.demand: {key!r} is not a resource name")
        values[key] = _number(demand, key, "request.demand", integer=key in ("gpu", "mem"))
    if not any(values.values()):
        raise InvalidInput("request.demand: ask for at least some cpu, mem or gpu")
    count = int(_number(spec, "count", "request", default=1, integer=True, minimum=1))
    runtime = _number(spec, "runtime", "request", minimum=1)
    gpu_type = spec.get("gpu_type")
    if gpu_type is not None and not isinstance(gpu_type, str):
        raise InvalidInput("request.gpu_type: must be a string such as 'a100' or 'a100|h100'")
    preemptible = spec.get("preemptible", False)
    if not isinstance(preemptible, bool):
        raise InvalidInput("request.preemptible: must be true or false")
    return Request(id=request_id, tenant=tenant, demand=Resources.from_dict(values),
                   count=count, groups=tuple(sorted(set(groups))), kind=kind,
                   preemptible=preemptible, runtime=runtime, gpu_type=gpu_type)


@dataclass(frozen=True)
class _QueueSnapshot:
    """The policy's service order and the shares, computed once per view or listing."""

    order: dict[str, int]
    shares: dict[str, float]

    @classmethod
    def of(cls, state: SchedulerState) -> _QueueSnapshot:
        order = state.policy.queue_order(state, state.now)
        return cls({rid: i for i, rid in enumerate(order)}, state.dominant_shares())


class SchedulerService:
    def __init__(self, db: Database, nodes: Iterable[NodeSpec], *,
                 policy: str = "balanced-drf", config: SchedulerConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self.state = self._load(policy, config or SchedulerConfig(),
                                [Node.from_spec(n) for n in nodes])

    # -- start-up -------------------------------------------------------------

    def _load(self, policy: str, config: SchedulerConfig, nodes: list[Node]) -> SchedulerState:
        with self.db.transaction() as s:
            snapshot = s.get(SchedSnapshot, SNAPSHOT_ID)
            data = dict(snapshot.data) if snapshot else None
        if data is None:
            state = SchedulerState(policy, config, nodes)
        else:
            if data["policy"] != policy:
                log.info("scheduler policy changed %s -> %s", data["policy"], policy)
                data.update(policy=policy, policy_state={})
            data["config"] = {**data["config"], **config.to_dict()}
            state = SchedulerState.from_export(data)
            log.info("restored %d queued and %d running requests", len(state.queued),
                     len(state.running))
        with self.db.transaction() as s:
            self._apply(s, self._reconcile_nodes(state, nodes), state)
        return state

    def _reconcile_nodes(self, state: SchedulerState, nodes: list[Node]) -> list:
        """The pool may have changed while we were down: follow the configuration."""
        now = max(self.clock(), state.now)
        wanted = {n.name: n for n in nodes}
        decisions = []
        current = {name: state.node(name) for name in state.node_names()}
        for name, node in current.items():
            if wanted.get(name) != node:
                decisions += state.remove_node(name, now)
        for name, node in wanted.items():
            if current.get(name) != node:
                decisions += state.add_node(node, now)
        return decisions

    # -- events ---------------------------------------------------------------

    def _now(self) -> float:
        return max(self.clock(), self.state.now)

    def _save(self, s: Session, state: SchedulerState | None = None) -> None:
        data = (state or self.state).export_state()
        snapshot = s.get(SchedSnapshot, SNAPSHOT_ID)
        if snapshot is None:
            s.add(SchedSnapshot(id=SNAPSHOT_ID, data=data, saved_at=self.clock()))
        else:
            snapshot.data, snapshot.saved_at = data, self.clock()

    def _apply(self, s: Session, decisions: list, state: SchedulerState | None = None
               ) -> list[str]:
        """Record what the core decided; returns the ids whose state changed."""
        state = state or self.state
        changed = []
        for d in decisions:
            rec = s.get(SchedRequest, d.request_id)
            if rec is None:
                continue
            runs = [list(run) for run in rec.meta.get("runs", [])]  # copies: JSON change detection
            if d.action == "start":
                rec.state, rec.reason = "running", ""
                rec.started_at = d.allocation.start
                rec.allocation = d.allocation.to_dict()
                runs.append([d.allocation.start, None])
            elif d.action == "preempt":
                rec.state, rec.reason, rec.allocation = "queued", d.reason, None
                rec.preemptions += 1
                if runs:
                    runs[-1][1] = state.now
            rec.meta = {**rec.meta, "runs": runs}
            changed.append(rec.id)
        self._save(s, state)
        return changed

    def submit(self, spec: dict, *, tenant: str, groups: Iterable[str] = (),
               key: str | None = None, meta: dict | None = None) -> tuple[dict, list[str]]:
        """Queue a request (or return the active one with the same ``key``)."""
        with self.db.transaction() as s:
            if key and (existing := self._active_by_key(s, key)) is not None:
                return self._view(existing), []
        request = parse_request_spec(spec, request_id=uuid.uuid4().hex, tenant=tenant,
                                     groups=groups)
        reason = self.state.fits_ever(request)
        if reason:
            raise Unschedulable(f"refused: {reason.split(': ', 1)[-1]}", detail={
                "demand": request.demand.as_dict(), "count": request.count})
        now = self._now()
        with self.db.transaction() as s:
            s.add(SchedRequest(
                id=request.id, key=key, tenant=tenant, groups=list(request.groups),
                kind=request.kind, spec=request.to_dict(), meta={**(meta or {}), "runs": []},
                state="queued", submitted_at=now,
            ))
            s.flush()
            try:
                decisions = self.state.submit(request, now)
            except SchedulerError as exc:
                raise Unschedulable(str(exc)) from exc
            changed = [request.id, *self._apply(s, decisions)]
        return self.get(request.id), changed

    def cancel(self, request_id: str, reason: str = "cancelled") -> tuple[dict, list[str]]:
        """Withdraw a queued request or release a running one. Idempotent."""
        with self.db.transaction() as s:
            rec = s.get(SchedRequest, request_id)
            if rec is None:
                raise NotFound(f"no scheduler request {request_id!r}")
            if rec.state not in ACTIVE:
                return self._view(rec), []
            now = self._now()
            was_running = rec.state == "running"
            decisions = self.state.cancel(request_id, now)
            rec.state = "done" if was_running else "cancelled"
            rec.reason, rec.ended_at, rec.allocation = reason, now, rec.allocation
            runs = [list(run) for run in rec.meta.get("runs", [])]  # copies: JSON change detection
            if runs and runs[-1][1] is None:
                runs[-1][1] = now
            rec.meta = {**rec.meta, "runs": runs}
            changed = [request_id, *self._apply(s, decisions)]
        return self.get(request_id), changed

    def cancel_key(self, key: str, reason: str = "cancelled") -> tuple[dict | None, list[str]]:
        with self.db.transaction() as s:
            rec = self._active_by_key(s, key)
            request_id = rec.id if rec else None
        if request_id is None:
            return None, []
        return self.cancel(request_id, reason)

    def tick(self) -> list[str]:
        with self.db.transaction() as s:
            return self._apply(s, self.state.tick(self._now()))

    def set_tenancy(self, tenancy: Tenancy) -> list[str]:
        """New weights/quotas (e.g. from hub group properties); reschedules if they changed."""
        cfg = self.state.config
        new = (tenancy.weights, tenancy.group_weights, tenancy.quotas, tenancy.group_quotas)
        if new == (cfg.weights, cfg.group_weights, cfg.quotas, cfg.group_quotas):
            return []
        cfg.weights, cfg.group_weights, cfg.quotas, cfg.group_quotas = (dict(x) for x in new)
        self.state.config_changed()
        return self.tick()

    def release_missing(self, kind: str, alive_keys: set[str], *, grace: float = 60
                        ) -> list[str]:
        """Release running requests of ``kind`` whose owner is gone (a server that died)."""
        cutoff = self._now() - grace
        with self.db.transaction() as s:
            stale = [r.id for r in s.scalars(select(SchedRequest).where(
                SchedRequest.state == "running", SchedRequest.kind == kind))
                if r.key and r.key not in alive_keys and (r.started_at or 0) < cutoff]
        changed = []
        for request_id in stale:
            log.warning("releasing %s: its %s is gone", request_id, kind)
            changed += self.cancel(request_id, reason=f"{kind} no longer running")[1]
        return changed

    # -- views ----------------------------------------------------------------

    @staticmethod
    def _active_by_key(s: Session, key: str) -> SchedRequest | None:
        return s.scalars(select(SchedRequest).where(
            SchedRequest.key == key, SchedRequest.state.in_(ACTIVE))).first()

    def get(self, request_id: str) -> dict:
        with self.db.transaction() as s:
            rec = s.get(SchedRequest, request_id)
            if rec is None:
                raise NotFound(f"no scheduler request {request_id!r}")
            return self._view(rec)

    def get_by_key(self, key: str) -> dict | None:
        with self.db.transaction() as s:
            rec = self._active_by_key(s, key)
            return self._view(rec) if rec else None

    def _view(self, rec: SchedRequest, queue: _QueueSnapshot | None = None) -> dict:
        view = {
            "id": rec.id, "key": rec.key, "tenant": rec.tenant, "groups": rec.groups,
            "kind": rec.kind, "state": rec.state, "reason": rec.reason,
            "demand": rec.spec["demand"], "count": rec.spec["count"],
            "gpu_type": rec.spec.get("gpu_type"), "preemptible": rec.spec["preemptible"],
            "submitted_at": rec.submitted_at, "started_at": rec.started_at,
            "ended_at": rec.ended_at, "allocation": rec.allocation, "meta": rec.meta,
            "preemptions": rec.preemptions,
        }
        if rec.state == "queued":
            view.update(self._queue_info(rec, queue or _QueueSnapshot.of(self.state)))
        return view

    def _queue_info(self, rec: SchedRequest, queue: _QueueSnapshot) -> dict:
        state = self.state
        position = queue.order.get(rec.id)
        mine = queue.shares.get(rec.tenant, 0.0)
        others = sorted(v for t, v in queue.shares.items() if t != rec.tenant)
        info = {
            "position": None if position is None else position + 1,
            "queue_length": len(state.queued),
            "blocking": state.blocking_resource(rec.id),
            "estimated_start": state.estimated_start(rec.id),
            "share": round(mine, 4),
            "other_shares": [round(v, 4) for v in others],
        }
        info["message"] = explain_wait(info)
        return info

    def queue(self, tenant: str | None = None) -> list[dict]:
        """Active requests, queued first in service order, then running."""
        snapshot = _QueueSnapshot.of(self.state)  # one queue order for the whole listing
        with self.db.transaction() as s:
            query = select(SchedRequest).where(SchedRequest.state.in_(ACTIVE))
            if tenant is not None:
                query = query.where(SchedRequest.tenant == tenant)
            views = [self._view(r, snapshot) for r in s.scalars(query)]
        return sorted(views, key=lambda v: (v["state"] != "queued", v.get("position") or 0,
                                            v["submitted_at"]))

    def usage(self, since: float, until: float) -> dict:
        """Resource-hours per user and per group over [since, until], and current shares."""
        users: dict[str, dict[str, float]] = {}
        groups: dict[str, dict[str, float]] = {}
        with self.db.transaction() as s:
            rows = s.scalars(select(SchedRequest).where(
                SchedRequest.started_at.is_not(None), SchedRequest.started_at < until,
                or_(SchedRequest.ended_at.is_(None), SchedRequest.ended_at > since)))
            now = self._now()
            for rec in rows:
                seconds = sum(max(0.0, min(end or now, until) - max(start, since))
                              for start, end in rec.meta.get("runs", []))
                hours = seconds / 3600 * rec.spec["count"]
                demand = rec.spec["demand"]
                used = {"cpu_hours": demand.get("cpu", 0) * hours,
                        "gpu_hours": demand.get("gpu", 0) * hours,
                        "mem_gib_hours": demand.get("mem", 0) / GIB * hours}
                for bucket in [users.setdefault(rec.tenant, {})] + [
                        groups.setdefault(g, {}) for g in rec.groups]:
                    for k, v in used.items():
                        bucket[k] = bucket.get(k, 0.0) + v
        rounded = {k: round(v, 4) for k, v in self.state.dominant_shares().items()}
        return {"since": since, "until": until, "users": users, "groups": groups,
                "dominant_shares": rounded}

    def pool_view(self) -> dict:
        state = self.state
        nodes = []
        for name in state.node_names():
            nodes.append({**state.node(name).to_dict(), "free": state.node_free(name)})
        return {"policy": state.policy.name, "nodes": nodes,
                "queued": len(state.queued), "running": len(state.running)}


def explain_wait(info: dict) -> str:
    """One line a person understands: where they are in line and what they wait for."""
    position, blocking = info.get("position"), info.get("blocking")
    parts = [f"Queued: position {position} of {info.get('queue_length')}"]
    if blocking and blocking.startswith("quota:"):
        parts.append(f"waiting for your {blocking[6:]} quota (you hold your limit)")
    elif blocking == "priority":
        parts.append("resources are free but users with a lower share go first")
    elif blocking == "reservation":
        parts.append("resources are held for a request that has waited longest")
    elif blocking:
        parts.append(f"waiting for {blocking}")
    parts.append(f"your share {info['share']:.0%}" + (
        f", others {', '.join(f'{v:.0%}' for v in info['other_shares'][:5])}"
        if info["other_shares"] else ""))
    if info.get("estimated_start"):
        eta = max(0, info["estimated_start"] - time.time())
        parts.append(f"estimated start in {eta / 60:.0f} min")
    return "; ".join(parts)
