"""Spawn latency and fair order under a burst, on a real hub.

1. Latency: time from the spawn request to the server being ready, FairSpawner (local
   backend) against JupyterHub's SimpleLocalProcessSpawner in the same run, with free
   resources; median of --repeat spawns each. FairSpawner's server asks for the whole
   machine (2 CPU), as the unconfined LocalProcessSpawner gets it: a smaller CPU quota
   would measure the quota, not the spawner.
2. Burst: 50 spawn requests from 10 users (5 named servers each) on a pool that fits 10
   servers; each server is stopped --hold seconds after it is ready, so the queue drains.
   Every start is checked against the fair order: it must go to a user with the lowest
   weighted dominant share among those waiting (all requests are the same size, so every
   waiting request fits when one does). Also counted: allocations lost (never started,
   or still held after everything stopped) or duplicated (two live allocations for one
   server), and the CPU seconds of the hub and the loophub API during the burst.

Prints a table, then one JSON line (--json: only the JSON line).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

import psutil
import requests
from _hub import RunningHub, start_hub

GIB = 2**30


def wait_ready(hub: RunningHub, token: str, user: str, name: str = "", timeout=120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        servers = hub.hub_api(token, "GET", f"users/{user}").json().get("servers", {})
        if servers.get(name, {}).get("ready"):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{user}/{name} not ready in {timeout} s")


def server_path(user: str, name: str) -> str:
    return f"users/{user}/servers/{name}" if name else f"users/{user}/server"


def spawn_latency(hub: RunningHub, repeat: int, options: dict) -> list[float]:
    admin = hub.token("root", admin=True)
    times = []
    for i in range(repeat):
        user = f"lat{i}"
        hub.token(user)
        started = time.perf_counter()
        resp = hub.hub_api(admin, "POST", server_path(user, ""), json=options)
        assert resp.status_code in (201, 202), resp.text
        wait_ready(hub, admin, user)
        times.append(time.perf_counter() - started)
        hub.hub_api(admin, "DELETE", server_path(user, ""))
        time.sleep(1)
    return times


def platform_cpu_seconds(home: Path) -> float:
    """CPU time of the hub and the loophub API service (not of the servers)."""
    total = 0.0
    for proc in psutil.process_iter(["cmdline", "environ"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if ("jupyterhub -f" in cmd or "loophub.extensions.api" in cmd) and \
                (proc.info["environ"] or {}).get("LOOPHUB_HOME") == str(home.resolve()):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


def run_burst(hub: RunningHub, users: int, per_user: int, hold: float) -> dict:
    admin = hub.token("root", admin=True)
    names = [(f"u{u:02d}", f"s{s}") for s in range(per_user) for u in range(users)]
    for user in {u for u, _ in names}:
        hub.token(user)
    options = {"profile": "custom", "cpu": 1, "mem": "1G"}
    cpu_before = platform_cpu_seconds(hub.home)
    started = time.perf_counter()
    stop_flag, posted = threading.Event(), threading.Event()

    def stop_when_ready() -> None:
        """Hold each server --hold seconds once ready, then stop it."""
        ready_at: dict[tuple[str, str], float] = {}
        stopped: set[tuple[str, str]] = set()
        while not stop_flag.is_set() and len(stopped) < len(names):
            active = set()
            for model in hub.hub_api(admin, "GET", "users?state=active").json():
                for name, srv in model.get("servers", {}).items():
                    key = (model["name"], name)
                    active.add(key)
                    if srv.get("ready") and key not in ready_at:
                        ready_at[key] = time.monotonic()
            if posted.is_set() and not active:
                break  # nothing running or pending: failed spawns are counted as lost
            for key, t in ready_at.items():
                if key not in stopped and time.monotonic() - t >= hold:
                    hub.hub_api(admin, "DELETE", server_path(*key))
                    stopped.add(key)
            time.sleep(0.2)

    stopper = threading.Thread(target=stop_when_ready, daemon=True)
    stopper.start()
    with ThreadPoolExecutor(len(names)) as pool:
        codes = list(pool.map(lambda k: hub.hub_api(admin, "POST", server_path(*k),
                                                    json=options).status_code, names))
    posted.set()
    stopper.join(timeout=60 * 30)
    stop_flag.set()
    total = time.perf_counter() - started
    cpu = platform_cpu_seconds(hub.home) - cpu_before
    time.sleep(3)
    records = requests.get(f"{hub.api}/scheduler/queue", timeout=30,
                           headers={"Authorization": f"token {admin}"}).json()["requests"]
    history = scheduler_history(hub)
    return {"codes": codes, "total_s": total, "hub_cpu_s": cpu, "still_active": records,
            "history": history, "expected": len(names)}


def scheduler_history(hub: RunningHub) -> list[dict]:
    """Every server request of the burst, read from the loophub database."""
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{hub.home / 'loophub.sqlite'}")
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT id, key, tenant, state, submitted_at, started_at, ended_at, meta "
            "FROM sched_requests WHERE kind = 'server'")).mappings().all()
    return [{**r, "meta": json.loads(r["meta"])} for r in rows]


def fair_order_violations(history: list[dict], capacity_cpu: float) -> tuple[int, list]:
    """Starts that went to a user whose dominant (CPU) share was above the lowest waiting."""
    runs = [(start, end, r["tenant"], r["key"]) for r in history
            for start, end in r["meta"].get("runs", [])]
    starts = sorted((s, tenant, key) for s, _, tenant, key in runs)
    violations = []
    for t, tenant, key in starts:
        held: dict[str, float] = {}
        for s, e, who, _ in runs:
            if s < t and (e is None or e > t):
                held[who] = held.get(who, 0) + 1 / capacity_cpu
        waiting = {r["tenant"] for r in history if r["submitted_at"] <= t and r["key"] != key
                   and not any(s < t for s, _ in r["meta"].get("runs", []))
                   and r["state"] != "cancelled"} | {tenant}
        lowest = min(held.get(w, 0.0) for w in waiting)
        if held.get(tenant, 0.0) > lowest + 1e-9:
            violations.append((t, tenant, held.get(tenant, 0.0), lowest))
    return len(violations), violations


def lost_and_duplicated(history: list[dict], still_active: list, expected: int) -> tuple:
    started = [r for r in history if r["meta"].get("runs")]
    lost = (expected - len(started)) + len(still_active)
    by_key: dict[str, list] = {}
    for r in history:
        for s, e in r["meta"].get("runs", []):
            by_key.setdefault(r["key"], []).append((s, e or float("inf")))
    duplicated = sum(1 for spans in by_key.values() for a, b in pairwise(sorted(spans))
                     if b[0] < a[1])
    return lost, duplicated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--per-user", type=int, default=5)
    parser.add_argument("--hold", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="loophub-bench-spawn-"))

    local_cfg = tmp / "localprocess.py"
    local_cfg.write_text(
        'c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"\n'
        f'c.SimpleLocalProcessSpawner.home_dir_template = "{tmp}/lp-users/{{username}}"\n')
    hub = start_hub(tmp / "lp", env={"LOOPHUB_HUB_CONFIG": str(local_cfg)})
    try:
        lp = spawn_latency(hub, args.repeat, {})
    finally:
        hub.stop()
    hub = start_hub(tmp / "fair")
    try:
        # the whole machine, as LocalProcessSpawner gets: compare the machinery, not a quota
        fair = spawn_latency(hub, args.repeat, {"profile": "custom", "cpu": 2, "mem": "4G"})
    finally:
        hub.stop()

    fits = args.users  # the pool fits one server per user at once
    pool = json.dumps([{"name": "burst", "cpu": fits, "mem": fits * GIB, "gpu": 0}])
    cfg = tmp / "burst.py"
    cfg.write_text(f"c.FairSpawner.custom_limits = {{'cpu': {fits}, 'mem': '{fits}G'}}\n"
                   "c.FairSpawner.long_poll = 5\nc.JupyterHub.concurrent_spawn_limit = 200\n")
    hub = start_hub(tmp / "burst", env={"LOOPHUB_POOL": pool, "LOOPHUB_HUB_CONFIG": str(cfg)})
    try:
        burst = run_burst(hub, args.users, args.per_user, args.hold)
    finally:
        hub.stop()
    violations, examples = fair_order_violations(burst["history"], float(fits))
    lost, duplicated = lost_and_duplicated(burst["history"], burst["still_active"],
                                           burst["expected"])
    result = {
        "spawn_s_fair": round(statistics.median(fair), 3),
        "spawn_s_localprocess": round(statistics.median(lp), 3),
        "ratio": round(statistics.median(fair) / statistics.median(lp), 3),
        "burst_requests": burst["expected"],
        "burst_accepted": sum(c in (201, 202) for c in burst["codes"]),
        "burst_total_s": round(burst["total_s"], 1),
        "burst_hub_cpu_s": round(burst["hub_cpu_s"], 1),
        "burst_fair_order_violations": violations,
        "lost_allocations": lost,
        "duplicated_allocations": duplicated,
    }
    if not args.json:
        print(f"{'metric':<30} value")
        for key, value in result.items():
            print(f"{key:<30} {value}")
        print(f"{'spawn times fair':<30} {[round(t, 2) for t in fair]}")
        print(f"{'spawn times localprocess':<30} {[round(t, 2) for t in lp]}")
        for example in examples[:5]:
            print("violation:", example)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
