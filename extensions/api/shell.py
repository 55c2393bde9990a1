"""The scheduler's I/O shell in the API service: every decision delivered and acted on.

As in distributed's Scheduler (transitions -> send_all), one method, ``deliver``,
receives every transition the scheduler service returns (start, preempt, end) and hands
it to the handler registered for the request's kind (kinds.py: servers, kernels; jobs
and services next). Around it: the wall-clock timer that wakes the core for aging, the
weights and quotas read from hub group properties, the long-poll and watch waiters, and
reconciliation with what the hub says actually runs, in both directions.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable
from typing import Any, Protocol

from tornado.ioloop import IOLoop, PeriodicCallback

from loophub import audit
from loophub.errors import LoophubError
from loophub.pool import PoolConfigError, parse_mem
from loophub.scheduler import keys
from loophub.scheduler.model import SchedulerConfig
from loophub.scheduler.service import (
    SCHEDULER,
    SchedulerService,
    Tenancy,
    Transition,
    stimulus_id,
)
from loophub.scheduler.spec import RequestSpec

from .hub import Hub

log = logging.getLogger("loophub.api")
PREEMPTED_FOR = re.compile(r"^for ([0-9a-f]{32})\b")


class KindHandler(Protocol):
    """What the processes of one kind of request do when the scheduler decides.

    ``on_preempt`` is "end" when a preempted request ends (its process is stopped and
    not resumed: servers, kernels) or "requeue" when it waits for resources again (jobs,
    which checkpoint). Methods never raise for the shell: they log what failed.
    """

    on_preempt: str

    async def started(self, t: Transition) -> None: ...

    async def preempted(self, t: Transition) -> None: ...

    async def ended(self, t: Transition) -> None: ...


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


def fingerprint(view: dict) -> str:
    """What a waiter has seen of a request: it is told again only when this changes."""
    return f"{view['state']}:{view.get('position')}:{view.get('blocking')}:{view.get('share')}"


class SchedulerShell:
    """Owns the SchedulerService inside the API process."""

    def __init__(self, service: SchedulerService, base_config: SchedulerConfig,
                 hub: Hub | None = None, *, reconcile_every: float = 30.0,
                 reconcile_grace: float = 60.0, unclaimed_after: float = 15.0,
                 tenancy_every: float = 30.0) -> None:
        self.service = service
        self.base_config = base_config
        self.hub = hub
        self.reconcile_every = reconcile_every
        self.reconcile_grace = reconcile_grace
        self.unclaimed_after = unclaimed_after
        self.tenancy_every = tenancy_every
        self.handlers: dict[str, KindHandler] = {}
        self.last_seen: dict[str, float] = {}  # request id -> last time a waiter asked
        self.delivered = 0
        self._changed = asyncio.Event()
        self._timer: Any = None
        self._tasks: set[asyncio.Task] = set()
        self._missing: dict[str, int] = {}
        self._strays: dict[str, int] = {}
        self._orphans: dict[str, int] = {}
        self.tenancy_read_at = 0.0
        self._members: dict[str, frozenset[str]] | None = None

    def register(self, kind: str, handler: KindHandler) -> None:
        self.handlers[kind] = handler

    # -- events: each ends in deliver() ---------------------------------------------------

    async def submit(self, spec: RequestSpec, actor: str) -> dict:
        await self.fresh_tenancy()
        view, transitions = self.service.submit(spec, actor=actor)
        self.last_seen[view["id"]] = time.time()
        self.deliver(transitions)
        return view

    def release(self, request_id: str, *, reason: str, actor: str) -> dict:
        view, transitions = self.service.cancel(request_id, reason=reason, actor=actor)
        self.deliver(transitions)
        return view

    def tick(self) -> None:
        self._timer = None
        self.deliver(self.service.tick())
        self._schedule_wakeup()

    # -- the one place decisions go ----------------------------------------------------------

    def deliver(self, transitions: Iterable[Transition]) -> None:
        """Hand every transition to the handler of its kind, and wake those who wait.

        A preempted request of a kind that does not resume (servers, kernels) ends in the
        same stimulus, so its process is stopped and the scheduler never counts resources
        free that a process still holds for long."""
        pending = list(transitions)
        if not pending:
            return
        while pending:
            t = pending.pop(0)
            self.delivered += 1
            log.info("%s %s %s/%s -> %s (%s; %s by %s)", t.stimulus, t.action, t.kind,
                     t.spec.key, t.state, t.reason or "-", t.request_id[:8], t.actor)
            handler = self.handlers.get(t.kind)
            if t.action == "preempt" and getattr(handler, "on_preempt", "end") == "end":
                _, more = self.service.cancel(t.request_id, reason=self.explain_preemption(t),
                                              actor=SCHEDULER, stimulus=t.stimulus)
                pending.extend(more)
            if handler is not None:
                self._spawn(self._act(handler, t))
            if t.action == "start" and t.kind == "server":
                self._spawn(self._start_if_unclaimed(t))
        self._changed.set()
        self._changed = asyncio.Event()
        self._schedule_wakeup()

    def explain_preemption(self, t: Transition) -> str:
        """Who got the resources, in words (the core says 'for <request id>')."""
        match = PREEMPTED_FOR.match(t.reason or "")
        if not match:
            return f"preempted: {t.reason}" if t.reason else "preempted"
        try:
            taker = self.service.get(match.group(1))
        except LoophubError:
            return f"preempted: {t.reason}"
        what = taker.get("server") or taker.get("kernel") or taker.get("job") or \
            taker.get("release") or ""
        named = f' "{what}"' if what else ""
        return (f"preempted: the fair scheduler gave its resources to {taker['owner']}'s "
                f"{taker['kind']}{named}")

    async def _act(self, handler: KindHandler, t: Transition) -> None:
        method = {"start": handler.started, "preempt": handler.preempted,
                  "end": handler.ended}.get(t.action)
        if method is None:
            return
        try:
            await method(t)
        except Exception:  # the reconciliation loop makes processes and views agree later
            log.exception("%s: the %s handler failed on %s of %s", t.stimulus, t.kind,
                          t.action, t.request_id)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for the handlers' work in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- waiting for changes ------------------------------------------------------------------

    async def wait_change(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    async def watch(self, known: dict[str, str], wait: float, visible) -> tuple[list, list]:
        """Views of the requests in KNOWN ({id: fingerprint}) that differ from what the
        waiter has seen, waiting up to WAIT seconds for one to; ids not VISIBLE (a
        predicate on a view) or unknown come back as missing."""
        deadline = time.monotonic() + wait
        now = time.time()
        for request_id in known:
            self.last_seen[request_id] = now
        while True:
            views = self.service.views(known)
            shown = {v["id"]: v for v in views if visible(v)}
            missing = sorted(set(known) - set(shown))
            changed = [v for v in shown.values() if fingerprint(v) != known[v["id"]]]
            remaining = deadline - time.monotonic()
            if changed or missing or remaining <= 0:
                for view in changed:
                    view["fingerprint"] = fingerprint(view)
                return changed, missing
            await self.wait_change(remaining)

    def _schedule_wakeup(self) -> None:
        wake = self.service.state.next_wakeup()
        if self._timer is not None:
            IOLoop.current().remove_timeout(self._timer)
            self._timer = None
        if wake is not None:
            delay = max(0.5, wake - time.time())
            self._timer = IOLoop.current().call_later(min(delay, 3600), self.tick)

    # -- the hub: weights and quotas ------------------------------------------------------------

    async def refresh_tenancy(self) -> None:
        if self.hub is None:
            return
        try:
            groups = await self.hub.groups()
        except Exception as exc:  # the hub may be restarting; try again next round
            log.warning("cannot read hub groups: %s", exc)
            return
        self.tenancy_read_at = time.monotonic()
        self._audit_membership(groups)
        self.deliver(self.service.set_tenancy(tenancy_from_groups(groups, self.base_config),
                                              stimulus_id("tenancy")))

    def _audit_membership(self, groups: list[dict]) -> None:
        """Group-driven permission changes (who joined or left a group: what they may read
        and write changes with it) go to the audit trail as the service sees them."""
        members = {g["name"]: frozenset(g.get("users") or ()) for g in groups}
        previous, self._members = self._members, members
        if previous is None:
            return
        changes = []
        for name in sorted(set(members) | set(previous)):
            before, after = previous.get(name, frozenset()), members.get(name, frozenset())
            if before != after:
                changes.append((name, sorted(after - before), sorted(before - after)))
        if changes:
            with self.service.db.transaction() as s:
                for name, joined, left in changes:
                    audit.record(s, "hub groups", "group.members", f"group:{name}",
                                 joined=joined or None, left=left or None)

    async def fresh_tenancy(self, max_age: float = 0.0) -> None:
        """Quotas must hold at submit time, not up to a refresh period later."""
        if self.hub is not None and time.monotonic() - self.tenancy_read_at > max_age:
            await self.refresh_tenancy()

    # -- reconciliation: the scheduler's view and what runs agree --------------------------------

    async def reconcile(self) -> None:
        """Every ``reconcile_every`` s: end running server requests whose server is gone,
        stop servers that run without a running request, end kernel requests whose server
        is gone. Each needs two rounds in a row, so a start or stop in flight is spared."""
        if self.hub is None:
            return
        try:
            users = await self.hub.active_users()
        except Exception as exc:
            log.warning("cannot list hub servers: %s", exc)
            return
        alive = {keys.server_key(u["name"], name): (u["name"], name)
                 for u in users for name, model in (u.get("servers") or {}).items()
                 if model.get("ready") or model.get("pending") == "spawn"}
        views = self.service.queue()
        stimulus = stimulus_id("reconcile")
        self._end_gone_servers(views, set(alive), stimulus)
        await self._stop_stray_servers(views, alive)
        self._end_orphan_kernels(views, set(alive), stimulus)

    def _end_gone_servers(self, views: list[dict], alive: set[str], stimulus: str) -> None:
        running = {v["key"] for v in views if v["kind"] == "server" and v["state"] == "running"}
        gone = running - alive
        self._missing = {k: self._missing.get(k, 0) + 1 for k in gone}
        confirmed = {k for k, n in self._missing.items() if n >= 2}
        keep = (running - confirmed) | {k for k in running if self._recently_seen_key(k, views)}
        self.deliver(self.service.release_missing("server", keep, grace=self.reconcile_grace,
                                                  stimulus=stimulus))

    async def _stop_stray_servers(self, views: list[dict], alive: dict[str, tuple]) -> None:
        """A server the hub runs whose request does not (it ended while the hub or this
        service was down, or its stop failed): stop it, so what runs is what is counted."""
        active = {v["key"] for v in views if v["kind"] == "server"}
        strays = {k for k in alive if k not in active}
        self._strays = {k: self._strays.get(k, 0) + 1 for k in strays}
        for key in [k for k, n in self._strays.items() if n >= 2]:
            user, server = alive[key]
            last = self.service.last_by_key(key)
            why = (last or {}).get("reason") or "it holds no allocation"
            log.warning("stopping %s's server %r: %s", user, server, why)
            try:
                await self.hub.stop_server(user, server)
            except Exception as exc:
                log.warning("could not stop stray server %s: %s", key, exc)
            self._strays.pop(key, None)

    def _end_orphan_kernels(self, views: list[dict], alive: set[str], stimulus: str) -> None:
        """A kernel's request ends with its server (a killed server cannot release it)."""
        orphans = {v["id"] for v in views if v["kind"] == "kernel"
                   and keys.server_key(v["owner"], v.get("server") or "") not in alive}
        self._orphans = {i: self._orphans.get(i, 0) + 1 for i in orphans}
        for request_id in [i for i, n in self._orphans.items() if n >= 2]:
            self._orphans.pop(request_id, None)
            self.deliver(self.service.cancel(request_id, reason="its server is gone",
                                             actor="reconcile", stimulus=stimulus)[1])

    def _recently_seen_key(self, key: str, views: list[dict]) -> bool:
        view = next((v for v in views if v["key"] == key), None)
        return bool(view) and time.time() - self.last_seen.get(view["id"], 0) < 60

    async def _start_if_unclaimed(self, t: Transition) -> None:
        """A queued server whose spawner went away (hub restart) got its turn: start it
        through the hub as its owner's server (identity from the request, never from
        free-form data)."""
        await asyncio.sleep(self.unclaimed_after)
        if self.hub is None:
            return
        view = self.service.get(t.request_id)
        if view["state"] != "running" or view["started_at"] == view["submitted_at"]:
            return  # started as it was submitted: its spawner got it in the answer
        if time.time() - self.last_seen.get(t.request_id, 0) < self.unclaimed_after:
            return
        owner, server = t.spec.owner, t.spec.server or ""
        try:
            if await self.hub.server(owner, server) is not None:
                return  # the hub has it, running or starting
            log.info("starting %s's server %r: allocated while no spawner waited", owner, server)
            await self.hub.start_server(owner, server)
        except Exception as exc:  # reconciliation releases it if it never starts
            log.warning("could not start unclaimed server of %s: %s", owner, exc)

    # -- start-up -----------------------------------------------------------------------------

    def start_background(self) -> None:
        PeriodicCallback(self.tick, 15_000).start()
        if self.hub is not None:
            IOLoop.current().add_callback(self.refresh_tenancy)
            PeriodicCallback(self.refresh_tenancy, self.tenancy_every * 1000).start()
            PeriodicCallback(self.reconcile, self.reconcile_every * 1000).start()
        self.deliver(self.service.startup_transitions)
        self._schedule_wakeup()

