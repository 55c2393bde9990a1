"""Discrete-event replay of a workload on a cluster, driving SchedulerState like the hub would.

Canonical workload CSV: job_id, tenant, submit_s, duration_s, gpu, cpu, mem_gib
(optional: kind, preemptible, gpu_type). Canonical cluster CSV: node, gpu, cpu, mem_gib
(optional: gpu_type). gpu/cpu/mem of a job are its totals; a job larger than any node becomes a
gang of identical units (see ``split_units``). Metric definitions: docs/scheduler.md.
"""

from __future__ import annotations

import csv
import heapq
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from loophub.scheduler.fairshare import (  # noqa: F401  (water_fill: part of this API)
    dominant_and_fair_shares,
    under_share_tenants,
    water_fill,
)
from loophub.scheduler.model import (
    GIB,
    KINDS,
    Node,
    Request,
    Resources,
    SchedulerConfig,
    parse_gpu_types,
)
from loophub.scheduler.state import SchedulerState

WORKLOAD_COLUMNS = ("job_id", "tenant", "submit_s", "duration_s", "gpu", "cpu", "mem_gib")
WORKLOAD_OPTIONAL = ("kind", "preemptible", "gpu_type")
CLUSTER_COLUMNS = ("node", "gpu", "cpu", "mem_gib")
STARVATION_BOUND = 4 * 3600.0  # the guarantee's bound, for every policy and setting
RESULT_KEYS = ("policy", "jobs", "jct_mean", "jct_p99", "wait_mean", "wait_p99", "wait_max",
               "util_gpu", "util_cpu", "util_mem", "stranded", "jain", "ftf_violations",
               "makespan", "preemptions", "decisions_per_s", "starved_under_share",
               "fragmentation")


class WorkloadError(ValueError):
    """A workload or cluster file is malformed; the message names the file, row and column."""


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    tenant: str
    submit: float
    duration: float
    gpu: int
    cpu: float
    mem: int
    kind: str = "job"
    preemptible: bool = False
    gpu_type: str | None = None


# ------------------------------------------------------------------ file formats
def _rows(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise WorkloadError(f"{path}: missing column(s) {missing}; expected at least "
                                    f"{list(required)}")
            return list(reader)
    except OSError as exc:
        raise WorkloadError(f"cannot read {path}: {exc}") from exc


def _num(row: dict[str, str], col: str, where: str, default: float | None = None) -> float:
    raw = (row.get(col) or "").strip()
    if raw == "" and default is not None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise WorkloadError(f"{where}: column {col!r} must be a number, got {raw!r}") from None
    if value < 0 or math.isnan(value):
        raise WorkloadError(f"{where}: column {col!r} must be >= 0, got {raw!r}")
    return value


def _flag(raw: str | None) -> bool:
    return (raw or "").strip().lower() in {"1", "true", "yes", "y", "t"}


def load_workload(path: str | Path) -> list[Job]:
    path = Path(path)
    jobs = []
    seen: set[str] = set()
    for i, row in enumerate(_rows(path, WORKLOAD_COLUMNS), start=2):
        where = f"{path}:{i}"
        job_id = row["job_id"].strip()
        if not job_id or job_id in seen:
            raise WorkloadError(f"{where}: job_id {job_id!r} is empty or repeated")
        seen.add(job_id)
        kind = (row.get("kind") or "job").strip() or "job"
        if kind not in KINDS:
            raise WorkloadError(f"{where}: kind {kind!r} is not one of {sorted(KINDS)}")
        gpu = _num(row, "gpu", where)
        if not float(gpu).is_integer():
            raise WorkloadError(f"{where}: gpu must be a whole number of devices, got {gpu}")
        jobs.append(Job(job_id, row["tenant"].strip() or "default", _num(row, "submit_s", where),
                        max(_num(row, "duration_s", where), 1e-3), int(gpu),
                        _num(row, "cpu", where), int(_num(row, "mem_gib", where) * GIB), kind,
                        _flag(row.get("preemptible")), (row.get("gpu_type") or "").strip() or None))
    if not jobs:
        raise WorkloadError(f"{path}: no jobs")
    return sorted(jobs, key=lambda j: (j.submit, j.job_id))


def load_cluster(path: str | Path) -> list[Node]:
    path = Path(path)
    nodes = []
    for i, row in enumerate(_rows(path, CLUSTER_COLUMNS), start=2):
        where = f"{path}:{i}"
        gpu = _num(row, "gpu", where)
        nodes.append(Node(row["node"].strip() or f"node{i}",
                          Resources(cpu=_num(row, "cpu", where),
                                    mem=int(_num(row, "mem_gib", where) * GIB), gpu=int(gpu)),
                          (row.get("gpu_type") or "").strip() or None))
    if not nodes:
        raise WorkloadError(f"{path}: no nodes")
    return nodes


def write_workload(jobs: Iterable[Job], path: str | Path) -> None:
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow([*WORKLOAD_COLUMNS, *WORKLOAD_OPTIONAL])
        for j in jobs:
            out.writerow([j.job_id, j.tenant, f"{j.submit:.3f}", f"{j.duration:.3f}", j.gpu,
                          f"{j.cpu:.3f}", f"{j.mem / GIB:.4f}", j.kind, int(j.preemptible),
                          j.gpu_type or ""])


def write_cluster(nodes: Iterable[Node], path: str | Path) -> None:
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow([*CLUSTER_COLUMNS, "gpu_type"])
        for n in nodes:
            c = n.capacity
            out.writerow([n.name, c.gpu, f"{c.cpu:g}", f"{c.mem / GIB:g}", n.gpu_type or ""])


# ------------------------------------------------------------------ workload shaping
def offered_load(jobs: Sequence[Job], nodes: Sequence[Node]) -> float:
    """max over resources of demanded resource-seconds / (capacity x arrival span)."""
    span = max(j.submit for j in jobs) - min(j.submit for j in jobs)
    if span <= 0:
        return math.inf
    cap = np.array([sum(n.capacity.cpu for n in nodes), sum(n.capacity.mem for n in nodes),
                    sum(n.capacity.gpu for n in nodes)], dtype=float)
    work = np.array([[j.cpu * j.duration, j.mem * j.duration, j.gpu * j.duration]
                     for j in jobs]).sum(axis=0)
    return float(np.max(np.divide(work, cap, out=np.zeros(3), where=cap > 0)) / span)


def compress_to_load(jobs: Sequence[Job], nodes: Sequence[Node], load: float) -> list[Job]:
    """Rescale arrival times (keeping their order and relative gaps) to an offered load."""
    current = offered_load(jobs, nodes)
    if not math.isfinite(current) or load <= 0:
        return list(jobs)
    t0 = min(j.submit for j in jobs)
    factor = current / load
    return [replace(j, submit=(j.submit - t0) * factor) for j in jobs]


def split_units(job: Job, nodes: Sequence[Node]) -> tuple[Resources, int]:
    """The fewest identical units (a divisor of the GPU count) of which one fits some node."""
    caps = [n.capacity for n in nodes
            if job.gpu_type is None or n.gpu_type in (parse_gpu_types(job.gpu_type) or ())]
    caps = caps or [n.capacity for n in nodes]
    limit = max(job.gpu, 1) if job.gpu else 64
    for count in range(1, limit + 1):
        if job.gpu and job.gpu % count:
            continue
        unit = Resources(cpu=job.cpu / count, mem=math.ceil(job.mem / count),
                         gpu=job.gpu // count)
        if any(unit.cpu <= c.cpu and unit.mem <= c.mem and unit.gpu <= c.gpu for c in caps):
            return unit, count
    return Resources(cpu=job.cpu, mem=job.mem, gpu=job.gpu), 1


def to_request(job: Job, nodes: Sequence[Node], runtime_known: bool = True) -> Request:
    unit, count = split_units(job, nodes)
    return Request(id=job.job_id, tenant=job.tenant, demand=unit, count=count, kind=job.kind,
                   preemptible=job.preemptible,
                   runtime=job.duration if runtime_known else None, gpu_type=job.gpu_type)


# ------------------------------------------------------------------ metrics
def jain(values: np.ndarray) -> float:
    if len(values) == 0 or not np.any(values):
        return 1.0
    return float(values.sum() ** 2 / (len(values) * (values**2).sum()))


@dataclass
class _Recorder:
    """Integrates piecewise-constant state between events; samples stranded on a time grid."""

    keys: list[str]
    total_cap: np.ndarray
    grid: float
    last_t: float | None = None
    last_used: np.ndarray | None = None
    last_busy: bool = False
    last_jain: float | None = None
    jain_key: int = -1
    last_queued: bool = False
    contended_busy: float = 0.0  # time with a non-empty queue, and the usage integral then
    contended_used: np.ndarray | None = None
    busy_time: float = 0.0
    used_integral: np.ndarray | None = None
    contended_time: float = 0.0
    jain_integral: float = 0.0
    next_strand_t: float = -math.inf
    stranded_samples: list[float] = field(default_factory=list)
    fragmentation_samples: list[float] = field(default_factory=list)
    starvation: StarvationWatch | None = None
    timeline: list[tuple[float, list[float], dict[str, float]]] = field(default_factory=list)

    def advance(self, t: float) -> None:
        if self.last_t is None:
            self.used_integral = np.zeros(len(self.keys))
            self.contended_used = np.zeros(len(self.keys))
            self.last_t = t
            return
        dt = t - self.last_t
        if dt > 0 and self.last_busy:
            self.busy_time += dt
            self.used_integral += self.last_used * dt
        if dt > 0 and self.last_jain is not None:
            self.contended_time += dt
            self.jain_integral += self.last_jain * dt
        if dt > 0 and self.last_queued:
            self.contended_busy += dt
            self.contended_used += self.last_used * dt
        self.last_t = t

    def observe(self, t: float, st: SchedulerState, queued_shapes: Counter,
                queued_gangs: Counter | None = None) -> None:
        if self.starvation is not None:
            self.starvation.observe(t, st)
        used = self.total_cap - st.free[st.active].sum(axis=0)
        self.last_used = used
        self.last_busy = bool(st.running or st.queued)
        self.last_queued = bool(st.queued)
        if not st.queued:
            self.last_jain = None
        elif (key := st.change_count()) != self.jain_key or self.last_jain is None:
            self.jain_key, self.last_jain = key, self._jain(st)  # holdings or queue moved
        if st.queued and t >= self.next_strand_t:
            self.next_strand_t = t + self.grid
            value = stranded_share(st, queued_shapes)
            if value is not None:
                self.stranded_samples.append(value)
            frag = self._fragmentation(st, queued_gangs)
            if frag is not None:
                self.fragmentation_samples.append(frag)
        if not self.timeline or t - self.timeline[-1][0] >= self.grid:
            util = np.divide(used, self.total_cap, out=np.zeros_like(used),
                             where=self.total_cap > 0)
            shares = {tn: float(st.shares(tn).max()) for tn in st.held}
            self.timeline.append((t, util.tolist(), shares))

    def _jain(self, st: SchedulerState) -> float:
        tenants = sorted(st.active_tenants())
        if len(tenants) < 2:
            return 1.0
        dom, fair = dominant_and_fair_shares(st, tenants)
        x = np.divide(dom, fair, out=np.ones_like(dom), where=fair > 0)
        return jain(x)

    def _fragmentation(self, st: SchedulerState, queued_gangs: Counter | None) -> float | None:
        if not queued_gangs or "gpu" not in st.keys:
            return None
        g = st.keys.index("gpu")
        gangs = np.array([k for k, n in queued_gangs.items() if n > 0 and k[0] > 0])
        return gpu_fragmentation(st.free[st.active, g], gangs, float(st.total_cap[g]))


def gpu_fragmentation(free_gpus: np.ndarray, gangs: np.ndarray, total_gpus: float
                      ) -> float | None:
    """GPU capacity left unusable because it is spread across nodes, as a share of all GPUs.

    ``free_gpus``: free GPUs per node; ``gangs``: rows (GPUs per unit, units) of the queued
    GPU requests. Among the gangs whose total the free GPUs could hold, the smallest unit
    sets what a node needs to be useful: free GPUs on nodes with fewer than that count (and
    more than none) are fragmented. 0 when no queued gang fits by total (then capacity, not
    its spread, is short); None when no GPU request is queued. GPU types and the nodes'
    CPU and memory are left out: capacity stranded by them is ``stranded``'s business."""
    if gangs.size == 0 or total_gpus <= 0:
        return None
    total_free = float(free_gpus.sum())
    would_fit = gangs[gangs[:, 0] * gangs[:, 1] <= total_free + 1e-9]
    if would_fit.size == 0:
        return 0.0
    smallest_unit = float(would_fit[:, 0].min())
    spread = (free_gpus > 1e-9) & (free_gpus < smallest_unit - 1e-9)
    return float(free_gpus[spread].sum()) / total_gpus


class StarvationWatch:
    """Counts requests starved while their tenant is below its weighted fair share.

    The guarantee (docs/scheduler.md): the next request (queue head) of a tenant below its
    weighted fair share starts within ``bound`` seconds of the moment the tenant went below
    it with that request at the head. Tenants at or above their share may wait without limit,
    so the guarantee can be met when demand exceeds capacity (everyone aged is no longer
    everyone served). Checked at every event; a violation is counted once per request."""

    def __init__(self, bound: float) -> None:
        self.bound = bound
        self.owed_since: dict[str, float] = {}
        self.starved: set[str] = set()
        self.key = -1

    def observe(self, t: float, st: SchedulerState) -> None:
        for rid, since in self.owed_since.items():
            if t - since > self.bound + 1e-6:
                self.starved.add(rid)
        if st.change_count() == self.key:
            return
        self.key = st.change_count()
        self.owed_since = {rid: self.owed_since.get(rid, t) for rid in owed_heads(st)}


def owed_heads(st: SchedulerState) -> list[str]:
    """The queue heads of the tenants below their weighted fair share."""
    return [st.tenant_queue(t)[0][2] for t in under_share_tenants(st)]


def stranded_share(st: SchedulerState, queued_shapes: Counter) -> float | None:
    """Capacity that is free but that no queued request could use, as a share of capacity
    (mean over resources): free r on a node counts when no queued unit needing r fits that
    node's *other* free resources (e.g. idle GPUs on a node whose cores are all taken)."""
    shapes = np.array([s for s, n in queued_shapes.items() if n > 0])
    free = st.free[st.active]
    present = st.total_cap > 0
    if shapes.size == 0 or not present.any():
        return None
    cap = np.where(present, st.total_cap, np.inf)
    stranded = 0.0
    r_count = free.shape[1]
    for r in np.flatnonzero(present):
        need = shapes[shapes[:, r] > 0]
        if need.size == 0:
            stranded += float(free[:, r].sum() / cap[r])
            continue
        others = [c for c in range(r_count) if c != r]
        fits = (free[None, :, others] + 1e-9 >= need[:, None, others]).all(axis=2).any(axis=0)
        stranded += float(free[~fits, r].sum() / cap[r])
    return stranded / int(present.sum())


# ------------------------------------------------------------------ the replay
@dataclass
class SimResult:
    metrics: dict[str, Any]
    timeline: list[tuple[float, list[float], dict[str, float]]]
    keys: list[str]
    first_start: dict[str, float] = field(default_factory=dict)
    finish: dict[str, float] = field(default_factory=dict)


def simulate(jobs: Sequence[Job], nodes: Sequence[Node], policy: str,
             config: SchedulerConfig | None = None, runtime_known: bool = True,
             validate: bool = False, restart_cost: float = 0.0,
             starvation_bound: float = STARVATION_BOUND) -> SimResult:
    """Replay ``jobs`` on ``nodes`` under ``policy``; returns the metrics of docs/scheduler.md.

    ``starvation_bound``: the wait the starvation guarantee allows (``starved_under_share``);
    the same for every policy, whatever its own settings, so policies compare.

    ``restart_cost``: seconds of work a preempted job loses (progress since its last
    checkpoint plus restart overhead), added to what it still has to run."""
    config = config or SchedulerConfig()
    st = SchedulerState(policy, config, nodes, validate=validate, auto_schedule=False)
    jobs = sorted(jobs, key=lambda j: (j.submit, j.job_id))
    by_id = {j.job_id: j for j in jobs}
    span = max(j.submit for j in jobs) - min(j.submit for j in jobs)
    rec = _Recorder(list(st.keys), st.total_cap.copy(), grid=max(span, 1.0) / 2000,
                    starvation=StarvationWatch(starvation_bound))
    remaining = {j.job_id: j.duration for j in jobs}
    started_at: dict[str, float] = {}
    waiting_since: dict[str, float] = {}  # start of the current stretch of waiting
    longest_stretch = [0.0]
    first_start: dict[str, float] = {}
    token: dict[str, int] = {}
    finish_t: dict[str, float] = {}
    slice_iso: dict[str, float] = {}
    shapes: Counter = Counter()
    gangs: Counter = Counter()  # queued (GPUs per unit, units), for fragmentation
    heap: list[tuple[float, int, int, str, int]] = []  # (t, order, seq, job, token)
    rejected: list[str] = []
    counters = {"decisions": 0, "preemptions": 0, "seq": 0}
    sched_time = 0.0
    ai = 0

    def push(t: float, order: int, jid: str = "", tok: int = 0) -> None:
        counters["seq"] += 1
        heapq.heappush(heap, (t, order, counters["seq"], jid, tok))

    def apply(decisions: list, t: float) -> None:
        for d in decisions:
            counters["decisions"] += 1
            item_shape = _shape_of(st, d.request_id)
            if d.action == "start":
                shapes[item_shape] -= 1
                gangs[_gang_of(st, d.request_id)] -= 1
                started_at[d.request_id] = t
                longest_stretch[0] = max(longest_stretch[0], t - waiting_since.pop(d.request_id))
                first_start.setdefault(d.request_id, t)
                token[d.request_id] = token.get(d.request_id, 0) + 1
                push(t + remaining[d.request_id], 0, d.request_id, token[d.request_id])
            elif d.action == "preempt":
                counters["preemptions"] += 1
                shapes[item_shape] += 1
                gangs[_gang_of(st, d.request_id)] += 1
                remaining[d.request_id] -= t - started_at.pop(d.request_id) - restart_cost
                waiting_since[d.request_id] = t
                token[d.request_id] += 1  # its pending finish event is now stale
                st.set_runtime(d.request_id, remaining[d.request_id] if runtime_known else None)

    wake_pending: float | None = None
    while ai < len(jobs) or heap:
        t = min(jobs[ai].submit if ai < len(jobs) else math.inf, heap[0][0] if heap else math.inf)
        rec.advance(t)
        while heap and heap[0][0] <= t:
            _, order, _, jid, tok = heapq.heappop(heap)
            if order == 0 and token.get(jid) == tok and jid in st.running:
                st.finish(jid, t)
                finish_t[jid] = t
                started_at.pop(jid, None)
            elif order == 2:
                wake_pending = None
        while ai < len(jobs) and jobs[ai].submit <= t:
            job = jobs[ai]
            ai += 1
            request = to_request(job, nodes, runtime_known)
            reason = st.fits_ever(request)
            if reason:
                rejected.append(job.job_id)
                continue
            st.submit(request, t)
            waiting_since[job.job_id] = t
            shapes[_shape_of(st, job.job_id)] += 1
            gangs[_gang_of(st, job.job_id)] += 1
            slice_iso[job.job_id] = _isolated_slowdown(st, job)
        tic = time.perf_counter()
        decisions = st.tick(t)
        sched_time += time.perf_counter() - tic
        apply(decisions, t)
        rec.observe(t, st, shapes, gangs)
        wake = st.next_wakeup()
        if wake is not None and wake > t and (wake_pending is None or wake < wake_pending):
            wake_pending = wake
            push(wake, 2)
        if not heap and ai >= len(jobs) and st.queued and not st.running:
            break  # nothing can ever change: the rest is unschedulable
    metrics = _summarise(policy, jobs, by_id, finish_t, first_start, slice_iso, rejected, rec,
                         counters, sched_time, st)
    metrics["wait_stretch_max"] = longest_stretch[0]
    metrics["restart_cost"] = restart_cost
    return SimResult(metrics, rec.timeline, rec.keys, first_start, finish_t)


def _shape_of(st: SchedulerState, rid: str) -> tuple:
    item = st.queued.get(rid) or st.running[rid].item
    return tuple(item.unit.tolist())


def _gang_of(st: SchedulerState, rid: str) -> tuple[float, int]:
    item = st.queued.get(rid) or st.running[rid].item
    gpu = st.keys.index("gpu")
    return float(item.unit[gpu]), int(item.request.count)


def _isolated_slowdown(st: SchedulerState, job: Job) -> float:
    """JCT on a weight-proportional 1/N slice relative to its duration: max(1, share / slice)."""
    tenants = st.active_tenants() | {job.tenant}
    slice_ = st.tenant_weight(job.tenant) / sum(st.tenant_weight(t) for t in tenants)
    cap = np.where(st.total_cap > 0, st.total_cap, np.inf)
    item = st.queued[job.job_id]
    dominant = float((item.unit * item.request.count / cap).max())
    return max(1.0, dominant / slice_)


def _summarise(policy: str, jobs: Sequence[Job], by_id: dict[str, Job],
               finish_t: dict[str, float], first_start: dict[str, float],
               slice_iso: dict[str, float], rejected: list[str],
               rec: _Recorder, counters: dict[str, int], sched_time: float,
               st: SchedulerState) -> dict[str, Any]:
    done = [jid for jid in finish_t]
    jct = np.array([finish_t[j] - by_id[j].submit for j in done])
    wait = np.array([first_start[j] - by_id[j].submit for j in done])
    rho = np.array([(finish_t[j] - by_id[j].submit) / (by_id[j].duration * slice_iso[j])
                    for j in done])
    busy, used = ((rec.contended_busy, rec.contended_used) if rec.contended_busy > 0
                  else (rec.busy_time, rec.used_integral))
    util = np.divide(used, rec.total_cap * max(busy, 1e-9), out=np.zeros(len(rec.keys)),
                     where=rec.total_cap > 0)
    col = {k: i for i, k in enumerate(rec.keys)}

    def pct(a: np.ndarray, q: float) -> float:
        return float(np.percentile(a, q)) if a.size else float("nan")

    t0 = min(j.submit for j in jobs)
    return {
        "policy": policy,
        "jobs": len(done),
        "jct_mean": float(jct.mean()) if jct.size else float("nan"),
        "jct_p99": pct(jct, 99),
        "wait_mean": float(wait.mean()) if wait.size else float("nan"),
        "wait_p99": pct(wait, 99),
        "wait_max": float(wait.max()) if wait.size else float("nan"),
        "util_gpu": float(util[col["gpu"]]),
        "util_cpu": float(util[col["cpu"]]),
        "util_mem": float(util[col["mem"]]),
        "stranded": float(np.mean(rec.stranded_samples)) if rec.stranded_samples else 0.0,
        "jain": rec.jain_integral / rec.contended_time if rec.contended_time > 0 else 1.0,
        "ftf_violations": float((rho > 1 + 1e-9).mean()) if rho.size else 0.0,
        "makespan": (max(finish_t.values()) - t0) if finish_t else 0.0,
        "preemptions": counters["preemptions"],
        "decisions_per_s": counters["decisions"] / sched_time if sched_time > 0 else 0.0,
        "starved_under_share": len(rec.starvation.starved) if rec.starvation else 0,
        "fragmentation": (float(np.mean(rec.fragmentation_samples))
                          if rec.fragmentation_samples else 0.0),
        "rejected": len(rejected),
        "unfinished": len(st.queued) + len(st.running),
        "sched_wall_s": sched_time,
    }


# ------------------------------------------------------------------ presentation
def format_table(rows: Sequence[dict[str, Any]]) -> str:
    cols = [("policy", "{}"), ("jobs", "{}"), ("jct_mean", "{:.0f}"), ("jct_p99", "{:.0f}"),
            ("wait_mean", "{:.0f}"), ("wait_p99", "{:.0f}"), ("wait_max", "{:.0f}"),
            ("util_gpu", "{:.3f}"), ("util_cpu", "{:.3f}"), ("util_mem", "{:.3f}"),
            ("stranded", "{:.3f}"), ("jain", "{:.3f}"), ("ftf_violations", "{:.3f}"),
            ("makespan", "{:.0f}"), ("preemptions", "{}"), ("decisions_per_s", "{:.0f}"),
            ("starved_under_share", "{}"), ("fragmentation", "{:.3f}")]
    cells = [[name for name, _ in cols]]
    for row in rows:
        cells.append([fmt.format(row[name]) for name, fmt in cols])
    widths = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(results: Sequence[tuple[str, SimResult]], out: str | Path) -> None:
    """Per policy: utilisation per resource over time, and each tenant's dominant share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(5 * len(results), 7), squeeze=False,
                             sharex="col")
    for col, (name, res) in enumerate(results):
        times = np.array([t for t, _, _ in res.timeline]) / 3600.0
        util = np.array([u for _, u, _ in res.timeline])
        for i, key in enumerate(res.keys):
            axes[0][col].plot(times, util[:, i], label=key, lw=1)
        axes[0][col].set_title(f"{name}: utilisation")
        axes[0][col].set_ylim(0, 1.05)
        axes[0][col].legend(loc="lower right", fontsize=7)
        tenants = sorted({tn for _, _, s in res.timeline for tn in s})
        for tn in tenants:
            axes[1][col].plot(times, [s.get(tn, 0.0) for _, _, s in res.timeline], lw=0.8,
                              label=tn)
        axes[1][col].set_title(f"{name}: dominant share per tenant")
        axes[1][col].set_xlabel("hours")
        if len(tenants) <= 16:
            axes[1][col].legend(loc="upper right", fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
