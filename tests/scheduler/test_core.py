"""The core's bookkeeping: DRF's textbook case, gangs, GPU indices, quotas, persistence,
introspection and the error messages of impossible requests."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from sched_helpers import node, req, started

from loophub.pool import NodeSpec
from loophub.scheduler import (
    GIB,
    POLICIES,
    Node,
    Resources,
    SchedulerConfig,
    SchedulerError,
    SchedulerState,
)


@pytest.mark.parametrize("policy", ["drf", "balanced-drf"])
def test_drf_paper_example(policy):
    """Ghodsi et al.: <9 CPU, 18 GB>; A <1 CPU, 4 GB>, B <3 CPU, 1 GB> -> A 3 tasks, B 2."""
    st = SchedulerState(policy, nodes=[node("n", 9, 18)], validate=True, auto_schedule=False)
    for i in range(10):  # B's requests first: DRF must not depend on submission order
        st.submit(req(f"b{i}", "B", cpu=3, mem_gib=1), 0)
        st.submit(req(f"a{i}", "A", cpu=1, mem_gib=4), 0)
    counts = Counter(r[0] for r in started(st.tick(0)))
    assert counts == {"a": 3, "b": 2}
    shares = st.dominant_shares()
    assert shares["A"] == pytest.approx(12 / 18) and shares["B"] == pytest.approx(6 / 9)


def test_node_from_pool_spec():
    spec = NodeSpec(name="gpu1", cpu=32.0, mem=256 * GIB, gpu=4, gpu_type="A100")
    n = Node.from_spec(spec)
    assert n.capacity == Resources(cpu=32.0, mem=256 * GIB, gpu=4) and n.gpu_type == "A100"


def test_gang_is_all_or_nothing_and_gpu_indices_are_distinct():
    st = SchedulerState("drf", nodes=[node("a", 8, 64, 4), node("b", 8, 64, 4)], validate=True)
    assert started(st.submit(req("s", "t", cpu=1, gpu=1, count=2), 0)) == ["s"]
    assert {u.node for u in st.allocation("s").units} == {"a"}
    # one unit of 3 GPUs fits on b, the second nowhere: nothing may start
    assert started(st.submit(req("g3", "t", cpu=1, gpu=3, count=2), 0)) == []
    assert st.blocking_resource("g3") == "gpu"
    assert started(st.finish("s", 1)) == ["g3"]
    st.finish("g3", 2)
    decisions = st.submit(req("g2", "u", cpu=1, gpu=2, count=4), 2)
    assert started(decisions) == ["g2"]
    units = decisions[0].allocation.units
    assert len(units) == 4
    for name in ("a", "b"):
        gpus = [g for u in units if u.node == name for g in u.gpus]
        assert sorted(gpus) == [0, 1, 2, 3]
    assert all(u.cores is not None and len(u.cores) == 1 for u in units)


def test_gpu_type_constraint():
    st = SchedulerState("drf", nodes=[node("t4", 8, 32, 2, "T4"), node("v", 8, 32, 2, "V100")])
    d = st.submit(req("x", "t", gpu=1, gpu_type="V100|A100"), 0)
    assert d[0].allocation.units[0].node == "v"
    assert "GPU type H100" in st.fits_ever(req("y", "t", gpu=1, gpu_type="H100"))


def test_fits_ever_reasons():
    st = SchedulerState("drf", SchedulerConfig(quotas={"small": {"gpu": 1}}),
                        nodes=[node("a", 8, 64, 4)])
    assert "larger than the pool" in st.fits_ever(req("big", "t", gpu=8))
    assert "quota" in st.fits_ever(req("q", "small", gpu=2))
    assert st.fits_ever(req("ok", "t", gpu=4)) is None
    with pytest.raises(SchedulerError, match="larger than the pool"):
        st.submit(req("big", "t", gpu=8), 0)


def test_quotas_cap_what_a_tenant_and_a_group_hold():
    cfg = SchedulerConfig(quotas={"alice": {"gpu": 2}}, group_quotas={"lab": {"cpu": 3}})
    st = SchedulerState("balanced-drf", cfg, nodes=[node("a", 16, 64, 8)], validate=True)
    for i in range(3):
        st.submit(req(f"a{i}", "alice", cpu=1, gpu=1), 0)
    assert sorted(st.running) == ["a0", "a1"]
    assert st.blocking_resource("a2") == "quota:gpu"
    for i in range(4):
        st.submit(req(f"l{i}", f"user{i}", cpu=1, groups=("lab",)), 0)
    assert sorted(r for r in st.running if r.startswith("l")) == ["l0", "l1", "l2"]
    st.finish("a0", 1)
    assert "a2" in st.running


def test_weights_come_from_tenant_else_best_group():
    cfg = SchedulerConfig(weights={"bob": 3}, group_weights={"lab": 2, "ops": 5})
    st = SchedulerState("drf", cfg, nodes=[node("a", 8, 8)])
    st.submit(req("x", "carol", cpu=1, groups=("lab", "ops")), 0)
    assert st.tenant_weight("bob") == 3 and st.tenant_weight("carol") == 5
    assert st.tenant_weight("dave") == 1


def test_cancel_finish_and_node_removal_requeue():
    st = SchedulerState("drf", nodes=[node("a", 4, 8), node("b", 4, 8)], validate=True)
    st.submit(req("j1", "t", cpu=4), 0)
    st.submit(req("j2", "t", cpu=4), 0)
    st.submit(req("j3", "t", cpu=4), 0)
    assert sorted(st.running) == ["j1", "j2"]
    node_of_j1 = st.allocation("j1").units[0].node
    decisions = st.remove_node(node_of_j1, 1)
    assert [(d.action, d.request_id) for d in decisions] == [("preempt", "j1")]
    assert st.queue_position("j1") == 0  # back at its original place
    st.cancel("j3", 2)
    st.finish("j2", 3)
    assert "j1" in st.running
    with pytest.raises(SchedulerError):
        st.finish("nope", 4)
    with pytest.raises(SchedulerError, match="backwards"):
        st.tick(1)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_export_restore_round_trip_continues_identically(policy):
    def build() -> SchedulerState:
        st = SchedulerState(policy, SchedulerConfig(aging_bound=50),
                            nodes=[node("a", 8, 32, 2, "T4"), node("b", 16, 64)], validate=True)
        for i in range(12):
            st.submit(req(f"r{i}", f"t{i % 3}", cpu=1 + i % 4, mem_gib=2, gpu=i % 2,
                          runtime=10.0 * (1 + i % 3)), i)
        st.finish(next(iter(sorted(st.running))), 20)
        return st

    a = build()
    data = json.loads(json.dumps(a.export_state()))
    b = SchedulerState.from_export(data, validate=True)
    assert b.export_state() == a.export_state()
    for st in (a, b):
        st.submit(req("late", "t9", cpu=2, runtime=5.0), 30)
    ra, rb = a.tick(100), b.tick(100)
    assert [(d.action, d.request_id, d.allocation) for d in ra] == [
        (d.action, d.request_id, d.allocation) for d in rb]


def test_introspection_position_blocking_estimate():
    st = SchedulerState("fifo", nodes=[node("a", 4, 16)], validate=True)
    st.submit(req("run", "x", cpu=4, runtime=100.0), 0)
    st.submit(req("w1", "x", cpu=2, runtime=10.0), 1)
    st.submit(req("w2", "y", mem_gib=32), 2) if st.fits_ever(req("w2", "y", mem_gib=32)) is None \
        else None
    st.submit(req("w3", "y", cpu=1, runtime=10.0), 3)
    assert st.queue_position("w1") == 0 and st.queue_position("w3") == 1
    assert st.blocking_resource("w1") == "cpu"
    assert st.estimated_start("w1") == pytest.approx(100.0)
    assert st.queue_position("run") is None
    assert set(st.dominant_shares()) == {"x", "y"}
    assert st.node("a").capacity.cpu == 4 and st.node_free("a")["cpu"] == 0


def test_extensible_resource_key():
    fpga = Node("f", Resources.from_dict({"cpu": 4, "mem": GIB, "fpga": 2}))
    st = SchedulerState("drf", nodes=[fpga], validate=True)
    d = st.submit(req("a", "t", cpu=1).__class__("a", "t", Resources.from_dict(
        {"cpu": 1, "fpga": 2})), 0)
    assert started(d) == ["a"]
    assert st.blocking_resource is not None
    d = st.submit(req("b", "t", cpu=1).__class__("b", "t", Resources.from_dict({"fpga": 1})), 0)
    assert d == [] and st.blocking_resource("b") == "fpga"
