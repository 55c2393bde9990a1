"""The pure scheduler core: events in, decisions out, no I/O, no clock of its own.

Node capacities and free resources live in numpy arrays (one row per node slot, one column per
resource key) so that "which nodes can take this unit" is one vectorised comparison rather than
a Python loop over nodes. Queues are kept sorted by (submit time, sequence number), globally and
per tenant. Policies (policies.py) decide the order in which queued requests are tried and how a
node is chosen; this module owns bookkeeping, placement mechanics, reservations and preemption.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

import numpy as np

from loophub.scheduler.model import (
    BASE_KEYS,
    KINDS,
    Allocation,
    Decision,
    Node,
    Request,
    SchedulerConfig,
    UnitPlacement,
    parse_gpu_types,
)

EPS = 1e-9
STATE_VERSION = 1

# scorer(state, candidate slots, unit demand, free array) -> position of the chosen candidate
Scorer = Callable[["SchedulerState", np.ndarray, np.ndarray, np.ndarray], int]


class SchedulerError(ValueError):
    """A caller error (unknown id, duplicate id, bad request); the message says what to fix."""


class InvariantError(AssertionError):
    """Validate mode found the state inconsistent: a bug in the scheduler."""


@dataclass(slots=True, eq=False)
class Item:
    """A request as the core tracks it (queued or running)."""

    request: Request
    submit: float
    seq: int
    unit: np.ndarray
    types: frozenset[str] | None
    runtime: float | None
    shape: tuple = ()
    row: int = -1  # index of its unit vector among the queue's distinct shapes
    waiting_since: float = math.nan  # submission, or its last preemption (the aging clock)

    def __post_init__(self) -> None:
        if math.isnan(self.waiting_since):
            self.waiting_since = self.submit

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def tenant(self) -> str:
        return self.request.tenant

    @property
    def order_key(self) -> tuple[float, int]:
        return (self.submit, self.seq)

    @property
    def age_entry(self) -> tuple[float, int, str]:
        return (self.waiting_since, self.seq, self.id)


@dataclass(slots=True, eq=False)
class Running:
    item: Item
    allocation: Allocation
    slots: list[int]
    start: float
    protected_until: float = -math.inf  # not a preemption victim before then (aged starts)
    order: int = 0  # starts so far when this one started

    @property
    def protected(self) -> bool:
        return self.protected_until > -math.inf

    @property
    def expected_end(self) -> float:
        rt = self.item.runtime
        return math.inf if rt is None else self.start + rt


@dataclass(slots=True)
class Reservation:
    """Nodes held for a waiting request, and when it is expected to start (None: unknown)."""

    request_id: str
    mask: np.ndarray
    est_start: float | None


@dataclass(slots=True)
class _Releases:
    """Running work in expected-end order, one row per unit, and the same rows grouped by
    node (release order kept inside a node) with the capacity each node has regained
    after each of its releases."""

    runs: list[Running]
    slots: np.ndarray  # node of each unit row
    vecs: np.ndarray  # its demand
    run_of_unit: np.ndarray  # index in ``runs`` (non-decreasing)
    by_node: np.ndarray  # row order grouping the rows by node
    first: np.ndarray  # in that order: a node's first row
    regained: np.ndarray  # in that order: cumulative demand released on the row's node

    @classmethod
    def of(cls, runs: list[Running], width: int) -> _Releases:
        if not runs:
            empty = np.zeros(0, dtype=int)
            return cls([], empty, np.zeros((0, width)), empty, empty,
                       np.zeros(0, dtype=bool), np.zeros((0, width)))
        counts = [len(r.slots) for r in runs]
        slots = np.fromiter((s for r in runs for s in r.slots), dtype=int, count=sum(counts))
        vecs = np.repeat(np.array([r.item.unit for r in runs]), counts, axis=0)
        by_node = np.argsort(slots, kind="stable")
        node = slots[by_node]
        first = np.r_[True, node[1:] != node[:-1]]
        regained = np.cumsum(vecs[by_node], axis=0)
        starts = np.flatnonzero(first)
        before = np.vstack([np.zeros((1, width)), regained[starts[1:] - 1]])
        regained -= np.repeat(before, np.diff(np.r_[starts, len(node)]), axis=0)
        return cls(runs, slots, vecs, np.repeat(np.arange(len(runs)), counts), by_node, first,
                   regained)


@dataclass(slots=True)
class _Nodes:
    names: list[str] = field(default_factory=list)
    gpu_type: list[str | None] = field(default_factory=list)
    backend: list[str] = field(default_factory=list)
    gpu_free: list[list[int]] = field(default_factory=list)
    core_free: list[list[int] | None] = field(default_factory=list)


class SchedulerState:
    """All scheduling state. Every event method returns the decisions it caused.

    With ``auto_schedule`` (default) each event runs a scheduling pass at once; the simulator
    turns it off and calls ``tick(now)`` once per instant instead.
    """

    def __init__(self, policy: str = "balanced-drf", config: SchedulerConfig | None = None,
                 nodes: Iterable[Node] = (), validate: bool = False,
                 auto_schedule: bool = True) -> None:
        from loophub.scheduler.policies import make_policy

        self.config = config or SchedulerConfig()
        self.policy = make_policy(policy, self.config)
        self.validate = validate
        self.auto_schedule = auto_schedule
        self.now = 0.0
        self.keys: list[str] = list(BASE_KEYS)
        self.cap = np.zeros((0, len(self.keys)))
        self.free = np.zeros((0, len(self.keys)))
        self.active = np.zeros(0, dtype=bool)
        self.total_cap = np.zeros(len(self.keys))
        self._nodes = _Nodes()
        self._slot: dict[str, int] = {}
        self._type_masks: dict[frozenset[str] | None, np.ndarray] = {}
        self._seq = 0
        self._starts = 0
        self.queued: dict[str, Item] = {}
        self._global: list[tuple[float, int, str]] = []
        self._by_tenant: dict[str, list[tuple[float, int, str]]] = {}
        # the same queue ordered by waiting_since (aging clock), globally and per tenant
        self._by_age: list[tuple[float, int, str]] = []
        self._age_by_tenant: dict[str, list[tuple[float, int, str]]] = {}
        self._protection_ends: list[tuple[float, int, str]] = []  # heap: (until, seq, id)
        self.running: dict[str, Running] = {}
        self._by_end: list[tuple[float, int, str]] = []  # running, by (expected end, seq)
        self.held: dict[str, np.ndarray] = {}
        self._weighted: dict[str, float] = {}  # weighted dominant share per tenant (cache)
        self.group_held: dict[str, np.ndarray] = {}
        self.queued_demand: dict[str, np.ndarray] = {}
        self._tenant_groups: dict[str, set[str]] = {}
        self.reservations: list[Reservation] = []
        self.victim_used = np.zeros((0, len(self.keys)))  # held by preemptible, unprotected work
        self._victims: dict[str, dict[str, Running]] = {}  # that work, per tenant
        self._version = 0  # bumped whenever free capacity changes; keys the caches below
        self._changes = 0  # bumped when the queue changes (with _version: change_count)
        self._topology = 0  # bumped when nodes or resource keys change
        self._release_cache: tuple[int, Any] | None = None
        self._reservation_cache: dict[str, tuple[int, bytes, Reservation | None]] = {}
        self._allowed_cache: dict[tuple, np.ndarray] = {}
        self._max_free = np.zeros(len(self.keys))
        self._max_free_version = -1
        self._free_grew = 0  # bumped when free capacity can grow (release, topology)
        self._fits_empty_pool: dict[tuple, bool] = {}
        self._window_rows: dict[str, tuple[int, ...]] = {}
        self.stranding_ref: np.ndarray | None = None  # set by FitTracker for the scorers
        self._shapes_changed = 0  # bumped when a distinct queued shape appears or goes
        self._stranding_key = -1  # _shapes_changed when stranding_ref was computed
        # distinct queued unit vectors with their counts: "can anything still fit?" in one test
        self._shape_row: dict[tuple, int] = {}
        self._shape_mat = np.zeros((16, len(self.keys)))
        self._shape_cnt = np.zeros(16, dtype=np.int64)
        self.inv_cap = np.zeros((0, len(self.keys)))
        self.node_terms = np.zeros((0, 3 * len(self.keys) + 1))
        for node in nodes:
            self._add_node(node)

    # ------------------------------------------------------------------ events
    def submit(self, request: Request, now: float | None = None) -> list[Decision]:
        now = self._advance(now)
        reason, item = self._vet(request)
        if item is None:
            raise SchedulerError(reason)
        item.seq = self._next_seq()
        self._enqueue(item)
        self._tenant_groups.setdefault(request.tenant, set()).update(request.groups)
        self._weighted.pop(request.tenant, None)  # its groups, so its weight, may change
        self.policy.on_submit(self, self.queued[request.id], now)
        return self._after_event(now)

    def cancel(self, request_id: str, now: float | None = None) -> list[Decision]:
        """Withdraw a queued request or stop a running one (its resources are freed)."""
        now = self._advance(now)
        if request_id in self.queued:
            self._dequeue(self.queued[request_id])
        elif request_id in self.running:
            self._release(request_id, now)
        else:
            raise SchedulerError(f"cancel: no queued or running request {request_id!r}")
        return self._after_event(now)

    def finish(self, request_id: str, now: float | None = None) -> list[Decision]:
        now = self._advance(now)
        if request_id not in self.running:
            raise SchedulerError(f"finish: request {request_id!r} is not running")
        self._release(request_id, now)
        return self._after_event(now)

    def add_node(self, node: Node, now: float | None = None) -> list[Decision]:
        now = self._advance(now)
        self._add_node(node)
        return self._after_event(now)

    def remove_node(self, name: str, now: float | None = None) -> list[Decision]:
        """Take a node out; work running on it is preempted and requeued."""
        now = self._advance(now)
        if name not in self._slot:
            raise SchedulerError(f"remove_node: unknown node {name!r}")
        slot = self._slot[name]
        victims = [rid for rid, run in self.running.items() if slot in run.slots]
        decisions = [self.preempt(rid, now, reason=f"node {name} removed") for rid in victims]
        del self._slot[name]
        self.active[slot] = False
        self.cap[slot] = 0.0
        self.free[slot] = 0.0
        self.victim_used[slot] = 0.0
        self._topology_changed()
        return decisions + self._after_event(now)

    def tick(self, now: float | None = None) -> list[Decision]:
        """Run one scheduling pass at ``now`` (time-based rules such as aging apply here)."""
        now = self._advance(now)
        decisions = self.policy.schedule(self, now)
        if self.validate:
            self.check_invariants()
        return decisions

    def set_runtime(self, request_id: str, runtime: float | None) -> None:
        """Update the expected runtime (e.g. what remains after a preemption)."""
        item = self._item(request_id)
        run = self.running.get(request_id)
        if run is not None:
            _remove_sorted(self._by_end, (run.expected_end, item.seq, item.id))
        item.runtime = runtime
        if run is not None:
            bisect.insort(self._by_end, (run.expected_end, item.seq, item.id))
            self._version += 1  # reservations are computed from expected ends

    # ------------------------------------------------------------ introspection
    def fits_ever(self, request: Request) -> str | None:
        """Why this request can never start here (None when it could)."""
        return self._vet(request, check_duplicate=False)[0]

    def dominant_shares(self) -> dict[str, float]:
        """Each tenant's weighted dominant share of the pool (held work only)."""
        tenants = set(self.held) | set(self._by_tenant)
        return {t: self.weighted_share(t) for t in sorted(tenants)}

    def queue_position(self, request_id: str) -> int | None:
        """0-based place in the order the policy would serve the queue now; None if not queued."""
        if request_id not in self.queued:
            return None
        order = self.policy.queue_order(self, self.now)
        return order.index(request_id)

    def blocking_resource(self, request_id: str) -> str | None:
        """Why a queued request waits: a resource key, 'quota:<key>', 'reservation', 'priority'."""
        item = self.queued.get(request_id)
        if item is None:
            return None
        over = self._quota_excess(item)
        if over:
            return f"quota:{over}"
        mask = self.eligible(item.types)
        if self.place(item, self.free, mask, first_fit) is not None:
            blocked = self.place(item, self.free, mask & ~self.reserved_mask(), first_fit)
            return "priority" if blocked is not None else "reservation"
        return self._scarcest_resource(item, mask)

    def estimated_start(self, request_id: str) -> float | None:
        """Rough start time from expected runtimes of running work; None when unknown."""
        if request_id in self.running:
            return self.running[request_id].start
        item = self.queued.get(request_id)
        if item is None:
            return None
        for res in self.reservations:
            if res.request_id == request_id:
                return res.est_start
        res = self.reservation_for(item, self.now, first_fit)
        return None if res is None else res.est_start

    def change_count(self) -> int:
        """Grows with every change to the queue, the holdings or the pool (a cache key)."""
        return self._changes + self._version

    def next_wakeup(self) -> float | None:
        """The next time a pass could decide differently with no event (aging, priorities)."""
        return self.policy.next_wakeup(self, self.now)

    def tenant_weight(self, tenant: str) -> float:
        weights = self.config.weights
        if tenant in weights:
            return float(weights[tenant])
        groups = [self.config.group_weights[g] for g in self._tenant_groups.get(tenant, ())
                  if g in self.config.group_weights]
        return float(max(groups)) if groups else 1.0

    def shares(self, tenant: str) -> np.ndarray:
        held = self.held.get(tenant)
        if held is None:
            return np.zeros(len(self.keys))
        return np.divide(held, self.total_cap, out=np.zeros_like(held),
                         where=self.total_cap > 0)

    def weighted_share(self, tenant: str) -> float:
        value = self._weighted.get(tenant)
        if value is None:  # kept until the tenant's holdings, weight or the pool change
            s = self.shares(tenant)
            value = (float(s.max()) if s.size else 0.0) / self.tenant_weight(tenant)
            self._weighted[tenant] = value
        return value

    def config_changed(self) -> None:
        """Weights or quotas in ``config`` were edited in place: forget what used them."""
        self._weighted.clear()

    def node_names(self) -> list[str]:
        return [n for n, s in self._slot.items() if self.active[s]]

    def node(self, name: str) -> Node:
        """The node as the pool declared it (capacity, GPU type, backend)."""
        if name not in self._slot:
            raise SchedulerError(f"unknown node {name!r}")
        return self._node_at(self._slot[name])

    def node_free(self, name: str) -> dict[str, float]:
        """What the node has free now, per resource key (mem in bytes)."""
        if name not in self._slot:
            raise SchedulerError(f"unknown node {name!r}")
        return dict(zip(self.keys, self.free[self._slot[name]].tolist(), strict=True))

    def allocation(self, request_id: str) -> Allocation | None:
        run = self.running.get(request_id)
        return None if run is None else run.allocation

    # ---------------------------------------------------------- queue helpers
    def queued_in_order(self) -> Iterator[Item]:
        for _, _, rid in self._global:
            yield self.queued[rid]

    def tenant_queue(self, tenant: str) -> list[tuple[float, int, str]]:
        return self._by_tenant.get(tenant, [])

    def by_age(self) -> list[tuple[float, int, str]]:
        """Queued (waiting_since, seq, id), longest-waiting first."""
        return self._by_age

    def tenant_by_age(self, tenant: str) -> list[tuple[float, int, str]]:
        return self._age_by_tenant.get(tenant, [])

    def next_protection_end(self) -> float | None:
        return self._protection_ends[0][0] if self._protection_ends else None

    def victim_tenants(self) -> list[str]:
        """Tenants holding preemptible work that is not protected now."""
        return [t for t, pool in self._victims.items() if pool]

    def victim_starts(self) -> Iterator[float]:
        """When each run of preemptible, unprotected work started."""
        return (run.start for pool in self._victims.values() for run in pool.values())

    def tenants_waiting(self) -> list[str]:
        return [t for t, q in self._by_tenant.items() if q]

    def active_tenants(self) -> set[str]:
        return {t for t, q in self._by_tenant.items() if q} | {
            t for t, h in self.held.items() if h.any()}

    # ------------------------------------------------------- placement mechanics
    def eligible(self, types: frozenset[str] | None) -> np.ndarray:
        mask = self._type_masks.get(types)
        if mask is None:
            if types is None:
                mask = self.active.copy()
            else:
                mask = self.active & np.array([t in types for t in self._nodes.gpu_type],
                                              dtype=bool)
            self._type_masks[types] = mask
        return mask

    def place(self, item: Item, free: np.ndarray, mask: np.ndarray,
              scorer: Scorer) -> list[int] | None:
        """Choose a node per unit on ``free`` (left unchanged); None unless the whole gang fits."""
        d = item.unit
        need = d - EPS
        count = item.request.count
        sample = self.config.score_sample
        cols = [r for r, v in enumerate(need.tolist()) if v > 0]  # free is never negative
        if count == 1:  # nonzero()[0]: flatnonzero without its wrappers (1-D masks)
            idx = _fits(free, need, cols, mask).nonzero()[0][:sample]
            if idx.size == 0:
                return None
            return [int(idx[scorer(self, idx, d, free)])]
        chosen: list[int] = []
        for _ in range(count):
            idx = _fits(free, need, cols, mask).nonzero()[0][:sample]
            if idx.size == 0:
                break
            slot = int(idx[scorer(self, idx, d, free)])
            free[slot] -= d
            chosen.append(slot)
        for slot in chosen:
            free[slot] += d
        return chosen if len(chosen) == count else None

    def try_start(self, item: Item, now: float, scorer: Scorer,
                  allowed: np.ndarray | None = None) -> Decision | None:
        """Start ``item`` if quota allows and the gang fits on allowed nodes."""
        if not (item.unit <= self.max_free() + EPS).all() or self._quota_excess(item):
            return None  # the first test is a cheap necessary condition: no node has enough
        mask = self.eligible(item.types)
        if allowed is not None:
            mask = mask & allowed
        slots = self.place(item, self.free, mask, scorer)
        if slots is None:
            return None
        return self.start(item, slots, now)

    def max_free(self) -> np.ndarray:
        """Per resource, an upper bound on what one node has free: exact after capacity grows,
        then kept while starts only shrink it (a bound is all the quick tests need)."""
        if self._max_free_version != self._free_grew:
            self._max_free = (self.free.max(axis=0) if len(self.free)
                              else np.zeros(len(self.keys)))
            self._max_free_version = self._free_grew
        return self._max_free

    def start(self, item: Item, slots: list[int], now: float,
              units: tuple[UnitPlacement, ...] | None = None) -> Decision:
        """Commit an allocation (``units`` given: restore exactly that placement)."""
        self._dequeue(item)
        placed = units or tuple(self._claim_unit(item, s) for s in slots)
        if units is not None:
            for slot, unit in zip(slots, units, strict=True):
                self._claim_exact(slot, unit)
        for slot in slots:
            self.free[slot] -= item.unit
        total = item.unit * item.request.count
        self._add_held(item, total)
        alloc = Allocation(request_id=item.id, tenant=item.tenant, units=placed, start=now)
        self._starts += 1
        run = Running(item=item, allocation=alloc, slots=list(slots), start=now,
                      protected_until=self.policy.protected_until(self, item, now),
                      order=self._starts)
        self.running[item.id] = run
        bisect.insort(self._by_end, (run.expected_end, item.seq, item.id))
        if item.request.preemptible and not run.protected:
            self._count_victim(run, 1)
        elif run.protected and math.isfinite(run.protected_until):
            heapq.heappush(self._protection_ends, (run.protected_until, item.seq, item.id))
        self._version += 1
        self.policy.on_start(self, item, now)
        return Decision("start", item.id, alloc)

    def preempt(self, request_id: str, now: float, reason: str = "") -> Decision:
        """Stop a running request and put it back in the queue at its original place; its
        aging clock restarts now (aging bounds each stretch of waiting, not the total)."""
        run = self.running[request_id]
        self._release(request_id, now)
        run.item.waiting_since = now
        self._enqueue(run.item)
        self.policy.on_submit(self, run.item, now)
        return Decision("preempt", request_id, run.allocation, reason)

    def set_reservations(self, reservations: list[Reservation]) -> None:
        self.reservations = reservations
        self._allowed_cache.clear()

    def reserved_mask(self) -> np.ndarray:
        mask = np.zeros(len(self.active), dtype=bool)
        for res in self.reservations:
            mask |= res.mask
        return mask

    def allowed_given_reservations(self, item: Item, now: float) -> np.ndarray | None:
        """Nodes ``item`` may use: unreserved ones, plus reserved ones it would leave in time."""
        if not self.reservations:
            return None
        usable = tuple(i for i, res in enumerate(self.reservations)
                       if item.runtime is not None and res.est_start is not None
                       and now + item.runtime <= res.est_start)
        cached = self._allowed_cache.get(usable)
        if cached is None:
            cached = np.ones(len(self.active), dtype=bool)
            for i, res in enumerate(self.reservations):
                if i not in usable:
                    cached &= ~res.mask
            self._allowed_cache[usable] = cached
        return cached

    def reservation_for(self, item: Item, now: float, scorer: Scorer,
                        exclude: np.ndarray | None = None) -> Reservation | None:
        """Where and when ``item`` fits as running work ends (EASY's shadow time).

        Releases are applied in expected-end order; a binary search finds the fewest that
        make the gang fit. Work with unknown runtime ends at +inf, so the start is unknown.
        A reservation with a known start is kept until that start passes or the pool changes.
        """
        ex_key = b"" if exclude is None else np.packbits(exclude).tobytes()
        cached = self._reservation_cache.get(item.id)
        if cached and cached[0] == self._topology and cached[1] == ex_key and (
                cached[2] is not None and cached[2].est_start is not None
                and cached[2].est_start > now):
            # Still valid: its nodes only take work that ends before est_start, so they drain
            # on time; a start that became possible earlier is caught by try_start first.
            return cached[2]
        res = self._compute_reservation(item, now, scorer, exclude)
        if len(self._reservation_cache) > 256:
            self._reservation_cache.clear()
        self._reservation_cache[item.id] = (self._topology, ex_key, res)
        return res

    def _releases(self) -> _Releases:
        """Running work in expected-end order (cached until allocations change)."""
        if self._release_cache and self._release_cache[0] == self._version:
            return self._release_cache[1]
        runs = [self.running[rid] for _, _, rid in self._by_end]
        value = _Releases.of(runs, len(self.keys))
        self._release_cache = (self._version, value)
        return value

    def _compute_reservation(self, item: Item, now: float, scorer: Scorer,
                             exclude: np.ndarray | None) -> Reservation | None:
        mask = self.eligible(item.types)
        if exclude is not None:
            mask = mask & ~exclude
        rel = self._releases()
        if not rel.runs:
            return None

        def free_after(k: int) -> np.ndarray:
            free = self.free.copy()
            n = int(np.searchsorted(rel.run_of_unit, k))
            np.add.at(free, rel.slots[:n], rel.vecs[:n])
            return free

        lo = _releases_until_fit(self.free, mask, item.unit, item.request.count, rel)
        if lo is None:
            return None
        hi = len(rel.runs)
        if self.place(item, free_after(lo), mask, first_fit) is not None:
            hi = lo  # the usual case: the count agrees with placing unit by unit
        while lo < hi:  # rounding at a boundary: search the rest unit by unit
            mid = (lo + hi) // 2
            if self.place(item, free_after(mid), mask, first_fit) is None:
                lo = mid + 1
            else:
                hi = mid
        slots = self.place(item, free_after(lo), mask, scorer) or []
        res_mask = np.zeros(len(self.active), dtype=bool)
        res_mask[slots] = True
        end = rel.runs[lo - 1].expected_end if lo > 0 else now
        return Reservation(item.id, res_mask, None if math.isinf(end) else max(end, now))

    def preempt_for(self, item: Item, now: float, victim_ok: Callable[[Running], bool],
                    scorer: Scorer, allowed: np.ndarray | None = None,
                    tenants: Iterable[str] | None = None) -> list[Decision]:
        """Free room for ``item`` by preempting whole gangs that ``victim_ok`` accepts, of
        ``tenants`` only when given (a cheap prefilter: most work is ruled out per tenant).

        Nodes are chosen on the capacity that preempting could reclaim; on each chosen node the
        victims are taken from the most over-served tenant first, newest first.
        """
        if self._quota_excess(item):
            return []
        mask = self.eligible(item.types)
        if allowed is not None:
            mask = mask & allowed
        if self.place(item, self.free + self.victim_used, mask, first_fit) is None:
            return []  # even every eligible victim would not make room
        pools = self._victims.values() if tenants is None else (
            self._victims[t] for t in tenants if t in self._victims)
        victims = [run for pool in pools for run in pool.values() if victim_ok(run)]
        if not victims:
            return []
        victims.sort(key=_started_order)  # a fixed summation order: reproducible floats
        reclaimable = self.free.copy()
        for run in victims:
            for slot in run.slots:
                reclaimable[slot] += run.item.unit
        slots = self.place(item, reclaimable, mask, scorer)
        if slots is None:
            return []
        deficit = {slot: -self.free[slot] for slot in slots}  # what each chosen node lacks
        for slot in slots:
            deficit[slot] = deficit[slot] + item.unit
        victims = [run for run in victims if not deficit.keys().isdisjoint(run.slots)]
        share = {t: self.weighted_share(t) for t in {run.item.tenant for run in victims}}
        victims.sort(key=lambda r: (-share[r.item.tenant], -r.start, r.item.id))
        chosen: list[str] = []
        short = {slot for slot, lack in deficit.items() if (lack > EPS).any()}
        for run in victims:
            if not short:
                break
            if not short.isdisjoint(run.slots):
                chosen.append(run.item.id)
                for slot in run.slots:
                    if slot in deficit:
                        deficit[slot] = deficit[slot] - run.item.unit
                        if not (deficit[slot] > EPS).any():
                            short.discard(slot)
        decisions = [self.preempt(rid, now, reason=f"for {item.id}") for rid in chosen]
        started = self.try_start(item, now, scorer, allowed)
        if started is None:  # cannot happen when the arithmetic above holds; stay safe
            return decisions
        return [*decisions, started]

    # ---------------------------------------------------------- persistence
    def export_state(self) -> dict[str, Any]:
        """A JSON-able snapshot: pool, queue, running allocations, config, policy state."""
        nodes = [self._node_at(s).to_dict() for s in sorted(self._slot.values())]
        queue = [self._item_dict(self.queued[rid]) for _, _, rid in self._global]
        running = [{**self._item_dict(r.item), "allocation": r.allocation.to_dict()}
                   for r in sorted(self.running.values(), key=lambda r: r.item.order_key)]
        return {"version": STATE_VERSION, "policy": self.policy.name, "now": self.now,
                "seq": self._seq, "config": self.config.to_dict(), "nodes": nodes,
                "queue": queue, "running": running, "policy_state": self.policy.export()}

    def restore(self, data: dict[str, Any]) -> None:
        """Replace this state with an exported one (allocations are re-claimed exactly)."""
        if data.get("version") != STATE_VERSION:
            raise SchedulerError(f"restore: unsupported state version {data.get('version')!r}")
        fresh = SchedulerState(data["policy"], SchedulerConfig.from_dict(data["config"]),
                               [Node.from_dict(n) for n in data["nodes"]], self.validate,
                               self.auto_schedule)
        fresh.now = float(data["now"])
        for entry in data["running"]:
            item = fresh._item_from_dict(entry)
            fresh._enqueue(item)
            alloc = Allocation.from_dict(entry["allocation"])
            slots = [fresh._slot[u.node] for u in alloc.units]
            fresh.start(item, slots, alloc.start, units=alloc.units)
        for entry in data["queue"]:
            fresh._enqueue(fresh._item_from_dict(entry))
        fresh._seq = int(data["seq"])
        fresh.policy.restore(data.get("policy_state") or {})
        self.__dict__.update(fresh.__dict__)
        if self.validate:
            self.check_invariants()

    @classmethod
    def from_export(cls, data: dict[str, Any], validate: bool = False) -> SchedulerState:
        state = cls(validate=validate)
        state.restore(data)
        return state

    # ------------------------------------------------------------ validation
    def check_invariants(self) -> None:
        """Never over-allocate; free equals capacity minus allocations; gangs whole."""
        used = np.zeros_like(self.cap)
        gpus_taken: dict[int, list[int]] = {}
        for rid, run in self.running.items():
            if rid in self.queued:
                raise InvariantError(f"{rid} is both queued and running")
            if len(run.slots) != run.item.request.count:
                raise InvariantError(f"{rid}: {len(run.slots)} units for a gang of "
                                     f"{run.item.request.count}")
            for slot, unit in zip(run.slots, run.allocation.units, strict=True):
                if not self.active[slot] or self._nodes.names[slot] != unit.node:
                    raise InvariantError(f"{rid}: allocation on inactive/mismatched node")
                used[slot] += run.item.unit
                gpus_taken.setdefault(slot, []).extend(unit.gpus)
                if len(unit.gpus) != round(run.item.request.demand.gpu):
                    raise InvariantError(f"{rid}: wrong number of GPU indices")
        if (used > self.cap + 1e-6).any():
            raise InvariantError("over-allocation: a node holds more than its capacity")
        if not np.allclose(self.cap - used, self.free, atol=1e-6):
            raise InvariantError("free resources do not match capacity minus allocations")
        for slot, gpus in gpus_taken.items():
            if len(set(gpus)) != len(gpus):
                raise InvariantError(f"GPU index given twice on {self._nodes.names[slot]}")
            if set(gpus) & set(self._nodes.gpu_free[slot]):
                raise InvariantError("a GPU is both allocated and free")
        queued_ids = [rid for _, _, rid in self._global]
        if sorted(queued_ids) != sorted(self.queued):
            raise InvariantError("global queue index out of sync")
        if sum(len(q) for q in self._by_tenant.values()) != len(self.queued):
            raise InvariantError("tenant queue index out of sync")
        if sorted(e[2] for e in self._by_age) != sorted(self.queued) or sum(
                len(q) for q in self._age_by_tenant.values()) != len(self.queued):
            raise InvariantError("aging queue index out of sync")
        for run in self.running.values():
            if run.item.request.preemptible and not run.protected:
                np.subtract.at(used, run.slots, run.item.unit)
        if not np.allclose(used, self.cap - self.free - self.victim_used, atol=1e-6):
            raise InvariantError("preemptible (victim) usage out of sync")
        if self._by_end != sorted((r.expected_end, r.item.seq, rid)
                                  for rid, r in self.running.items()):
            raise InvariantError("expected-end index out of sync")
        victims = {rid for rid, run in self.running.items()
                   if run.item.request.preemptible and not run.protected}
        indexed = [(t, rid) for t, pool in self._victims.items() for rid in pool]
        if {rid for _, rid in indexed} != victims or len(indexed) != len(victims) or any(
                self.running[rid].item.tenant != t for t, rid in indexed):
            raise InvariantError("preemptible (victim) index out of sync")

    # ---------------------------------------------------------------- internals
    def _advance(self, now: float | None) -> float:
        if now is not None:
            if now + EPS < self.now:
                raise SchedulerError(f"time went backwards: {now} < {self.now}")
            self.policy.advance(self, float(now))  # before the event changes any holdings
            self.now = max(self.now, float(now))
            self._expire_protection(self.now)
        return self.now

    def _expire_protection(self, now: float) -> None:
        """Work whose protection quantum has passed becomes a preemption victim again."""
        ends = self._protection_ends
        while ends and ends[0][0] <= now + EPS:
            until, _, rid = heapq.heappop(ends)
            run = self.running.get(rid)
            if run is None or run.protected_until != until:
                continue  # ended or restarted since
            run.protected_until = -math.inf
            if run.item.request.preemptible:
                self._count_victim(run, 1)

    def _count_victim(self, run: Running, sign: int) -> None:
        pool = self._victims.setdefault(run.item.tenant, {})
        if sign > 0:
            pool[run.item.id] = run
        else:
            pool.pop(run.item.id, None)
        for slot in run.slots:
            if slot < len(self.active) and self.active[slot]:
                self.victim_used[slot] += sign * run.item.unit

    def _after_event(self, now: float) -> list[Decision]:
        decisions = self.policy.schedule(self, now) if self.auto_schedule else []
        if self.validate:
            self.check_invariants()
        return decisions

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _vet(self, request: Request, check_duplicate: bool = True
             ) -> tuple[str, None] | tuple[None, Item]:
        """Why the request can never start here, or the item it becomes (submitted now)."""
        if check_duplicate and (request.id in self.queued or request.id in self.running):
            return f"request id {request.id!r} is already queued or running", None
        if request.count < 1:
            return f"{request.id}: count must be at least 1", None
        if request.kind not in KINDS:
            return f"{request.id}: kind {request.kind!r} is not one of {sorted(KINDS)}", None
        demand = request.demand.as_dict()
        if any(v < 0 for v in demand.values()):
            return f"{request.id}: negative demand", None
        if not any(v > 0 for v in demand.values()):
            return f"{request.id}: demand is empty", None
        item = self._make_item(request, self.now, 0)
        over = self._quota_excess(item, held=False)
        if over:
            return (f"{request.id}: needs more {over} than the quota of tenant {request.tenant!r}"
                    " or its groups allows"), None
        mask = self.eligible(item.types)
        if not mask.any():
            wanted = "any node" if item.types is None else f"a node of GPU type {request.gpu_type}"
            return f"{request.id}: there is no {wanted} in the pool", None
        fits = self._fits_empty_pool.get(item.shape)
        if fits is None:
            fits = self._fits_empty_pool[item.shape] = (
                self.place(item, self.cap, mask, first_fit) is not None)
        if not fits:
            return (f"{request.id}: {request.count} x {demand} is larger than the pool can ever "
                    "hold (per node or in total); ask for less per unit"), None
        return None, item

    def _make_item(self, request: Request, submit: float, seq: int) -> Item:
        self._ensure_keys(request.demand.as_dict())
        unit = np.array([request.demand.get(k) for k in self.keys], dtype=float)
        types = parse_gpu_types(request.gpu_type)
        shape = (tuple(unit.tolist()), request.count, types)
        return Item(request, submit, seq, unit, types, request.runtime, shape)

    def anything_fits(self, exact: bool = False) -> bool:
        """Whether some queued unit is no larger than the free maximum of each resource
        (a necessary condition for any start; a pass stops as soon as it fails). ``exact``
        also requires one node to have room for the whole unit."""
        if not exact:
            n = len(self._shape_row)
            live = (self._shape_mat[:n] <= self.max_free() + EPS).all(axis=1)
            return bool((live & (self._shape_cnt[:n] > 0)).any())
        return any(self.fitting_shapes())

    def fitting_shapes(self) -> list[bool]:
        """Per distinct queued shape (``Item.row``): does one unit fit on some node now?"""
        return FitTracker(self).fitting

    def _count_shape(self, item: Item, delta: int) -> None:
        key = item.shape[0]
        row = self._shape_row.get(key)
        if row is None:
            row = self._shape_row[key] = len(self._shape_row)
            if row >= len(self._shape_cnt):
                self._shape_mat = np.vstack([self._shape_mat, np.zeros_like(self._shape_mat)])
                self._shape_cnt = np.concatenate([self._shape_cnt,
                                                  np.zeros_like(self._shape_cnt)])
            self._shape_mat[row] = item.unit
        item.row = row
        self._shape_cnt[row] += delta
        if self._shape_cnt[row] == (1 if delta > 0 else 0):  # a shape came or went
            self._shapes_changed += 1

    def window_rows(self, tenant: str, length: int) -> tuple[int, ...]:
        """Shape rows of the tenant's first ``length`` queued requests (cached per tenant)."""
        rows = self._window_rows.get(tenant)
        if rows is None or len(rows) != min(length, len(self._by_tenant.get(tenant, ()))):
            queue = self._by_tenant.get(tenant, [])[:length]
            rows = self._window_rows[tenant] = tuple(self.queued[e[2]].row for e in queue)
        return rows

    def _enqueue(self, item: Item) -> None:
        self._changes += 1
        entry = (item.submit, item.seq, item.id)
        self._window_rows.pop(item.tenant, None)
        self._count_shape(item, 1)
        self.queued[item.id] = item
        bisect.insort(self._global, entry)
        bisect.insort(self._by_tenant.setdefault(item.tenant, []), entry)
        bisect.insort(self._by_age, item.age_entry)
        bisect.insort(self._age_by_tenant.setdefault(item.tenant, []), item.age_entry)
        demand = self.queued_demand.setdefault(item.tenant, np.zeros(len(self.keys)))
        demand += item.unit * item.request.count

    def _dequeue(self, item: Item) -> None:
        self._changes += 1
        entry = (item.submit, item.seq, item.id)
        self._window_rows.pop(item.tenant, None)
        self._count_shape(item, -1)
        del self.queued[item.id]
        _remove_sorted(self._global, entry)
        _remove_sorted(self._by_tenant[item.tenant], entry)
        _remove_sorted(self._by_age, item.age_entry)
        _remove_sorted(self._age_by_tenant[item.tenant], item.age_entry)
        self.queued_demand[item.tenant] -= item.unit * item.request.count
        if any(r.request_id == item.id for r in self.reservations):
            self.set_reservations([r for r in self.reservations if r.request_id != item.id])

    def _release(self, request_id: str, now: float) -> None:
        run = self.running.pop(request_id)
        _remove_sorted(self._by_end, (run.expected_end, run.item.seq, run.item.id))
        self._version += 1
        self._free_grew += 1
        if run.item.request.preemptible and not run.protected:
            self._count_victim(run, -1)
        for slot, unit in zip(run.slots, run.allocation.units, strict=True):
            if slot >= len(self.active) or not self.active[slot]:
                continue  # the node is gone; nothing to give back
            self.free[slot] += run.item.unit
            gpus = self._nodes.gpu_free[slot]
            gpus.extend(unit.gpus)
            gpus.sort()
            cores = self._nodes.core_free[slot]
            if cores is not None and unit.cores:
                cores.extend(unit.cores)
                cores.sort()
        self._add_held(run.item, -run.item.unit * run.item.request.count)
        self.policy.on_release(self, run, now)

    def _add_held(self, item: Item, delta: np.ndarray) -> None:
        self._weighted.pop(item.tenant, None)
        held = self.held.setdefault(item.tenant, np.zeros(len(self.keys)))
        held += delta
        np.maximum(held, 0.0, out=held)
        for group in item.request.groups:
            gh = self.group_held.setdefault(group, np.zeros(len(self.keys)))
            gh += delta
            np.maximum(gh, 0.0, out=gh)

    def _quota_excess(self, item: Item, held: bool = True) -> str | None:
        """The first resource on which starting ``item`` would exceed a quota, if any."""
        cfg = self.config
        if not cfg.quotas and not cfg.group_quotas:
            return None
        total = item.unit * item.request.count
        caps = [(cfg.quotas.get(item.tenant), self.held.get(item.tenant))]
        caps += [(cfg.group_quotas.get(g), self.group_held.get(g)) for g in item.request.groups]
        for quota, have in caps:
            if not quota:
                continue
            for key, limit in quota.items():
                if key not in self.keys:
                    continue
                col = self.keys.index(key)
                current = float(have[col]) if (held and have is not None) else 0.0
                if current + total[col] > float(limit) + EPS:
                    return key
        return None

    def _scarcest_resource(self, item: Item, mask: np.ndarray) -> str:
        """The resource whose shortage keeps ``item`` out, judged on the closest node."""
        if not mask.any():
            return "gpu_type"
        d = item.unit
        scale = np.where(d > 0, d, 1.0)
        deficit = np.maximum(d - self.free[mask], 0.0) / scale
        best = int(np.argmin(deficit.max(axis=1)))
        if deficit[best].max() <= EPS:  # fits one unit per node, not the whole gang
            return self.keys[int(np.argmax(d / np.where(self.total_cap > 0, self.total_cap, 1)))]
        return self.keys[int(np.argmax(deficit[best]))]

    def _claim_unit(self, item: Item, slot: int) -> UnitPlacement:
        nodes = self._nodes
        n_gpu = round(item.request.demand.gpu)
        gpus = tuple(nodes.gpu_free[slot][:n_gpu])
        del nodes.gpu_free[slot][:n_gpu]
        cpu = float(item.request.demand.cpu)
        cores = None
        free_cores = nodes.core_free[slot]
        if free_cores is not None and cpu.is_integer() and len(free_cores) >= int(cpu):
            cores = tuple(free_cores[: int(cpu)])
            del free_cores[: int(cpu)]
        return UnitPlacement(nodes.names[slot], gpus, cpu, cores, int(item.request.demand.mem))

    def _claim_exact(self, slot: int, unit: UnitPlacement) -> None:
        gpus = self._nodes.gpu_free[slot]
        for g in unit.gpus:
            gpus.remove(g)
        cores = self._nodes.core_free[slot]
        if cores is not None and unit.cores:
            for c in unit.cores:
                cores.remove(c)

    def _add_node(self, node: Node) -> None:
        if node.name in self._slot:
            raise SchedulerError(f"add_node: node {node.name!r} is already in the pool")
        capacity = node.capacity.as_dict()
        self._ensure_keys(capacity)
        row = np.array([[capacity.get(k, 0.0) for k in self.keys]], dtype=float)
        self._slot[node.name] = len(self.active)
        self.cap = np.vstack([self.cap, row])
        self.free = np.vstack([self.free, row])
        self.victim_used = np.vstack([self.victim_used, np.zeros_like(row)])
        self.active = np.append(self.active, True)
        nodes = self._nodes
        nodes.names.append(node.name)
        nodes.gpu_type.append(node.gpu_type)
        nodes.backend.append(node.backend)
        nodes.gpu_free.append(list(range(node.capacity.gpu)))
        cpu = node.capacity.cpu
        nodes.core_free.append(list(range(int(cpu))) if float(cpu).is_integer() else None)
        self._topology_changed()

    def _node_at(self, slot: int) -> Node:
        values = dict(zip(self.keys, self.cap[slot].tolist(), strict=True))
        return Node(self._nodes.names[slot], _resources_from(values), self._nodes.gpu_type[slot],
                    self._nodes.backend[slot])

    def _topology_changed(self) -> None:
        self._topology += 1
        self._weighted.clear()
        self._version += 1
        self._free_grew += 1
        self._type_masks.clear()
        self._fits_empty_pool.clear()
        safe = np.where(self.cap > 0, self.cap, 1.0)
        self.inv_cap = np.where(self.cap > 0, 1.0 / safe, 0.0)
        missing = np.where(self.cap > 0, 0.0, np.inf)  # keeps absent resources out of a min
        present = 1.0 / np.maximum((self.cap > 0).sum(axis=1), 1)
        # per node, what the balanced scorer reads: capacity, its inverse, absent, 1/#present
        self.node_terms = np.hstack([self.cap, self.inv_cap, missing, present[:, None]])
        self.total_cap = self.cap[self.active].sum(axis=0) if self.active.any() else np.zeros(
            len(self.keys))
        self.set_reservations([])

    def _ensure_keys(self, values: dict[str, float]) -> None:
        """Add a column for a resource key seen for the first time."""
        new = [k for k in values if k not in self.keys]
        if not new:
            return
        self.keys.extend(sorted(new))
        pad = len(new)
        self.cap = np.hstack([self.cap, np.zeros((len(self.cap), pad))])
        self.free = np.hstack([self.free, np.zeros((len(self.free), pad))])
        self.victim_used = np.hstack([self.victim_used, np.zeros((len(self.free), pad))])
        self.total_cap = np.append(self.total_cap, np.zeros(pad))
        for table in (self.held, self.group_held, self.queued_demand):
            for key, vec in table.items():
                table[key] = np.append(vec, np.zeros(pad))
        for item in [*self.queued.values(), *(r.item for r in self.running.values())]:
            item.unit = np.array([item.request.demand.get(k) for k in self.keys], dtype=float)
            item.shape = (tuple(item.unit.tolist()), item.request.count, item.types)
        self._shape_row = {}
        self._window_rows = {}
        self._shapes_changed += 1
        self._shape_mat = np.zeros((16, len(self.keys)))
        self._shape_cnt = np.zeros(16, dtype=np.int64)
        for item in self.queued.values():
            self._count_shape(item, 1)
        self._topology_changed()

    def _item(self, request_id: str) -> Item:
        if request_id in self.queued:
            return self.queued[request_id]
        if request_id in self.running:
            return self.running[request_id].item
        raise SchedulerError(f"no queued or running request {request_id!r}")

    @staticmethod
    def _item_dict(item: Item) -> dict[str, Any]:
        return {"request": item.request.to_dict(), "submit": item.submit, "seq": item.seq,
                "runtime": item.runtime, "waiting_since": item.waiting_since}

    def _item_from_dict(self, entry: dict[str, Any]) -> Item:
        request = Request.from_dict(entry["request"])
        self._tenant_groups.setdefault(request.tenant, set()).update(request.groups)
        self._weighted.pop(request.tenant, None)
        item = self._make_item(request, float(entry["submit"]), int(entry["seq"]))
        item.runtime = entry.get("runtime")
        item.waiting_since = float(entry.get("waiting_since", item.submit))
        return item


class FitTracker:
    """Which queued shapes fit on which nodes, kept current through one scheduling pass.

    Built once per pass (one vectorised test of live shapes x nodes); after each start only
    the touched nodes are re-tested, so "nothing queued fits any more" ends a pass early.
    """

    def __init__(self, st: SchedulerState) -> None:
        self.st = st
        n = len(st._shape_row)
        live = (st._shape_mat[:n] <= st.max_free() + EPS).all(axis=1)
        live &= st._shape_cnt[:n] > 0
        self.rows = np.flatnonzero(live)
        self.exact = self.rows.size * len(st.free) <= 4_000_000
        if self.exact and self.rows.size:
            self.shapes = st._shape_mat[self.rows]
            free = np.where(st.active[:, None], st.free, -1.0) + EPS
            self.table = _covers(free, self.shapes)
            live[self.rows] = self.table.any(axis=1)
        self.live = live
        self.fitting: list[bool] = live.tolist()
        if st._stranding_key != st._shapes_changed:  # the set of queued shapes moved
            st.stranding_ref = self._stranding_reference(st, n)
            st._stranding_key = st._shapes_changed

    @staticmethod
    def _stranding_reference(st: SchedulerState, n: int) -> np.ndarray | None:
        """Row r: the componentwise smallest queued unit among those that need resource r
        (NaN row: nothing queued needs r). Free r on a node whose other free resources are
        below this row cannot serve any queued request: it is stranded."""
        queued = st._shape_mat[:n][st._shape_cnt[:n] > 0]
        if not len(queued):
            return None
        ref = np.full((queued.shape[1], queued.shape[1]), np.nan)
        for r in range(queued.shape[1]):
            need = queued[queued[:, r] > 0]
            if len(need):
                ref[r] = need.min(axis=0)
        return ref

    def any(self) -> bool:
        return bool(self.live.any())

    def update(self, slots: Iterable[int]) -> None:
        """Re-test the nodes whose free capacity just shrank."""
        if not self.exact or not self.rows.size:
            return
        cols = sorted(set(slots))
        free = self.st.free[cols] + EPS
        self.table[:, cols] = _covers(free, self.shapes)
        still = self.table.any(axis=1)
        if not still.all():
            self.live[self.rows] = still
            self.fitting = self.live.tolist()


def stranded_shares(free: np.ndarray, inv: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per node: free capacity (share of the node) no queued unit could use. ``ref`` is
    the stranding reference (FitTracker._stranding_reference). One broadcast test over
    nodes x resources x resources against ``stranding_thresholds(ref)``: the scorer runs it
    for every unit placed, and a few numpy calls cost less than a loop of them."""
    blocked = (free[:, None, :] < stranding_thresholds(ref)[None, :, :]).any(axis=2)
    return (np.where(blocked, free, 0.0) * inv).sum(axis=1)


def stranding_thresholds(ref: np.ndarray) -> np.ndarray:
    """[r, c]: free c below this blocks free r (the smallest need of c among queued units
    that need r, less EPS); -inf where nothing queued needs r, for c == r, and where the
    smallest need of c is 0. Cached per reference array (it changes only with the queued
    shapes)."""
    key = id(ref)
    hit = _THRESHOLDS.get(key)
    if hit is not None and hit[0] is ref:
        return hit[1]
    thr = np.where(np.isnan(ref) | (ref <= 0), -np.inf, ref - EPS)
    np.fill_diagonal(thr, -np.inf)
    _THRESHOLDS.clear()  # one reference is live at a time
    _THRESHOLDS[key] = (ref, thr)
    return thr


_THRESHOLDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _covers(free: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """[shape, node]: the node's free capacity holds one unit of the shape (a resource at a
    time: with a few resources, cheaper than one test over shapes x nodes x resources)."""
    return reduce(np.logical_and, [free[None, :, r] >= shapes[:, None, r]
                                   for r in range(shapes.shape[1])])


def _fits(free: np.ndarray, need: np.ndarray, cols: list[int], mask: np.ndarray) -> np.ndarray:
    """Nodes in ``mask`` with at least ``need`` free, testing only the columns in ``cols``
    (column by column: cheaper than a row-wise all() over a handful of resources)."""
    ok = mask.copy()
    for r in cols:
        ok &= free[:, r] >= need[r]
    return ok


def _releases_until_fit(free: np.ndarray, mask: np.ndarray, unit: np.ndarray, count: int,
                        rel: _Releases) -> int | None:
    """The fewest runs (in release order) whose end lets ``count`` units fit on ``mask``.

    A node holds floor(free / unit) units (the least over the resources the unit needs);
    the gang fits once those counts, capped at ``count``, add up to ``count``. Each release
    adds to one node, so the counts after every release follow from the capacity each node
    regains (``rel.regained``): the totals in release order come out at once, with no
    repeated placement. None: not even after every release."""
    cols = np.flatnonzero(unit > EPS)
    d = unit[cols]

    def units(avail: np.ndarray) -> np.ndarray:
        per_resource = np.floor((avail + EPS) / d).T
        return np.minimum(reduce(np.minimum, per_resource), count)

    base = units(free[mask][:, cols]).sum() if mask.any() else 0.0
    if base >= count:
        return 0
    on = mask[rel.slots[rel.by_node]]  # rows on usable nodes (whole node groups)
    if not on.any():
        return None
    node_free = free[rel.slots[rel.by_node[on]]][:, cols]
    after = units(node_free + rel.regained[on][:, cols])
    before = np.where(rel.first[on], units(node_free), np.r_[0.0, after[:-1]])
    gain = np.zeros(len(rel.slots))
    gain[rel.by_node[on]] = after - before
    reached = np.flatnonzero(base + np.cumsum(gain) >= count)
    return None if reached.size == 0 else int(rel.run_of_unit[reached[0]]) + 1


def _started_order(run: Running) -> int:
    return run.order


def _remove_sorted(entries: list, entry: tuple) -> None:
    i = bisect.bisect_left(entries, entry)
    if i < len(entries) and entries[i] == entry:
        del entries[i]
    else:  # pragma: no cover - guards against index corruption
        entries.remove(entry)


def _resources_from(values: dict[str, float]):
    from loophub.scheduler.model import Resources

    return Resources.from_dict(values)


def first_fit(state: SchedulerState, idx: np.ndarray, d: np.ndarray, free: np.ndarray) -> int:
    """The lowest-numbered node that fits (Slurm's and most schedulers' default order)."""
    return 0
