"""The simulator and `loophub sim` on small files, and the workload builder on the traces."""

from __future__ import annotations

import argparse
import json

import pytest

from loophub.cli import main
from loophub.scheduler.cli import register
from loophub.scheduler.sim import (
    RESULT_KEYS,
    WorkloadError,
    load_cluster,
    load_workload,
    offered_load,
    water_fill,
)

WORKLOAD = """job_id,tenant,submit_s,duration_s,gpu,cpu,mem_gib,kind,preemptible
j1,alice,0,100,1,4,16,job,1
j2,alice,0,100,2,8,32,job,true
j3,bob,5,50,0,16,8,server,0
j4,bob,10,200,8,32,64,job,0
j5,carol,20,30,1,2,4,kernel,1
j6,carol,25,30,0,1,1,,
j7,alice,30,60,4,16,64,job,1
"""
CLUSTER = """node,gpu,cpu,mem_gib,gpu_type
g1,4,32,128,T4
g2,4,32,128,T4
c1,0,64,256,
"""


@pytest.fixture
def files(tmp_path):
    w, c = tmp_path / "w.csv", tmp_path / "c.csv"
    w.write_text(WORKLOAD)
    c.write_text(CLUSTER)
    return w, c


def test_cli_replays_a_small_trace_as_json_lines(files, capsys, tmp_path):
    w, c = files
    policies = "fifo,drf,balanced-drf,slurm-fairshare,tetris"
    png = tmp_path / "out.png"
    assert main(["sim", "--trace", str(w), "--cluster", str(c), "--policy", policies,
                 "--json", "--validate", "--plot", str(png)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["policy"] for x in lines] == policies.split(",")
    for row in lines:
        assert set(RESULT_KEYS) <= set(row)
        assert row["jobs"] == 7 and row["unfinished"] == 0
        assert 0 <= row["util_gpu"] <= 1 and 0 <= row["jain"] <= 1
    assert png.stat().st_size > 0


def test_cli_table_and_errors(files, capsys):
    w, c = files
    assert main(["sim", "--trace", str(w), "--cluster", str(c), "--policy", "drf",
                 "--load", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "jct_mean" in out and "drf" in out
    assert main(["sim", "--trace", str(w), "--cluster", str(c), "--policy", "nope"]) == 2
    assert main(["sim", "--trace", str(w), "--policy", "drf"]) == 2
    assert "--cluster is required" in capsys.readouterr().err


def test_register_adds_sim_to_a_parser(files):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    w, c = files
    args = parser.parse_args(["sim", "--trace", str(w), "--cluster", str(c), "--policy", "drf"])
    assert args.func(args) == 0
    args = parser.parse_args(["sim", "build", "W1", "--out", "x.csv"])
    assert args.func.__name__ == "run_build"


def test_loaders_validate_and_load_scaling(files, tmp_path):
    w, c = files
    jobs, nodes = load_workload(w), load_cluster(c)
    assert {j.kind for j in jobs} == {"job", "server", "kernel"}
    assert jobs[0].mem == 16 * 1024**3 and nodes[0].gpu_type == "T4"
    assert offered_load(jobs, nodes) > 0
    bad = tmp_path / "bad.csv"
    bad.write_text("job_id,tenant,submit_s,duration_s,gpu,cpu\nx,a,0,1,1,1\n")
    with pytest.raises(WorkloadError, match="mem_gib"):
        load_workload(bad)
    bad.write_text(WORKLOAD.replace("j3,bob,5,50,0", "j3,bob,five,50,0"))
    with pytest.raises(WorkloadError, match=r"bad.csv:4: column 'submit_s'"):
        load_workload(bad)


def test_water_fill_caps_and_redistributes():
    import numpy as np

    fair = water_fill(np.array([1.0, 1.0, 2.0]), np.array([0.1, 1.0, 1.0]))
    assert fair == pytest.approx([0.1, 0.3, 0.6])


def test_build_w1_and_w2_from_the_traces(traces, tmp_path, capsys):
    out, cl = tmp_path / "w1.csv", tmp_path / "c1.csv"
    assert main(["sim", "build", "W1", "--out", str(out), "--cluster-out", str(cl),
                 "--load", "1.0", "--seed", "0"]) == 0
    text = capsys.readouterr().out
    assert "15 virtual clusters" in text and "sampled (seed 0)" in text
    jobs, nodes = load_workload(out), load_cluster(cl)
    # only the window in which every VC is observed (before the first per-VC-capped VC stops)
    assert "cap of 2000 jobs per VC" in text and "4887 of 15264 jobs" in text
    assert len(jobs) == 4887 and len({j.tenant for j in jobs}) == 15
    assert offered_load(jobs, nodes) == pytest.approx(1.0, rel=1e-3)
    assert all(j.cpu > 0 and j.mem > 0 for j in jobs)
    again = tmp_path / "again.csv"
    main(["sim", "build", "W1", "--out", str(again), "--seed", "0"])
    assert again.read_text() == out.read_text()  # fixed seeds: identical output
    full = tmp_path / "full.csv"
    assert main(["sim", "build", "W1", "--out", str(full), "--full-trace"]) == 0
    assert len(load_workload(full)) == 15264
    w2 = tmp_path / "w2.csv"
    assert main(["sim", "build", "W2", "--out", str(w2), "--cluster-out", str(cl)]) == 0
    jobs2 = load_workload(w2)
    assert {j.kind for j in jobs2} == {"server", "job"} and len({j.tenant for j in jobs2}) == 10
