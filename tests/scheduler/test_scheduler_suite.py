"""The scenario suite: its design (sizes, halves, coverage), scoring, and a scenario build."""

from __future__ import annotations

import json

import pytest

from loophub.scheduler.suite import (
    COMBOS,
    LOADS,
    aggregate,
    build_scenario,
    run_case,
    scenarios,
    unstable_verdicts,
    verdicts,
)


def test_at_least_36_scenarios_each_half_covering_every_dimension():
    all_ = scenarios()
    assert len(all_) >= 36 and len({s.name for s in all_}) == len(all_)
    for half in ("tuning", "test"):
        combos = [c for c in COMBOS if c.half == half]
        assert len(combos) * 2 == len(COMBOS)
        assert {c.shape for c in combos} == {"homogeneous", "openb", "pai"}
        assert {c.mix for c in combos} == {"philly-vc", "zipf", "zipf-cpu", "interactive"}
        assert {c.source.split("-")[0] for c in combos} == {"philly", "itp", "openb"}
    assert {s.load for s in all_} == set(LOADS)
    issue = [c for c in COMBOS if c.source.startswith("itp") and c.shape == "pai"
             and c.mix == "zipf-cpu"]
    assert issue and all(c.half == "test" for c in issue)


def row(policy: str, jain: float, util: float = 0.9, frag: float = 0.1, starved: int = 0,
        p99: float = 100.0, name: str = "s") -> dict:
    return {"scenario": name, "half": "test", "policy": policy, "jain": jain,
            "util_bottleneck": util, "fragmentation": frag, "starved_under_share": starved,
            "wait_p99": p99, "jct_mean": 1.0, "decisions": 10, "sched_wall_s": 0.01}


def test_verdicts_and_aggregate_follow_the_issue_targets():
    rows = [row("fifo", 0.5, p99=50.0), row("drf", 0.80, frag=0.2),
            row("slurm-fairshare", 0.85), row("balanced-drf", 0.845, util=0.89, starved=2)]
    per = {r["policy"]: r for r in rows}
    v = verdicts(per)
    assert v == {"jain_win": True, "util_ok": False, "frag_ok": True, "starved_ok": False,
                 "wait_p99_win": False}
    agg = aggregate(rows)
    assert agg["scenarios"] == 1 and agg["jain_win_rate"] == 1.0
    assert agg["util_below_drf_count"] == 1 and agg["starved_under_share_total"] == 2
    assert agg["frag_ratio_vs_drf"] == pytest.approx(0.5)
    assert agg["decisions_per_s_bdrf"] == pytest.approx(1000.0)


def test_a_jain_more_than_001_below_the_best_baseline_is_a_loss():
    rows = [row("fifo", 0.5), row("drf", 0.80), row("slurm-fairshare", 0.85),
            row("balanced-drf", 0.83)]
    assert not verdicts({r["policy"]: r for r in rows})["jain_win"]


def test_unstable_verdicts_name_the_targets_that_replicas_disagree_on():
    def replica(jain_b: float, util_b: float) -> list[dict]:
        rows = []
        for name in ("steady", "chaotic"):
            rows += [row("fifo", 0.5, name=name), row("drf", 0.80, name=name),
                     row("slurm-fairshare", 0.85, name=name)]
        return [*rows, row("balanced-drf", 0.70, name="steady"),  # always a Jain loss
                row("balanced-drf", jain_b, util=util_b, name="chaotic")]

    runs = [replica(0.86, 0.90), replica(0.80, 0.90), replica(0.86, 0.85)]
    # "steady" misses Jain in every run: a real loss, not noise; "chaotic" flips twice
    assert unstable_verdicts(runs) == {"chaotic": {"jain_win": 1, "util_ok": 1}}
    assert unstable_verdicts(runs[:1]) == {}


def test_the_issue_scenario_builds_from_the_traces_and_replays(traces):
    sc = next(s for s in scenarios() if s.name == "itp-cluster02/pai/zipf-cpu@1.3")
    built = build_scenario(sc, quick=True)
    assert len(built.jobs) == 250 and any(n.capacity.gpu == 0 for n in built.nodes)
    assert {j.tenant for j in built.jobs if j.gpu == 0} >= {"tenant01", "tenant02"}
    again = build_scenario(sc, quick=True)
    assert again.jobs == built.jobs  # fixed seed: the same scenario every time
    out = run_case((sc, "balanced-drf", True, None))
    assert out["scenario"] == sc.name and out["half"] == "test"
    assert {"fragmentation", "starved_under_share", "util_bottleneck"} <= set(out)


def test_sim_suite_command_prints_tables_and_one_json_summary(traces, capsys):
    from loophub.cli import main

    assert main(["sim", "suite", "--quick", "--only", "itp-cluster08/homogeneous/zipf-cpu@0.8",
                 "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [json.loads(x) for x in out if x.startswith('{"scenario"')]
    assert sorted(r["policy"] for r in rows) == sorted(
        ["fifo", "drf", "balanced-drf", "slurm-fairshare", "tetris"])
    assert any(x.startswith("### test half") or x.startswith("## test half") for x in out)
    summary = json.loads(out[-1])
    keys = {"scenarios", "test_scenarios", "jain_win_rate", "jain_mean_bdrf", "jain_mean_drf",
            "jain_mean_slurm", "util_below_drf_count", "frag_ratio_vs_drf",
            "starved_under_share_total", "wait_p99_win_rate", "decisions_per_s_bdrf",
            "decisions_per_s_drf"}
    assert keys <= set(summary) and summary["test_scenarios"] == 1


def test_sim_json_lines_carry_the_new_metrics(traces, capsys):
    from loophub.cli import main

    assert main(["sim", "--trace", "W2", "--nodes", "16", "--policy", "drf", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert row["starved_under_share"] >= 0 and 0 <= row["fragmentation"] <= 1
