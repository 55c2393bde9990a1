"""Tuning helper for the scenario suite: balanced-drf with config overrides against cached
baseline rows (fifo, drf, slurm-fairshare do not change while balanced-drf is tuned).

    python benchmarks/scheduler_tune.py --half tuning [--jobs 2] [--only TEXT]
        [--set balanced_gpu_fit_weight=16 --set aging_scope=all] [--cache /tmp/sched]

Prints one line per scenario where balanced-drf misses a target, then the aggregate JSON.
Baselines are cached per half in ``--cache`` (delete the files to rerun them).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from dataclasses import replace

from loophub.scheduler.model import SchedulerConfig
from loophub.scheduler.suite import aggregate, by_scenario, run_suite, verdicts

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
    agg = aggregate(rows)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in agg.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
