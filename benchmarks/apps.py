"""Apps: how long a release's app takes to render for its visitors, alone and eight at
once, from a preheated pool and cold (Voila's own way), and what a visitor's kernel costs.

A real platform (`loophub up`: JupyterHub, its proxy and OAuth, the API, the gateway, the
apps service) serves a digits MLP as a release; its app is the image-classification
template (notebooks/apps/). Each visitor is a hub user with a token, so a visit is what a
browser does minus drawing:

1. GET /services/apps/<release> through the proxy, read to the end: Voila answers when
   every cell has run, so the app's widgets exist in the kernel (the kernel has read the
   release and the model's metadata as the visitor);
2. the websocket handshake to the page's kernel and a comm_info_request answered with
   the app's widget comms (what the page's widget manager asks for first).

The time from 1's request to 2's answer is the render. Then the visit ends as a page
does (its kernel shut down). A render that fails or takes over --stall-s (30 s) is a
stalled render.

Cases, each in bursts of 8 simultaneous visitors (and one visitor at a time):
- preheated: the template's pool holds 8 kernels that have run the notebook up to the
  visitor's request (imports done, the app's widgets built and waiting to be bound to a
  release); before each burst the script waits until the pool is full again (the
  service's status route);
- cold: ``?theme=dark`` (a theme the pool was not rendered with), so Voila starts a
  kernel per visitor and runs the whole notebook, which is plain Voila without preheating:
  the peer.
Kernel memory: PSS and RSS of each app kernel process (/proc) while a burst's 8 visitors
hold theirs; PSS counts shared pages once, so it is what one more visitor costs.

    python benchmarks/apps.py [--visits 104] [--cold-visits 24] [--single 10]
                              [--quick] [--json]

Prints a table, then one JSON line (keys render_p95_s_1, render_p95_s_8_preheated,
render_p95_s_8_cold, kernel_mb_per_visitor, stalled_renders, visits, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._hub import code_version, start_hub

BURST = 8
KERNEL_ID = re.compile(r'"kernelId":\s*"([0-9a-f-]{36})"')
APPS_CONFIG = f"""
c.AppsServer.max_kernels = 64
c.AppsServer.pool_sizes = {{"image_classification.ipynb": {BURST}}}
c.AppsServer.preheat_on_start = ["image_classification.ipynb"]
"""


def p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]


class Visits:
    """Visits to one app through the proxy, as hub users with tokens."""

    def __init__(self, url: str, release: str, tokens: list[str], stall_s: float) -> None:
        from tornado.httpclient import AsyncHTTPClient

        AsyncHTTPClient.configure(None, max_clients=64)
        self.url, self.release, self.tokens, self.stall_s = url, release, tokens, stall_s
        self.http = AsyncHTTPClient()
        self.stalled = 0
        self.failures: list[str] = []
        self.page_s: list[float] = []  # of each render: the page's GET alone
        self.cleanup_errors: list[str] = []

    async def visit(self, n: int, *, cold: bool, hold: asyncio.Event | None = None,
                    measured: asyncio.Queue | None = None) -> float | None:
        """One visit's render time (None: stalled). HOLD: keep the kernel until it is
        set, after putting the render time in MEASURED. The visit then ends as a page
        does (its kernel shut down); a failure there is a cleanup error, not a stall."""
        headers = {"Authorization": f"token {self.tokens[n % len(self.tokens)]}"}
        try:
            took, ws, kernel = await asyncio.wait_for(self._render(headers, cold),
                                                      self.stall_s)
        except Exception as exc:  # a failed or stalled render is counted, not fatal
            self.stalled += 1
            self.failures.append(f"{type(exc).__name__}: {exc}"[:200])
            if measured is not None:
                measured.put_nowait(None)
            return None
        if measured is not None:
            measured.put_nowait(took)
        if hold is not None:
            await hold.wait()
        ws.close()
        try:
            await self.http.fetch(f"{self.url}/services/apps/api/kernels/{kernel}",
                                  method="DELETE", headers=headers, request_timeout=30)
        except Exception as exc:
            self.cleanup_errors.append(f"{type(exc).__name__}: {exc}"[:200])
        return took

    async def _render(self, headers: dict, cold: bool) -> tuple[float, Any, str]:
        """The page read to its end, then the kernel's handshake: (seconds, the open
        websocket, the kernel's id)."""
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        started = time.monotonic()
        page = await self.http.fetch(f"{self.url}/services/apps/{self.release}"
                                     + ("?theme=dark" if cold else ""), headers=headers,
                                     request_timeout=self.stall_s)
        self.page_s.append(time.monotonic() - started)
        match = KERNEL_ID.search(page.body.decode())
        if match is None:
            raise ValueError(f"the page names no kernel: {page.body.decode()[-300:]}")
        kernel = match.group(1)
        ws_url = self.url.replace("http", "ws", 1) \
            + f"/services/apps/api/kernels/{kernel}/channels"
        ws = await websocket_connect(HTTPRequest(ws_url, headers=headers,
                                                 request_timeout=self.stall_s))
        await ws.write_message(json.dumps({
            "header": {"msg_id": uuid.uuid4().hex, "msg_type": "comm_info_request",
                       "username": "", "session": uuid.uuid4().hex, "version": "5.3",
                       "date": ""},
            "parent_header": {}, "metadata": {}, "content": {}, "channel": "shell",
            "buffers": []}))
        while True:
            raw = await ws.read_message()
            if raw is None:
                raise ConnectionError("the kernel's websocket closed before it answered")
            message = json.loads(raw)
            if message.get("msg_type") == "comm_info_reply":
                if not message["content"]["comms"]:
                    raise ValueError("the app made no widgets")
                return time.monotonic() - started, ws, kernel


async def wait_for_pool(url: str, admin: str, want: int, timeout: float = 180) -> float:
    """Seconds until the image template's pool holds WANT ready kernels."""
    from tornado.httpclient import AsyncHTTPClient

    http = AsyncHTTPClient()
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        resp = await http.fetch(f"{url}/services/apps/status",
                                headers={"Authorization": f"token {admin}"})
        ready = json.loads(resp.body)["pools"].get("image_classification.ipynb", 0)
        if ready >= want:
            return time.monotonic() - started
        await asyncio.sleep(0.25)
    raise TimeoutError(f"the pool did not refill to {want} in {timeout} s")


def kernel_memory_mb() -> list[tuple[float, float]]:
    """(PSS, RSS) in MB of every app kernel process now (ipykernel with a Voila env)."""
    import psutil

    out = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "ipykernel_launcher" not in cmd:
            continue
        try:
            if "VOILA_KERNEL_ID" not in proc.environ() and "VOILA_PREHEAT" not in \
                    proc.environ():
                continue
            full = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out.append((full.pss / 2**20, full.rss / 2**20))
    return out


async def run(args: argparse.Namespace, url: str, release: str, tokens: list[str],
              admin: str) -> dict:
    visits = Visits(url, release, tokens, args.stall_s)
    await wait_for_pool(url, admin, BURST)
    single = []
    for n in range(args.single):  # one visitor at a time, a full pool each time
        single.append(await visits.visit(n, cold=False))
        await wait_for_pool(url, admin, BURST)
    preheated, memory, refill = [], [], []
    for start in range(0, args.visits, BURST):
        hold, measured = asyncio.Event(), asyncio.Queue()
        burst = [asyncio.create_task(visits.visit(start + i, cold=False, hold=hold,
                                                  measured=measured))
                 for i in range(BURST)]
        for _ in burst:  # every visitor has their page: the kernels are held
            await measured.get()
        if not memory:
            memory = kernel_memory_mb()
        hold.set()
        preheated += [await v for v in burst]
        refill.append(await wait_for_pool(url, admin, BURST))
    cold = []
    for start in range(0, args.cold_visits, BURST):
        cold += await asyncio.gather(*(visits.visit(10_000 + start + i, cold=True)
                                       for i in range(BURST)))
    return {"single": single, "preheated": preheated, "cold": cold, "memory": memory,
            "refill": refill, "stalled": visits.stalled, "failures": visits.failures,
            "cleanup_errors": visits.cleanup_errors,
            "page_s": visits.page_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=104, help="preheated visits, in "
                        "bursts of 8 (104: 13 bursts)")
    parser.add_argument("--cold-visits", type=int, default=24)
    parser.add_argument("--single", type=int, default=10, help="visits one at a time")
    parser.add_argument("--stall-s", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true", help="16 + 8 visits, 3 single")
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    args = parser.parse_args()
    if args.quick:
        args.visits, args.cold_visits, args.single = 16, 8, 3

    import torch

    from loophub.client import Client
    from tests.serving.test_releases import register
    from tests.serving.test_server import digits_images, train_digits_mlp

    work = Path(tempfile.mkdtemp(prefix="loophub-bench-apps-"))
    home = work / "home"
    home.mkdir()
    (home / "loophub_apps_config.py").write_text(APPS_CONFIG)
    platform = start_hub(home)
    try:
        owner = Client(platform.api, platform.token("owner"))
        images, targets = digits_images()
        torch.manual_seed(0)
        register(owner, "digits", train_digits_mlp(images, targets))
        owner.request("POST", "releases", json={
            "name": "digits", "model": "digits@latest", "access": "hub",
            "per_replica": {"cpu": 1, "mem": "1G"}})
        deadline = time.monotonic() + 120
        while owner.request("GET", "releases/digits")["status"] != "serving":
            assert time.monotonic() < deadline, "the release did not serve"
            time.sleep(0.3)
        tokens = [platform.token(f"visitor{i}") for i in range(BURST)]
        admin = platform.token("root", admin=True)
        started = time.monotonic()
        result = asyncio.run(run(args, platform.url, "digits", tokens, admin))
        wall = time.monotonic() - started
    finally:
        platform.stop()
    single = [t for t in result["single"] if t is not None]
    pre = [t for t in result["preheated"] if t is not None]
    cold = [t for t in result["cold"] if t is not None]
    pss = [m[0] for m in result["memory"]]
    rss = [m[1] for m in result["memory"]]
    visits = len(result["single"]) + len(result["preheated"]) + len(result["cold"])
    figures = {
        "render_p95_s_1": round(p95(single), 3) if single else None,
        "render_p50_s_1": round(statistics.median(single), 3) if single else None,
        "render_p95_s_8_preheated": round(p95(pre), 3) if pre else None,
        "render_p50_s_8_preheated": round(statistics.median(pre), 3) if pre else None,
        "render_p95_s_8_cold": round(p95(cold), 3) if cold else None,
        "render_p50_s_8_cold": round(statistics.median(cold), 3) if cold else None,
        "kernel_mb_per_visitor": round(statistics.median(pss), 1) if pss else None,
        "kernel_rss_mb": round(statistics.median(rss), 1) if rss else None,
        "kernels_measured": len(pss),
        "page_get_p50_s": round(statistics.median(result["page_s"]), 3)
        if result["page_s"] else None,
        "pool_refill_s_p50": round(statistics.median(result["refill"]), 2)
        if result["refill"] else None,
        "stalled_renders": result["stalled"], "visits": visits,
        "stall_reasons": result["failures"][:5],
        "cleanup_errors": len(result["cleanup_errors"]),
        "cleanup_error_examples": result["cleanup_errors"][:3],
        "spread": {"preheated_s": [round(min(pre), 3), round(max(pre), 3)] if pre else None,
                   "cold_s": [round(min(cold), 3), round(max(cold), 3)] if cold else None,
                   "single_s": [round(min(single), 3), round(max(single), 3)]
                   if single else None},
        "targets": {"render_p95_s_8_preheated": 0.5, "kernel_mb_per_visitor": 100,
                    "stalled_renders": 0},
        "wall_s": round(wall, 1), "code": code_version(),
    }
    if not args.json:
        print(f"{'case':<26}{'visits':>8}{'p50 s':>9}{'p95 s':>9}{'min-max s':>18}")
        for name, values in (("1 visitor, preheated", single),
                             ("8 at once, preheated", pre), ("8 at once, cold", cold)):
            if values:
                print(f"{name:<26}{len(values):>8}{statistics.median(values):>9.3f}"
                      f"{p95(values):>9.3f}{min(values):>9.3f}-{max(values):<8.3f}")
        print(f"kernel per visitor: PSS {figures['kernel_mb_per_visitor']} MB, RSS "
              f"{figures['kernel_rss_mb']} MB ({len(pss)} kernels); stalled "
              f"{result['stalled']} of {visits}; pool refill p50 "
              f"{figures['pool_refill_s_p50']} s")
        for failure in result["failures"][:5]:
            print(f"# stalled: {failure}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
