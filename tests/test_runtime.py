"""From a placement to a confined process (loophub.runtime): every unit of a gang, the
environment a unit sees, and what confinement is chosen here."""

import os

import pytest

from loophub.runtime import Confinement, ConfinementError, Placement, placements

GANG = {"request_id": "r", "tenant": "t", "start": 0.0, "units": [
    {"node": "n1", "gpus": [0, 1], "cpu": 2.0, "cores": [0, 1], "mem": 4 << 30},
    {"node": "n1", "gpus": [2, 3], "cpu": 2.0, "cores": [2, 3], "mem": 4 << 30},
    {"node": "n2", "gpus": [0, 1], "cpu": 2.0, "cores": None, "mem": 4 << 30},
]}


def test_every_unit_of_a_gang_becomes_a_placement_in_rank_order():
    ranks = placements(GANG, runtime=3600)
    assert [(p.node, p.gpus) for p in ranks] == [("n1", (0, 1)), ("n1", (2, 3)), ("n2", (0, 1))]
    assert all(p.runtime == 3600 for p in ranks)
    env = ranks[1].env()
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["OMP_NUM_THREADS"] == "2"
    assert env["LOOPHUB_ALLOC_NODE"] == "n1" and env["LOOPHUB_ALLOC_MEM"] == str(4 << 30)
    with pytest.raises(ValueError, match="no units"):
        placements({"units": []})


def test_confinement_modes():
    unit = Placement(node="n", cpu=1.0, mem=1 << 30, cores=None)
    none = Confinement.build(unit, name="t-none", mode="none")
    assert none.method == "none" and none.preexec() is None
    rlimit = Confinement.build(unit, name="t-rl", mode="rlimit")
    assert rlimit.method == "rlimit" and rlimit.mem_rlimit == 1 << 30 and rlimit.preexec()
    kernel = Confinement.build(unit, name="t-k", mode="auto", rlimit_fallback=False)
    assert kernel.mem_rlimit is None  # a kernel without a cgroup stays under its server's caps
    kernel.release()
    with pytest.raises(ConfinementError, match="memory_enforcement"):
        Confinement.build(unit, name="t-bad", mode="cgroups")


def test_only_cores_this_machine_has_are_pinned():
    mine = tuple(sorted(os.sched_getaffinity(0)))[:1]
    assert Confinement.build(Placement("n", 1.0, 1 << 20, cores=mine), name="p",
                             mode="none").cores == mine
    assert Confinement.build(Placement("n", 1.0, 1 << 20, cores=(10_000,)), name="p",
                             mode="none").cores is None
