"""Scheduler throughput: decisions per second with 1,000 nodes and 10,000 queued requests, and
the wall time of a full W1 replay.

    python benchmarks/scheduler_scale.py [--json] [--policies drf,balanced-drf] [--skip-w1]

Steady state: the pool is full and 10,000 requests wait; each round finishes running requests,
submits as many new ones (the queue stays at 10,000) and runs one pass. decisions_per_s counts
start/preempt decisions over the time spent in finish + submit + tick, i.e. end to end in the core.
The rate is per CPU second of this process (time.process_time), so other work on a shared machine
does not distort it; the wall-clock rate is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from loophub.scheduler import GIB, Node, Request, Resources, SchedulerConfig, SchedulerState

SIZES = [  # (gpu, cpu, mem GiB) per unit, count: typical notebook / kernel / job / service mix
    ((0, 2, 8), 1), ((0, 8, 32), 1), ((1, 8, 48), 1), ((1, 12, 64), 1), ((2, 16, 96), 1),
    ((4, 32, 160), 1), ((8, 64, 320), 1), ((8, 64, 320), 2), ((0, 32, 64), 1),
]


def make_nodes(n: int) -> list[Node]:
    nodes = []
    for i in range(n):
        if i % 5 == 4:
            nodes.append(Node(f"c{i:05d}", Resources(cpu=64.0, mem=256 * GIB)))
        else:
            nodes.append(Node(f"g{i:05d}", Resources(cpu=96.0, mem=384 * GIB, gpu=8), "G2"))
    return nodes


def make_request(i: int, rng: np.random.Generator, tenants: int) -> Request:
    (gpu, cpu, mem), count = SIZES[int(rng.integers(len(SIZES)))]
    tenant = f"t{int(rng.zipf(1.3)) % tenants:03d}"
    return Request(f"r{i}", tenant, Resources(cpu=float(cpu), mem=mem * GIB, gpu=gpu), count,
                   kind="job", preemptible=bool(i % 2), runtime=float(rng.integers(60, 7200)))


def measure(policy: str, nodes: int, queued: int, rounds: int, per_round: int,
            seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    st = SchedulerState(policy, SchedulerConfig(aging_bound=1e9), make_nodes(nodes),
                        auto_schedule=False)
    n = 0
    for _ in range(queued):
        st.submit(make_request(n, rng, 100), 0.0)
        n += 1
    tic = time.perf_counter()
    fill = len(st.tick(0.0))
    fill_s = time.perf_counter() - tic
    while len(st.queued) < queued:  # top the queue back up to its target size
        st.submit(make_request(n, rng, 100), 0.0)
        n += 1
    decisions, busy, wall = 0, 0.0, 0.0
    now = 0.0
    for _ in range(rounds):
        now += 1.0
        running = sorted(st.running)
        victims = rng.choice(len(running), size=min(per_round, len(running)), replace=False)
        tic, wall_tic = time.process_time(), time.perf_counter()
        for k in sorted(victims.tolist()):
            st.finish(running[k], now)
        while len(st.queued) < queued:
            st.submit(make_request(n, rng, 100), now)
            n += 1
        decisions += len(st.tick(now))
        busy += time.process_time() - tic
        wall += time.perf_counter() - wall_tic
    return {"benchmark": "scheduler_scale", "policy": policy, "nodes": nodes,
            "queued": len(st.queued), "running": len(st.running),
            "decisions": decisions, "decisions_per_s": decisions / busy if busy else 0.0,
            "decisions_per_wall_s": decisions / wall if wall else 0.0,
            "initial_fill_decisions": fill, "initial_fill_per_s": fill / fill_s}


def w1_replay(policy: str) -> dict:
    from loophub.scheduler.sim import simulate
    from loophub.scheduler.workloads import TracesMissing, build

    try:
        built = build("W1", 1.0, 0)
    except TracesMissing as exc:
        return {"benchmark": "w1_replay", "policy": policy, "skipped": str(exc)}
    tic, cpu = time.perf_counter(), time.process_time()
    res = simulate(built.jobs, built.nodes, policy, SchedulerConfig())
    return {"benchmark": "w1_replay", "policy": policy, "w1_replay_s": time.perf_counter() - tic,
            "w1_replay_cpu_s": time.process_time() - cpu, "jobs": res.metrics["jobs"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--policies", default="fifo,drf,balanced-drf,slurm-fairshare,tetris")
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--queued", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--skip-w1", action="store_true")
    ap.add_argument("--w1-policy", default="balanced-drf")
    args = ap.parse_args(argv)
    rows = []
    for policy in args.policies.split(","):
        row = measure(policy, args.nodes, args.queued, args.rounds, args.per_round)
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{policy:>16}: {row['decisions_per_s']:8.0f} decisions/CPU-s steady state "
                  f"({row['decisions_per_wall_s']:.0f}/s wall) "
                  f"({row['decisions']} decisions; {row['nodes']} nodes, {row['queued']} queued, "
                  f"{row['running']} running); initial fill {row['initial_fill_per_s']:.0f}/s",
                  flush=True)
    if not args.skip_w1:
        row = w1_replay(args.w1_policy)
        if args.json:
            print(json.dumps(row))
        else:
            print(f"W1 full replay ({args.w1_policy}): "
                  f"{row.get('w1_replay_s', float('nan')):.1f} s wall, "
                  f"{row.get('w1_replay_cpu_s', float('nan')):.1f} s CPU, {row.get('jobs')} jobs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
