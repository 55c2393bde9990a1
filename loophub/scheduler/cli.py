"""`loophub sim`: build canonical workloads from the shared traces and replay them.

    loophub sim build W1 --out w1.csv --cluster-out c1.csv [--load 1.0] [--seed 0]
    loophub sim --trace w1.csv --cluster c1.csv --policy fifo,drf,balanced-drf [--json]
    loophub sim --trace W2 --policy drf,balanced-drf --load 1.2 --seed 1 --plot out.png
    loophub sim suite [--quick] [--jobs 2] [--half test] [--json] [--markdown out.md]

``--trace W1``/``W2`` builds the workload in memory (with --load and --seed) when no file of
that name exists. ``register(subparsers)`` adds the command to the main ``loophub`` CLI.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from loophub.scheduler.model import SchedulerConfig
from loophub.scheduler.policies import POLICIES
from loophub.scheduler.sim import (
    WorkloadError,
    compress_to_load,
    format_table,
    load_cluster,
    load_workload,
    offered_load,
    plot,
    simulate,
    write_cluster,
    write_workload,
)
from loophub.scheduler.workloads import TracesMissing, build

DEFAULT_POLICIES = "fifo,drf,balanced-drf,slurm-fairshare,tetris"


def register(subparsers: Any) -> None:
    """Add ``sim`` (replay) and ``sim build`` to an argparse subparsers object."""
    sim = subparsers.add_parser(
        "sim", help="replay a workload on a cluster under scheduling policies",
        description="Discrete-event replay of a canonical workload CSV on a cluster CSV. "
                    "Workload columns: job_id, tenant, submit_s, duration_s, gpu, cpu, mem_gib "
                    "[, kind, preemptible, gpu_type]; cluster columns: node, gpu, cpu, mem_gib "
                    "[, gpu_type]. Metrics are defined in docs/scheduler.md.")
    sim.add_argument("--trace", help="workload CSV, or W1 / W2 to build it from the traces")
    sim.add_argument("--cluster", help="cluster CSV (default: the built workload's cluster)")
    sim.add_argument("--policy", default=DEFAULT_POLICIES,
                     help=f"comma-separated policies among {', '.join(sorted(POLICIES))}")
    sim.add_argument("--load", type=float, help="rescale arrivals to this offered load")
    sim.add_argument("--seed", type=int, default=0, help="seed for building W1/W2 (default 0)")
    sim.add_argument("--json", action="store_true", help="one JSON object per policy per line")
    sim.add_argument("--plot", help="write utilisation / dominant-share plot to this PNG")
    _add_policy_options(sim)
    _add_build_options(sim)
    sim.set_defaults(func=run_sim)
    actions = sim.add_subparsers(dest="sim_action", metavar="{build,suite}")
    b = actions.add_parser("build", help="build W1 or W2 as canonical CSV files",
                           description="Build a canonical workload (and its cluster) from "
                                       "$LOOPHUB_SHARED/traces; every assumption is printed.")
    b.add_argument("workload", choices=["W1", "W2", "w1", "w2"])
    b.add_argument("--out", required=True, help="workload CSV to write")
    b.add_argument("--cluster-out", help="cluster CSV to write")
    b.add_argument("--load", type=float, default=1.0, help="target offered load (default 1.0)")
    b.add_argument("--seed", type=int, default=0)
    _add_build_options(b)
    b.set_defaults(func=run_build)
    suite = actions.add_parser(
        "suite", help="every policy on the scenario suite (docs/scheduler.md)",
        description="Runs every policy on the scenario suite built from $LOOPHUB_SHARED/traces "
                    "(arrival sources x cluster shapes x tenant mixes x loads 0.8/1.0/1.3); "
                    "prints per-scenario tables and wins/losses per half (tuning, test), then "
                    "one JSON line of aggregate figures.")
    add_suite_options(suite)
    suite.set_defaults(func=run_suite_cmd)


def add_suite_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="smaller scenarios (about a third of the jobs): a smoke run")
    p.add_argument("--jobs", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument("--half", choices=["all", "tuning", "test"], default="all")
    p.add_argument("--policies", default=DEFAULT_POLICIES)
    p.add_argument("--only", default="", metavar="TEXT",
                   help="only the scenarios whose name contains TEXT (e.g. philly/pai)")
    p.add_argument("--json", action="store_true",
                   help="also one JSON line per policy per scenario (before the summary)")
    p.add_argument("--markdown", help="also write the tables and the summary to this file")


def run_suite_cmd(args: argparse.Namespace) -> int:
    from loophub.scheduler.suite import report, run_suite

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if "balanced-drf" not in policies or not {"drf", "fifo", "slurm-fairshare"} <= set(policies):
        print("loophub sim suite: --policies must include balanced-drf, drf, fifo and "
              "slurm-fairshare (the figures compare them)", file=sys.stderr)
        return 2

    def progress(row: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(_jsonable(row)), flush=True)
        else:
            print(f"# {row['scenario']} {row['policy']}: jain {row['jain']:.3f}",
                  file=sys.stderr, flush=True)

    try:
        rows = run_suite(policies, args.quick, args.jobs, half=args.half, progress=progress,
                         only=args.only)
    except TracesMissing as exc:
        print(f"loophub sim suite: skipped: {exc}", file=sys.stderr)
        return 0
    text, summary = report(rows, policies)
    print(text)
    print(json.dumps(_jsonable(summary)))
    if args.markdown:
        Path(args.markdown).write_text(text + "\n\n" + json.dumps(_jsonable(summary)) + "\n")
    return 0


def _add_build_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, help="cluster size (default 64 for W1, 128 for W2)")
    p.add_argument("--shape", choices=["homogeneous", "openb"],
                   help="cluster shape (default homogeneous for W1, openb for W2)")
    p.add_argument("--tenants", type=int, default=10, help="W2: number of synthetic tenants")
    p.add_argument("--zipf", type=float, default=1.1, help="W2: Zipf exponent over tenants")
    p.add_argument("--full-trace", action="store_true",
                   help="W1: keep the jobs arriving after the first per-VC-capped VC stops "
                        "(a 2x overload then a drain; see docs/scheduler.md)")


def _add_policy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--aging-bound", type=float, default=SchedulerConfig.aging_bound,
                   help="balanced-drf: seconds before a waiting request gets a reservation")
    p.add_argument("--aging-reserve-at", type=float, default=None,
                   help="balanced-drf: seconds of waiting after which a request is served "
                        "first and reserved for, without preempting (default: half the bound)")
    p.add_argument("--preemption", action="store_true",
                   help="preempt preemptible work for tenants below their fair share")
    p.add_argument("--no-aging-preemption", action="store_true",
                   help="balanced-drf: aged requests only reserve, never preempt")
    p.add_argument("--no-runtimes", action="store_true",
                   help="hide job durations from the scheduler (no backfill, no estimates)")
    p.add_argument("--weights", default="", help="tenant weights: name=w,name=w")
    p.add_argument("--aging-quantum", type=float, default=SchedulerConfig.aging_quantum,
                   help="balanced-drf: seconds aged-started work is safe from preemption "
                        "(default %(default)s; inf: forever)")
    p.add_argument("--aging-victims", choices=["more-served", "any"], default="more-served",
                   help="balanced-drf: aged requests preempt only more-served tenants' work "
                        "(default), or anyone's (holds the bound, costs fairness)")
    p.add_argument("--aging-urgent-at", type=float, default=None,
                   help="balanced-drf: seconds after which an under-share tenant's queue head "
                        "is served first, tenants in turn, time-slicing anyone's work that "
                        "ran a quantum (default: off)")
    p.add_argument("--aging-scope", choices=["tiered", "under-share", "all"],
                   default=SchedulerConfig.aging_scope,
                   help="balanced-drf: whose aged requests jump DRF order: tenants below their "
                        "weighted fair share first, then the others' past the bound with "
                        "reservations only (tiered, default); only those below their share "
                        "(under-share); all alike (the rule before issue #20)")
    p.add_argument("--aging-over-share", choices=["swap", "reserve"],
                   default=SchedulerConfig.aging_over_share,
                   help="balanced-drf, tiered scope: an over-share tenant's request past the "
                        "bound may swap out its own tenant's work (default) or only reserve")
    p.add_argument("--gpu-fit-weight", type=float,
                   default=SchedulerConfig.balanced_gpu_fit_weight,
                   help="balanced-drf: weight of best fit on GPUs in placement (0: off)")
    p.add_argument("--stranding-pressure", type=float,
                   default=SchedulerConfig.balanced_stranding_pressure,
                   help="balanced-drf: a resource's stranding counts (its pressure / the "
                        "bottleneck's) ** this in placement (0: every resource in full)")
    p.add_argument("--max-reservations", type=int, default=SchedulerConfig.max_reservations,
                   help="balanced-drf: aged requests served (reserved for) per pass")
    p.add_argument("--restart-cost", type=float, default=0.0,
                   help="seconds of work a preempted job loses (default 0: exact checkpoint)")
    p.add_argument("--validate", action="store_true", help="check invariants after each event")


def _config(args: argparse.Namespace) -> SchedulerConfig:
    weights = {}
    for part in filter(None, (x.strip() for x in args.weights.split(","))):
        name, _, value = part.partition("=")
        weights[name] = float(value)
    return SchedulerConfig(weights=weights, aging_bound=args.aging_bound,
                           aging_quantum=args.aging_quantum,
                           aging_reserve_at=args.aging_reserve_at,
                           aging_urgent_at=args.aging_urgent_at,
                           aging_victims=args.aging_victims,
                           aging_scope=args.aging_scope,
                           aging_over_share=args.aging_over_share,
                           balanced_gpu_fit_weight=args.gpu_fit_weight,
                           balanced_stranding_pressure=args.stranding_pressure,
                           max_reservations=args.max_reservations,
                           preemption=args.preemption,
                           preempt_on_aging=not args.no_aging_preemption)


def _workload(args: argparse.Namespace) -> tuple[list, list, list[str]]:
    trace = args.trace or ""
    if trace.upper() in ("W1", "W2") and not Path(trace).exists():
        built = build(trace, args.load if args.load is not None else 1.0, args.seed, args.nodes,
                      args.shape, args.full_trace, **_w2_options(trace, args))
        nodes = load_cluster(args.cluster) if args.cluster else built.nodes
        return built.jobs, nodes, built.assumptions
    if not args.cluster:
        raise WorkloadError("--cluster is required with a workload file")
    jobs, nodes = load_workload(trace), load_cluster(args.cluster)
    notes = [f"workload {trace}: {len(jobs)} jobs; offered load as given "
             f"{offered_load(jobs, nodes):.3f}"]
    if args.load is not None:
        jobs = compress_to_load(jobs, nodes, args.load)
        notes.append(f"arrivals rescaled to offered load {args.load}")
    return jobs, nodes, notes


def run_sim(args: argparse.Namespace) -> int:
    if not args.trace:
        print("loophub sim: give --trace (a workload CSV, or W1/W2), or use `sim build`",
              file=sys.stderr)
        return 2
    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        print(f"loophub sim: unknown policy {unknown}; choose from {sorted(POLICIES)}",
              file=sys.stderr)
        return 2
    try:
        jobs, nodes, notes = _workload(args)
    except (WorkloadError, TracesMissing, ValueError) as exc:
        print(f"loophub sim: {exc}", file=sys.stderr)
        return 2
    note_out = sys.stderr if args.json else sys.stdout
    for note in notes:
        print(f"# {note}", file=note_out)
    results, rows = [], []
    for name in policies:
        res = simulate(jobs, nodes, name, _config(args), runtime_known=not args.no_runtimes,
                       validate=args.validate, restart_cost=args.restart_cost)
        row = {**res.metrics, "load": args.load, "seed": args.seed,
               "aging_bound": args.aging_bound, "aging_quantum": args.aging_quantum}
        rows.append(row)
        results.append((name, res))
        if args.json:
            print(json.dumps(_jsonable(row)), flush=True)
    if not args.json:
        print(format_table(rows))
    if args.plot:
        plot(results, args.plot)
        print(f"# plot written to {args.plot}", file=note_out)
    return 0


def run_build(args: argparse.Namespace) -> int:
    try:
        built = build(args.workload, args.load, args.seed, args.nodes, args.shape,
                      args.full_trace, **_w2_options(args.workload, args))
    except (TracesMissing, ValueError) as exc:
        print(f"loophub sim build: {exc}", file=sys.stderr)
        return 2
    for note in built.assumptions:
        print(f"# {note}")
    write_workload(built.jobs, args.out)
    print(f"wrote {len(built.jobs)} jobs to {args.out}")
    if args.cluster_out:
        write_cluster(built.nodes, args.cluster_out)
        print(f"wrote {len(built.nodes)} nodes to {args.cluster_out}")
    return 0


def _w2_options(workload: str, args: argparse.Namespace) -> dict[str, float]:
    return {"tenants": args.tenants, "zipf": args.zipf} if workload.upper() == "W2" else {}


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in row.items()}
