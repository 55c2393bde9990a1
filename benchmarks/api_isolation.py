"""API isolation: /health and a small read stay fast while heavy routes run (issue #21 item 2).

A real platform; a dataset of --records object-detection records (two annotators, two
boxes each), committed as v1, half of them changed and --records/5 added as v2. A probe
in its own process (reniced to -5 where allowed, so it measures the API and not its own
turn on the CPU) sends GET /health and GET datasets/NAME (a small read: one dataset's
view, read on the event loop) at --rate requests per second each, open loop (a slow
answer does not delay the next request), through the hub's proxy as clients do. Then,
one at a time, each heavy route runs its heaviest request back to back for at least
--window seconds, --reps times:

  predictions    POST labeling/NAME/predictions, LoophubAPI.max_prediction_items (1000)
                 predictions of 3 boxes each (one transaction, off the event loop)
  records        GET datasets/NAME/records?limit=1000&total=true (the largest page)
  progress       GET labeling/NAME/progress
  agreement      GET labeling/NAME/agreement (every record has two annotators)
  diff           GET datasets/NAME/diff?base=1&target=2
  export         GET datasets/NAME/export (JSONL, streamed) of v2
  export_job     POST datasets/NAME/exports (COCO zip, a job whose work runs in a child
                 process) and its polling to the end
  import         POST datasets/uploads + POST datasets/NEW/imports of --import-records
                 records (a job) into a new dataset, polled to the end
  commit         POST datasets/NEW/commits, the first commit of that import (a job)

Each probe answer is assigned to the route whose window it was sent in; per route the
table has p50, p99 and the worst latency of /health and of the read, and how many
answers that is. `idle` is the probe with nothing else running.

    python benchmarks/api_isolation.py [--records 5000] [--import-records 20000]
                                       [--reps 3] [--window 3] [--rate 20] [--code REF]
                                       [--py-spy EXE] [--quick] [--json]

Prints a table, then one JSON line (--json: only the JSON line). The figure to reach
is p99 < 100 ms under every route (--target). --quick: a small dataset, one rep, short
windows (a smoke run). Exits 1 when a request fails; a missed figure is reported, not
an error.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import requests
from _hub import RunningHub, api_pid, checkout, code_version, start_platform

from loophub.client import Client

REPO = Path(__file__).resolve().parent.parent
DATASET = "iso"
CLASSES = ["person", "car", "bicycle", "dog", "cat", "bus", "truck", "bird"]
SCHEMA = {"task": "object_detection",
          "classes": [{"id": i, "name": c} for i, c in enumerate(CLASSES)]}
ROUTES = ["predictions", "records", "progress", "agreement", "diff", "export",
          "export_job", "import", "commit"]


# --- the probe (its own process) ------------------------------------------------------


def probe_main(urls: dict[str, str], token: str, rate: float, out: str, stop, ready) -> None:
    """Send GET to each of URLS at RATE per second until STOP; write (kind, sent at,
    seconds, status) rows as JSON to OUT."""
    import asyncio

    import aiohttp

    try:
        os.setpriority(os.PRIO_PROCESS, 0, -5)
    except OSError:
        pass  # not allowed: measured at the default priority
    rows: list[tuple[str, float, float, int]] = []

    async def one(session, kind: str, url: str, headers: dict) -> None:
        sent = time.monotonic()
        try:
            async with session.get(url, headers=headers) as resp:
                await resp.read()
                status = resp.status
        except Exception:  # a timeout or a refused connection is a failed probe
            status = 0
        rows.append((kind, sent, time.monotonic() - sent, status))

    async def stream(session, kind: str, url: str, offset: float) -> None:
        headers = {"Authorization": f"token {token}"} if kind != "health" else {}
        interval = 1 / rate
        await asyncio.sleep(offset)
        tick, tasks = time.monotonic(), set()
        while not stop.is_set():
            task = asyncio.ensure_future(one(session, kind, url, headers))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            tick += interval
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
        await asyncio.gather(*tasks, return_exceptions=True)

    async def main() -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout,
                                         connector=aiohttp.TCPConnector(limit=0)) as session:
            for kind, url in urls.items():  # warm connections and the token cache
                await one(session, kind, url,
                          {"Authorization": f"token {token}"} if kind != "health" else {})
            rows.clear()
            ready.set()
            step = 1 / rate / max(1, len(urls))
            await asyncio.gather(*(stream(session, kind, url, i * step)
                                   for i, (kind, url) in enumerate(urls.items())))

    asyncio.run(main())
    Path(out).write_text(json.dumps(rows))


# --- data -----------------------------------------------------------------------------


def boxes(rng: random.Random, n: int) -> list[dict]:
    return [{"type": "bbox", "label": rng.choice(CLASSES),
             "bbox": [rng.randint(0, 600), rng.randint(0, 400), rng.randint(8, 200),
                      rng.randint(8, 200)]} for _ in range(n)]


def record(index: int, generation: int, prefix: str = "r") -> dict:
    rng = random.Random(index * 7919 + generation)
    anns = []
    for user in ("ann1", "ann2"):
        anns += [{**b, "source": {"kind": "user", "name": user}} for b in boxes(rng, 2)]
    return {"id": f"{prefix}{index:07d}", "split": "train" if index % 10 else "val",
            "metadata": {"camera": f"cam{index % 7}", "generation": generation},
            "annotations": anns}


def write_bundle(path: Path, records) -> Path:
    """A loophub-format zip: records.jsonl and label_schema.json."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("label_schema.json", json.dumps(SCHEMA))
        z.writestr("records.jsonl", "".join(json.dumps(r, separators=(",", ":")) + "\n"
                                            for r in records))
    return path


class Heavy:
    """The heavy requests, over plain HTTP (bodies built before the window opens)."""

    def __init__(self, hub: RunningHub, token: str, tmp: Path, args) -> None:
        self.api, self.tmp, self.args = hub.api, tmp, args
        self.client = Client(url=hub.api, token=token, timeout=600)
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {token}"
        self.serial = 0
        self.failures: list[str] = []
        self.imported: list[str] = []

    def call(self, method: str, path: str, **kw) -> requests.Response:
        resp = self.http.request(method, f"{self.api}/{path}", timeout=600, **kw)
        if resp.status_code >= 400:
            self.failures.append(f"{method} {path}: {resp.status_code} {resp.text[:200]}")
            raise RuntimeError(self.failures[-1])
        return resp

    def wait_job(self, job: dict) -> dict:
        while job["state"] in ("queued", "running"):
            time.sleep(0.2)
            job = self.call("GET", f"jobs/{job['id']}").json()
        if job["state"] != "succeeded":
            self.failures.append(f"job {job['kind']} {job['state']}: {job.get('message')}")
            raise RuntimeError(self.failures[-1])
        return job

    def setup(self) -> None:
        n = self.args.records
        self.client.datasets.create(DATASET, label_schema=SCHEMA)
        v1 = write_bundle(self.tmp / "v1.zip", (record(i, 0) for i in range(n)))
        self.client.datasets.import_(DATASET, v1, "loophub", progress=False)
        self.client.datasets.commit(DATASET, "v1")
        changed = (record(i, 1) for i in range(0, n + n // 5) if i % 2 == 0 or i >= n)
        v2 = write_bundle(self.tmp / "v2.zip", changed)
        self.client.datasets.import_(DATASET, v2, "loophub", progress=False)
        self.client.datasets.commit(DATASET, "v2")
        ids = [f"r{i:07d}" for i in range(n)]
        rng = random.Random(5)
        picked = rng.sample(ids, min(self.args.max_predictions, len(ids)))
        self.predictions_body = json.dumps({"predictions": [
            {"record_id": rid, "model": "bench", "version": "1", "annotations": boxes(rng, 3)}
            for rid in picked]}).encode()
        self.big = write_bundle(self.tmp / "import.zip", (
            record(i, 2, prefix="i") for i in range(self.args.import_records)))

    # one call each; run() repeats them for the window
    def predictions(self) -> None:
        self.call("POST", f"labeling/{DATASET}/predictions", data=self.predictions_body,
                  headers={"Content-Type": "application/json"})

    def records(self) -> None:
        self.call("GET", f"datasets/{DATASET}/records", params={"limit": 1000, "total": "true"})

    def progress(self) -> None:
        self.call("GET", f"labeling/{DATASET}/progress")

    def agreement(self) -> None:
        self.call("GET", f"labeling/{DATASET}/agreement")

    def diff(self) -> None:
        self.call("GET", f"datasets/{DATASET}/diff", params={"base": "1", "target": "2"})

    def export(self) -> None:
        with self.http.get(f"{self.api}/datasets/{DATASET}/export", timeout=600, stream=True,
                           params={"format": "loophub", "version": "2"}) as resp:
            if resp.status_code >= 400:
                self.failures.append(f"export: {resp.status_code} {resp.text[:200]}")
                raise RuntimeError(self.failures[-1])
            for _ in resp.iter_content(1 << 20):
                pass

    def export_job(self) -> None:
        job = self.call("POST", f"datasets/{DATASET}/exports",
                        json={"format": "coco", "version": "2"}).json()
        self.wait_job(job)

    def import_(self) -> None:
        self.serial += 1
        name = f"imp{self.serial}"
        self.call("POST", "datasets", json={"name": name, "label_schema": SCHEMA})
        with open(self.big, "rb") as body:
            digest = self.call("POST", "datasets/uploads", data=body).json()["digest"]
        job = self.call("POST", f"datasets/{name}/imports",
                        json={"format": "loophub", "upload": digest}).json()
        self.wait_job(job)
        self.imported.append(name)

    def commit(self) -> None:
        if not self.imported:  # the commit needs an import of its own, made before
            raise RuntimeError("commit: no imported dataset left to commit")
        self.call("POST", f"datasets/{self.imported.pop(0)}/commits",
                  json={"message": "first"})


def run_window(heavy: Heavy, route: str, window: float) -> tuple[float, float, int]:
    """Run ROUTE's request back to back for WINDOW seconds (at least once). A commit
    commits the datasets the import route made (first commits of --import-records
    records each), one after the other; with none left it imports one first, outside
    the window."""
    if route == "commit" and not heavy.imported:
        heavy.import_()
    fn = getattr(heavy, "import_" if route == "import" else route)
    start, calls = time.monotonic(), 0
    while True:
        fn()
        calls += 1
        if route == "commit":
            if not heavy.imported:
                break
        elif time.monotonic() - start >= window:
            break
    return start, time.monotonic(), calls


class Spy:
    """py-spy (--py-spy EXE) on the API process during each route's first window: where
    its event loop (MainThread) is, sampled whether on the CPU or not (--idle), so time
    the loop waits for the GIL or a lock counts too. ``free`` is the share of samples in
    the selector (the loop waiting for I/O: free to answer); the rest is listed by the
    innermost frame of this project and by the innermost frame of all."""

    def __init__(self, exe: str, pid: int, folder: Path, rate: int = 100) -> None:
        self.exe, self.pid, self.folder, self.rate = exe, pid, folder, rate
        self.proc: subprocess.Popen | None = None
        self.reports: dict[str, dict] = {}

    def start(self, route: str) -> None:
        self.route, self.out = route, self.folder / f"spy-{route}.txt"
        self.proc = subprocess.Popen(
            [self.exe, "record", "--pid", str(self.pid), "--threads", "--idle",
             "--nonblocking", "--rate", str(self.rate), "--format", "raw",
             "--output", str(self.out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # attached before the window opens

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        self.proc = None
        self.reports[self.route] = self.summary(self.out)

    @staticmethod
    def summary(path: Path) -> dict:
        if not path.exists():
            return {"error": "py-spy wrote nothing"}
        main, free, where, leaf = 0, 0, {}, {}
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames, n = stack.split(";"), int(count)
            if "MainThread" not in frames[0]:
                continue
            main += n
            if "select (selectors.py" in frames[-1]:
                free += n
                continue
            own = [f for f in frames[1:] if any(f"({room}/" in f for room in (
                "extensions", "loophub", "spawner", "serving", "widgets"))]
            key = own[-1] if own else frames[-1]
            where[key] = where.get(key, 0) + n
            leaf[frames[-1]] = leaf.get(frames[-1], 0) + n
        main = max(main, 1)

        def top(counts: dict, k: int) -> list:
            return [(f, round(v / main, 3)) for f, v in sorted(counts.items(),
                                                                key=lambda kv: -kv[1])[:k]]
        return {"samples": main, "free": round(free / main, 3), "busy_in": top(where, 6),
                "busy_leaf": top(leaf, 4)}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--import-records", type=int, default=20000)
    parser.add_argument("--max-predictions", type=int, default=1000,
                        help="predictions per request (LoophubAPI.max_prediction_items)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of probe alone")
    parser.add_argument("--target", type=float, default=100.0, help="p99 figure, ms")
    parser.add_argument("--routes", default=",".join(ROUTES))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--keep", action="store_true",
                        help="leave the platform running after (print its URL and pid)")
    parser.add_argument("--py-spy", metavar="EXE",
                        help="profile the API during each route's first window with this "
                             "py-spy (`pip install py-spy`); prints what its event loop ran")
    parser.add_argument("--code", metavar="REF", help="run the platform from this commit (a "
                        "git worktree) instead of this working tree")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.records, args.import_records, args.max_predictions = 300, 1000, 200
        args.reps, args.window, args.idle = 1, 0.5, 1.0
    routes = [r for r in args.routes.split(",") if r]
    unknown = set(routes) - set(ROUTES)
    if unknown:
        parser.error(f"unknown routes {sorted(unknown)}; known: {', '.join(ROUTES)}")

    tmp = Path(tempfile.mkdtemp(prefix="loophub-bench-isolation-"))
    hub = start_platform(tmp / "home", code_env=checkout(args.code) if args.code else None)
    ctx = mp.get_context("spawn")
    stop, ready = ctx.Event(), ctx.Event()
    probe = spy = None
    windows: dict[str, list[tuple[float, float]]] = {"idle": []}
    calls: dict[str, int] = {}
    failed = False
    try:
        token = hub.token("root", admin=True)
        heavy = Heavy(hub, token, tmp, args)
        t0 = time.monotonic()
        heavy.setup()
        if not args.json:
            print(f"# setup: {args.records} records, v1 and v2, in "
                  f"{time.monotonic() - t0:.1f} s; API pid {api_pid(hub)}", file=sys.stderr)
        urls = {"health": f"{hub.api}/health", "read": f"{hub.api}/datasets/{DATASET}"}
        out = tmp / "probe.json"
        probe = ctx.Process(target=probe_main, args=(urls, token, args.rate, str(out), stop,
                                                     ready), daemon=True)
        probe.start()
        if not ready.wait(60):
            raise RuntimeError("the probe did not start")
        spy = Spy(args.py_spy, api_pid(hub), tmp) if args.py_spy else None
        start = time.monotonic()
        time.sleep(args.idle)
        windows["idle"].append((start, time.monotonic()))
        for rep in range(args.reps):
            for route in routes:
                if spy is not None and rep == 0:
                    spy.start(route)
                try:
                    s, e, n = run_window(heavy, route, args.window)
                except RuntimeError as exc:
                    print(f"# {route}: {exc}", file=sys.stderr)
                    failed = True
                    continue
                finally:
                    if spy is not None:
                        spy.stop()
                windows.setdefault(route, []).append((s, e))
                calls[route] = calls.get(route, 0) + n
                if not args.json:
                    print(f"# rep {rep + 1} {route}: {n} call(s) in {e - s:.2f} s",
                          file=sys.stderr)
                time.sleep(0.5)  # answers sent in a window are in before the next one
        time.sleep(1)
        stop.set()
        probe.join(60)
        rows = json.loads(out.read_text())
        if args.keep:
            print(f"# kept: {hub.url} (API pid {api_pid(hub)}, home {hub.home})",
                  file=sys.stderr)
    finally:
        stop.set()
        if probe is not None and probe.is_alive():
            probe.terminate()
        if not args.keep:
            hub.stop()

    table: dict[str, dict] = {}
    for route, spans in windows.items():
        row = {"calls": calls.get(route), "seconds": round(sum(e - s for s, e in spans), 2)}
        for kind in ("health", "read"):
            got = [lat * 1e3 for k, sent, lat, status in rows
                   if k == kind and any(s <= sent <= e for s, e in spans)]
            bad = [1 for k, sent, lat, status in rows
                   if k == kind and status != 200 and any(s <= sent <= e for s, e in spans)]
            row[kind] = {"n": len(got), "p50": pct(got, 0.5), "p99": pct(got, 0.99),
                         "max": max(got) if got else None, "failed": len(bad)}
        table[route] = row
    loaded = {r: v for r, v in table.items() if r != "idle"}

    def worst(kind: str) -> tuple[str | None, float | None]:
        scored = [(v[kind]["p99"], r) for r, v in loaded.items() if v[kind]["p99"] is not None]
        if not scored:
            return None, None
        p99, route = max(scored)
        return route, round(p99, 1)

    worst_health, worst_read = worst("health"), worst("read")
    r1 = lambda x: None if x is None else round(x, 1)  # noqa: E731
    result = {
        "health_p99_ms_under_load": worst_health[1], "health_worst_route": worst_health[0],
        "read_p99_ms_under_load": worst_read[1], "read_worst_route": worst_read[0],
        "routes": {r: r1(v["health"]["p99"]) for r, v in loaded.items()},
        "read_routes": {r: r1(v["read"]["p99"]) for r, v in loaded.items()},
        "health_p50_ms": {r: r1(v["health"]["p50"]) for r, v in table.items()},
        "read_p50_ms": {r: r1(v["read"]["p50"]) for r, v in table.items()},
        "idle_health_p99_ms": r1(table["idle"]["health"]["p99"]),
        "idle_read_p99_ms": r1(table["idle"]["read"]["p99"]),
        "target_p99_ms": args.target,
        "missed": sorted({r for r, v in loaded.items() for k in ("health", "read")
                          if (v[k]["p99"] or 0) >= args.target}),
        "probe_failures": sum(v[k]["failed"] for v in table.values() for k in ("health", "read")),
        "records": args.records, "import_records": args.import_records,
        "predictions_per_request": args.max_predictions, "reps": args.reps,
        "window_s": args.window, "rate_per_s": args.rate, "code": code_version(args.code),
    }
    if not args.json:
        print(f"probe latency (ms) while each heavy route runs; {args.rate:g} req/s each of "
              f"/health and GET datasets/{DATASET}; {args.reps} reps of >= {args.window:g} s")
        print(f"{'route':<12} {'calls':>5} {'s':>6} | {'health p50':>10} {'p99':>7} {'max':>7} "
              f"{'n':>4} | {'read p50':>8} {'p99':>7} {'max':>7} {'n':>4}")
        for route, v in table.items():
            h, r = v["health"], v["read"]
            f = lambda x: "-" if x is None else f"{x:.1f}"  # noqa: E731
            print(f"{route:<12} {v['calls'] or '-':>5} {v['seconds']:>6} | {f(h['p50']):>10} "
                  f"{f(h['p99']):>7} {f(h['max']):>7} {h['n']:>4} | {f(r['p50']):>8} "
                  f"{f(r['p99']):>7} {f(r['max']):>7} {r['n']:>4}")
        for failure in heavy.failures[:5]:
            print("failure:", failure)
        if spy is not None:
            print("\nthe event loop (MainThread) during each route's first window, py-spy "
                  "samples on or off the CPU: free = waiting for I/O in the selector")
            for route, rep in spy.reports.items():
                print(f"{route}: free {rep.get('free')} of {rep.get('samples')} samples")
                for frame, share in rep.get("busy_in", []):
                    print(f"    {share:>6.3f}  {frame}")
                for frame, share in rep.get("busy_leaf", []):
                    print(f"    leaf {share:>6.3f}  {frame}")
    print(json.dumps(result))
    return 1 if failed or heavy.failures or result["probe_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
