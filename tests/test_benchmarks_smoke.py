"""The platform benchmarks run: benchmarks/queue_watch.py, benchmarks/api_isolation.py and
benchmarks/models.py in --quick mode (a real platform each, small data) print their JSON
line with the keys the docs quote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.hub


def run_quick(script: str) -> dict:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--quick",
                           "--json"], capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_queue_watch_quick():
    line = run_quick("queue_watch.py")
    assert line["waiters"] == 20 and line["errors"] == 0
    assert line["api_cpu_ms_per_change_longpoll_old"] is None  # --quick: this code only
    assert line["api_cpu_ms_per_change_longpoll_new"] > 0
    assert line["api_cpu_ms_per_change_watch"] > 0
    assert line["told_per_change"]["watch_new"] == 20  # every waiter told of each change


def test_api_isolation_quick():
    line = run_quick("api_isolation.py")
    assert line["probe_failures"] == 0
    assert set(line["routes"]) == {"predictions", "records", "progress", "agreement", "diff",
                                   "export", "export_job", "import", "commit"}
    assert line["health_p99_ms_under_load"] is not None
    assert line["read_p99_ms_under_load"] is not None


def test_models_quick():
    line = run_quick("models.py")
    assert line["items"] == 1000 and line["metrics_match_reference"] is True
    assert line["numbers_checked"] > 100
    assert 0 < line["eval_read_share"] < 1 and line["eval_10k_s"] > 0
