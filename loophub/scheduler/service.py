"""The scheduler's persistence shell: the wall clock, the database, transitions and views.

``SchedulerState`` (state.py) is pure; this class drives it with the wall clock and keeps
the database in step. Every event (a submit, a release, a tick, new weights, a pool
change, a reconciliation) has a stimulus id and runs in one transaction that updates the
request rows its decisions touched, records each transition with its cause
(``sched_transitions``) and saves the core's exported state, so a restart of the API
service restores exactly what was queued and running, and "why did my server stop / why
is it waiting" always has an answer.

Each event returns its ``Transition``s; the API service's I/O shell delivers every one
to the handler of the request's kind (extensions/api/shell.py), which acts on it.
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

from loophub import audit
from loophub.errors import LoophubError, NotFound
from loophub.pool import NodeSpec
from loophub.scheduler.model import GIB, Decision, Node, SchedulerConfig
from loophub.scheduler.spec import RequestSpec
from loophub.scheduler.state import SchedulerError, SchedulerState
from loophub.scheduler.tables import SchedRequest, SchedSnapshot, SchedTransition
from loophub.store import Database

log = logging.getLogger("loophub.scheduler")
ACTIVE = ("queued", "running")
ENDED = ("done", "cancelled")
SNAPSHOT_ID = 1
SCHEDULER = "scheduler"  # the actor of what the scheduler decides on its own


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


@dataclass(frozen=True)
class Transition:
    """A request changed state: what the shell delivers to the handler of its kind."""

    request_id: str
    action: str          # submit, start, preempt, end
    state: str           # the state it is in now
    reason: str
    stimulus: str
    actor: str           # who caused it (a user, a service, "scheduler")
    spec: RequestSpec
    submitted_by: str    # its holder: an end caused by anyone else stops its process
    allocation: dict | None = None

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def by_holder(self) -> bool:
        return self.actor == self.submitted_by


def stimulus_id(event: str) -> str:
    """A new stimulus id: everything one event causes carries it."""
    return f"{event}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class _QueueSnapshot:
    """The policy's service order and the shares at one change count of the core."""

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
        self._snapshot: tuple[tuple[int, float], _QueueSnapshot] | None = None
        self._info: dict[str, dict] = {}
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
        self.startup_transitions: list[Transition] = []
        with self.db.transaction() as s:
            self.startup_transitions = self._apply(
                s, self._reconcile_nodes(state, nodes), stimulus_id("pool"), state)
        return state

    def _reconcile_nodes(self, state: SchedulerState, nodes: list[Node]) -> list[Decision]:
        """The pool may have changed while we were down: follow the configuration."""
        now = max(self.clock(), state.now)
        wanted = {n.name: n for n in nodes}
        decisions: list[Decision] = []
        current = {name: state.node(name) for name in state.node_names()}
        for name, node in current.items():
            if wanted.get(name) != node:
                decisions += state.remove_node(name, now)
        for name, node in wanted.items():
            if current.get(name) != node:
                decisions += state.add_node(node, now)
        return decisions

    # -- recording ------------------------------------------------------------

    def _now(self) -> float:
        return max(self.clock(), self.state.now)

    def _save(self, s: Session, state: SchedulerState) -> None:
        data = state.export_state()
        snapshot = s.get(SchedSnapshot, SNAPSHOT_ID)
        if snapshot is None:
            s.add(SchedSnapshot(id=SNAPSHOT_ID, data=data, saved_at=self.clock()))
        else:
            snapshot.data, snapshot.saved_at = data, self.clock()

    def _record(self, s: Session, rec: SchedRequest, action: str, *, reason: str,
                stimulus: str, actor: str, at: float) -> Transition:
        s.add(SchedTransition(request_id=rec.id, at=at, action=action, state=rec.state,
                              stimulus=stimulus, actor=actor, reason=reason))
        return Transition(request_id=rec.id, action=action, state=rec.state, reason=reason,
                          stimulus=stimulus, actor=actor, spec=spec_of(rec),
                          submitted_by=rec.submitted_by, allocation=rec.allocation)

    def _apply(self, s: Session, decisions: list[Decision], stimulus: str,
               state: SchedulerState | None = None) -> list[Transition]:
        """Record what the core decided, with the stimulus that caused it."""
        state = state or self.state
        out = []
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
                reason = "allocated on " + ", ".join(d.allocation.nodes())
            elif d.action == "preempt":
                rec.state, rec.reason, rec.allocation = "queued", d.reason, None
                rec.preemptions += 1
                if runs:
                    runs[-1][1] = state.now
                reason = d.reason
            else:
                continue
            rec.meta = {**rec.meta, "runs": runs}
            out.append(self._record(s, rec, d.action, reason=reason, stimulus=stimulus,
                                    actor=SCHEDULER, at=state.now))
        self._save(s, state)
        return out

    # -- events ---------------------------------------------------------------

    def submit(self, spec: RequestSpec, *, actor: str, stimulus: str | None = None
               ) -> tuple[dict, list[Transition]]:
        """Queue a request, or return the active one with the same key (idempotent).

        The key is built from the spec's owner, so a request can only ever hold its own
        owner's place; ACTOR is who submitted it (its holder)."""
        stimulus = stimulus or stimulus_id("submit")
        key = spec.key
        with self.db.transaction() as s:
            if (existing := self._active_by_key(s, key)) is not None:
                return self._view(existing), []
        request = spec.to_request(uuid.uuid4().hex)
        reason = self.state.fits_ever(request)
        if reason:
            raise Unschedulable(f"refused: {reason.split(': ', 1)[-1]}", detail={
                "demand": request.demand.as_dict(), "count": request.count})
        now = self._now()
        with self.db.transaction() as s:
            rec = SchedRequest(id=request.id, key=key, tenant=spec.owner,
                               groups=list(spec.groups), kind=spec.kind, spec=spec.to_json(),
                               meta={"runs": []}, state="queued", submitted_at=now,
                               submitted_by=actor)
            s.add(rec)
            s.flush()
            try:
                decisions = self.state.submit(request, now)
            except SchedulerError as exc:
                raise Unschedulable(str(exc)) from exc
            out = [self._record(s, rec, "submit", reason="queued", stimulus=stimulus,
                                actor=actor, at=now)]
            audit.record(s, actor, "scheduler.submit", f"request:{rec.id}", key=key,
                         kind=spec.kind, owner=spec.owner, stimulus=stimulus)
            out += self._apply(s, decisions, stimulus)
        return self.get(request.id), out

    def cancel(self, request_id: str, *, reason: str, actor: str,
               stimulus: str | None = None) -> tuple[dict, list[Transition]]:
        """End a request: withdraw it from the queue or release what it holds. Idempotent."""
        stimulus = stimulus or stimulus_id("release")
        with self.db.transaction() as s:
            rec = s.get(SchedRequest, request_id)
            if rec is None:
                raise NotFound(f"no scheduler request {request_id!r}")
            if rec.state not in ACTIVE:
                return self._view(rec), []
            now = self._now()
            decisions = self.state.cancel(request_id, now)
            # done: it ran (and may still have a process, e.g. just preempted); cancelled:
            # withdrawn before it ever started
            rec.state = "done" if rec.started_at is not None else "cancelled"
            rec.reason, rec.ended_at = reason, now
            runs = [list(run) for run in rec.meta.get("runs", [])]  # copies: JSON change detection
            if runs and runs[-1][1] is None:
                runs[-1][1] = now
            rec.meta = {**rec.meta, "runs": runs, "ended_by": actor}
            out = [self._record(s, rec, "end", reason=reason, stimulus=stimulus, actor=actor,
                                at=now)]
            if actor != SCHEDULER:  # the scheduler's own decisions are its transitions
                audit.record(s, actor, "scheduler.release", f"request:{rec.id}", key=rec.key,
                             owner=rec.tenant, reason=reason, stimulus=stimulus)
            out += self._apply(s, decisions, stimulus)
        return self.get(request_id), out

    def tick(self, stimulus: str | None = None) -> list[Transition]:
        with self.db.transaction() as s:
            return self._apply(s, self.state.tick(self._now()), stimulus or stimulus_id("tick"))

    def set_tenancy(self, tenancy: Tenancy, stimulus: str | None = None,
                    actor: str = "hub groups") -> list[Transition]:
        """New weights/quotas (e.g. from hub group properties); reschedules if they changed."""
        cfg = self.state.config
        new = (tenancy.weights, tenancy.group_weights, tenancy.quotas, tenancy.group_quotas)
        old = (cfg.weights, cfg.group_weights, cfg.quotas, cfg.group_quotas)
        if new == old:
            return []
        stimulus = stimulus or stimulus_id("tenancy")
        with self.db.transaction() as s:
            audit.record(s, actor, "scheduler.tenancy", "scheduler", stimulus=stimulus,
                         changed={name: {"from": before, "to": after} for name, before, after in
                                  zip(("weights", "group_weights", "quotas", "group_quotas"),
                                      old, new, strict=True) if before != after})
        cfg.weights, cfg.group_weights, cfg.quotas, cfg.group_quotas = (dict(x) for x in new)
        self.state.config_changed()
        return self.tick(stimulus)

    def release_missing(self, kind: str, alive_keys: set[str], *, grace: float = 60,
                        stimulus: str | None = None) -> list[Transition]:
        """End running requests of ``kind`` whose process is gone (a server that died)."""
        stimulus = stimulus or stimulus_id("reconcile")
        cutoff = self._now() - grace
        with self.db.transaction() as s:
            stale = [r.id for r in s.scalars(select(SchedRequest).where(
                SchedRequest.state == "running", SchedRequest.kind == kind))
                if r.key and r.key not in alive_keys and (r.started_at or 0) < cutoff]
        out = []
        for request_id in stale:
            log.warning("releasing %s: its %s is gone", request_id, kind)
            out += self.cancel(request_id, reason=f"its {kind} is no longer running",
                               actor="reconcile", stimulus=stimulus)[1]
        return out

    # -- views ----------------------------------------------------------------

    @property
    def version(self) -> int:
        """Grows with every change the scheduler makes (the views' cache key)."""
        return self.state.change_count()

    def _queue(self) -> _QueueSnapshot:
        """The queue order and shares, computed once per change of the core, however many
        views are read (N waiters cost O(N) per change, not O(N^2))."""
        version = (self.version, self.state.now)  # aging reorders as time passes
        if self._snapshot is None or self._snapshot[0] != version:
            self._snapshot = (version, _QueueSnapshot.of(self.state))
            self._info = {}
        return self._snapshot[1]

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

    def last_by_key(self, key: str) -> dict | None:
        """The newest request with KEY, active or ended (why did my server stop?)."""
        with self.db.transaction() as s:
            rec = s.scalars(select(SchedRequest).where(SchedRequest.key == key)
                            .order_by(SchedRequest.submitted_at.desc())).first()
            return self._view(rec) if rec else None

    def find(self, *, owner: str | None = None, key: str | None = None,
             state: str | None = None, limit: int = 50) -> list[dict]:
        """Requests newest first, active and ended, by owner, key and state."""
        query = select(SchedRequest).order_by(SchedRequest.submitted_at.desc()).limit(limit)
        if owner is not None:
            query = query.where(SchedRequest.tenant == owner)
        if key is not None:
            query = query.where(SchedRequest.key == key)
        if state is not None:
            query = query.where(SchedRequest.state == state)
        with self.db.transaction() as s:
            return [self._view(r) for r in s.scalars(query)]

    def resource_hours(self, request_id: str) -> dict[str, float]:
        """CPU-, GPU- and memory-hours a request held (all its runs, every unit)."""
        with self.db.transaction() as s:
            rec = s.get(SchedRequest, request_id)
            if rec is None:
                raise NotFound(f"no scheduler request {request_id!r}")
            now = self._now()
            hours = sum(((end or now) - start) for start, end in rec.meta.get("runs", [])) \
                / 3600 * rec.spec["count"]
            demand = rec.spec["demand"]
            return {"cpu_hours": round(demand.get("cpu", 0) * hours, 6),
                    "gpu_hours": round(demand.get("gpu", 0) * hours, 6),
                    "mem_gib_hours": round(demand.get("mem", 0) / GIB * hours, 6)}

    def history(self, request_id: str) -> list[dict]:
        """Every transition of a request, oldest first, with its cause."""
        with self.db.transaction() as s:
            rows = s.scalars(select(SchedTransition).where(
                SchedTransition.request_id == request_id).order_by(SchedTransition.id))
            return [{"at": t.at, "action": t.action, "state": t.state, "reason": t.reason,
                     "stimulus": t.stimulus, "actor": t.actor} for t in rows]

    def _view(self, rec: SchedRequest) -> dict:
        spec = rec.spec
        view = {
            "id": rec.id, "key": rec.key, "tenant": rec.tenant, "owner": rec.tenant,
            "groups": rec.groups, "kind": rec.kind, "state": rec.state, "reason": rec.reason,
            "demand": spec["demand"], "count": spec["count"], "gpu_type": spec.get("gpu_type"),
            "preemptible": spec["preemptible"], "runtime": spec.get("runtime"),
            "labels": spec.get("labels") or {},
            **{name: spec[name] for name in ("server", "kernel", "job", "release", "replica")
               if name in spec},
            "submitted_by": rec.submitted_by, "ended_by": rec.meta.get("ended_by"),
            "submitted_at": rec.submitted_at,
            "started_at": rec.started_at, "ended_at": rec.ended_at,
            "allocation": rec.allocation, "preemptions": rec.preemptions,
        }
        if rec.state == "queued":
            view.update(self._queue_info(rec))
        return view

    def _queue_info(self, rec: SchedRequest) -> dict:
        queue = self._queue()
        info = self._info.get(rec.id)
        if info is not None:
            return info
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
        self._info[rec.id] = info
        return info

    def queue(self, tenant: str | None = None) -> list[dict]:
        """Active requests, queued first in service order, then running."""
        with self.db.transaction() as s:
            query = select(SchedRequest).where(SchedRequest.state.in_(ACTIVE))
            if tenant is not None:
                query = query.where(SchedRequest.tenant == tenant)
            views = [self._view(r) for r in s.scalars(query)]
        return sorted(views, key=lambda v: (v["state"] != "queued", v.get("position") or 0,
                                            v["submitted_at"]))

    def views(self, request_ids: Iterable[str]) -> list[dict]:
        ids = list(request_ids)
        if not ids:
            return []
        with self.db.transaction() as s:
            return [self._view(r) for r in s.scalars(
                select(SchedRequest).where(SchedRequest.id.in_(ids)))]

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


def spec_of(rec: SchedRequest) -> RequestSpec:
    """A stored request's spec (rows from before typed specs had ``meta`` instead)."""
    data: dict[str, Any] = {k: v for k, v in rec.spec.items()
                            if k not in ("id", "tenant", "meta", "key")}
    data["owner"] = rec.tenant
    if "server" not in data and rec.kind in ("server", "kernel") and rec.key:
        from loophub.scheduler.keys import parse_key

        key = parse_key(rec.key)
        data.update(zip(("server", "kernel")[:len(key.parts)], key.parts, strict=False))
    data.setdefault("kind", rec.kind)
    if rec.kind == "job":
        data.setdefault("job", rec.id)
    elif rec.kind == "service":
        data.setdefault("release", rec.id)
        data.setdefault("replica", "0")
    return RequestSpec.from_json(data, owner=rec.tenant, groups=rec.groups)


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
