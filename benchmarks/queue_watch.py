"""Queue watching: the API's CPU per scheduler change with N waiters (issue #13 item 9).

A real platform with a small declared pool (LOOPHUB_POOL: one node of 5 CPUs) runs 5
one-CPU jobs, one per user u0..u4, and queues N more from those users (N/5 each). N
waiters then watch the N queued requests, in one of three ways:

  longpoll_new  N concurrent GET scheduler/requests/ID?wait=W&known=FP (what FairSpawner
                and the kernel provisioner did before the SDK's QueueWatcher), this code
  longpoll_old  the same against the code before views were cached and watched (commit
                2bac5f9 by default, checked out as a git worktree and run with this
                interpreter and its packages; its body says tenant/key, not owner/job)
  watch         the SDK's QueueWatcher: one POST scheduler/watch for all N ids
  (none         no waiters: what a change costs by itself, for each code)

A change is a submit, or the release, of a one-CPU job of a user with no share (x0,
x1, ...): DRF puts it first in the queue, so every waiter's position, and fingerprint,
changes and every waiter is told, in every mode. For each change the benchmark reads
the API process's CPU time (/proc/PID/task/*/schedstat, all threads), makes the change,
waits until every waiter has its new view and the API is quiet again, and reads the CPU
time again, less the API's idle rate over the window (the median of 100 ms samples with
the waiters parked; on the old platform read 16 s or more after its last change, as the
old code reads each changed request once more 15 s after the change, its
unclaimed-server check). The scheduler's 15 s tick (a pass and a snapshot of the whole
queue) lands in some windows: the median over changes leaves those out, the max shows
them. Modes run in rounds, old and new platforms side by side, so drift on a shared
machine hits both alike.

    python benchmarks/queue_watch.py [--waiters 500] [--changes 10] [--rounds 2]
                                     [--old-commit 2bac5f9] [--no-old] [--code REF]
                                     [--quick] [--json]

Prints a table, then one JSON line (--json: only the JSON line). --quick: 20 waiters,
4 changes, one round, no old platform (a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from _hub import (
    Platform,
    api_pid,
    checkout,
    code_version,
    cpu_seconds,
    old_checkout,
    start_platform,
)

from loophub.client.scheduler import QueueWatcher

GIB = 2**30
USERS = 5
WAIT = 55.0  # long-poll seconds: longer than any measured window, so none times out
SETTLE = 16.0  # s after the old platform's last change before its idle rate is read


def quantiles(values: list[float]) -> dict:
    values = sorted(values)
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "min": values[0], "max": values[-1],
            "n": len(values)}


class Api:
    """Admin HTTP calls to one platform's API, and the body its code understands."""

    def __init__(self, hub: Platform, token: str, old: bool) -> None:
        from tornado.httpclient import AsyncHTTPClient

        self.hub, self.token, self.old = hub, token, old
        self.url = hub.api
        self.pid = api_pid(hub)
        self.http = AsyncHTTPClient(force_instance=True, max_clients=16)
        self.headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}
        self.serial = 0
        self.last_change = time.monotonic()

    def body(self, owner: str, job: str) -> dict:
        if self.old:  # before RequestSpec: the tenant and a free-form key
            return {"kind": "job", "tenant": owner, "key": f"job:{owner}/{job}",
                    "demand": {"cpu": 1}}
        return {"kind": "job", "owner": owner, "job": job, "demand": {"cpu": 1}}

    async def call(self, method: str, path: str, body=None, timeout: float = 60) -> dict:
        from tornado.httpclient import HTTPRequest

        req = HTTPRequest(f"{self.url}/{path}", method=method, headers=self.headers,
                          body=None if body is None else json.dumps(body),
                          request_timeout=timeout, allow_nonstandard_methods=True)
        resp = await self.http.fetch(req, raise_error=False)
        if resp.code >= 400 or resp.code == 599:
            raise RuntimeError(f"{method} {path}: {resp.code} {(resp.body or b'')[:300]!r}")
        return json.loads(resp.body)

    async def submit(self, owner: str, job: str) -> dict:
        return await self.call("POST", "scheduler/requests", self.body(owner, job))

    async def release(self, request_id: str) -> dict:
        return await self.call("DELETE", f"scheduler/requests/{request_id}")

    async def check_code(self) -> None:
        """The old code has no scheduler/watch: proof the platform runs the code named."""
        try:
            await self.call("POST", "scheduler/watch", {"requests": {}, "wait": 0})
            has_watch = True
        except RuntimeError as exc:
            has_watch = False
            if " 404 " not in str(exc):
                raise
        if has_watch == self.old:
            raise RuntimeError(f"{self.url} does not run the {'old' if self.old else 'new'} "
                               "code (scheduler/watch " + ("answers)" if has_watch else
                                                           "is missing)"))

    async def setup(self, waiters: int) -> list[str]:
        """5 running jobs (one per user), then WAITERS queued ones; their ids."""
        await self.check_code()
        for u in range(USERS):
            view = await self.submit(f"u{u}", "run")
            assert view["state"] == "running", view
        ids = []
        for i in range(waiters):
            view = await self.submit(f"u{i % USERS}", f"bench-{i}")
            assert view["state"] == "queued", view
            ids.append(view["id"])
        self.last_change = time.monotonic()
        return ids

    async def settle(self) -> None:
        """The old code reads each changed request again 15 s later (500 submits keep it
        busy for a while): SETTLE seconds after its last change; then quiet."""
        if self.old:
            await asyncio.sleep(max(0.0, self.last_change + SETTLE - time.monotonic()))
        await quiet(self, 0.0, limit=10)

    async def change(self, pending: list[str]) -> None:
        """One change: submit a no-share user's job (first in line) or release it."""
        self.last_change = time.monotonic()
        if pending:
            await self.release(pending.pop())
            return
        self.serial += 1
        view = await self.submit(f"x{self.serial}", f"change-{self.serial}")
        if view.get("position") != 1:
            raise RuntimeError(f"a change's request is not first in line: {view}")
        pending.append(view["id"])

    def cpu(self) -> float:
        return cpu_seconds(self.pid)


class Waiters:
    """N waiters on the queued requests; counts the views they are told."""

    def __init__(self, api: Api, ids: list[str], mode: str) -> None:
        from tornado.httpclient import AsyncHTTPClient

        self.api, self.ids, self.mode = api, ids, mode
        self.told = 0       # views received (each waiter: one per change)
        self.unchanged = 0  # of them, views whose fingerprint had not changed
        self.errors: list[str] = []
        self.stopping = False
        self.http = AsyncHTTPClient(force_instance=True, max_clients=len(ids) + 50)
        self.watcher: QueueWatcher | None = None
        self.tasks: list[asyncio.Task] = []
        self.in_flight = 0

    async def start(self) -> None:
        views = [await self.api.call("GET", f"scheduler/requests/{rid}") for rid in self.ids]
        if self.mode == "watch":
            self.watcher = QueueWatcher(self.api.url, self.api.token, long_poll=WAIT)
            run = self._watch_waiter
        else:
            run = self._longpoll_waiter
        self.tasks = [asyncio.ensure_future(run(v)) for v in views]
        await asyncio.sleep(0)

    async def _longpoll_waiter(self, view: dict) -> None:
        from tornado.httpclient import HTTPRequest

        known = view["fingerprint"]
        url = f"{self.api.url}/scheduler/requests/{view['id']}?wait={WAIT:g}&known="
        while not self.stopping:
            self.in_flight += 1
            try:
                resp = await self.http.fetch(HTTPRequest(
                    url + quote(known, safe=""), headers=self.api.headers,
                    request_timeout=WAIT + 60), raise_error=False)
            finally:
                self.in_flight -= 1
            if resp.code != 200:
                self.errors.append(f"{resp.code} {(resp.body or b'')[:200]!r}")
                await asyncio.sleep(1)
                continue
            new = json.loads(resp.body)["fingerprint"]
            self.told += 1
            self.unchanged += new == known
            known = new

    async def _watch_waiter(self, view: dict) -> None:
        assert self.watcher is not None
        while not self.stopping:
            new = await self.watcher.next_view(view, WAIT + 30)
            if new is view:
                continue  # no news within the wait
            self.told += 1
            self.unchanged += new.get("fingerprint") == view.get("fingerprint")
            view = new

    async def parked(self, timeout: float = 120) -> None:
        """Until every waiter's long-poll is in flight (or the watcher's one poll)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.mode == "watch":
                assert self.watcher is not None
                if self.watcher._task is not None and len(self.watcher._waiters) == len(
                        self.ids):
                    return
            elif self.in_flight == len(self.ids):
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"waiters not parked in {timeout} s")

    async def stop(self, api: Api, pending: list[str]) -> None:
        """Stop: one more change wakes every long-poll, which then ends."""
        self.stopping = True
        if self.mode == "watch":
            for task in self.tasks:
                task.cancel()
            assert self.watcher is not None
            for rid in self.ids:
                self.watcher.forget(rid)
        await api.change(pending)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.mode == "watch":
                if self.watcher is None or self.watcher._task is None or \
                        self.watcher._task.done():
                    break
            elif all(t.done() for t in self.tasks):
                break
            await asyncio.sleep(0.05)
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.http.close()
        if self.watcher is not None:
            self.watcher.http.close()


async def quiet(api: Api, idle_rate: float, *, sample: float = 0.1, calm: int = 3,
                limit: float = 20.0) -> float:
    """Wait until the API has used no more than its idle rate (+1 ms) for CALM samples."""
    deadline = time.monotonic() + limit
    last, streak = api.cpu(), 0
    while time.monotonic() < deadline and streak < calm:
        await asyncio.sleep(sample)
        now = api.cpu()
        streak = streak + 1 if now - last <= idle_rate * sample + 0.001 else 0
        last = now
    return last


async def idle_rate(api: Api, seconds: float = 3.0, sample: float = 0.1) -> float:
    """The API's CPU seconds per second with nothing happening: the median over short
    samples, so a periodic spike (the scheduler's 15 s tick, which exports the whole
    state) does not count as idle."""
    rates = []
    last, t_last = api.cpu(), time.monotonic()
    for _ in range(max(1, int(seconds / sample))):
        await asyncio.sleep(sample)
        now, t_now = api.cpu(), time.monotonic()
        rates.append((now - last) / (t_now - t_last))
        last, t_last = now, t_now
    return statistics.median(rates)


async def measure(api: Api, ids: list[str], mode: str, changes: int, pending: list[str],
                  warmup: int = 1) -> dict:
    """CPU seconds of the API for each of CHANGES changes with the waiters of MODE."""
    waiters = None if mode == "none" else Waiters(api, ids, mode)
    if waiters is not None:
        await waiters.start()
        await waiters.parked()
    await api.settle()
    rate = await idle_rate(api)
    samples, walls, told = [], [], []
    for i in range(warmup + changes):
        before_told = waiters.told if waiters else 0
        c0, t0 = api.cpu(), time.monotonic()
        await api.change(pending)
        if waiters is not None:
            deadline = time.monotonic() + 300
            while waiters.told - before_told < len(ids):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{mode}: {waiters.told - before_told} of {len(ids)} "
                                       f"waiters told in 300 s ({waiters.errors[:3]})")
                await asyncio.sleep(0.01)
            await waiters.parked()
        wall = time.monotonic() - t0
        c1 = await quiet(api, rate)
        if i >= warmup:
            samples.append(c1 - c0 - rate * (time.monotonic() - t0))
            walls.append(wall)
            told.append((waiters.told - before_told) if waiters else 0)
    if waiters is not None:
        await waiters.stop(api, pending)
        errors, unchanged = waiters.errors, waiters.unchanged
    else:
        errors, unchanged = [], 0
    return {"cpu_s": samples, "wall_s": walls, "told": told, "idle_cpu_per_s": rate,
            "errors": errors, "unchanged_views": unchanged}


async def run(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="loophub-bench-queue-"))
    pool = json.dumps([{"name": "bench", "cpu": USERS, "mem": 64 * GIB, "gpu": 0}])
    env = {"LOOPHUB_POOL": pool}
    platforms: dict[str, Platform] = {}
    apis: dict[str, Api] = {}
    try:
        new_code = checkout(args.code) if args.code else {}
        platforms["new"] = start_platform(tmp / "new", env=env, code_env=new_code)
        if not args.no_old:
            code = old_checkout(args.old_commit, Path(args.old_tree))
            platforms["old"] = start_platform(tmp / "old", env=env, code_env=code)
        ids: dict[str, list[str]] = {}
        pending: dict[str, list[str]] = {}
        for name, hub in platforms.items():
            apis[name] = Api(hub, hub.token("root", admin=True), old=name == "old")
            t0 = time.monotonic()
            ids[name] = await apis[name].setup(args.waiters)
            pending[name] = []
            if not args.json:
                print(f"# {name}: {args.waiters} queued behind {USERS} running "
                      f"in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        modes = [("new", "none"), ("new", "longpoll"), ("new", "watch")]
        if "old" in platforms:
            modes[1:1] = [("old", "none"), ("old", "longpoll")]
        results: dict[str, dict] = {}
        for r in range(args.rounds):
            for name, mode in modes:
                got = await measure(apis[name], ids[name], mode, args.changes, pending[name])
                key = f"{mode}_{name}"
                acc = results.setdefault(key, {"cpu_s": [], "wall_s": [], "told": [],
                                               "idle_cpu_per_s": [], "errors": [],
                                               "unchanged_views": 0})
                for field in ("cpu_s", "wall_s", "told", "errors"):
                    acc[field] += got[field]
                acc["idle_cpu_per_s"].append(got["idle_cpu_per_s"])
                acc["unchanged_views"] += got["unchanged_views"]
                if not args.json:
                    q = quantiles(got["cpu_s"])
                    print(f"# round {r + 1} {key}: {q['median'] * 1e3:.1f} ms/change "
                          f"({q['min'] * 1e3:.1f}-{q['max'] * 1e3:.1f}), told "
                          f"{statistics.median(got['told']) if got['told'] else 0:g}",
                          file=sys.stderr)
        return results
    finally:
        for api in apis.values():
            api.http.close()
        for hub in platforms.values():
            hub.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, default=500)
    parser.add_argument("--changes", type=int, default=10, help="measured changes per mode "
                        "and round (after one warm-up change)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--old-commit", default="2bac5f9")
    parser.add_argument("--old-tree", default=str(Path(tempfile.gettempdir()) / "loophub-old"),
                        help="where the old commit is checked out (a git worktree, kept)")
    parser.add_argument("--no-old", action="store_true", help="measure this code only")
    parser.add_argument("--code", metavar="REF", help="run the new platform from this commit "
                        "(a worktree beside the old one) instead of this working tree")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 20 waiters, 4 changes, 1 round, no old code")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.waiters, args.changes, args.rounds, args.no_old = 20, 4, 1, True
    started = time.monotonic()
    results = asyncio.run(run(args))

    def ms(key: str) -> float | None:
        got = results.get(key)
        return None if not got else round(statistics.median(got["cpu_s"]) * 1e3, 2)

    out = {
        "waiters": args.waiters,
        "api_cpu_ms_per_change_longpoll_old": ms("longpoll_old"),
        "api_cpu_ms_per_change_longpoll_new": ms("longpoll_new"),
        "api_cpu_ms_per_change_watch": ms("watch_new"),
        "api_cpu_ms_per_change_alone_old": ms("none_old"),
        "api_cpu_ms_per_change_alone_new": ms("none_new"),
        "changes_per_mode": args.changes * args.rounds,
        "rounds": args.rounds,
        "spread_ms": {k: [round(min(v["cpu_s"]) * 1e3, 2), round(max(v["cpu_s"]) * 1e3, 2)]
                      for k, v in results.items()},
        "wall_ms_per_change": {k: round(statistics.median(v["wall_s"]) * 1e3, 1)
                               for k, v in results.items()},
        "told_per_change": {k: statistics.median(v["told"]) for k, v in results.items()},
        "idle_api_cpu_ms_per_s": {k: round(statistics.median(v["idle_cpu_per_s"]) * 1e3, 2)
                                  for k, v in results.items()},
        "errors": sum(len(v["errors"]) for v in results.values()),
        "code": code_version(args.code),
        "old_commit": None if args.no_old else code_version(args.old_commit),
        "total_s": round(time.monotonic() - started, 1),
    }
    if out["api_cpu_ms_per_change_longpoll_new"] and out["api_cpu_ms_per_change_watch"]:
        out["longpoll_new_over_watch"] = round(
            out["api_cpu_ms_per_change_longpoll_new"] / out["api_cpu_ms_per_change_watch"], 1)
    if out["api_cpu_ms_per_change_longpoll_old"] and out["api_cpu_ms_per_change_watch"]:
        out["longpoll_old_over_watch"] = round(
            out["api_cpu_ms_per_change_longpoll_old"] / out["api_cpu_ms_per_change_watch"], 1)
    if not args.json:
        print(f"API CPU per scheduler change, {args.waiters} waiters "
              f"({args.changes * args.rounds} changes per mode, {args.rounds} rounds)")
        print(f"{'mode':<14} {'code':<5} {'median ms':>10} {'min':>9} {'max':>9} "
              f"{'wall ms':>9} {'told':>6}")
        for key, v in results.items():
            mode, code = key.rsplit("_", 1)
            q = quantiles(v["cpu_s"])
            print(f"{mode:<14} {code:<5} {q['median'] * 1e3:>10.1f} {q['min'] * 1e3:>9.1f} "
                  f"{q['max'] * 1e3:>9.1f} {statistics.median(v['wall_s']) * 1e3:>9.0f} "
                  f"{statistics.median(v['told']):>6g}")
        for key, v in results.items():
            for err in v["errors"][:3]:
                print(f"error ({key}): {err}")
    print(json.dumps(out))
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
