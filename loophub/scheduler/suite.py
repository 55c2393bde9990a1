"""The scenario suite: many realistic scenarios built from $LOOPHUB_SHARED/traces.

Each scenario crosses an arrival source (Philly per VC, an ITP cluster, openb pods), a cluster
shape (homogeneous; sampled from openb's node list; sampled from PAI's machine list, with
CPU-only nodes and GPU types), a tenant mix (Philly's VCs; Zipf; Zipf with two CPU-heavy
tenants; notebook servers, kernels and batch jobs) and an offered load. Seeds are fixed per
scenario. Scenarios are split once, by a documented rule, into a tuning half (settings may be
chosen on it) and a test half (reported separately, never tuned on): see ``COMBOS``.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import numpy as np

from loophub.scheduler.model import GIB, Node, Resources, SchedulerConfig
from loophub.scheduler.sim import Job, compress_to_load, simulate
from loophub.scheduler.workloads import (
    PHILLY,
    Built,
    _openb_pods,
    _whole_gpu_profiles,
    make_cluster,
    sample_cpu_mem,
    trace_path,
    zipf_tenants,
)

ITP = "elasticflow_itp/{}.csv"
PAI_MACHINES = "alibaba_gpu_v2020_machine_spec/pai_machine_spec_with_header.csv"
LOADS = (0.8, 1.0, 1.3)
MAX_DURATION = 7 * 86400.0  # as W2: a few multi-week jobs would otherwise be the whole load
ZIPF_TENANTS, ZIPF_EXPONENT = 10, 1.1
CPU_HEAVY = ("tenant01", "tenant02")  # Zipf ranks 2 and 3: large enough to matter
NODES = {"homogeneous": 24, "openb": 64, "pai": 64}  # about 200 GPUs each
JOBS, QUICK_JOBS = 600, 250
# openb pods: mostly small, with censored multi-day lifetimes; a window of them offers a
# sustained load only with more pods, shorter lifetimes and a smaller cluster (else the
# "load" is a handful of week-long pods running alone after the arrivals end)
OPENB_JOBS_FACTOR, OPENB_MAX_DURATION, OPENB_NODES_FACTOR = 3, 6 * 3600.0, 0.5


@dataclass(frozen=True)
class Combo:
    """An arrival source x cluster shape x tenant mix; run at every load in LOADS."""

    source: str  # philly | itp-clusterNN | openb
    shape: str  # homogeneous | openb | pai
    mix: str  # philly-vc | zipf | zipf-cpu | interactive
    half: str  # tuning | test


# Rule for the halves: combos alternate tuning/test in this list, which is ordered so that
# each half has every source family, every shape and every mix; the issue's scenario (ITP
# arrivals, PAI shapes, Zipf with CPU-heavy tenants) is in the test half.
COMBOS: tuple[Combo, ...] = (
    Combo("philly", "homogeneous", "philly-vc", "tuning"),
    Combo("philly", "pai", "philly-vc", "test"),
    Combo("itp-cluster05", "openb", "zipf", "tuning"),
    Combo("itp-cluster02", "pai", "zipf-cpu", "test"),
    Combo("openb", "pai", "zipf-cpu", "tuning"),
    Combo("openb", "openb", "zipf", "test"),
    Combo("itp-cluster08", "homogeneous", "interactive", "tuning"),
    Combo("itp-cluster05", "pai", "interactive", "test"),
    Combo("philly", "openb", "zipf-cpu", "tuning"),
    Combo("itp-cluster08", "homogeneous", "zipf-cpu", "test"),
    Combo("itp-cluster02", "pai", "zipf", "tuning"),
    Combo("openb", "homogeneous", "interactive", "test"),
)


@dataclass(frozen=True)
class Scenario:
    name: str
    combo: Combo
    load: float
    seed: int

    @property
    def half(self) -> str:
        return self.combo.half


def scenarios() -> list[Scenario]:
    """Every combo at every load, each with its own fixed seed."""
    out = []
    for i, combo in enumerate(COMBOS):
        for load in LOADS:
            name = f"{combo.source}/{combo.shape}/{combo.mix}@{load}"
            out.append(Scenario(name, combo, load, seed=100 + i))
    return out


def build_scenario(sc: Scenario, quick: bool = False) -> Built:
    """The scenario's jobs and nodes, and every assumption as text."""
    n_jobs = QUICK_JOBS if quick else JOBS
    n_nodes = NODES[sc.combo.shape]
    if sc.combo.source == "openb":
        n_jobs, n_nodes = n_jobs * OPENB_JOBS_FACTOR, round(n_nodes * OPENB_NODES_FACTOR)
    rng = np.random.default_rng(sc.seed)
    nodes, cluster_note = suite_cluster(sc.combo.shape, n_nodes, sc.seed)
    jobs, notes = arrivals(sc.combo.source, n_jobs, rng)
    jobs, mix_note = apply_mix(jobs, sc.combo.mix, rng)
    jobs = compress_to_load(jobs, nodes, sc.load)
    return Built(jobs, nodes, [*notes, mix_note, cluster_note,
                               f"load: arrivals scaled to offered load {sc.load} "
                               "(on the bottleneck resource)"])


# ------------------------------------------------------------------ clusters
def suite_cluster(shape: str, n: int, seed: int) -> tuple[list[Node], str]:
    if shape == "pai":
        return pai_cluster(n, seed)
    return make_cluster(shape, n, seed)


def pai_cluster(n: int, seed: int) -> tuple[list[Node], str]:
    """n machines sampled without replacement from PAI's machine list (GPU types kept, CPU
    machines are CPU-only nodes)."""
    with open(trace_path(PAI_MACHINES), newline="") as fh:
        rows = list(csv.DictReader(fh))
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(rows), size=min(n, len(rows)), replace=False).tolist())
    nodes = [Node(rows[i]["machine"][:12],
                  Resources(cpu=float(rows[i]["cap_cpu"]), mem=int(float(rows[i]["cap_mem"]) * GIB),
                            gpu=int(rows[i]["cap_gpu"])),
                  None if rows[i]["gpu_type"] == "CPU" else rows[i]["gpu_type"])
             for i in pick]
    cpu_only = sum(1 for x in nodes if x.capacity.gpu == 0)
    return nodes, (f"cluster: {len(nodes)} machines sampled (seed {seed}) from PAI's machine "
                   f"list; {cpu_only} CPU-only")


# ------------------------------------------------------------------ arrivals
def arrivals(source: str, n: int, rng: np.random.Generator) -> tuple[list[Job], list[str]]:
    if source == "philly":
        return philly_arrivals(n, rng)
    if source.startswith("itp-"):
        return itp_arrivals(source.removeprefix("itp-"), n, rng)
    if source == "openb":
        return openb_arrivals(n, rng)
    raise ValueError(f"unknown arrival source {source!r}")


def philly_arrivals(n: int, rng: np.random.Generator) -> tuple[list[Job], list[str]]:
    """The first n Philly jobs by arrival (every VC's clock starts at 0, so all VCs are in)."""
    rows = sorted(_csv(PHILLY), key=lambda r: (float(r["arrival_time_s"]), r["job_idx"]))[:n]
    gpus = np.array([int(r["num_gpus"]) for r in rows])
    cpu_mem = sample_cpu_mem(gpus, _profiles(), rng)
    jobs = [Job(f"philly-{r['vc']}-{r['job_idx']}", r["vc"], float(r["arrival_time_s"]),
                min(max(float(r["est_duration_s"]), 1.0), MAX_DURATION), int(r["num_gpus"]),
                round(float(c), 3), int(m * GIB), "job", True)
            for r, (c, m) in zip(rows, cpu_mem, strict=True)]
    return jobs, [f"arrivals: the first {len(jobs)} Philly jobs (Gavel per-VC trace); tenant "
                  "= VC; cpu/mem sampled from openb pods with the same GPU count"]


def itp_arrivals(cluster: str, n: int, rng: np.random.Generator) -> tuple[list[Job], list[str]]:
    """n consecutive jobs of one ITP cluster from a seeded offset in its first half."""
    rows = sorted(_csv(ITP.format(cluster)), key=lambda r: (int(r["submission_time"]),
                                                            r["job_id"]))
    start = int(rng.integers(max(1, len(rows) // 2 - n)))
    rows = rows[start:start + n]
    gpus = np.array([int(r["num_gpu"]) for r in rows])
    cpu_mem = sample_cpu_mem(gpus, _profiles(), rng)
    jobs = [Job(f"{cluster}-{r['job_id'][:13]}", "", float(r["submission_time"]),
                min(max(float(r["duration"]), 1.0), MAX_DURATION), int(r["num_gpu"]),
                round(float(c), 3), int(m * GIB), "job", True)
            for r, (c, m) in zip(rows, cpu_mem, strict=True)]
    return jobs, [f"arrivals: {len(jobs)} consecutive jobs of ITP {cluster} from row {start}; "
                  "cpu/mem sampled from openb pods with the same GPU count"]


def openb_arrivals(n: int, rng: np.random.Generator) -> tuple[list[Job], list[str]]:
    """n consecutive scheduled openb pods (real cpu/mem/GPU) from a seeded offset."""
    pods = sorted((p for p in _openb_pods() if p["scheduled_time"].strip()),
                  key=lambda p: (int(p["creation_time"]), p["name"]))
    start = int(rng.integers(max(1, len(pods) - n)))
    jobs = []
    for p in pods[start:start + n]:
        whole = int(p["num_gpu"])
        gpu = math.ceil(whole * int(p["gpu_milli"]) / 1000) if whole == 1 else whole
        jobs.append(Job(p["name"], "", float(p["creation_time"]),
                        min(max(float(p["deletion_time"]) - float(p["scheduled_time"]), 1.0),
                            OPENB_MAX_DURATION), gpu, int(p["cpu_milli"]) / 1000,
                        int(p["memory_mib"]) * 1024**2, "job", True))
    return jobs, [f"arrivals: {len(jobs)} consecutive openb pods from row {start}; a "
                  f"fractional GPU is one device; lifetimes capped at {OPENB_MAX_DURATION:.0f} s"]


@cache
def _profiles() -> dict[int, np.ndarray]:
    return _whole_gpu_profiles(_openb_pods())


@cache
def _cpu_only_pods() -> np.ndarray:
    """(cpu cores, mem GiB) of openb's CPU-only pods."""
    return np.array([(int(p["cpu_milli"]) / 1000, int(p["memory_mib"]) / 1024)
                     for p in _openb_pods() if int(p["num_gpu"]) == 0])


def _csv(relative: str) -> list[dict[str, str]]:
    with open(trace_path(relative), newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------ tenant mixes
def apply_mix(jobs: Sequence[Job], mix: str, rng: np.random.Generator
              ) -> tuple[list[Job], str]:
    if mix == "philly-vc":
        if any(not j.tenant for j in jobs):
            raise ValueError("the philly-vc mix needs Philly arrivals (tenants are its VCs)")
        return list(jobs), "tenants: Philly's virtual clusters"
    owners = zipf_tenants(len(jobs), ZIPF_TENANTS, ZIPF_EXPONENT, rng)
    jobs = [replace(j, tenant=f"tenant{t:02d}") for j, t in zip(jobs, owners.tolist(),
                                                                strict=True)]
    note = f"tenants: {ZIPF_TENANTS}, Zipf exponent {ZIPF_EXPONENT}"
    if mix == "zipf":
        return jobs, note
    if mix == "zipf-cpu":
        return cpu_heavy(jobs, rng), (f"{note}; {', '.join(CPU_HEAVY)} are CPU-heavy: their "
                                      "jobs are CPU-only openb pods x the job's GPU count")
    if mix == "interactive":
        return interactive(jobs, rng), (f"{note}; 30% notebook servers (<= 1 GPU, not "
                                        "preemptible), 20% kernels (<= 1 GPU, <= 2 h, not "
                                        "preemptible), 50% preemptible batch jobs")
    raise ValueError(f"unknown tenant mix {mix!r}")


def cpu_heavy(jobs: Sequence[Job], rng: np.random.Generator) -> list[Job]:
    """The CPU-heavy tenants' jobs become CPU-only: a real openb CPU-only pod, scaled by the
    job's GPU count (so their size still follows the trace)."""
    pods = _cpu_only_pods()
    out = []
    for j in jobs:
        if j.tenant in CPU_HEAVY:
            cpu, mem = pods[rng.integers(len(pods))] * max(j.gpu, 1)
            j = replace(j, gpu=0, cpu=float(cpu), mem=int(mem * GIB), gpu_type=None)
        out.append(j)
    return out


def interactive(jobs: Sequence[Job], rng: np.random.Generator) -> list[Job]:
    """Notebook servers and kernels among the batch jobs (kinds drawn per job)."""
    draws = rng.random(len(jobs))
    out = []
    for j, u in zip(jobs, draws.tolist(), strict=True):
        if u < 0.5:
            gpu = min(j.gpu, 1)
            share = gpu / j.gpu if j.gpu else 1.0
            kind = "server" if u < 0.3 else "kernel"
            duration = j.duration if kind == "server" else min(j.duration, 7200.0)
            j = replace(j, kind=kind, gpu=gpu, cpu=j.cpu * share, mem=int(j.mem * share),
                        duration=duration, preemptible=False)
        out.append(j)
    return out


# ------------------------------------------------------------------ running and scoring
POLICY_NAMES = ("fifo", "drf", "balanced-drf", "slurm-fairshare", "tetris")
JAIN_SLACK = 0.01  # the issue's "within 0.01 of the best baseline"
UTIL_SLACK = 1e-3  # bottleneck utilisation below drf's by more than this counts as a loss


def bottleneck(built: Built) -> str:
    """The resource with the highest offered load in the scenario."""
    caps = {"cpu": sum(n.capacity.cpu for n in built.nodes),
            "mem": sum(n.capacity.mem for n in built.nodes),
            "gpu": sum(n.capacity.gpu for n in built.nodes)}
    work = {"cpu": sum(j.cpu * j.duration for j in built.jobs),
            "mem": sum(j.mem * j.duration for j in built.jobs),
            "gpu": sum(j.gpu * j.duration for j in built.jobs)}
    return max(caps, key=lambda k: work[k] / caps[k] if caps[k] else 0.0)


def run_case(task: tuple[Scenario, str, bool, SchedulerConfig | None]) -> dict[str, Any]:
    """One policy on one scenario: the simulator's metrics plus the scenario's labels."""
    sc, policy, quick, config = task
    built = build_scenario(sc, quick)
    res = simulate(built.jobs, built.nodes, policy, config)
    neck = bottleneck(built)
    m = res.metrics
    return {"scenario": sc.name, "half": sc.half, "source": sc.combo.source,
            "shape": sc.combo.shape, "mix": sc.combo.mix, "load": sc.load, "seed": sc.seed,
            **m, "bottleneck": neck, "util_bottleneck": m[f"util_{neck}"],
            "decisions": round(m["decisions_per_s"] * m["sched_wall_s"])}


def by_scenario(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["scenario"], {})[row["policy"]] = row
    return out


def scored_scenarios(rows: Sequence[dict[str, Any]], ours: str = "balanced-drf"
                     ) -> dict[str, dict[str, dict[str, Any]]]:
    """``by_scenario`` limited to the scenarios that have every policy ``verdicts`` needs."""
    return {name: per for name, per in by_scenario(rows).items()
            if all(p in per for p in (ours, "drf", "slurm-fairshare", "fifo"))}


def verdicts(per: dict[str, dict[str, Any]], ours: str = "balanced-drf") -> dict[str, bool]:
    """balanced-drf against the baselines in one scenario, one boolean per target."""
    me, drf, slurm, fifo = (per[p] for p in (ours, "drf", "slurm-fairshare", "fifo"))
    return {
        "jain_win": me["jain"] >= max(drf["jain"], slurm["jain"]) - JAIN_SLACK,
        "util_ok": me["util_bottleneck"] >= drf["util_bottleneck"] - UTIL_SLACK,
        "frag_ok": me["fragmentation"] <= 0.7 * drf["fragmentation"] + 1e-9,
        "starved_ok": me["starved_under_share"] == 0,
        "wait_p99_win": me["wait_p99"] <= fifo["wait_p99"] + 1e-6,
    }


def aggregate(rows: Sequence[dict[str, Any]], ours: str = "balanced-drf") -> dict[str, Any]:
    """The issue's aggregate figures over the scenarios in ``rows``."""
    table = list(scored_scenarios(rows, ours).values())
    if not table:
        return {"scenarios": 0}
    checks = [verdicts(per, ours) for per in table]

    def mean(policy: str, metric: str) -> float:
        return statistics.fmean(per[policy][metric] for per in table)

    def rate(policy: str) -> float:
        picked = [r for r in rows if r["policy"] == policy]
        seconds = sum(r["sched_wall_s"] for r in picked)
        return sum(r["decisions"] for r in picked) / seconds if seconds else 0.0

    frag_drf = mean("drf", "fragmentation")
    return {
        "scenarios": len(table),
        "jain_win_rate": statistics.fmean(c["jain_win"] for c in checks),
        "jain_mean_bdrf": mean(ours, "jain"), "jain_mean_drf": mean("drf", "jain"),
        "jain_mean_slurm": mean("slurm-fairshare", "jain"),
        "util_below_drf_count": sum(not c["util_ok"] for c in checks),
        "frag_mean_bdrf": mean(ours, "fragmentation"), "frag_mean_drf": frag_drf,
        "frag_ratio_vs_drf": mean(ours, "fragmentation") / frag_drf if frag_drf else 0.0,
        "starved_under_share_total": sum(per[ours]["starved_under_share"] for per in table),
        "starved_under_share_total_drf": sum(per["drf"]["starved_under_share"]
                                             for per in table),
        "wait_p99_win_rate": statistics.fmean(c["wait_p99_win"] for c in checks),
        "decisions_per_s_bdrf": rate(ours), "decisions_per_s_drf": rate("drf"),
    }


def unstable_verdicts(runs: Sequence[Sequence[dict[str, Any]]], ours: str = "balanced-drf"
                      ) -> dict[str, dict[str, int]]:
    """Per scenario and target, in how many of ``runs`` (each: every policy's rows for one
    replica of ``ours``) the target is missed, for the targets that are missed in some runs
    and met in others: verdicts that a negligible change of setting flips are noise."""
    misses: dict[str, dict[str, int]] = {}
    for rows in runs:
        for name, per in scored_scenarios(rows, ours).items():
            counts = misses.setdefault(name, {})
            for target, ok in verdicts(per, ours).items():
                counts[target] = counts.get(target, 0) + (not ok)
    flipped = {name: {t: n for t, n in per.items() if 0 < n < len(runs)}
               for name, per in misses.items()}
    return {name: per for name, per in flipped.items() if per}


def wins_and_losses(rows: Sequence[dict[str, Any]], ours: str = "balanced-drf"
                    ) -> dict[str, dict[str, int]]:
    """Per metric and baseline: in how many scenarios ``ours`` is better / worse."""
    better_high = {"jain": True, "util_bottleneck": True, "fragmentation": False,
                   "wait_p99": False, "jct_mean": False, "starved_under_share": False}
    out: dict[str, dict[str, int]] = {}
    for per in by_scenario(rows).values():
        if ours not in per:
            continue
        for policy, row in per.items():
            if policy == ours:
                continue
            for metric, high in better_high.items():
                a, b = per[ours][metric], row[metric]
                cell = out.setdefault(f"{metric} vs {policy}", {"win": 0, "tie": 0, "loss": 0})
                diff = (a - b) if high else (b - a)
                scale = max(abs(a), abs(b), 1e-9)
                cell["tie" if abs(diff) <= 1e-3 * scale else "win" if diff > 0 else "loss"] += 1
    return out


SCENARIO_COLUMNS = (("jain", "{:.3f}"), ("util_bottleneck", "{:.3f}"), ("fragmentation", "{:.3f}"),
                    ("starved_under_share", "{}"), ("wait_p99", "{:.0f}"))


def scenario_table(rows: Sequence[dict[str, Any]], policies: Sequence[str]) -> str:
    """Markdown: one line per scenario, each metric per policy (f/d/b/s/t initials)."""
    initials = "/".join(_short(p) for p in policies)
    head = "| scenario | half | neck | " + " | ".join(
        f"{m} ({initials})" for m, _ in SCENARIO_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (3 + len(SCENARIO_COLUMNS))]
    for name, per in by_scenario(rows).items():
        any_row = next(iter(per.values()))
        cells = [" / ".join(fmt.format(per[p][m]) if p in per else "-" for p in policies)
                 for m, fmt in SCENARIO_COLUMNS]
        lines.append(f"| {name} | {any_row['half']} | {any_row['bottleneck']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def wins_table(wl: dict[str, dict[str, int]]) -> str:
    lines = ["| balanced-drf: metric vs baseline | wins | ties | losses |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['win']} | {v['tie']} | {v['loss']} |" for k, v in sorted(wl.items())]
    return "\n".join(lines)


def _short(policy: str) -> str:
    return {"balanced-drf": "b", "slurm-fairshare": "s"}.get(policy, policy[0])


def run_suite(policies: Sequence[str], quick: bool = False, jobs: int = 1,
              config: SchedulerConfig | None = None, half: str = "all",
              progress: Callable[[dict[str, Any]], None] | None = None,
              only: str = "") -> list[dict[str, Any]]:
    """Every policy on every scenario of ``half`` (tuning, test or all) whose name contains
    ``only``."""
    tasks = [(sc, p, quick, config) for sc in scenarios()
             if half in ("all", sc.half) and only in sc.name for p in policies]
    rows = []
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        for row in pool.map(run_case, tasks):
            rows.append(row)
            if progress:
                progress(row)
    return rows


def report(rows: Sequence[dict[str, Any]], policies: Sequence[str]) -> tuple[str, dict]:
    """The per-scenario and wins tables per half, and the JSON figures (test half at the
    top level, the tuning half and all scenarios nested)."""
    parts, figures = [], {}
    for half in ("tuning", "test"):
        picked = [r for r in rows if r["half"] == half]
        if not picked:
            continue
        figures[half] = aggregate(picked)
        parts += [f"## {half} half ({figures[half]['scenarios']} scenarios)", "",
                  scenario_table(picked, policies), "", wins_table(wins_and_losses(picked)), ""]
    summary = {"benchmark": "scheduler_suite", **figures.get("test", {}),
               "test_scenarios": figures.get("test", {}).get("scenarios", 0),
               "tuning": figures.get("tuning", {}), "all": aggregate(rows)}
    summary["scenarios"] = summary["all"].get("scenarios", 0)
    return "\n".join(parts), summary
