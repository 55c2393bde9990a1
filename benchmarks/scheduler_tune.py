"""Tuning helper for the scenario suite: balanced-drf with config overrides against cached
baseline rows (fifo, drf, slurm-fairshare do not change while balanced-drf is tuned).

    python benchmarks/scheduler_tune.py --half tuning [--jobs 2] [--only TEXT]
        [--set balanced_gpu_fit_weight=16 --set aging_scope=all] [--cache /tmp/sched]
        [--save rows.json] [--replicas 3 [--jitter 0.0025]]

Prints one line per scenario where balanced-drf misses a target, then the aggregate JSON.
Baselines are cached per half in ``--cache`` (delete the files to rerun them).

``--replicas N`` also runs N - 1 replicas with the packing weight scaled by 1 -/+ k *
jitter (a change too small to matter in itself: it only moves near-ties between nodes)
and prints each replica's aggregate line and the verdicts that the replicas disagree on.
On the suite's preemption-heavy scenarios such a change moves Jain by a few hundredths
and flips utilisation verdicts (docs/scheduler.md, "What was changed", item 12): compare
settings by what holds across replicas, not by one run.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from dataclasses import replace

from loophub.scheduler.model import SchedulerConfig
from loophub.scheduler.suite import (
    aggregate,
    by_scenario,
    run_suite,
    unstable_verdicts,
    verdicts,
)

BASELINES = ("fifo", "drf", "slurm-fairshare")


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--half", default="tuning", choices=("tuning", "test", "all"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--cache", default="/tmp/sched")
    ap.add_argument("--quiet", action="store_true", help="only the aggregate line")
    ap.add_argument("--save", default="", metavar="PATH",
                    help="also write balanced-drf's rows (every metric per scenario) as JSON")
    ap.add_argument("--replicas", type=int, default=1,
                    help="runs with the packing weight jittered (see the module's docstring)")
    ap.add_argument("--jitter", type=float, default=0.0025)
    args = ap.parse_args(argv)
    os.makedirs(args.cache, exist_ok=True)
    path = os.path.join(args.cache, f"baselines-{args.half}.json")
    if os.path.exists(path):
        with open(path) as fh:
            base = json.load(fh)
    else:
        base = run_suite(BASELINES, jobs=args.jobs, half=args.half)
        with open(path, "w") as fh:
            json.dump(base, fh)
    base = [r for r in base if args.only in r["scenario"]]
    config = replace(SchedulerConfig(), **dict(
        (k, _value(v)) for k, v in (s.split("=", 1) for s in args.set)))
    ours = run_suite(("balanced-drf",), jobs=args.jobs, half=args.half, config=config,
                     only=args.only)
    rows = base + ours
    if args.save:
        with open(args.save, "w") as fh:
            json.dump(ours, fh)
    if not args.quiet:
        for name, per in by_scenario(rows).items():
            v = verdicts(per)
            bad = [k for k, ok in v.items() if not ok]
            if bad:
                b, d, s, f = (per[p] for p in ("balanced-drf", "drf", "slurm-fairshare", "fifo"))
                print(f"{name:45s} {','.join(bad):40s} jain {b['jain']:.3f} d{d['jain']:.3f} "
                      f"s{s['jain']:.3f} util {b['util_bottleneck']:.3f} d"
                      f"{d['util_bottleneck']:.3f} frag {b['fragmentation']:.3f} d"
                      f"{d['fragmentation']:.3f} st {b['starved_under_share']} p99 "
                      f"{b['wait_p99']:.0f} f{f['wait_p99']:.0f} pre {b['preemptions']}")
    print(json.dumps(_rounded(aggregate(rows))))
    if args.replicas > 1:
        _replicas(args, base, config, rows)
    return 0


def _rounded(figures: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}


def jitter_factors(replicas: int, jitter: float) -> list[float]:
    """1 - jitter, 1 + jitter, 1 - 2 jitter, ...: the factors of the replicas after the first."""
    return [1 + (1 if k % 2 else -1) * (k // 2 + 1) * jitter for k in range(replicas - 1)]


def _replicas(args: argparse.Namespace, base: list, config: SchedulerConfig,
              first: list) -> None:
    runs = [first]
    for factor in jitter_factors(args.replicas, args.jitter):
        jittered = replace(config, balanced_packing_weight=config.balanced_packing_weight
                           * factor)
        ours = run_suite(("balanced-drf",), jobs=args.jobs, half=args.half, config=jittered,
                         only=args.only)
        runs.append(base + ours)
        print(json.dumps({"packing_factor": factor, **_rounded(aggregate(runs[-1]))}))
    print(json.dumps({"replicas": args.replicas, "jitter": args.jitter,
                      "unstable": unstable_verdicts(runs)}))


if __name__ == "__main__":
    sys.exit(main())
