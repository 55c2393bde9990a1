"""Build canonical workloads W1 and W2 from the real traces in $LOOPHUB_SHARED/traces.

No trace has every column a multi-resource fair scheduler needs, so each workload combines
traces; every assumption is returned as text (and printed by the CLI). Seeds are fixed.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loophub.scheduler.model import GIB, Node, Resources
from loophub.scheduler.sim import Job, compress_to_load, offered_load

PHILLY = "philly_via_gavel/gavel_philly_per_vc_seed0.csv"
OPENB_PODS = "alibaba_gpu_v2023/openb_pod_list_default.csv"
OPENB_NODES = "alibaba_gpu_v2023/openb_node_list_all_node.csv"
HOMOGENEOUS = Resources(cpu=96.0, mem=384 * GIB, gpu=8)  # openb's most common node (G2, 549x)
HOMOGENEOUS_TYPE = "G2"


class TracesMissing(FileNotFoundError):
    """The shared traces are not where LOOPHUB_SHARED points."""


def shared_dir() -> Path:
    default = Path(__file__).resolve().parents[2].parent / "shared"
    return Path(os.environ.get("LOOPHUB_SHARED", str(default)))


def trace_path(relative: str) -> Path:
    path = shared_dir() / "traces" / relative
    if not path.exists():
        raise TracesMissing(f"trace {path} not found; set LOOPHUB_SHARED to the folder that "
                            "holds traces/ (see traces/README.md)")
    return path


@dataclass
class Built:
    jobs: list[Job]
    nodes: list[Node]
    assumptions: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ clusters
def homogeneous_cluster(n: int) -> list[Node]:
    return [Node(f"node{i:04d}", HOMOGENEOUS, HOMOGENEOUS_TYPE) for i in range(n)]


def openb_cluster(n: int, seed: int) -> list[Node]:
    """n nodes sampled without replacement from openb's real node list (incl. CPU-only)."""
    with open(trace_path(OPENB_NODES), newline="") as fh:
        rows = list(csv.DictReader(fh))
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(rows), size=min(n, len(rows)), replace=False).tolist())
    nodes = []
    for i in pick:
        row = rows[i]
        cap = Resources(cpu=int(row["cpu_milli"]) / 1000, mem=int(row["memory_mib"]) * 1024**2,
                        gpu=int(row["gpu"]))
        nodes.append(Node(row["sn"], cap, row["model"] or None))
    return nodes


def make_cluster(shape: str, n: int, seed: int) -> tuple[list[Node], str]:
    if shape == "homogeneous":
        return homogeneous_cluster(n), (
            f"cluster: {n} identical nodes of 96 cores, 384 GiB, 8 GPUs (openb's most common "
            "node shape, model G2)")
    if shape == "openb":
        nodes = openb_cluster(n, seed)
        cpu_only = sum(1 for x in nodes if x.capacity.gpu == 0)
        return nodes, (f"cluster: {len(nodes)} nodes sampled (seed {seed}) from openb's real "
                       f"node list; {cpu_only} of them CPU-only")
    raise ValueError(f"unknown cluster shape {shape!r}; use homogeneous or openb")


# ------------------------------------------------------------------ openb demand
def _openb_pods() -> list[dict[str, str]]:
    with open(trace_path(OPENB_PODS), newline="") as fh:
        return list(csv.DictReader(fh))


def _whole_gpu_profiles(pods: list[dict[str, str]]) -> dict[int, np.ndarray]:
    """(cpu cores, mem GiB) of openb pods holding whole GPUs, by GPU count."""
    profiles: dict[int, list[tuple[float, float]]] = {}
    for p in pods:
        g = int(p["num_gpu"])
        if g == 0 or (g == 1 and int(p["gpu_milli"]) < 1000):
            continue
        profiles.setdefault(g, []).append((int(p["cpu_milli"]) / 1000,
                                           int(p["memory_mib"]) / 1024))
    return {g: np.array(v) for g, v in profiles.items()}


def sample_cpu_mem(gpus: np.ndarray, profiles: dict[int, np.ndarray],
                   rng: np.random.Generator) -> np.ndarray:
    """Per job (cpu, mem GiB): a real openb pod with the same GPU count; for counts openb lacks,
    the largest openb count below it, scaled linearly (e.g. 16 GPUs = an 8-GPU pod x 2)."""
    known = sorted(profiles)
    out = np.zeros((len(gpus), 2))
    for i, g in enumerate(gpus.tolist()):
        base = max([k for k in known if k <= g] or [known[0]])
        row = profiles[base][rng.integers(len(profiles[base]))]
        out[i] = row * (g / base)
    return out


# ------------------------------------------------------------------ W1
def capped_window_end(jobs: Sequence[Job]) -> tuple[float, int, list[str]] | None:
    """When the first tenant that hit the trace's per-tenant job cap stops arriving.

    Gavel's per-VC Philly trace keeps at most a fixed number of jobs per VC, each VC's clock
    starting at 0, so busy VCs run out of jobs early and later arrivals come only from the
    quiet ones. The cap is taken as the largest per-tenant count when several tenants share
    it. Returns (end time, cap, capped tenants), or None when no cap is visible.
    """
    counts: dict[str, int] = {}
    last: dict[str, float] = {}
    for j in jobs:
        counts[j.tenant] = counts.get(j.tenant, 0) + 1
        last[j.tenant] = max(last.get(j.tenant, 0.0), j.submit)
    cap = max(counts.values())
    capped = sorted(t for t, n in counts.items() if n == cap)
    if len(capped) < 2:
        return None
    return min(last[t] for t in capped), cap, capped


def build_w1(load: float = 1.0, seed: int = 0, nodes: int = 64,
             shape: str = "homogeneous", full_trace: bool = False) -> Built:
    cluster, cluster_note = make_cluster(shape, nodes, seed)
    with open(trace_path(PHILLY), newline="") as fh:
        rows = list(csv.DictReader(fh))
    rng = np.random.default_rng(seed)
    gpus = np.array([int(r["num_gpus"]) for r in rows])
    cpu_mem = sample_cpu_mem(gpus, _whole_gpu_profiles(_openb_pods()), rng)
    jobs = [Job(f"w1-{r['vc']}-{r['job_idx']}", r["vc"], float(r["arrival_time_s"]),
                max(float(r["est_duration_s"]), 1.0), int(r["num_gpus"]), round(float(c), 3),
                int(m * GIB), "job", True, None)
            for r, (c, m) in zip(rows, cpu_mem, strict=True)]
    window_note = _keep_observed_window(jobs, full_trace)
    jobs = [j for j in jobs if window_note[0] is None or j.submit <= window_note[0]]
    raw_load = offered_load(jobs, cluster)
    jobs = compress_to_load(jobs, cluster, load)
    notes = [
        f"W1: {len(jobs)} jobs of Philly (via Gavel), tenants = its 15 virtual clusters",
        window_note[1],
        "W1: GPU count and duration are Philly's; durations are Gavel's reconstruction",
        "W1: each VC's arrival clock starts at 0 in the source (cross-VC alignment unknown); "
        "arrivals are used as given, then compressed",
        f"W1: cpu/mem per job sampled (seed {seed}) from openb pods holding whole GPUs with the "
        "same GPU count; counts openb lacks use the largest smaller count, scaled linearly",
        "W1: every job is a preemptible training job (kind=job) that resumes from a checkpoint",
        cluster_note,
        f"load: offered load as given = {raw_load:.3f}; arrivals scaled to {load}",
    ]
    return Built(jobs, cluster, notes)


def _keep_observed_window(jobs: Sequence[Job], full_trace: bool) -> tuple[float | None, str]:
    """The arrival cut-off for W1 (None: keep all) and the assumption that explains it."""
    window = capped_window_end(jobs)
    if window is None:
        return None, "W1: no per-VC job cap detected; the whole trace is used"
    end, cap, capped = window
    kept = sum(1 for j in jobs if j.submit <= end)
    what = (f"{len(capped)} VCs hit the trace's cap of {cap} jobs per VC; the first of them "
            f"stops arriving at {end:.0f} s (unscaled), after which the busiest tenants are "
            "missing and the offered load collapses")
    if full_trace:
        return None, f"W1: {what}; --full-trace: all {len(jobs)} jobs kept anyway"
    return end, (f"W1: {what}; only the {kept} of {len(jobs)} jobs arriving by then (every VC "
                 "observed) are kept (--full-trace keeps all)")


# ------------------------------------------------------------------ W2
def zipf_tenants(n_jobs: int, n_tenants: int, exponent: float,
                 rng: np.random.Generator) -> np.ndarray:
    p = 1.0 / np.arange(1, n_tenants + 1) ** exponent
    return rng.choice(n_tenants, size=n_jobs, p=p / p.sum())


def build_w2(load: float = 1.0, seed: int = 0, nodes: int = 128, shape: str = "openb",
             tenants: int = 10, zipf: float = 1.1, max_duration: float = 7 * 86400.0) -> Built:
    cluster, cluster_note = make_cluster(shape, nodes, seed)
    pods = [p for p in _openb_pods() if p["scheduled_time"].strip() != ""]
    pods.sort(key=lambda p: (int(p["creation_time"]), p["name"]))
    rng = np.random.default_rng(seed)
    owner = zipf_tenants(len(pods), tenants, zipf, rng)
    arrivals = [float(p["creation_time"]) for p in pods]
    types = {n.gpu_type for n in cluster if n.gpu_type}
    jobs = []
    for p, t, arrival in zip(pods, owner.tolist(), arrivals, strict=True):
        server = p["qos"] in ("LS", "Guaranteed")
        duration = float(p["deletion_time"]) - float(p["scheduled_time"])
        spec = p["gpu_spec"].strip() or None
        if spec and not (set(spec.split("|")) & types):
            spec = None
        jobs.append(Job(p["name"], f"tenant{t:02d}", arrival,
                        min(max(duration, 1.0), max_duration), math.ceil(int(p["num_gpu"]) * (
                            int(p["gpu_milli"]) / 1000 if int(p["num_gpu"]) == 1 else 1)),
                        int(p["cpu_milli"]) / 1000, int(p["memory_mib"]) * 1024**2,
                        "server" if server else "job", not server, spec))
    raw_load = offered_load(jobs, cluster)
    jobs = compress_to_load(jobs, cluster, load)
    notes = [
        f"W2: {len(jobs)} openb pods (default list) with real cpu/mem/gpu; pods never scheduled "
        "(Pending) are left out",
        f"W2: tenants synthetic: {tenants} tenants, Zipf exponent {zipf} (seed {seed})",
        "W2: arrivals keep openb's creation times (mostly one burst of a few days within a "
        "149-day span), rescaled; contention therefore comes in that burst",
        "W2: LS/Guaranteed pods are long-running servers (not preemptible); BE/Burstable pods "
        "are preemptible jobs",
        "W2: a fractional GPU (gpu_milli < 1000) is rounded up to one whole device",
        f"W2: duration = deletion - scheduled time, at least 1 s, capped at {max_duration:.0f} s "
        "(deletion is a censoring time for pods still running at trace end)",
        "W2: gpu_spec constraints kept only where the cluster has such a GPU model",
        cluster_note,
        f"load: arrivals scaled from offered load {raw_load:.3f} to {load}",
    ]
    return Built(jobs, cluster, notes)


def build(name: str, load: float, seed: int, nodes: int | None = None,
          shape: str | None = None, full_trace: bool = False, **kw: float) -> Built:
    if name.upper() == "W1":
        return build_w1(load, seed, nodes or 64, shape or "homogeneous", full_trace)
    if name.upper() == "W2":
        return build_w2(load, seed, nodes or 128, shape or "openb", **kw)  # type: ignore[arg-type]
    raise ValueError(f"unknown workload {name!r}; use W1 or W2")


def describe(jobs: Sequence[Job]) -> str:
    tenants = len({j.tenant for j in jobs})
    return f"{len(jobs)} jobs, {tenants} tenants"
