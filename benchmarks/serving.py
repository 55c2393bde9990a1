"""Serving: loophub's model server against `mlflow models serve` on the same digits model,
directly to one replica each, and the same model released on the platform, called through
the hub's proxy with auth, held at a steady rate, rolled out and canaried under load.

The model: an MLP trained here in plain torch on scikit-learn's digits (2x upscaled to
16x16, pixels 0-255 in, normalisation inside), a second of training. loophub serves its
TorchScript file; MLflow serves the same weights logged with mlflow.pytorch (its default
format), with a float32 tensor signature. Both take one image's 0-255 pixels per request
(loophub: {"instances": [{"pixels": ...}]}, MLflow: {"inputs": [[...]]}), both answer
the 10 class probabilities; both run one worker process on one torch thread, and the
script checks that they give the same answer before measuring.

Load: Debian's wrk (one thread, keep-alive connections, a Lua script posting the body),
so the load generator is never the bottleneck; each figure is the median of --reps runs
of --seconds each, the runs of all cases interleaved so background load hits them alike;
the spread is min-max over the runs. Cases: both servers at concurrency 1, 8 and 32;
loophub with batching off; with metrics off (their overhead); with every request written
to a request log, images to a blob store, as release replicas do (its overhead); with base64
PNG inputs.

The release side (--no-release skips it): a real platform (`loophub up`: JupyterHub, its
proxy, the API, the gateway service), the same TorchScript file and preprocessing
registered as digits@v1 (and digits@v2: the same recipe trained without the first image,
so its weights differ), released with 1 replica on 1 cpu, batching on, every hub user
allowed; the script checks that it answers exactly what the direct loophub server
answers. Callers send a hub token (`Authorization: token ...`) through the proxy to
/services/models/digits/predict: proxy -> gateway (authentication, routing) -> replica.
- proxy: wrk at concurrency 1, 8 and 32, interleaved with the cases above;
  proxy_vs_mlflow_c8 = proxy_rps_c8 / mlflow_rps_c8 (the aim: >= 1.5).
- sustained: `hey` (Debian) for --sustained-seconds (60; --quick: 5) at 80% of the best
  proxy req/s (c8 or c32), 64 workers on one core, each capped at its share of the rate,
  so a slow answer does not hold the offered load back much: sustained_rps (2xx answers per
  second), sustained_target_rps, sustained_errors (non-2xx and socket errors),
  sustained_p50_ms/sustained_p99_ms (of the answered requests).
- rollout: wrk at concurrency 8 from a second before `POST releases/digits/rollout`
  (to v2) until 1.5 s after v2 serves alone: rollout_failed_requests (non-2xx, socket
  errors, and requests unanswered within wrk's 2 s timeout) of rollout_requests;
  rollout_seconds from the POST to every replica at v2.
- canary: the same load while a canary of v1 takes 10% (no automatic guard), is ready,
  serves 2 s, and is rolled back: canary_failed_requests of canary_requests,
  canary_seconds from the canary's POST to the stable replicas alone again.
In the table these three rows put the target rate or the change's duration where the
other rows have their spread, and their failed requests under errors.

    python benchmarks/serving.py [--seconds 5] [--reps 3] [--quick] [--json]
                                 [--no-release] [--sustained-seconds 60]

Setup: installs wrk and hey (apt-get) and mlflow (pip, into this Python) when missing.
Prints a table, then one JSON line (--json: only the JSON line); --no-release leaves the
release keys out of it.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loophub.client import Client  # noqa: E402
from loophub.ports import free_port  # noqa: E402
from tests.hubtest import RunningHub, start_hub  # noqa: E402
from tests.serving.test_server import train_digits_mlp  # noqa: E402  (the same model)

LUA = """
local f = io.open(os.getenv("BENCH_BODY"), "r")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")  -- the release's gateway wants a hub token
if auth and auth ~= "" then
  wrk.headers["Authorization"] = auth
end
"""
MEAN, STD = 0.1, 0.3
LABELS = [str(d) for d in range(10)]
# loophub's preprocessing (the server's and the release's): 0-255 grey pixels -> the net
PREPROCESS = {"kind": "image", "mode": "L", "size": [16, 16], "scale": 1 / 255,
              "mean": [MEAN], "std": [STD]}


def say(text: str, quiet: bool) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


# -- setup --------------------------------------------------------------------------------

def ensure_tools(quiet: bool, release: bool) -> None:
    """wrk (and hey for the release's steady rate) from Debian, mlflow from PyPI: the load
    generators and the peer."""
    missing = [tool for tool in ("wrk", "hey") if (tool == "wrk" or release)
               and shutil.which(tool) is None]
    if missing:
        say(f"installing {' '.join(missing)} (apt-get)", quiet)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       capture_output=True, env={**os.environ,
                                                 "DEBIAN_FRONTEND": "noninteractive"})
    try:
        import mlflow  # noqa: F401
    except ImportError:
        say("installing mlflow (pip)", quiet)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "mlflow"],
                       check=True)


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    pixels = np.kron(data.images, np.ones((1, 2, 2))) * 255 / 16
    return np.clip(pixels.round(), 0, 255).astype(np.uint8), data.target


def write_models(folder: Path, net, sample: np.ndarray) -> dict[str, Path]:
    """The loophub artifact (TorchScript + meta), the MLflow model directory and the
    request bodies of both, for one image SAMPLE."""
    import mlflow.pytorch
    import torch
    from PIL import Image

    from loophub.client.models import to_torchscript

    (folder / "model.pt").write_bytes(to_torchscript(net, torch.zeros(1, 1, 16, 16)))
    meta = {"format": "torchscript", "task": "image_classification", "labels": LABELS,
            "preprocess": PREPROCESS}
    (folder / "model.json").write_text(json.dumps(meta))

    class Served(torch.nn.Module):  # MLflow's model: the same weights, same arithmetic
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.inner((x / 255.0 - MEAN) / STD), 1)

    mlflow.pytorch.save_model(Served(net).eval(), str(folder / "mlflow-model"),
                              input_example=np.zeros((1, 1, 16, 16), dtype=np.float32))
    pixels = sample.tolist()
    png = io.BytesIO()
    Image.fromarray(sample).save(png, format="PNG")
    bodies = {"loophub": {"instances": [{"pixels": pixels}]},
              "loophub_png": {"instances": [{"image": base64.b64encode(png.getvalue())
                                             .decode()}]},
              "mlflow": {"inputs": [[pixels]]}}
    paths = {}
    for name, body in bodies.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(json.dumps(body))
    (folder / "post.lua").write_text(LUA)
    return paths


# -- servers ------------------------------------------------------------------------------

@dataclass
class Server:
    name: str
    url: str  # the predict URL
    process: subprocess.Popen = field(repr=False)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # its own session: uvicorn too
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start(name: str, command: list[str], url: str, ready: str, log: Path) -> Server:
    env = {**os.environ, "LOOPHUB_ALLOC_CPU": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1",
           # `mlflow models serve` execs uvicorn by name: this Python's scripts first
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_TRACKING_URI": f"file://{log.parent / 'mlruns'}"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("w"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(name, url, process)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if requests.get(ready, timeout=2).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{name} not ready in 120 s: {log.read_text()[-2000:]}")


def start_loophub(name: str, folder: Path, *flags: str) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "loophub.serving.server", "--artifact",
               str(folder / "model.pt"), "--meta", str(folder / "model.json"), "--port",
               str(port), "--model-ref", "digits@v1", *flags]
    base = f"http://127.0.0.1:{port}/"
    return start(name, command, base + "predict", base + "ready", folder / f"{name}.log")


def start_mlflow(folder: Path) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m",
               str(folder / "mlflow-model"), "--env-manager", "local", "-h", "127.0.0.1",
               "-p", str(port), "-w", "1"]
    base = f"http://127.0.0.1:{port}/"
    return start("mlflow", command, base + "invocations", base + "ping",
                 folder / "mlflow.log")


def check_same_answer(servers: dict[str, Server], bodies: dict[str, Path]) -> float:
    """Largest difference between MLflow's and loophub's probabilities on the body."""
    headers = {"Content-Type": "application/json"}
    ours = requests.post(servers["loophub"].url, data=bodies["loophub"].read_bytes(),
                         headers=headers, timeout=30)
    theirs = requests.post(servers["mlflow"].url, data=bodies["mlflow"].read_bytes(),
                           headers=headers, timeout=30)
    ours.raise_for_status()
    theirs.raise_for_status()
    a = np.array(ours.json()["predictions"][0]["scores"])
    b = np.array(theirs.json()["predictions"][0])
    if int(a.argmax()) != int(b.argmax()) or np.abs(a - b).max() > 1e-5:
        raise RuntimeError(f"the servers disagree: loophub {a}, mlflow {b}")
    return float(np.abs(a - b).max())


# -- load ---------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass
class Endpoint:
    """Where a case sends its requests: a predict URL, and the Authorization header the
    release's gateway wants (None: the direct servers take anyone)."""

    url: str
    auth: str | None = None


def wrk_command(endpoint: Endpoint, lua: Path, connections: int, seconds: int) -> list[str]:
    return ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua),
            endpoint.url]


def wrk_env(endpoint: Endpoint, body: Path) -> dict[str, str]:
    return {**os.environ, "BENCH_BODY": str(body), "BENCH_AUTH": endpoint.auth or ""}


def parse_wrk(out: str) -> dict:
    """requests/s, p50/p99 in ms, errors (non-2xx and socket errors: connect, read, write,
    timeout) and the number of requests, from wrk's report."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def percentile(p: str) -> float:
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * _UNITS[unit]

    errors = 0
    for pattern in (r"Non-2xx or 3xx responses:\s+(\d+)",
                    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"):
        found = re.search(pattern, out)
        if found:
            errors += sum(int(g) for g in found.groups())
    requests_sent = int(re.search(r"(\d+) requests in ", out).group(1))
    return {"rps": rps, "p50": percentile("50"), "p99": percentile("99"), "errors": errors,
            "requests": requests_sent}


def wrk(endpoint: Endpoint, body: Path, lua: Path, connections: int, seconds: int) -> dict:
    """One wrk run: requests/s, p50/p99 in ms, errors (non-2xx and socket errors)."""
    out = subprocess.run(wrk_command(endpoint, lua, connections, seconds),
                         capture_output=True, text=True, env=wrk_env(endpoint, body),
                         timeout=seconds + 60, check=True).stdout
    return parse_wrk(out)


class Background:
    """wrk running until `stop` (its SIGINT handler ends the run and prints the report as
    usual), for load that must last exactly as long as a change does."""

    LONGEST_S = 3600  # wrk wants a duration; `stop` ends it long before

    def __init__(self, endpoint: Endpoint, body: Path, lua: Path, connections: int) -> None:
        self.process = subprocess.Popen(
            wrk_command(endpoint, lua, connections, self.LONGEST_S), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=wrk_env(endpoint, body))

    def stop(self) -> dict:
        self.process.send_signal(signal.SIGINT)
        out, err = self.process.communicate(timeout=60)
        if "Requests/sec:" not in out:
            raise RuntimeError(f"wrk ended {self.process.returncode} without a report: "
                               f"{out[-1000:]} {err[-1000:]}")
        return parse_wrk(out)

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:  # left by an exception: no report wanted
            self.process.kill()
            self.process.communicate()


def hey(endpoint: Endpoint, body: Path, rate: float, seconds: int, workers: int) -> dict:
    """`hey` at RATE requests/s in all for SECONDS: each of WORKERS sends one request per
    tick of its own RATE/WORKERS clock (a tick missed while it waits is skipped), so the
    offered load stays at RATE while answers take less than WORKERS/RATE s. One core
    (-cpus 1), like wrk's one thread: on a small machine it competes with the platform."""
    command = ["hey", "-z", f"{seconds}s", "-c", str(workers), "-q", f"{rate / workers:.4f}",
               "-cpus", "1", "-m", "POST", "-T", "application/json", "-D", str(body),
               endpoint.url]
    if endpoint.auth:
        command[-1:-1] = ["-H", f"Authorization: {endpoint.auth}"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120,
                         check=True).stdout
    return parse_hey(out)


def parse_hey(out: str) -> dict:
    """2xx answers per second, p50/p99 in ms (answered requests only: hey keeps no time
    for a failed one), errors (non-2xx answers and socket errors) and all requests."""
    total_s = float(re.search(r"Total:\s+([\d.]+) secs", out).group(1))
    codes = {int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    ok = sum(n for code, n in codes.items() if 200 <= code < 300)
    failed_section = out.partition("Error distribution:")[2]
    socket_errors = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]", failed_section, re.M))

    def percentile(p: str) -> float | None:
        found = re.search(rf"^\s+{p}% in ([\d.]+) secs", out, re.M)
        return float(found.group(1)) * 1000 if found else None

    return {"rps": ok / total_s, "p50": percentile("50"), "p99": percentile("99"),
            "errors": sum(codes.values()) - ok + socket_errors,
            "requests": sum(codes.values()) + socket_errors}


@dataclass
class Case:
    key: str        # JSON key stem, e.g. "loophub" -> loophub_rps_c8
    server: str     # the endpoint's name
    body: str
    concurrency: int
    runs: list[dict] = field(default_factory=list)

    def median(self, metric: str) -> float:
        return statistics.median(run[metric] for run in self.runs)

    def spread(self, metric: str) -> tuple[float, float]:
        values = [run[metric] for run in self.runs]
        return min(values), max(values)


def cases(quick: bool, release: bool) -> list[Case]:
    out = [Case(name, name, name, c) for name in ("mlflow", "loophub") for c in (1, 8, 32)]
    out += [Case("nobatch", "nobatch", "loophub", c) for c in ((1, 8, 32) if not quick else (32,))]
    out += [Case("nometrics", "nometrics", "loophub", 8),
            Case("logging", "logging", "loophub", 8),
            Case("loophub_png", "loophub", "loophub_png", 8)]
    if release:  # the same body as the direct loophub server's, through proxy and gateway
        out += [Case("proxy", "proxy", "loophub", c) for c in (1, 8, 32)]
    return out


def measure(all_cases: list[Case], endpoints: dict[str, Endpoint], bodies: dict[str, Path],
            lua: Path, seconds: int, reps: int, quiet: bool) -> None:
    for case in all_cases:  # warm every server and connection path once
        wrk(endpoints[case.server], bodies[case.body], lua, case.concurrency, 1)
    for rep in range(reps):  # interleaved: drifting background load hits every case
        for case in all_cases:
            run = wrk(endpoints[case.server], bodies[case.body], lua, case.concurrency,
                      seconds)
            case.runs.append(run)
            say(f"  run {rep + 1}/{reps} {case.key} c{case.concurrency}: "
                f"{run['rps']:.0f} req/s, p50 {run['p50']:.2f} ms, p99 {run['p99']:.2f} ms",
                quiet)


# -- the release --------------------------------------------------------------------------

RELEASE = MODEL = "digits"
PER_REPLICA = {"cpu": 1, "mem": "1G"}
# the direct loophub server's batching, spelt out: the release must run the same server
OPTIONS = {"batching": True, "max_batch_size": 32, "max_wait_ms": 5.0}
SUSTAINED_SHARE, SUSTAINED_WORKERS = 0.8, 64
CHANGE_CONCURRENCY, CANARY_PERCENT, CANARY_SERVES_S = 8, 10, 2.0


def ref(n: int) -> str:
    return f"{MODEL}@v{n}"


@dataclass
class Platform:
    """The platform serving the digits release: its hub, the owner's API client, the
    endpoint callers use, and every replica pid seen (the API leaves replicas running
    when it stops, by design, so `stop` ends any it could not)."""

    hub: RunningHub
    client: Client
    endpoint: Endpoint
    pids: set[int] = field(default_factory=set)

    def view(self) -> dict:
        view = self.client.request("GET", f"releases/{RELEASE}")
        self.pids.update(r["pid"] for r in view["replica_list"] if r.get("pid"))
        return view

    def wait(self, check: Callable[[dict], bool], what: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            view = self.view()
            if check(view):
                return view
            if time.monotonic() > deadline:
                raise RuntimeError(f"release {RELEASE} not {what} in {timeout:.0f} s: "
                                   f"{view['status']}, {view['replica_list']}")
            time.sleep(0.2)

    def stop(self, quiet: bool) -> None:
        try:
            self.view()
            self.client.request("DELETE", f"releases/{RELEASE}")
        except Exception as exc:  # the hub and the replicas are stopped below all the same
            say(f"could not stop release {RELEASE}: {exc}", quiet)
        self.hub.stop()
        for pid in self.pids:
            end_replica(pid)


def end_replica(pid: int) -> None:
    """SIGTERM to a replica still running after the platform stopped."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return  # ended already
    if b"loophub.serving.server" in command:  # not a reused pid
        os.kill(pid, signal.SIGTERM)


def start_platform(home: Path) -> Platform:
    """`loophub up` with a pool of at least 2 cpus: a rollout's or canary's replica starts
    beside the serving one (1 cpu each)."""
    pool = [{"name": "bench", "cpu": max(2, os.cpu_count() or 1), "mem": "8G"}]
    hub = start_hub(home, env={"LOOPHUB_POOL": json.dumps(pool)})
    try:
        token = hub.token("bench")
    except BaseException:
        hub.stop()
        raise
    client = Client(hub.api, token, timeout=120)  # a rollback answers once drained
    return Platform(hub, client, Endpoint(f"{hub.url}/services/models/{RELEASE}/predict",
                                          f"token {token}"))


def release_digits(platform: Platform, nets: list) -> None:
    """NETS registered as digits@v1, v2, ... with the direct server's preprocessing;
    v1 released and serving."""
    import torch

    for net in nets:
        platform.client.models.register(MODEL, net, example_input=torch.zeros(1, 1, 16, 16),
                                        task="image_classification", labels=LABELS,
                                        preprocess=PREPROCESS)
    platform.client.request("POST", "releases", json={
        "name": RELEASE, "model": ref(1), "replicas": 1, "per_replica": PER_REPLICA,
        "access": "hub", "options": OPTIONS})
    platform.wait(lambda v: v["status"] == "serving", "serving")


def check_release_answer(platform: Platform, direct: Server, body: Path) -> float:
    """Largest difference between the release's probabilities (through proxy, gateway and
    replica) and the direct loophub server's, on the body."""
    headers = {"Content-Type": "application/json"}
    ours = requests.post(direct.url, data=body.read_bytes(), headers=headers, timeout=30)
    released = requests.post(platform.endpoint.url, data=body.read_bytes(), timeout=30,
                             headers={**headers, "Authorization": platform.endpoint.auth})
    ours.raise_for_status()
    released.raise_for_status()
    if released.headers.get("X-Loophub-Version") != ref(1):
        raise RuntimeError(f"the release answered as {released.headers}, not {ref(1)}")
    a = np.array(ours.json()["predictions"][0]["scores"])
    b = np.array(released.json()["predictions"][0]["scores"])
    if np.abs(a - b).max() > 1e-6:
        raise RuntimeError(f"the release disagrees: direct {a}, release {b}")
    return float(np.abs(a - b).max())


def under_load(platform: Platform, body: Path, lua: Path, change: Callable[[], None]) -> dict:
    """wrk through the proxy from a second before CHANGE until 1.5 s after it (requests
    that were in flight at the switch and the first ones after it count too): its report,
    and how long CHANGE took."""
    with Background(platform.endpoint, body, lua, CHANGE_CONCURRENCY) as load:
        time.sleep(1)
        started = time.monotonic()
        change()
        took = time.monotonic() - started
        time.sleep(1.5)
        run = load.stop()
    return {**run, "seconds": took}


def rollout(platform: Platform) -> None:
    """To v2; done when it serves and no replica of v1 is left (drained and gone)."""
    platform.client.request("POST", f"releases/{RELEASE}/rollout", json={"model": ref(2)})
    platform.wait(lambda v: v["status"] == "serving" and v["version"] == ref(2)
                  and all(r["version"] == ref(2) for r in v["replica_list"]), "at v2")


def canary_and_rollback(platform: Platform) -> None:
    """A canary of v1 at 10% (the release is at v2 now); once it is ready and has served
    a while, rolled back; done when only the stable replicas are left."""
    platform.client.request("POST", f"releases/{RELEASE}/canary", json={
        "model": ref(1), "percent": CANARY_PERCENT, "guard": False})  # we roll it back
    platform.wait(lambda v: any(r["role"] == "canary" and r["state"] == "ready"
                                for r in v["replica_list"]), "canary ready")
    time.sleep(CANARY_SERVES_S)
    platform.client.request("POST", f"releases/{RELEASE}/rollback",
                            json={"reason": "benchmark"})
    platform.wait(lambda v: v["canary"] is None
                  and all(r["role"] == "stable" for r in v["replica_list"]), "rolled back")


def release_side(platform: Platform, proxy: list[Case], body: Path, lua: Path,
                 sustained_s: int, quiet: bool) -> dict:
    """The steady rate (80% of the best proxy req/s), the rollout and the canary."""
    best = max(case.median("rps") for case in proxy if case.concurrency in (8, 32))
    target = SUSTAINED_SHARE * best
    say(f"sustained: {target:.0f} req/s for {sustained_s} s (hey)", quiet)
    sustained = hey(platform.endpoint, body, target, sustained_s, SUSTAINED_WORKERS)
    say("rollout to v2 under load", quiet)
    rolled = under_load(platform, body, lua, lambda: rollout(platform))
    say(f"canary at {CANARY_PERCENT}% and rollback under load", quiet)
    canaried = under_load(platform, body, lua, lambda: canary_and_rollback(platform))
    return {"sustained": {**sustained, "target": target}, "rollout": rolled,
            "canary": canaried}


# -- report -------------------------------------------------------------------------------

def report(all_cases: list[Case], seconds: int, reps: int, max_diff: float,
           release: dict | None) -> dict:
    line: dict = {"benchmark": "serving", "seconds_per_run": seconds, "reps": reps,
                  "cores": os.cpu_count(), "load_generator": "wrk -t1",
                  "max_score_difference": max_diff}
    for case in all_cases:
        c = case.concurrency
        line[f"{case.key}_rps_c{c}"] = round(case.median("rps"), 1)
        line[f"{case.key}_p50_ms_c{c}"] = round(case.median("p50"), 3)
        line[f"{case.key}_p99_ms_c{c}"] = round(case.median("p99"), 3)
        line[f"{case.key}_rps_c{c}_spread"] = [round(v, 1) for v in case.spread("rps")]
        line[f"{case.key}_errors_c{c}"] = sum(run["errors"] for run in case.runs)
    line["batching_rps_c32"] = line["loophub_rps_c32"]
    line["speedup_rps_c8"] = round(line["loophub_rps_c8"] / line["mlflow_rps_c8"], 2)
    line["metrics_overhead_share"] = round(
        max(0.0, 1 - line["loophub_rps_c8"] / line["nometrics_rps_c8"]), 3)
    # what a release's replica adds: every request sampled into its request log
    line["request_log_overhead_share"] = round(
        max(0.0, 1 - line["logging_rps_c8"] / line["loophub_rps_c8"]), 3)
    if release is not None:
        line.update(release_keys(line, release))
    return line


def release_keys(line: dict, release: dict) -> dict:
    sustained, rolled, canaried = release["sustained"], release["rollout"], release["canary"]

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {
        "release_max_score_difference": release["max_diff"],
        "proxy_vs_mlflow_c8": round(line["proxy_rps_c8"] / line["mlflow_rps_c8"], 2),
        "sustained_seconds": release["sustained_s"], "sustained_workers": SUSTAINED_WORKERS,
        "sustained_target_rps": round(sustained["target"], 1),
        "sustained_rps": round(sustained["rps"], 1),
        "sustained_errors": sustained["errors"], "sustained_requests": sustained["requests"],
        "sustained_p50_ms": ms(sustained["p50"]), "sustained_p99_ms": ms(sustained["p99"]),
        "rollout_failed_requests": rolled["errors"], "rollout_requests": rolled["requests"],
        "rollout_seconds": round(rolled["seconds"], 2), "rollout_rps": round(rolled["rps"], 1),
        "rollout_p99_ms": ms(rolled["p99"]),
        "canary_percent": CANARY_PERCENT, "canary_failed_requests": canaried["errors"],
        "canary_requests": canaried["requests"], "canary_seconds": round(canaried["seconds"], 2),
        "canary_p99_ms": ms(canaried["p99"]),
    }


LABEL_WIDTH = 28


def row(label: str, concurrency: int, rps: float, middle: str, p50: float | None,
        p99: float | None, errors: int) -> str:
    def ms(value: float | None) -> str:
        return f"{value:>9.2f}" if value is not None else f"{'-':>9}"

    return (f"{label:<{LABEL_WIDTH}}{concurrency:>5}{rps:>9.0f}{middle:>19}{ms(p50)}"
            f"{ms(p99)}{errors:>8}")


def table(all_cases: list[Case], line: dict, release: dict | None) -> str:
    rows = [f"{'server':<{LABEL_WIDTH}}{'conc':>5}{'req/s':>9}{'spread (min-max)':>19}"
            f"{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"]
    labels = {"mlflow": "mlflow models serve", "loophub": "loophub (batching)",
              "nobatch": "loophub (no batching)", "nometrics": "loophub (metrics off)",
              "logging": "loophub (request log on)",
              "loophub_png": "loophub (base64 PNG)", "proxy": "release (hub proxy, auth)"}
    for case in all_cases:
        low, high = case.spread("rps")
        rows.append(row(labels[case.key], case.concurrency, case.median("rps"),
                        f"{low:.0f}-{high:.0f}", case.median("p50"), case.median("p99"),
                        sum(r["errors"] for r in case.runs)))
    if release is not None:
        rows += release_rows(release)
    rows.append(f"loophub / mlflow at concurrency 8: {line['speedup_rps_c8']}x req/s; "
                f"metrics overhead {line['metrics_overhead_share'] * 100:.1f}%; request "
                f"log overhead {line['request_log_overhead_share'] * 100:.1f}%")
    if release is not None:
        rows.append(f"release through the proxy / mlflow at concurrency 8: "
                    f"{line['proxy_vs_mlflow_c8']}x req/s (aim: >= 1.5x)")
    return "\n".join(rows)


def release_rows(release: dict) -> list[str]:
    """The steady rate (middle column: its target), the rollout and the canary (middle:
    how long the change took; errors: failed requests)."""
    s, r, c = release["sustained"], release["rollout"], release["canary"]
    return [
        row("release sustained (hey)", SUSTAINED_WORKERS, s["rps"],
            f"target {s['target']:.0f}", s["p50"], s["p99"], s["errors"]),
        row("release rollout v1->v2", CHANGE_CONCURRENCY, r["rps"],
            f"{r['seconds']:.1f} s to v2", r["p50"], r["p99"], r["errors"]),
        row(f"release canary {CANARY_PERCENT}%+rollback", CHANGE_CONCURRENCY, c["rps"],
            f"{c['seconds']:.1f} s in all", c["p50"], c["p99"], c["errors"]),
    ]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of one wrk run")
    parser.add_argument("--reps", type=int, default=3, help="runs per case (median)")
    parser.add_argument("--quick", action="store_true",
                        help="1 s runs, one of each, a 5 s sustained run")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--release", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the release on a real platform too (default: yes)")
    parser.add_argument("--sustained-seconds", type=int, default=None,
                        help="length of the release's steady-rate run (60; --quick: 5)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    seconds, reps = (1, 1) if args.quick else (args.seconds, args.reps)
    sustained_s = args.sustained_seconds or (5 if args.quick else 60)
    quiet = args.json
    ensure_tools(quiet, args.release)
    release: dict | None = None
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        folder = Path(tmp)
        images, targets = digits()
        say("training the digits MLP, writing both servers' models", quiet)
        net = train_digits_mlp(images, targets)
        bodies = write_models(folder, net, images[7])
        lua = folder / "post.lua"
        servers: dict[str, Server] = {}
        platform: Platform | None = None
        try:
            servers["mlflow"] = start_mlflow(folder)
            servers["loophub"] = start_loophub("loophub", folder)
            servers["nobatch"] = start_loophub("nobatch", folder, "--no-batching")
            servers["nometrics"] = start_loophub("nometrics", folder, "--no-metrics")
            servers["logging"] = start_loophub(  # every request sampled, as releases log
                "logging", folder, "--request-log", str(folder / "requests.jsonl"),
                "--blob-url", str(folder / "blobs"))
            max_diff = check_same_answer(servers, bodies)
            endpoints = {name: Endpoint(server.url) for name, server in servers.items()}
            if args.release:
                say("starting the platform, releasing digits@v1", quiet)
                platform = start_platform(folder / "home")
                # v2: the same recipe without the first image, so its weights differ
                release_digits(platform, [net, train_digits_mlp(images[1:], targets[1:])])
                release_diff = check_release_answer(platform, servers["loophub"],
                                                    bodies["loophub"])
                endpoints["proxy"] = platform.endpoint
            all_cases = cases(args.quick, args.release)
            say(f"measuring {len(all_cases)} cases x {reps} runs of {seconds:g} s", quiet)
            measure(all_cases, endpoints, bodies, lua, seconds, reps, quiet)
            if platform is not None:
                proxy = [case for case in all_cases if case.key == "proxy"]
                release = {**release_side(platform, proxy, bodies["loophub"], lua,
                                          sustained_s, quiet),
                           "max_diff": release_diff, "sustained_s": sustained_s}
        finally:
            for server in servers.values():
                server.stop()
            if platform is not None:
                platform.stop(quiet)
    line = report(all_cases, seconds, reps, max_diff, release)
    if not args.json:
        print(table(all_cases, line, release))
    print(json.dumps(line))


if __name__ == "__main__":
    main()
