"""Scheduling quality: every policy on W1 and W2 at offered loads 0.8, 1.0, 1.2, three seeds.

    python benchmarks/scheduler_quality.py [--json] [--jobs 2] [--loads 0.8,1.0,1.2]
        [--seeds 0,1,2] [--workloads W1,W2] [--policies ...] [--markdown results.md]
        [--restart-cost S] [--aging-quantum S] [--full-trace]

Prints a table of mean (and spread = sample standard deviation over seeds) per workload, load
and policy, then checks the figures the scheduler issue asks for (balanced-drf against drf and
fifo at load 1.0). With --json: one JSON line per run, then one per aggregate and per check.
The seed changes the sampled cpu/memory (W1), tenants and cluster sample (W2).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from loophub.scheduler.model import SchedulerConfig
from loophub.scheduler.sim import simulate
from loophub.scheduler.suite import bottleneck as bottleneck_of
from loophub.scheduler.workloads import TracesMissing, build

POLICIES = "fifo,drf,balanced-drf,balanced-drf@strict-aging,slurm-fairshare,tetris"
# policy@preset: a policy with other settings, shown as its own row
PRESETS: dict[str, dict[str, Any]] = {
    # the aging bound before fairness: aged requests may preempt anyone's preemptible work
    # after a 30 min protection quantum, and up to 64 of them are served per pass
    "strict-aging": {"aging_victims": "any", "max_reservations": 64, "aging_quantum": 1800.0},
}
METRICS = ("jct_mean", "jct_p99", "wait_mean", "wait_p99", "wait_max", "util_gpu", "util_cpu",
           "util_mem", "stranded", "jain", "ftf_violations", "makespan", "preemptions",
           "wait_stretch_max", "decisions_per_s")


def bottleneck(workload: str, load: float, seed: int, full_trace: bool) -> str:
    """The resource with the highest offered load on the workload's cluster."""
    return bottleneck_of(build(workload, load, seed, full_trace=full_trace))


def run_one(task: tuple) -> dict[str, Any]:
    workload, load, seed, policy, aging_bound, quantum, restart_cost, full_trace = task
    built = build(workload, load, seed, full_trace=full_trace)
    tic = time.perf_counter()
    name, _, preset = policy.partition("@")
    config = SchedulerConfig(**{"aging_bound": aging_bound, "aging_quantum": quantum,
                                **PRESETS.get(preset, {})})
    res = simulate(built.jobs, built.nodes, name, config, restart_cost=restart_cost)
    return {"benchmark": "scheduler_quality", "workload": workload, "load": load, "seed": seed,
            **res.metrics, "policy": policy, "aging_bound": aging_bound,
            "aging_quantum": quantum, "full_trace": full_trace,
            "wall_s": time.perf_counter() - tic}


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["workload"], row["load"], row["policy"]), []).append(row)
    out = []
    for (workload, load, policy), runs in groups.items():
        agg: dict[str, Any] = {"benchmark": "scheduler_quality_mean", "workload": workload,
                               "load": load, "policy": policy, "seeds": len(runs)}
        for m in METRICS:
            values = [r[m] for r in runs if r[m] is not None and math.isfinite(r[m])]
            agg[m] = statistics.fmean(values) if values else float("nan")
            agg[m + "_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(agg)
    return out


def checks(aggs: list[dict[str, Any]], aging_bound: float, full_trace: bool
           ) -> list[dict[str, Any]]:
    """The issue's figures for balanced-drf at load 1.0, per workload."""
    by = {(a["workload"], a["load"], a["policy"]): a for a in aggs}
    out = []
    variants = sorted({(w, p) for w, load, p in by
                       if load == 1.0 and p.partition("@")[0] == "balanced-drf"})
    for workload, variant in variants:
        bal, drf, fifo = (by.get((workload, 1.0, p)) for p in (variant, "drf", "fifo"))
        res = bottleneck(workload, 1.0, 0, full_trace)
        items = [("wait_max within the aging bound", bal["wait_max"], aging_bound,
                  bal["wait_max"] <= aging_bound)]
        if drf:
            items += [
                ("jain >= 0.95", bal["jain"], 0.95, bal["jain"] >= 0.95),
                ("jain within 0.01 of drf", bal["jain"], drf["jain"],
                 bal["jain"] >= drf["jain"] - 0.01),
                (f"util_{res} (bottleneck) >= drf + 0.03", bal[f"util_{res}"],
                 drf[f"util_{res}"] + 0.03, bal[f"util_{res}"] >= drf[f"util_{res}"] + 0.03),
                ("stranded <= drf / 2", bal["stranded"], drf["stranded"] / 2,
                 bal["stranded"] <= drf["stranded"] / 2),
            ]
        if fifo:
            items.append(("wait_p99 <= fifo / 2", bal["wait_p99"], fifo["wait_p99"] / 2,
                          bal["wait_p99"] <= fifo["wait_p99"] / 2))
        for name, measured, target, ok in items:
            out.append({"benchmark": "scheduler_quality_check", "workload": workload,
                        "policy": variant, "check": name, "measured": measured,
                        "target": target, "met": ok})
    return out


def table(aggs: list[dict[str, Any]]) -> str:
    cols = [("jct_mean", "{:.0f}"), ("wait_mean", "{:.0f}"), ("wait_p99", "{:.0f}"),
            ("wait_max", "{:.0f}"), ("util_gpu", "{:.3f}"), ("util_cpu", "{:.3f}"),
            ("util_mem", "{:.3f}"), ("stranded", "{:.3f}"), ("jain", "{:.3f}"),
            ("ftf_violations", "{:.3f}"), ("makespan", "{:.0f}"), ("preemptions", "{:.0f}"),
            ("wait_stretch_max", "{:.0f}")]
    head = "| workload | load | policy | " + " | ".join(c for c, _ in cols) + " |"
    lines = [head, "|" + "---|" * (3 + len(cols))]
    for a in sorted(aggs, key=lambda a: (a["workload"], a["load"], a["policy"])):
        cells = [f"{fmt.format(a[c])} ± {fmt.format(a[c + '_sd'])}" for c, fmt in cols]
        lines.append(f"| {a['workload']} | {a['load']} | {a['policy']} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--jobs", type=int, default=1, help="parallel processes")
    ap.add_argument("--loads", default="0.8,1.0,1.2")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--workloads", default="W1,W2")
    ap.add_argument("--policies", default=POLICIES)
    ap.add_argument("--aging-bound", type=float, default=SchedulerConfig.aging_bound)
    ap.add_argument("--aging-quantum", type=float, default=SchedulerConfig.aging_quantum,
                    help="balanced-drf protection quantum, seconds (default %(default)s)")
    ap.add_argument("--restart-cost", type=float, default=0.0,
                    help="seconds of work a preempted job loses (default 0)")
    ap.add_argument("--full-trace", action="store_true",
                    help="W1: the whole per-VC-capped trace (overload, then a drain)")
    ap.add_argument("--markdown", help="also write the table and checks to this file")
    ap.add_argument("--resume", help="JSON lines of earlier runs: reuse them, run the rest")
    args = ap.parse_args(argv)
    tasks = [(w, float(load), int(seed), p, args.aging_bound, args.aging_quantum,
              args.restart_cost, args.full_trace)
             for w in args.workloads.split(",") for load in args.loads.split(",")
             for seed in args.seeds.split(",") for p in args.policies.split(",")]
    tasks.sort(key=lambda t: (t[1] != 1.0, t[1], t[2], t[0]))  # the figures' load first
    done: list[dict[str, Any]] = []
    if args.resume:
        with open(args.resume) as fh:
            done = [json.loads(line) for line in fh if '"scheduler_quality"' in line]
        seen = {(r["workload"], r["load"], r["seed"], r["policy"], r.get("aging_quantum"),
                 r.get("restart_cost", 0.0), r.get("full_trace", False)) for r in done}
        tasks = [t for t in tasks if (*t[:4], *t[5:]) not in seen]
    try:
        build(args.workloads.split(",")[0], 1.0, 0)
    except TracesMissing as exc:
        print(f"skipped: {exc}", file=sys.stderr)
        return 0
    rows = [{k: (float("nan") if v is None else v) for k, v in r.items()} for r in done]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for row in pool.map(run_one, tasks):
            rows.append(row)
            if args.json:
                print(json.dumps(_clean(row)), flush=True)
            else:
                print(f"# {row['workload']} load {row['load']} seed {row['seed']} "
                      f"{row['policy']}: {row['wall_s']:.1f} s", file=sys.stderr, flush=True)
    aggs = aggregate(rows)
    found = checks(aggs, args.aging_bound, args.full_trace)
    if args.json:
        for line in [*aggs, *found]:
            print(json.dumps(_clean(line)))
    text = table(aggs) + "\n\n" + "\n".join(
        f"- {c['workload']} {c['policy']}: {c['check']}: measured {c['measured']:.4g}, target "
        f"{c['target']:.4g} -> {'met' if c['met'] else 'NOT met'}" for c in found)
    if not args.json:
        print(text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(text + "\n")
    return 0


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in row.items()}


if __name__ == "__main__":
    sys.exit(main())
