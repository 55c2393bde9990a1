"""Scheduling policies, pluggable by name: fifo, drf, balanced-drf, slurm-fairshare, tetris.

A policy decides the order in which queued requests are tried and (through its scorer) which
node each unit lands on; SchedulerState does the bookkeeping. Each ``schedule`` call is one pass:
start everything the policy allows at ``now`` and return the decisions.
"""

from __future__ import annotations

import bisect
import heapq
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from functools import reduce
from typing import TYPE_CHECKING, Any

import numpy as np

from loophub.scheduler.fairshare import dominant_and_fair_shares
from loophub.scheduler.model import BASE_KEYS, Decision, SchedulerConfig
from loophub.scheduler.state import (
    EPS,
    FitTracker,
    Item,
    Reservation,
    Running,
    Scorer,
    first_fit,
    stranded_shares,
    stranding_thresholds,
)

if TYPE_CHECKING:
    from loophub.scheduler.state import SchedulerState

GPU = BASE_KEYS.index("gpu")  # resource columns start with BASE_KEYS in every state


# ------------------------------------------------------------------ node scorers
def balanced_score(state: SchedulerState, idx: np.ndarray, d: np.ndarray,
                   free: np.ndarray) -> int:
    """The node of ``idx`` that ``balanced_scores`` rates lowest. In a full pool most units
    have one or a few feasible nodes: one needs no score, and a few are scored in plain
    Python (``_few_node_scores``), where numpy's per-call cost would dominate. Scores are
    cached per demand shape and node (``_ScoreCache``): only nodes whose free capacity
    changed since they were last scored are rescored."""
    if idx.size == 1:
        return 0
    ref = state.stranding_ref
    if ref is None:
        return int(np.argmin(balanced_scores(state, idx, d, free)))
    cache = _ScoreCache.of(state, ref)
    if idx.size <= FEW_NODES:
        scores = cache.few(state, idx, d, free)
        return scores.index(min(scores))
    return int(np.argmin(cache.many(state, idx, d, free)))


FEW_NODES = 4  # up to this many candidates, Python scalars beat numpy's per-call overhead
MAX_SHAPES = 64  # demand shapes whose scores are cached at once (memory bound)


class _ScoreCache:
    """A node's balanced score for a demand shape depends only on the node's free row, its
    terms (capacity), the stranding reference and the weights: scores are kept per shape
    and node with the free row they were computed on, and a node is rescored only when its
    row differs. Each path keeps its own table and its own arithmetic: the few-node path
    (``_few_node_scores``) and the numpy path (``balanced_scores``, whose changed nodes are
    rescored by ``_exact_scores``, the same floats), so the values, and the node chosen,
    are exactly those of scoring from scratch. Dropped when the stranding reference, the
    pool (``node_terms``) or the weights change."""

    def __init__(self, state: SchedulerState, ref: np.ndarray) -> None:
        cfg = state.config
        self.ref = ref
        self.terms = state.node_terms
        self.weights = (cfg.balanced_stranding_weight, cfg.balanced_packing_weight,
                        cfg.balanced_gpu_fit_weight)
        self.blocks = _blocks(stranding_thresholds(ref))
        self.stranded: dict[int, tuple[list[float], float]] = {}  # node -> (free, share)
        self.most = float(state.cap[:, GPU].max(initial=0.0))
        self.scale = strand_scale(state)
        self.few_tables: dict[bytes, dict[int, tuple[list[float], float]]] = {}
        self.many_tables: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    @staticmethod
    def of(state: SchedulerState, ref: np.ndarray) -> _ScoreCache:
        cache = getattr(state, "_balanced_score_cache", None)
        cfg = state.config
        if cache is None or cache.ref is not ref or cache.terms is not state.node_terms or (
                cache.scale != strand_scale(state)) or (
                cache.weights != (cfg.balanced_stranding_weight, cfg.balanced_packing_weight,
                                  cfg.balanced_gpu_fit_weight)):
            cache = _ScoreCache(state, ref)
            state._balanced_score_cache = cache  # type: ignore[attr-defined]
        return cache

    def few(self, state: SchedulerState, idx: np.ndarray, d: np.ndarray, free: np.ndarray
            ) -> list[float]:
        key = d.tobytes()
        table = self.few_tables.get(key)
        if table is None:
            if len(self.few_tables) >= MAX_SHAPES:
                self.few_tables.clear()
            table = self.few_tables[key] = {}
        nodes = idx.tolist()
        rows = free[idx].tolist()
        out: list[float] = []
        stale: list[int] = []
        for node, row in zip(nodes, rows, strict=True):
            hit = table.get(node)
            if hit is not None and hit[0] == row:
                out.append(hit[1])
            else:
                stale.append(len(out))
                out.append(0.0)
        if stale:
            fresh = _few_node_scores(state, idx[stale], d, free, self.blocks, self.most,
                                     [rows[i] for i in stale], self.stranded)
            for i, score in zip(stale, fresh, strict=True):
                out[i] = score
                table[nodes[i]] = (rows[i], score)
        return out

    def many(self, state: SchedulerState, idx: np.ndarray, d: np.ndarray, free: np.ndarray
             ) -> np.ndarray:
        key = d.tobytes()
        entry = self.many_tables.get(key)
        n = len(self.terms)
        if entry is None:
            if len(self.many_tables) >= MAX_SHAPES:
                self.many_tables.clear()
            entry = (np.full((n, len(d)), np.nan), np.zeros(n))
            self.many_tables[key] = entry
        seen, scores = entry
        before = free[idx]
        stale = (before != seen[idx]).any(axis=1)
        if stale.any():
            sub = idx[stale]
            rows = before[stale]
            if len(sub) <= SCALAR_MAX and len(d) < EXACT_KEYS:
                scores[sub] = _exact_scores(state, sub, d, rows.tolist(), self.blocks,
                                            self.most, self.stranded)
            else:
                scores[sub] = balanced_scores(state, sub, d, free)
            seen[sub] = rows
        return scores[idx]


SCALAR_MAX = 12  # stale nodes rescored in Python (about 4 us each; numpy: 50 us a call)
EXACT_KEYS = 8  # below this many resources numpy sums a row left to right, as Python does


def _exact_scores(state: SchedulerState, idx: np.ndarray, d: np.ndarray,
                  rows: list[list[float]], blocks: list[tuple[int, list[tuple[int, float]]]],
                  most: float, stranded: dict[int, tuple[list[float], float]] | None = None
                  ) -> list[float]:
    """``balanced_scores`` (with a queue) for a few nodes in plain Python, bit for bit: the
    same float operations in the same order as the numpy version (which, with fewer than
    ``EXACT_KEYS`` resources, sums each row left to right; terms it adds as 0 change no
    value), so cached numpy scores and these mix without changing any choice. A test
    checks equality. ``rows``: free[idx]; ``blocks``: ``_blocks`` of the stranding
    thresholds; ``most``: the largest node's GPU count; ``stranded``: a cache of each
    node's stranded share before placement."""
    return _scalar_scores(state, idx, d, rows, blocks, most, True, stranded)


def _few_node_scores(state: SchedulerState, idx: np.ndarray, d: np.ndarray,
                     free: np.ndarray, blocks: list[tuple[int, list[tuple[int, float]]]] | None
                     = None, most: float | None = None, rows: list[list[float]] | None = None,
                     stranded: dict[int, tuple[list[float], float]] | None = None
                     ) -> list[float]:
    """``balanced_scores`` (with a queue) for a handful of nodes, one node at a time in
    plain Python; a test keeps the two equal. ``blocks``, ``most`` and ``rows`` (free[idx]),
    when given, are what would be computed here; ``stranded`` as for ``_exact_scores``."""
    if blocks is None:
        blocks = _blocks(stranding_thresholds(state.stranding_ref))
    if most is None:
        most = float(state.cap[:, GPU].max(initial=0.0))
    if rows is None:
        rows = free[idx].tolist()
    return _scalar_scores(state, idx, d, rows, blocks, most, False, stranded)


def _blocks(thr: np.ndarray) -> list[tuple[int, list[tuple[int, float]]]]:
    """The stranding thresholds as (r, [(c, threshold of c), ...]) with the -inf entries
    left out (free c is never below -inf), rows with none left out."""
    out = []
    for r, row in enumerate(thr.tolist()):
        pairs = [(c, v) for c, v in enumerate(row) if v != -math.inf]
        if pairs:
            out.append((r, pairs))
    return out


def _scalar_scores(state: SchedulerState, idx: np.ndarray, d: np.ndarray,
                   rows: list[list[float]], blocks: list[tuple[int, list[tuple[int, float]]]],
                   most: float, exact: bool,
                   stranded: dict[int, tuple[list[float], float]] | None) -> list[float]:
    """The scalar scorer behind ``_few_node_scores`` and ``_exact_scores``: they differ
    only in the order of the packing product, (w_p * sum) * share of a resource for the
    former (its original order) and w_p * (sum * share), numpy's, for the latter."""
    cfg = state.config
    k = len(d)
    need = d.tolist()
    w_s, w_p = cfg.balanced_stranding_weight, cfg.balanced_packing_weight
    fit = cfg.balanced_gpu_fit_weight if need[GPU] > 0 else 0.0
    scale = strand_scale(state)
    out = []
    nodes = idx.tolist()
    for node, before, terms in zip(nodes, rows, state.node_terms[idx].tolist(), strict=True):
        after = [before[r] - need[r] for r in range(k)]
        util = [(terms[r] - after[r]) * terms[k + r] for r in range(k)]
        hi = util[0]
        lo = util[0] + terms[2 * k]
        for r in range(1, k):
            u = util[r]
            if u > hi:
                hi = u
            low = u + terms[2 * k + r]
            if low < lo:
                lo = low
        hit = None if stranded is None else stranded.get(node)
        if hit is not None and hit[0] == before:
            was = hit[1]
        else:
            was = _stranded_one(before, terms, blocks, k, scale)
            if stranded is not None:
                stranded[node] = (before, was)
        stranding = _stranded_one(after, terms, blocks, k, scale) - was
        if exact:
            score = (hi - lo) + w_s * stranding - w_p * (sum(util) * terms[3 * k])
        else:
            score = (hi - lo) + w_s * stranding - w_p * sum(util) * terms[3 * k]
        if fit:
            score += fit * (after[GPU] / most if most > 0 else after[GPU])
        out.append(score)
    return out


def _stranded_one(free: list[float], terms: list[float],
                  blocks: list[tuple[int, list[tuple[int, float]]]], k: int,
                  scale: tuple[float, ...] | None = None) -> float:
    """``stranded_shares`` for one node (``terms[k:2k]`` is its inverse capacity), each
    resource weighted by ``scale`` (``strand_scale``) when given."""
    total = 0.0
    for r, pairs in blocks:
        for c, v in pairs:
            if free[c] < v:
                total += free[r] * (terms[k + r] if scale is None else terms[k + r] * scale[r])
                break
    return total


def balanced_scores(state: SchedulerState, idx: np.ndarray, d: np.ndarray,
                    free: np.ndarray) -> np.ndarray:
    """Per node of ``idx``: how uneven and wasteful placing ``d`` there leaves it (lower is
    better): the node that stays even across its resources and strands the least.

    score = spread + w_s * stranding - w_p * packing, lowest wins:
    spread: max - min of the node's per-resource utilisation after placement;
    stranding: how much capacity (share of the node) placing the unit there newly strands:
      free resource r counts as stranded when the node's other free resources are below the
      smallest queued unit that needs r (see FitTracker); without a queue, the idle share of
      resources this unit does not use (e.g. GPUs of a GPU node given to a CPU-only job)
      times the share of the node's other resources it takes;
    packing: mean utilisation after placement, so whole nodes stay free for large gangs;
    for a unit with GPUs, plus w_g * the GPUs left free on the node (best fit on GPUs, see
    ``gpu_leftover``): packing on the mean alone lets CPU and memory decide where GPU units
    go, which spreads them and fragments GPU capacity.
    """
    k = len(d)
    terms = state.node_terms[idx]  # one gather: capacity, its inverse, absent, 1/#present
    inv = terms[:, k:2 * k]
    before = free[idx]
    after = before - d
    util = (terms[:, :k] - after) * inv  # 0 for resources the node lacks
    columns = util.T  # a few resources: column-wise ops beat reductions along rows
    spread = reduce(np.maximum, columns) - reduce(np.minimum, (util + terms[:, 2 * k:3 * k]).T)
    mean_util = reduce(np.add, columns) * terms[:, 3 * k]
    ref = state.stranding_ref
    scale = strand_scale(state)
    weighted = inv if scale is None else inv * np.array(scale)
    if ref is not None:
        k = len(idx)
        both = stranded_shares(np.concatenate([after, before]),
                               np.concatenate([weighted, weighted]), ref)
        stranding = both[:k] - both[k:]
    else:
        needs = d > 0
        consumed = (inv[:, needs] @ d[needs]) / max(int(needs.sum()), 1)
        stranding = (before[:, ~needs] * weighted[:, ~needs]).sum(axis=1) * consumed
    cfg = state.config
    score = (spread + cfg.balanced_stranding_weight * stranding
             - cfg.balanced_packing_weight * mean_util)
    if d[GPU] > 0 and cfg.balanced_gpu_fit_weight:
        score = score + cfg.balanced_gpu_fit_weight * gpu_leftover(state, after[:, GPU])
    return score


def strand_scale(state: SchedulerState) -> tuple[float, ...] | None:
    """Per resource, the weight of its stranded share in balanced placement (None: 1 each),
    set once per pass by balanced-drf (``stranding_scale``)."""
    return getattr(state, "_strand_scale", None)


STRAND_STEPS = 4  # scale values are rounded to quarters: the score cache survives small moves


def stranding_scale(st: SchedulerState, exponent: float) -> tuple[float, ...] | None:
    """Per resource r: (p_r / max_r p_r) ** ``exponent``, rounded to 1 / ``STRAND_STEPS``,
    where p_r = min(1, (allocated + queued demand of r) / capacity of r): its pressure (a
    resource wanted beyond its capacity is no more wanted for it). Stranding a resource
    costs as much as that resource is wanted. Cores and memory left beside a node's fully
    allocated GPUs cost nothing while GPUs are the bottleneck and cores are plentiful
    (counting them in full kept the last GPUs of small GPU nodes idle and sent small GPU
    units to the large nodes that gangs need); they count in full where cores are wanted
    as much as GPUs. None (every resource counts in full, the rule before) for exponent 0."""
    if exponent <= 0:
        return None
    cap = st.total_cap
    used = cap - st.free[st.active].sum(axis=0)
    for demand in st.queued_demand.values():
        used = used + demand
    ratio = np.minimum(np.divide(used, cap, out=np.zeros(len(cap)), where=cap > 0), 1.0)
    top = float(ratio.max(initial=0.0))
    if top <= 0:
        return None
    return tuple(round(STRAND_STEPS * (v / top) ** exponent) / STRAND_STEPS
                 for v in ratio.tolist())


def gpu_leftover(state: SchedulerState, free_gpus_after: np.ndarray) -> np.ndarray:
    """GPUs a node keeps free after the placement, over the largest node's GPU count: best
    fit for GPU units, so partly used nodes fill up and whole nodes stay free for large gangs
    (the "fragmentation" metric counts free GPUs no queued gang can use)."""
    most = float(state.cap[:, GPU].max(initial=0.0))
    return free_gpus_after / most if most > 0 else free_gpus_after


def alignment_score(state: SchedulerState, idx: np.ndarray, d: np.ndarray,
                    free: np.ndarray) -> int:
    """Tetris: the node whose free capacity is most aligned with the demand (dot product)."""
    cap = state.cap[idx]
    safe = np.where(cap > 0, cap, 1.0)
    align = ((d / safe) * (free[idx] / safe)).sum(axis=1)
    return int(np.argmax(align))


# ------------------------------------------------------------------ base class
class Policy(ABC):
    name = ""
    scorer: Scorer = staticmethod(first_fit)

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config

    @abstractmethod
    def schedule(self, st: SchedulerState, now: float) -> list[Decision]:
        """One scheduling pass at ``now``: the decisions it takes."""

    def queue_order(self, st: SchedulerState, now: float) -> list[str]:
        return [rid for _, _, rid in st._global]

    def next_wakeup(self, st: SchedulerState, now: float) -> float | None:
        return None

    def protected_until(self, st: SchedulerState, item: Item, now: float) -> float:
        """Until when work starting now must not be chosen as a preemption victim."""
        return -math.inf

    def advance(self, st: SchedulerState, now: float) -> None:
        """Time moves to ``now``; called before the event at ``now`` changes anything."""

    def on_submit(self, st: SchedulerState, item: Item, now: float) -> None:
        """Called when a request enters the queue (also when a preempted one returns)."""

    def on_start(self, st: SchedulerState, item: Item, now: float) -> None:
        """Called when a request starts."""

    def on_release(self, st: SchedulerState, run: Running, now: float) -> None:
        """Called when running work ends, is cancelled or preempted."""

    def export(self) -> dict[str, Any]:
        return {}

    def restore(self, data: dict[str, Any]) -> None:
        """Restore what ``export`` returned."""


# ------------------------------------------------------------------ fifo + EASY
class FifoPolicy(Policy):
    """Submission order; the head blocks, EASY backfill around it when runtimes are known."""

    name = "fifo"

    def ordered_ids(self, st: SchedulerState, now: float) -> Iterable[str]:
        return [rid for _, _, rid in st._global]

    def schedule(self, st: SchedulerState, now: float) -> list[Decision]:
        decisions: list[Decision] = []
        st.set_reservations([])
        failed: set[tuple] = set()
        examined = 0
        tracker = FitTracker(st)
        if not tracker.any():
            return decisions
        for rid in self.ordered_ids(st, now):
            item = st.queued.get(rid)
            if item is None:
                continue
            if st.reservations:
                examined += 1
                if examined > self.config.backfill_depth:
                    break
            if st._quota_excess(item):
                continue  # held back by its own quota: not a reason to block others
            allowed = st.allowed_given_reservations(item, now)
            key = (item.shape, None if allowed is None else allowed.tobytes())
            fits_somewhere = item.row >= len(tracker.fitting) or tracker.fitting[item.row]
            started = None
            if key not in failed and fits_somewhere:
                started = st.try_start(item, now, self.scorer, allowed)
            if started:
                decisions.append(started)
                tracker.update(st.running[started.request_id].slots)
                if not tracker.any():
                    break
                continue
            failed.add(key)
            if st.reservations:
                continue
            if not self.config.backfill:
                break
            res = st.reservation_for(item, now, self.scorer)
            if res is None or res.est_start is None:
                break  # runtimes unknown: no safe backfill, keep strict order
            st.set_reservations([res])
        return decisions


# ------------------------------------------------------------------ slurm fairshare
class SlurmFairsharePolicy(FifoPolicy):
    """Slurm's multifactor priority (age + classic fair-share) with EASY backfill.

    Usage is the tenant's billed allocation integrated over time and decayed with a half-life;
    billing is SUM or MAX (MAX_TRES) of per-resource allocation normalised by pool capacity.
    fair-share factor F = 2^(-U/S), U = normalised usage, S = normalised weight (shares).
    """

    name = "slurm-fairshare"

    def __init__(self, config: SchedulerConfig) -> None:
        super().__init__(config)
        self.usage: dict[str, float] = {}
        self.last_accrual = 0.0
        self.next_calc = -math.inf
        self.factors: dict[str, float] = {}

    def _billing(self, st: SchedulerState, tenant: str) -> float:
        shares = st.shares(tenant)
        if self.config.slurm_billing == "sum":
            return float(shares.sum())
        return float(shares.max()) if shares.size else 0.0

    def _accrue(self, st: SchedulerState, now: float) -> None:
        dt = now - self.last_accrual
        if dt <= 0:
            return
        decay = 0.5 ** (dt / self.config.slurm_half_life)
        for tenant in set(self.usage) | set(st.held):
            self.usage[tenant] = self.usage.get(tenant, 0.0) * decay + (
                self._billing(st, tenant) * dt)
        self.last_accrual = now

    def fairshare_factors(self, st: SchedulerState, now: float) -> dict[str, float]:
        """F = 2^(-U/S) per waiting tenant, recomputed at most every calc period."""
        if now < self.next_calc and self.factors:
            return self.factors
        total_usage = sum(self.usage.values()) or 1.0
        tenants = st.active_tenants()
        total_weight = sum(st.tenant_weight(t) for t in tenants) or 1.0
        self.factors = {
            t: 2.0 ** (-(self.usage.get(t, 0.0) / total_usage)
                       / (st.tenant_weight(t) / total_weight))
            for t in tenants}
        self.next_calc = now + self.config.slurm_calc_period
        return self.factors

    def priority(self, item: Item, factor: float, now: float) -> float:
        cfg = self.config
        age = min(max(now - item.submit, 0.0) / cfg.slurm_max_age, 1.0)
        return cfg.slurm_age_weight * age + cfg.slurm_fairshare_weight * factor

    def ordered_ids(self, st: SchedulerState, now: float) -> Iterator[str]:
        """Queued requests by priority, produced lazily: within a tenant older requests come
        first (same fair-share factor, more age), so the order is a merge of tenant queues."""
        factors = self.fairshare_factors(st, now)
        queues = {t: [e[2] for e in st.tenant_queue(t)] for t in st.tenants_waiting()}
        pos = dict.fromkeys(queues, 0)

        def key(tenant: str) -> tuple:
            item = st.queued.get(queues[tenant][pos[tenant]])
            if item is None:
                return (0.0, math.inf, 0)
            return (-self.priority(item, factors.get(tenant, 1.0), now), item.submit, item.seq)

        heap = [(key(t), t) for t in queues]
        heapq.heapify(heap)
        while heap:
            _, tenant = heapq.heappop(heap)
            yield queues[tenant][pos[tenant]]
            pos[tenant] += 1
            if pos[tenant] < len(queues[tenant]):
                heapq.heappush(heap, (key(tenant), tenant))

    def queue_order(self, st: SchedulerState, now: float) -> list[str]:
        return list(self.ordered_ids(st, now))

    def next_wakeup(self, st: SchedulerState, now: float) -> float | None:
        return self.next_calc if st.queued and self.next_calc > now else None

    def advance(self, st: SchedulerState, now: float) -> None:
        self._accrue(st, now)

    def export(self) -> dict[str, Any]:
        return {"usage": dict(self.usage), "last_accrual": self.last_accrual}

    def restore(self, data: dict[str, Any]) -> None:
        self.usage = dict(data.get("usage", {}))
        self.last_accrual = float(data.get("last_accrual", 0.0))
        self.next_calc = -math.inf
        self.factors = {}


# ------------------------------------------------------------------ DRF
class DrfPolicy(Policy):
    """Weighted DRF: serve the tenant with the smallest weighted dominant share whose next
    request fits (its first ``tenant_lookahead`` queued requests are tried, in order)."""

    name = "drf"

    def tenant_key(self, st: SchedulerState, tenant: str, extra: np.ndarray | None = None
                   ) -> tuple:
        shares = st.shares(tenant) if extra is None else extra
        return (float(shares.max()) / st.tenant_weight(tenant), tenant)

    def tenant_keys(self, st: SchedulerState, tenants: list[str]) -> list[tuple]:
        """tenant_key for many tenants at once (one numpy pass instead of one per tenant)."""
        if not tenants:
            return []
        weighted = self._weighted_shares(st, tenants)
        return [(float(v), t) for v, t in zip(weighted.max(axis=1).tolist(), tenants,
                                               strict=True)]

    @staticmethod
    def _weighted_shares(st: SchedulerState, tenants: list[str]) -> np.ndarray:
        zero = np.zeros(len(st.keys))
        held = np.array([st.held.get(t, zero) for t in tenants])
        cap = np.where(st.total_cap > 0, st.total_cap, np.inf)
        weights = np.array([st.tenant_weight(t) for t in tenants])
        return held / cap / weights[:, None]

    def schedule(self, st: SchedulerState, now: float) -> list[Decision]:
        return self.drf_pass(st, now)

    def drf_pass(self, st: SchedulerState, now: float) -> list[Decision]:
        decisions: list[Decision] = []
        lookahead = max(1, self.config.tenant_lookahead)
        preempting = self.config.preemption
        tracker = FitTracker(st)  # fits only shrink during a pass without preemption
        waiting = st.tenants_waiting()
        if not preempting:
            if not tracker.any():
                return decisions
            waiting = self._tenants_with_a_fit(st, waiting, tracker.fitting, lookahead)
        heap = list(zip(self.tenant_keys(st, waiting), waiting, strict=True))
        heapq.heapify(heap)
        failed: set[tuple] = set()
        while heap:
            _, tenant = heapq.heappop(heap)
            started = self._start_for_tenant(st, tenant, now, failed, lookahead,
                                             tracker.fitting)
            if not started:
                continue
            decisions.extend(started)
            if any(d.action == "preempt" for d in started):
                failed.clear()  # preemption freed room: earlier failures may fit now
                tracker = FitTracker(st)
            else:
                tracker.update(st.running[started[-1].request_id].slots)
                if not tracker.any():
                    break  # the pool is full for every queued shape
            if st.tenant_queue(tenant):
                heapq.heappush(heap, (self.tenant_key(st, tenant), tenant))
        return decisions

    @staticmethod
    def _tenants_with_a_fit(st: SchedulerState, tenants: list[str], fitting: list[bool],
                            lookahead: int) -> list[str]:
        """Drop tenants none of whose next requests has a shape that fits any node now."""
        ok = np.array([*fitting, False])  # row -1 pads short windows
        rows = np.full((len(tenants), lookahead), -1)
        for i, tenant in enumerate(tenants):
            window = st.window_rows(tenant, lookahead)
            rows[i, : len(window)] = window
        keep = ok[rows].any(axis=1)
        return [t for t, k in zip(tenants, keep.tolist(), strict=True) if k]

    def _start_for_tenant(self, st: SchedulerState, tenant: str, now: float,
                          failed: set[tuple], lookahead: int, fitting: list[bool]
                          ) -> list[Decision]:
        entries = st.tenant_queue(tenant)[:lookahead]
        queued = st.queued
        reserved = bool(st.reservations)
        allowed = None
        n_fit = len(fitting)
        for _, _, rid in entries:
            item = queued[rid]
            if item.row < n_fit and not fitting[item.row]:
                continue  # no node has room for even one unit of this shape
            if reserved:
                allowed = st.allowed_given_reservations(item, now)
                key: tuple = (item.shape, None if allowed is None else allowed.tobytes())
            else:
                key = item.shape
            if key in failed:
                continue
            started = st.try_start(item, now, self.scorer, allowed)
            if started:
                return [started]
            if not st._quota_excess(item):
                failed.add(key)
        if self.config.preemption and entries:
            return self._fair_share_preemption(st, st.queued[entries[0][2]], now)
        return []

    def fair_share(self, st: SchedulerState, tenant: str) -> float:
        tenants = st.active_tenants() | {tenant}
        return st.tenant_weight(tenant) / sum(st.tenant_weight(t) for t in tenants)

    def _fair_share_preemption(self, st: SchedulerState, item: Item, now: float
                               ) -> list[Decision]:
        """A tenant below its fair share takes preemptible work from tenants above theirs,
        never so far that the victim ends up less served than the taker (no ping-pong)."""
        if now - item.submit < self.config.preemption_grace:
            return []
        tenant = item.tenant
        mine = st.weighted_share(tenant)
        if mine * st.tenant_weight(tenant) >= self.fair_share(st, tenant) - EPS:
            return []
        cap = np.where(st.total_cap > 0, st.total_cap, np.inf)
        held = st.held.get(tenant, np.zeros(len(st.keys)))
        mine_after = float(((held + item.unit * item.request.count) / cap).max()) / (
            st.tenant_weight(tenant))

        def victim_ok(run: Running) -> bool:
            other = run.item.tenant
            if other == tenant:
                return False
            w = st.tenant_weight(other)
            if st.weighted_share(other) * w <= self.fair_share(st, other) + EPS:
                return False
            left = st.held[other] - run.item.unit * run.item.request.count
            return float((left / cap).max()) / w >= mine_after - EPS

        return st.preempt_for(item, now, victim_ok, self.scorer,
                              st.allowed_given_reservations(item, now))

    def queue_order(self, st: SchedulerState, now: float) -> list[str]:
        """Replay DRF's tenant choice on the queue as if everything were granted in turn."""
        held = {t: st.held.get(t, np.zeros(len(st.keys))).copy() for t in st.tenants_waiting()}
        cap = np.where(st.total_cap > 0, st.total_cap, np.inf)
        pos = dict.fromkeys(held, 0)
        heap = [(self.tenant_key(st, t, held[t] / cap), t) for t in held]
        heapq.heapify(heap)
        order: list[str] = []
        while heap:
            _, tenant = heapq.heappop(heap)
            queue = st.tenant_queue(tenant)
            rid = queue[pos[tenant]][2]
            order.append(rid)
            pos[tenant] += 1
            item = st.queued[rid]
            held[tenant] += item.unit * item.request.count
            if pos[tenant] < len(queue):
                heapq.heappush(heap, (self.tenant_key(st, tenant, held[tenant] / cap), tenant))
        return order


# ------------------------------------------------------------------ balanced DRF
AGING_VICTIMS = ("more-served", "any")
AGING_SCOPES = ("under-share", "all", "tiered")
AGING_OVER_SHARE = ("swap", "reserve")


def _anyone(run: Running) -> bool:
    return True


class BalancedDrfPolicy(DrfPolicy):
    """This project's policy: DRF order (ties broken on the sorted share vector, YuniKorn
    style), balanced placement of the non-dominant resources, and aging: a request waiting
    ``aging_reserve_at`` seconds at a stretch (since submission or its last preemption; half
    the bound by default) is served before DRF order and gets a node reservation if it does
    not fit; from ``aging_bound`` it also preempts preemptible work of more-served tenants
    (``preempt_on_aging``), and work it starts is protected for ``aging_quantum``. Aging
    applies only to tenants below their weighted fair share (``aging_scope``
    "under-share", the starvation guarantee of docs/scheduler.md; "all": every tenant, which
    under sustained overload turns the order into age order). The aged requests are served
    in DRF order among the aged (see ``_serve_aged``), after the urgent queue heads when
    ``aging_urgent_at`` is set."""

    name = "balanced-drf"
    scorer: Scorer = staticmethod(balanced_score)

    def __init__(self, config: SchedulerConfig) -> None:
        super().__init__(config)
        if config.aging_victims not in AGING_VICTIMS:
            raise ValueError(f"aging_victims must be one of {AGING_VICTIMS}, "
                             f"not {config.aging_victims!r}")
        if config.aging_scope not in AGING_SCOPES:
            raise ValueError(f"aging_scope must be one of {AGING_SCOPES}, "
                             f"not {config.aging_scope!r}")
        if config.aging_over_share not in AGING_OVER_SHARE:
            raise ValueError(f"aging_over_share must be one of {AGING_OVER_SHARE}, "
                             f"not {config.aging_over_share!r}")
        self.swap_guard: dict[str, float] = {}  # request id -> not swapped for own before
        self.urgent_served: dict[str, float] = {}  # tenant -> last start of an urgent request
        self._fair_cache: tuple[int, dict[str, float]] = (-1, {})  # (change_count, shares)

    def tenant_key(self, st: SchedulerState, tenant: str,
                   extra: np.ndarray | list[float] | None = None) -> tuple:
        shares = st.shares(tenant) if extra is None else extra
        w = st.tenant_weight(tenant)
        return (*sorted((float(s) / w for s in shares), reverse=True), tenant)

    def tenant_keys(self, st: SchedulerState, tenants: list[str]) -> list[tuple]:
        if not tenants:
            return []
        ordered = -np.sort(-self._weighted_shares(st, tenants), axis=1)
        return [(*row, t) for row, t in zip(ordered.tolist(), tenants, strict=True)]

    def is_aged(self, item: Item, now: float) -> bool:
        return now - item.waiting_since >= self.config.aging_bound - EPS

    def protected_until(self, st: SchedulerState, item: Item, now: float) -> float:
        """Aged work runs at least one quantum before it may be preempted again, so aged
        requests cannot take turns preempting each other faster than that."""
        return now + self.config.quantum() if self.is_aged(item, now) else -math.inf

    def on_start(self, st: SchedulerState, item: Item, now: float) -> None:
        """Work started by a request past ``aging_reserve_at`` is not swapped out for another
        request of its own tenant for one quantum (no churn inside a tenant's share)."""
        if now - item.waiting_since >= self.reserve_at() - EPS:
            self.swap_guard[item.id] = now + self.config.quantum()

    def on_release(self, st: SchedulerState, run: Running, now: float) -> None:
        self.swap_guard.pop(run.item.id, None)

    def _swappable(self, run: Running, now: float) -> bool:
        return self.swap_guard.get(run.item.id, -math.inf) <= now + EPS

    def export(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.swap_guard:
            out["swap_guard"] = dict(self.swap_guard)
        if self.urgent_served:
            out["urgent_served"] = dict(self.urgent_served)
        return out

    def restore(self, data: dict[str, Any]) -> None:
        self.swap_guard = {k: float(v) for k, v in data.get("swap_guard", {}).items()}
        self.urgent_served = {k: float(v) for k, v in data.get("urgent_served", {}).items()}

    def schedule(self, st: SchedulerState, now: float) -> list[Decision]:
        st._strand_scale = stranding_scale(  # type: ignore[attr-defined]
            st, self.config.balanced_stranding_pressure)
        decisions = self._serve_aged(st, now)
        decisions += self.drf_pass(st, now)
        if self.config.aging_scope == "tiered":
            decisions += self._serve_aged(st, now, over_share=True)
        return decisions

    def _serve_one_aged(self, st: SchedulerState, item: Item, now: float, taken: np.ndarray,
                        decisions: list[Decision], preempt: bool, own_only: bool = False,
                        urgent: bool = False) -> Reservation | bool:
        """Start an aged request (preempting the configured victims if ``preempt``; with
        ``own_only`` only its own tenant's work, a swap that moves no share), else reserve
        nodes for it. True: started; a Reservation; False: neither."""
        cfg = self.config
        started = st.try_start(item, now, self.scorer, ~taken)
        if started:
            decisions.append(started)
            return True
        if cfg.preempt_on_aging and preempt:
            if own_only:
                tenants, victim_ok = ([item.tenant],
                                      lambda run: self._swappable(run, now))
            else:
                tenants, victim_ok = (self._more_served_than(st, item, now)
                                      if cfg.aging_victims == "more-served" else (None, _anyone))
            freed = st.preempt_for(item, now, victim_ok, self.scorer, ~taken, tenants)
            if not freed and urgent and cfg.aging_victims == "more-served":
                freed = st.preempt_for(item, now, self._sliced(tenants, victim_ok, now),
                                       self.scorer, ~taken)
            decisions.extend(freed)
            if freed and freed[-1].action == "start":
                return True
        res = st.reservation_for(item, now, self.scorer, exclude=taken)
        return res if res is not None else False

    def urgent_at(self) -> float | None:
        """``aging_urgent_at``, at least ``aging_bound`` (an urgent head must be able to
        preempt); None: no urgent tier."""
        cfg = self.config
        return None if cfg.aging_urgent_at is None else max(cfg.aging_urgent_at,
                                                              cfg.aging_bound)

    def reserve_at(self) -> float:
        cfg = self.config
        if cfg.aging_reserve_at is None:
            return cfg.aging_bound / 2
        return min(cfg.aging_reserve_at, cfg.aging_bound)

    def fair_shares(self, st: SchedulerState) -> dict[str, float] | None:
        """Weighted fair share (water-filled dominant share) of each tenant that aging may
        serve first; None: every tenant (``aging_scope`` "all")."""
        if self.config.aging_scope == "all":
            return None
        key = st.change_count()  # holdings and queued demand are all it depends on
        if self._fair_cache[0] != key:
            tenants = sorted(st.active_tenants())
            fair = dominant_and_fair_shares(st, tenants)[1].tolist() if tenants else []
            self._fair_cache = (key, dict(zip(tenants, fair, strict=True)))
        return self._fair_cache[1]

    @staticmethod
    def _aged_by_tenant(st: SchedulerState, cutoff: float,
                        fair: dict[str, float] | None = None
                        ) -> dict[str, list[tuple[float, int, str]]]:
        """Each waiting tenant's requests waiting since ``cutoff`` or longer, oldest first;
        with ``fair``, only tenants below their fair share (the others wait their DRF turn:
        under overload everyone ages, and serving every aged request first is age order)."""
        aged = {}
        for tenant in st.tenants_waiting():
            if fair is not None and not _below(st, tenant, fair):
                continue
            queue = st.tenant_by_age(tenant)
            n = bisect.bisect_right(queue, (cutoff, math.inf, ""))
            if n:
                aged[tenant] = queue[:n]
        return aged

    def _serve_aged(self, st: SchedulerState, now: float, over_share: bool = False
                    ) -> list[Decision]:
        """Every aged request of a tenant below its fair share (of every tenant with
        ``aging_scope`` "all"; a tenant drops out once what it was granted or reserved in
        this pass lifts it to its share), in DRF order among the aged (the tenant with the smallest
        share, counting what its aged requests served so far in this pass were granted or
        reserved, goes next; within a tenant, longest-waiting first), until
        ``max_reservations`` reservations are made or ``aging_attempts`` requests tried.
        Requests past ``aging_reserve_at`` but not yet ``aging_bound`` come after all those
        past the bound and do not preempt: most reservations drain before the bound. With
        ``aging_urgent_at``, the queue heads waiting that long come first of all, the tenant
        served urgently longest ago first, and may time-slice (``_sliced``)."""
        cfg = self.config
        bound_cut = now - cfg.aging_bound + EPS
        cutoff = now - self.reserve_at() + EPS
        urgent_at = self.urgent_at()
        urgent_cut = -math.inf if urgent_at is None else now - urgent_at + EPS
        by_age = st.by_age()
        if not by_age or by_age[0][0] > cutoff:
            if not over_share:
                st.set_reservations([])
            return []
        fair = self.fair_shares(st)
        aged = self._aged_by_tenant(st, cutoff, fair)
        over: dict[str, list[tuple[float, int, str]]] = {}
        if over_share:
            aged = over = self._aged_over_share(st, bound_cut, aged)
        urgent = set() if over_share else self._urgent_heads(st, aged, urgent_cut)
        cap = np.where(st.total_cap > 0, st.total_cap, np.inf)
        pending = {t: np.zeros(len(st.keys)) for t in aged}  # reserved, not yet held
        pos = dict.fromkeys(aged, 0)

        caps = cap.tolist()
        zero = [0.0] * len(caps)

        def key(tenant: str) -> tuple:
            # (held + pending) / cap in Python floats: numpy's values, less per-call cost
            held = st.held.get(tenant)
            held_list = zero if held is None else held.tolist()
            shares = [(h + p) / c for h, p, c in zip(held_list, pending[tenant].tolist(), caps,
                                                     strict=True)]
            since, _, rid = aged[tenant][pos[tenant]]
            if rid in urgent:
                return (-1, self.urgent_served.get(tenant, -math.inf), since, tenant)
            tier = 2 if tenant in over else 0 if since <= bound_cut else 1
            return (tier, *self.tenant_key(st, tenant, shares))

        heap = [(key(t), t) for t in aged]
        heapq.heapify(heap)
        reservations: list[Reservation] = list(st.reservations) if over_share else []
        decisions: list[Decision] = []
        taken = st.reserved_mask() if over_share else np.zeros(len(st.active), dtype=bool)
        attempts = 0
        while heap and len(reservations) < cfg.max_reservations and (
                attempts < cfg.aging_attempts):
            _, tenant = heapq.heappop(heap)
            entries = aged[tenant]
            since, _, rid = entries[pos[tenant]]
            pos[tenant] += 1
            item = st.queued.get(rid)
            if item is not None and not st._quota_excess(item):
                attempts += 1
                preempt = since <= bound_cut and (
                    tenant not in over or cfg.aging_over_share == "swap")
                outcome = self._serve_one_aged(st, item, now, taken, decisions, preempt,
                                               own_only=tenant in over,
                                               urgent=rid in urgent)
                if outcome is True and rid in urgent:
                    self.urgent_served[tenant] = now
                if isinstance(outcome, Reservation):
                    reservations.append(outcome)
                    taken |= outcome.mask
                    pending[tenant] += item.unit * item.request.count
            while pos[tenant] < len(entries) and entries[pos[tenant]][2] not in st.queued:
                pos[tenant] += 1
            if pos[tenant] < len(entries) and (fair is None or tenant in over or _below(
                    st, tenant, fair, pending[tenant])):
                heapq.heappush(heap, (key(tenant), tenant))
        st.set_reservations(reservations)
        return decisions

    @staticmethod
    def _urgent_heads(st: SchedulerState, aged: dict[str, list[tuple[float, int, str]]],
                      urgent_cut: float) -> set[str]:
        """The queue heads (what the starvation guarantee owes) of the tenants in ``aged``
        that have waited since ``urgent_cut`` or longer, each moved to the front of its
        tenant's list in ``aged``."""
        heads: set[str] = set()
        if urgent_cut == -math.inf:
            return heads
        for tenant, entries in aged.items():
            item = _urgent_head(st, tenant, urgent_cut)
            if item is not None:
                heads.add(item.id)
                entries.remove(item.age_entry)
                entries.insert(0, item.age_entry)
        return heads

    @staticmethod
    def _aged_over_share(st: SchedulerState, bound_cut: float,
                         under: dict[str, list[tuple[float, int, str]]]
                         ) -> dict[str, list[tuple[float, int, str]]]:
        """``aging_scope`` "tiered": the requests past the bound of the waiting tenants not in
        ``under`` (at or above their share), oldest first. They come after every aged request
        of the tenants below their share and get reservations, never preemptions: a bounded
        wait for everyone (as EASY backfill gives FIFO's head) without letting the
        more-served take capacity by age."""
        over = {}
        for tenant in st.tenants_waiting():
            if tenant in under:
                continue
            queue = st.tenant_by_age(tenant)
            n = bisect.bisect_right(queue, (bound_cut, math.inf, ""))
            if n:
                over[tenant] = queue[:n]
        return over

    def _more_served_than(self, st: SchedulerState, item: Item, now: float
                          ) -> tuple[list[str], Callable[[Running], bool]]:
        """Victims for an aged request: work of tenants holding a larger weighted dominant
        share than its own tenant, so aging never takes from the less served, and its own
        tenant's work (a swap that changes no share: a heavy tenant's old request need not
        wait behind its own newer ones). Returns those tenants and the per-run test."""
        mine = st.weighted_share(item.tenant)
        tenants = [t for t in st.victim_tenants()
                   if t == item.tenant or st.weighted_share(t) > mine + EPS]

        def ok(run: Running) -> bool:
            return run.item.tenant != item.tenant or self._swappable(run, now)

        return tenants, ok

    def _sliced(self, tenants: list[str] | None, victim_ok: Callable[[Running], bool],
                now: float) -> Callable[[Running], bool]:
        """Victims of an urgent request (``aging_urgent_at``): besides the work of
        ``tenants`` that ``victim_ok`` accepts, any tenant's work that has run a whole
        quantum since it (re)started. Where the only node a request fits on is held by a
        less-served tenant's week-long job (Philly's traces on openb's nodes), the tenants
        take turns on it instead of waiting for that job's end."""
        slice_end = now - self.config.quantum() + EPS
        first = set(tenants or ())

        def ok(run: Running) -> bool:
            return run.start <= slice_end or (run.item.tenant in first and victim_ok(run))

        return ok

    def next_wakeup(self, st: SchedulerState, now: float) -> float | None:
        """The next request to age, or (while requests wait) the next protection to end;
        while a request is urgent (``aging_urgent_at``), also the next run to finish a
        slice."""
        thresholds = {self.config.aging_bound, self.reserve_at()}
        urgent_at = self.urgent_at()
        if urgent_at is not None:
            thresholds.add(urgent_at)
        by_age = st.by_age()
        times = []
        for bound in thresholds:
            i = bisect.bisect_right(by_age, (now - bound + EPS, math.inf, ""))
            if i < len(by_age):
                times.append(by_age[i][0] + bound)
        if urgent_at is not None and by_age and by_age[0][0] <= now - urgent_at + EPS:
            # an urgent request may be waiting for some run to finish its slice
            quantum = self.config.quantum()
            ends = [t + quantum for t in st.victim_starts() if t + quantum > now + EPS]
            if ends:
                times.append(min(ends))
        if st.queued and st.next_protection_end() is not None:
            times.append(st.next_protection_end())
        return min(times) if times else None

    def queue_order(self, st: SchedulerState, now: float) -> list[str]:
        cutoff = now - self.reserve_at() + EPS
        fair = self.fair_shares(st)
        aged = [rid for since, _, rid in st.by_age() if since <= cutoff
                and (fair is None or _below(st, st.queued[rid].tenant, fair))]
        urgent_at = self.urgent_at()
        if urgent_at is not None:
            urgent = self._urgent_order(st, aged, now - urgent_at + EPS)
            first_ids = set(urgent)
            aged = urgent + [rid for rid in aged if rid not in first_ids]
        first = set(aged)
        return aged + [rid for rid in super().queue_order(st, now) if rid not in first]

    def _urgent_order(self, st: SchedulerState, aged: list[str], urgent_cut: float
                      ) -> list[str]:
        """The urgent queue heads among ``aged``, in the order ``_serve_aged`` tries them."""
        aged_ids = set(aged)
        heads = []
        for tenant in st.tenants_waiting():
            item = _urgent_head(st, tenant, urgent_cut)
            if item is not None and item.id in aged_ids:
                heads.append((self.urgent_served.get(tenant, -math.inf), item.waiting_since,
                              tenant, item.id))
        return [head for *_, head in sorted(heads)]


def _urgent_head(st: SchedulerState, tenant: str, urgent_cut: float) -> Item | None:
    """The tenant's queue head (what the starvation guarantee owes it) if it has waited
    since ``urgent_cut`` or longer."""
    item = st.queued[st.tenant_queue(tenant)[0][2]]
    return item if item.waiting_since <= urgent_cut else None


def _below(st: SchedulerState, tenant: str, fair: dict[str, float],
           pending: np.ndarray | None = None) -> bool:
    """The tenant's dominant share (counting ``pending`` grants) is below its fair share.
    Python floats (the same IEEE operations as numpy's, without its per-call cost)."""
    held = st.held.get(tenant)
    if held is None:
        values = [0.0] * len(st.keys) if pending is None else pending.tolist()
    elif pending is None:
        values = held.tolist()
    else:
        values = [h + p for h, p in zip(held.tolist(), pending.tolist(), strict=True)]
    share = 0.0
    for v, c in zip(values, st.total_cap.tolist(), strict=True):
        if c > 0:
            q = v / c
            if q > share:
                share = q
    return share < fair.get(tenant, 0.0) - EPS


# ------------------------------------------------------------------ tetris
class TetrisPolicy(Policy):
    """Tetris packing: repeatedly start the (request, node) pair with the largest alignment
    between demand and free capacity, both normalised by the node's capacity, among the first
    ``tetris_window`` queued requests."""

    name = "tetris"
    scorer: Scorer = staticmethod(alignment_score)

    def schedule(self, st: SchedulerState, now: float) -> list[Decision]:
        decisions: list[Decision] = []
        failed: set[str] = set()
        while st.anything_fits():
            cands = self._candidates(st, failed)
            if not cands:
                return decisions
            best = self._best_candidate(st, cands)
            if best is None:
                return decisions
            item = cands[best]
            started = st.try_start(item, now, self.scorer)
            if started:
                decisions.append(started)
            else:
                failed.add(item.id)
        return decisions

    def _candidates(self, st: SchedulerState, failed: set[str]) -> list[Item]:
        cands: list[Item] = []
        for _, _, rid in st._global:
            if rid in failed:
                continue
            item = st.queued[rid]
            if st._quota_excess(item):
                failed.add(rid)
                continue
            cands.append(item)
            if len(cands) >= self.config.tetris_window:
                break
        return cands

    def _best_candidate(self, st: SchedulerState, cands: list[Item]) -> int | None:
        demand = np.array([c.unit for c in cands])
        safe = np.where(st.cap > 0, st.cap, 1.0)
        fits = (st.free[None, :, :] >= demand[:, None, :] - EPS).all(axis=2)
        fits &= np.array([st.eligible(c.types) for c in cands])
        if not fits.any():
            return None
        align = np.einsum("wsr,sr->ws", demand[:, None, :] / safe[None], st.free / safe)
        align = np.where(fits, align, -np.inf)
        return int(np.argmax(align.max(axis=1)))


POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (FifoPolicy, DrfPolicy, BalancedDrfPolicy, SlurmFairsharePolicy,
                              TetrisPolicy)
}


def make_policy(name: str, config: SchedulerConfig) -> Policy:
    try:
        return POLICIES[name](config)
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}") from None
