"""benchmarks/datasets.py and its peer, DVC: missing, the benchmark says how to install it
and exits non-zero before measuring; --no-peer measures loophub alone and says DVC's
columns are absent; `make bench` installs the `bench` extra first."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_datasets",
                                                  REPO / "benchmarks" / "datasets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def measured(*args, **kwargs):
        raise AssertionError("measured although the peer is missing")
    # raising=False: a module without the check must fail the tests, not the fixture
    monkeypatch.setattr(module, "dvc_missing", lambda: "no `dvc` command (test)",
                        raising=False)
    monkeypatch.setattr(module, "bench_coco", measured)
    return module


def test_a_missing_peer_is_explained_and_fails_the_run(bench, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["datasets.py", "--json"])
    assert bench.main() == 2
    out, err = capsys.readouterr()
    assert out == ""  # no JSON line without DVC's columns
    assert "DVC" in err and "no `dvc` command (test)" in err
    assert "-m pip install -e '.[bench]'" in err and "--no-peer" in err


def test_no_peer_measures_loophub_alone_and_says_so(bench, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(bench, "bench_coco", lambda *args: {"coco_import_s": 1.0})
    monkeypatch.setattr(bench, "bench_versions", lambda *args: ({"commit_1m_s": 2.0}, []))

    def dvc(*args):
        raise AssertionError("DVC ran under --no-peer")
    monkeypatch.setattr(bench, "bench_dvc_jsonl", dvc)
    monkeypatch.setattr(sys, "argv", ["datasets.py", "--json", "--no-peer",
                                      "--workdir", str(tmp_path)])
    assert bench.main() == 0
    out, err = capsys.readouterr()
    line = json.loads(out.strip().splitlines()[-1])
    assert line["peers_absent"] == ["dvc"]
    assert not [key for key in line if key.startswith("dvc")]
    assert "--no-peer" in err and "absent" in err


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_bench_installs_the_bench_extra_before_running():
    plan = subprocess.run(["make", "-n", "bench"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.splitlines()
    install = next(i for i, line in enumerate(plan) if "pip install" in line
                   and ".[bench]" in line)
    run = next(i for i, line in enumerate(plan) if "benchmarks/" in line)
    assert install < run
    assert "benchmarks/[!_]*.py" in plan[run]  # the helpers (_hub.py) are not benchmarks
