"""Serving: loophub's model server against `mlflow models serve` on the same digits model,
directly to one replica each (the proxy and auth figures belong to the release side).

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
loophub with batching off; with metrics off (their overhead); with base64 PNG inputs.

    python benchmarks/serving.py [--seconds 5] [--reps 3] [--quick] [--json]

Setup: installs wrk (apt-get) and mlflow (pip, into this Python) when missing.
Prints a table, then one JSON line (--json: only the JSON line).
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loophub.ports import free_port  # noqa: E402
from tests.serving.test_server import train_digits_mlp  # noqa: E402  (the same model)

LUA = """
local f = io.open(os.getenv("BENCH_BODY"), "r")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
"""
MEAN, STD = 0.1, 0.3


def say(text: str, quiet: bool) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


# -- setup --------------------------------------------------------------------------------

def ensure_tools(quiet: bool) -> None:
    """wrk from Debian, mlflow from PyPI: the load generator and the peer."""
    if shutil.which("wrk") is None:
        say("installing wrk (apt-get)", quiet)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True,
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
    meta = {"format": "torchscript", "task": "image_classification",
            "labels": [str(d) for d in range(10)],
            "preprocess": {"kind": "image", "mode": "L", "size": [16, 16], "scale": 1 / 255,
                           "mean": [MEAN], "std": [STD]}}
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


def wrk(url: str, body: Path, lua: Path, connections: int, seconds: int) -> dict:
    """One wrk run: requests/s, p50/p99 in ms, errors (non-2xx and socket errors)."""
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-s", str(lua), url], capture_output=True, text=True,
                         env={**os.environ, "BENCH_BODY": str(body)}, timeout=seconds + 60,
                         check=True).stdout
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
    return {"rps": rps, "p50": percentile("50"), "p99": percentile("99"), "errors": errors}


@dataclass
class Case:
    key: str        # JSON key stem, e.g. "loophub" -> loophub_rps_c8
    server: str
    body: str
    concurrency: int
    runs: list[dict] = field(default_factory=list)

    def median(self, metric: str) -> float:
        return statistics.median(run[metric] for run in self.runs)

    def spread(self, metric: str) -> tuple[float, float]:
        values = [run[metric] for run in self.runs]
        return min(values), max(values)


def cases(quick: bool) -> list[Case]:
    out = [Case(name, name, name, c) for name in ("mlflow", "loophub") for c in (1, 8, 32)]
    out += [Case("nobatch", "nobatch", "loophub", c) for c in ((1, 8, 32) if not quick else (32,))]
    out += [Case("nometrics", "nometrics", "loophub", 8),
            Case("loophub_png", "loophub", "loophub_png", 8)]
    return out


def measure(all_cases: list[Case], servers: dict[str, Server], bodies: dict[str, Path],
            lua: Path, seconds: int, reps: int, quiet: bool) -> None:
    for case in all_cases:  # warm every server and connection path once
        wrk(servers[case.server].url, bodies[case.body], lua, case.concurrency, 1)
    for rep in range(reps):  # interleaved: drifting background load hits every case
        for case in all_cases:
            run = wrk(servers[case.server].url, bodies[case.body], lua, case.concurrency,
                      seconds)
            case.runs.append(run)
            say(f"  run {rep + 1}/{reps} {case.key} c{case.concurrency}: "
                f"{run['rps']:.0f} req/s, p50 {run['p50']:.2f} ms, p99 {run['p99']:.2f} ms",
                quiet)


# -- report -------------------------------------------------------------------------------

def report(all_cases: list[Case], seconds: int, reps: int, max_diff: float) -> dict:
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
    return line


def table(all_cases: list[Case], line: dict) -> str:
    rows = [f"{'server':<28}{'conc':>5}{'req/s':>9}{'spread (min-max)':>19}{'p50 ms':>9}"
            f"{'p99 ms':>9}{'errors':>8}"]
    labels = {"mlflow": "mlflow models serve", "loophub": "loophub (batching)",
              "nobatch": "loophub (no batching)", "nometrics": "loophub (metrics off)",
              "loophub_png": "loophub (base64 PNG)"}
    for case in all_cases:
        low, high = case.spread("rps")
        rows.append(f"{labels[case.key]:<28}{case.concurrency:>5}{case.median('rps'):>9.0f}"
                    f"{f'{low:.0f}-{high:.0f}':>19}{case.median('p50'):>9.2f}"
                    f"{case.median('p99'):>9.2f}"
                    f"{sum(r['errors'] for r in case.runs):>8}")
    rows.append(f"loophub / mlflow at concurrency 8: {line['speedup_rps_c8']}x req/s; "
                f"metrics overhead {line['metrics_overhead_share'] * 100:.1f}%")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of one wrk run")
    parser.add_argument("--reps", type=int, default=3, help="runs per case (median)")
    parser.add_argument("--quick", action="store_true", help="1 s runs, one of each")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    seconds, reps = (1, 1) if args.quick else (args.seconds, args.reps)
    quiet = args.json
    ensure_tools(quiet)
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        folder = Path(tmp)
        images, targets = digits()
        say("training the digits MLP, writing both servers' models", quiet)
        bodies = write_models(folder, train_digits_mlp(images, targets), images[7])
        servers: dict[str, Server] = {}
        try:
            servers["mlflow"] = start_mlflow(folder)
            servers["loophub"] = start_loophub("loophub", folder)
            servers["nobatch"] = start_loophub("nobatch", folder, "--no-batching")
            servers["nometrics"] = start_loophub("nometrics", folder, "--no-metrics")
            max_diff = check_same_answer(servers, bodies)
            all_cases = cases(args.quick)
            say(f"measuring {len(all_cases)} cases x {reps} runs of {seconds:g} s", quiet)
            measure(all_cases, servers, bodies, folder / "post.lua", seconds, reps, quiet)
        finally:
            for server in servers.values():
                server.stop()
    line = report(all_cases, seconds, reps, max_diff)
    if not args.json:
        print(table(all_cases, line))
    print(json.dumps(line))


if __name__ == "__main__":
    main()
