"""Each policy's golden ordering and placement on small hand-made cases."""

from __future__ import annotations

from collections import Counter

import pytest
from sched_helpers import node, req, started

from loophub.scheduler import POLICIES, SchedulerConfig, SchedulerState


def fresh(policy: str, nodes, **cfg) -> SchedulerState:
    return SchedulerState(policy, SchedulerConfig(**cfg), nodes, validate=True,
                          auto_schedule=False)


def test_policies_registered_by_name():
    assert set(POLICIES) == {"fifo", "drf", "balanced-drf", "slurm-fairshare", "tetris"}
    with pytest.raises(ValueError, match="unknown policy"):
        SchedulerState("lottery")


def test_fifo_blocks_behind_its_head_without_runtimes():
    st = fresh("fifo", [node("n", 4, 16)])
    st.submit(req("r0", "a", cpu=3), 0)
    st.submit(req("q1", "a", cpu=2), 0)
    st.submit(req("q2", "b", cpu=1), 0)
    assert started(st.tick(0)) == ["r0"]  # q2 would fit but must wait behind q1


def test_fifo_easy_backfill_with_known_runtimes():
    st = fresh("fifo", [node("n", 4, 16)])
    st.submit(req("r0", "a", cpu=3, runtime=100.0), 0)
    st.submit(req("q1", "a", cpu=2, runtime=50.0), 0)
    st.submit(req("long", "b", cpu=1, runtime=500.0), 0)  # would delay q1: no backfill
    st.submit(req("short", "b", cpu=1, runtime=10.0), 0)  # ends before q1's shadow time
    assert started(st.tick(0)) == ["r0", "short"]
    assert st.estimated_start("q1") == pytest.approx(100.0)


def test_drf_serves_the_tenant_with_the_smaller_dominant_share():
    for policy, first in (("drf", "b1"), ("balanced-drf", "b1"), ("fifo", "a1")):
        st = fresh(policy, [node("n", 6, 60)])
        st.submit(req("a0", "A", cpu=4), 0)
        st.tick(0)
        st.submit(req("a1", "A", cpu=2), 1)
        st.submit(req("b1", "B", cpu=2), 2)
        assert started(st.tick(2)) == [first], policy


def test_weighted_drf_gives_shares_in_proportion_to_weights():
    st = fresh("drf", [node("n", 9, 90)], weights={"A": 2})
    for i in range(9):
        st.submit(req(f"a{i}", "A", cpu=1), 0)
        st.submit(req(f"b{i}", "B", cpu=1), 0)
    assert Counter(r[0] for r in started(st.tick(0))) == {"a": 6, "b": 3}


def test_balanced_drf_keeps_cpu_jobs_off_gpu_nodes():
    nodes = [node("gpu", 32, 128, 4), node("cpu", 32, 128)]
    where = {}
    for policy in ("drf", "balanced-drf"):
        st = fresh(policy, nodes)
        st.submit(req("c", "t", cpu=16, mem_gib=32), 0)
        where[policy] = st.tick(0)[0].allocation.units[0].node
    assert where == {"drf": "gpu", "balanced-drf": "cpu"}


def test_balanced_drf_packs_rather_than_spreads_equal_choices():
    st = fresh("balanced-drf", [node("a", 8, 32, 8), node("b", 8, 32, 8)])
    for i in range(2):
        st.submit(req(f"g{i}", "t", cpu=1, mem_gib=4, gpu=1), 0)
    nodes = {d.allocation.units[0].node for d in st.tick(0)}
    assert len(nodes) == 1  # the other node stays whole for an 8-GPU gang


def _starvation_run(policy: str, bound: float) -> float | None:
    """B keeps a 4-core node busy with 1-core jobs; A needs all 4 cores. A's start time."""
    st = fresh(policy, [node("n", 4, 16)], aging_bound=bound, preempt_on_aging=False)
    ends: dict[str, float] = {}
    n = 0
    for t in range(0, 600, 5):
        if t == 5:
            st.submit(req("big", "A", cpu=4, runtime=30.0), t)
        for rid, end in list(ends.items()):
            if end <= t and rid in st.running:
                st.finish(rid, t)
        while sum(1 for r in st.queued if r != "big") < 4:
            runtime = 20.0 + 10.0 * n if n < 4 else 50.0  # staggered: never all free at once
            st.submit(req(f"b{n}", "B", cpu=1, runtime=runtime), t)
            n += 1
        for d in st.tick(t):
            if d.request_id == "big":
                return t
            ends[d.request_id] = t + st.running[d.request_id].item.runtime
    return None


def test_aging_bounds_the_wait_that_drf_lets_starve():
    assert _starvation_run("drf", 100.0) is None
    start = _starvation_run("balanced-drf", 100.0)
    assert start is not None and start - 5 <= 100.0 + 50.0


def test_aging_preempts_younger_preemptible_work():
    st = fresh("balanced-drf", [node("n", 4, 16)], aging_bound=100.0)
    for i in range(4):
        st.submit(req(f"b{i}", "B", cpu=1, preemptible=True), 0)
    st.tick(0)
    st.submit(req("big", "A", cpu=4), 1)
    assert st.tick(50) == []
    decisions = st.tick(101)
    assert [d.action for d in decisions] == ["preempt"] * 4 + ["start"]
    assert decisions[-1].request_id == "big"
    assert st.queue_position("b0") == 0


def test_preempted_request_ages_from_its_preemption_and_protection_ends():
    cfg = SchedulerConfig(aging_bound=30.0, aging_quantum=10.0)
    state = SchedulerState("balanced-drf", cfg, [node("n", 8, 8)], auto_schedule=False)
    state.submit(req("a", "A", cpu=8, preemptible=True, runtime=1000.0), 0.0)
    assert started(state.tick(0.0)) == ["a"]
    state.submit(req("b", "B", cpu=8, preemptible=True, runtime=1000.0), 1.0)
    took = state.tick(31.0)  # b aged: preempts a (tenant A holds more than B)
    assert [(d.action, d.request_id) for d in took] == [("preempt", "a"), ("start", "b")]
    assert state.running["b"].protected and state.next_wakeup() == 41.0
    assert state.tick(41.0) == []  # b's protection ended, but a has waited only 10 s again
    assert not state.running["b"].protected and state.next_wakeup() == 46.0
    assert state.tick(46.0) == []  # half the bound: a goes first with a reservation, no more
    assert [r.request_id for r in state.reservations] == ["a"] and state.next_wakeup() == 61.0
    took = state.tick(61.0)  # a aged again, from its preemption at 31
    assert [(d.action, d.request_id) for d in took] == [("preempt", "b"), ("start", "a")]


def test_every_aged_request_of_a_tenant_is_served_in_one_pass():
    """Aged requests are served in DRF order among the aged, not one per tenant per pass: a
    burst of one tenant's requests that age together starts together (here by swapping out
    that tenant's newer preemptible work)."""
    state = SchedulerState("balanced-drf", SchedulerConfig(aging_bound=100.0,
                                                           aging_scope="all"),
                           [node("n", 4, 8)], validate=True, auto_schedule=False)
    for rid in ("a-old1", "a-old2"):
        state.submit(req(rid, "a", cpu=1, runtime=1000.0), 0)
    state.tick(0)
    for i in range(2):
        state.submit(req(f"a-new{i}", "a", cpu=1, runtime=1000.0, preemptible=True), 1)
    state.tick(1)  # the pool is full
    for rid in ("a-aged1", "a-aged2"):
        state.submit(req(rid, "a", cpu=1, runtime=50.0), 2)
    assert sorted(started(state.tick(102))) == ["a-aged1", "a-aged2"]


def test_half_way_to_the_bound_a_request_is_reserved_for_without_preempting():
    cfg = SchedulerConfig(aging_bound=100.0)  # aging_reserve_at: half the bound
    state = SchedulerState("balanced-drf", cfg, [node("n", 4, 8)], validate=True,
                           auto_schedule=False)
    state.submit(req("b-run", "b", cpu=4, runtime=500.0, preemptible=True), 0)
    state.tick(0)
    state.submit(req("a-wait", "a", cpu=4, runtime=10.0), 1)
    state.tick(1)
    assert state.next_wakeup() == 51.0  # half the bound, then the bound
    assert state.tick(51) == [] and [r.request_id for r in state.reservations] == ["a-wait"]
    assert state.next_wakeup() == 101.0
    took = state.tick(101)  # at the bound it takes the more-served tenant's work
    assert [(d.action, d.request_id) for d in took] == [("preempt", "b-run"), ("start", "a-wait")]


def test_work_started_from_a_reservation_is_not_swapped_for_its_own_tenant_at_once():
    """A request that started from its early reservation runs one quantum before an aged
    request of its own tenant may swap it out (no churn inside a tenant's share); the guard
    survives export and restore."""
    cfg = SchedulerConfig(aging_bound=100.0, aging_reserve_at=10.0, aging_quantum=500.0,
                          aging_scope="all")
    state = SchedulerState("balanced-drf", cfg, [node("n", 2, 8)], validate=True,
                           auto_schedule=False)
    state.submit(req("a1", "a", cpu=2, runtime=20.0), 0)
    state.tick(0)
    state.submit(req("a2", "a", cpu=2, runtime=1000.0, preemptible=True), 1)
    state.tick(11)  # reserved
    state.finish("a1", 20)
    assert started(state.tick(20)) == ["a2"]
    assert state.policy.swap_guard == {"a2": 520.0}
    state.submit(req("a3", "a", cpu=2, runtime=10.0), 21)
    copy = SchedulerState.from_export(state.export_state(), validate=True)
    assert copy.policy.swap_guard == state.policy.swap_guard
    assert copy.tick(121) == []  # a3 aged, but a2 is guarded against its own tenant
    took = copy.tick(520)
    assert [(d.action, d.request_id) for d in took] == [("preempt", "a2"), ("start", "a3")]


@pytest.mark.parametrize("victims", ["more-served", "any"])
def test_aging_victims_decide_whether_the_most_served_may_preempt(victims):
    """A's aged request may take B's preemptible work only with aging_victims="any":
    A already holds more than B, so the fair default leaves B's work alone."""
    cfg = SchedulerConfig(aging_bound=30.0, aging_victims=victims, aging_scope="all")
    state = SchedulerState("balanced-drf", cfg, [node("n", 8, 8), node("m", 4, 4)],
                           auto_schedule=False)
    state.submit(req("a0", "A", cpu=8, runtime=1000.0), 0.0)
    state.submit(req("b0", "B", cpu=4, preemptible=True, runtime=1000.0), 0.0)
    assert sorted(started(state.tick(0.0))) == ["a0", "b0"]
    state.submit(req("a1", "A", cpu=4, runtime=1000.0), 1.0)
    took = [(d.action, d.request_id) for d in state.tick(31.0)]
    if victims == "any":
        assert took == [("preempt", "b0"), ("start", "a1")]
    else:
        assert took == [] and state.queue_position("a1") == 0


def test_an_aged_request_may_swap_out_its_own_tenants_newer_work():
    """The most-served tenant's aged request takes its own tenant's preemptible work (no
    share changes hands), never a less-served tenant's."""
    cfg = SchedulerConfig(aging_bound=30.0, aging_scope="all")
    state = SchedulerState("balanced-drf", cfg, [node("n", 8, 8), node("m", 2, 2)],
                           auto_schedule=False)
    state.submit(req("a0", "A", cpu=8, preemptible=True, runtime=1000.0), 0.0)
    state.submit(req("b0", "B", cpu=2, preemptible=True, runtime=1000.0), 0.0)
    assert sorted(started(state.tick(0.0))) == ["a0", "b0"]
    state.submit(req("a1", "A", cpu=8, runtime=1000.0), 1.0)
    took = [(d.action, d.request_id) for d in state.tick(31.0)]
    assert took == [("preempt", "a0"), ("start", "a1")]
    assert "b0" in state.running


def test_aged_requests_of_tenants_at_their_share_keep_drf_order():
    """aging_scope "under-share": under overload everything ages; only tenants
    below their weighted fair share jump the queue, so the order stays DRF's, not age's.
    With "all" (the old rule) an aged request goes first whoever holds what."""
    def run(scope: str) -> list[str]:
        cfg = SchedulerConfig(aging_bound=30.0, aging_scope=scope, preempt_on_aging=False)
        state = SchedulerState("balanced-drf", cfg, [node("n", 4, 8)], auto_schedule=False)
        state.submit(req("a0", "A", cpu=3, runtime=100.0), 0.0)
        state.submit(req("b0", "B", cpu=1, runtime=100.0), 0.0)
        state.tick(0.0)
        state.submit(req("a1", "A", cpu=1, runtime=10.0), 1.0)  # A is above its half
        state.submit(req("b1", "B", cpu=1, runtime=10.0), 50.0)  # B is below, not aged
        state.finish("b0", 60.0)  # one core frees when both have aged
        return started(state.tick(60.0))

    assert run("under-share") == ["b1"]
    assert run("tiered") == ["b1"]  # A's aged request comes after DRF order, not before
    assert run("all") == ["a1"]


@pytest.mark.parametrize("over", ["swap", "reserve"])
def test_tiered_aging_lets_an_over_share_request_swap_only_its_own_tenants_work(over):
    """aging_scope "tiered" (default): a request of a tenant at its fair share, past the
    bound, may swap out its own tenant's newer preemptible work (no share moves), never a
    less-served tenant's; with aging_over_share="reserve" it only reserves."""
    cfg = SchedulerConfig(aging_bound=30.0, aging_scope="tiered", aging_over_share=over)
    state = SchedulerState("balanced-drf", cfg, [node("n", 8, 8)], auto_schedule=False,
                           validate=True)
    state.submit(req("a0", "A", cpu=6, preemptible=True, runtime=1000.0), 0.0)
    state.submit(req("b0", "B", cpu=2, preemptible=True, runtime=1000.0), 0.0)
    assert sorted(started(state.tick(0.0))) == ["a0", "b0"]
    state.submit(req("a1", "A", cpu=6, runtime=1000.0), 1.0)
    took = [(d.action, d.request_id) for d in state.tick(32.0)]
    if over == "swap":
        assert took == [("preempt", "a0"), ("start", "a1")]
    else:
        assert took == [] and [r.request_id for r in state.reservations] == ["a1"]
    assert "b0" in state.running


def test_unknown_aging_over_share_is_refused():
    with pytest.raises(ValueError, match="aging_over_share"):
        SchedulerState("balanced-drf", SchedulerConfig(aging_over_share="x"),
                       [node("n", 1, 1)])


def test_unknown_aging_scope_is_refused():
    with pytest.raises(ValueError, match="aging_scope"):
        SchedulerState("balanced-drf", SchedulerConfig(aging_scope="old"), [node("n", 1, 1)])


def test_unknown_aging_victims_is_refused():
    with pytest.raises(ValueError, match="aging_victims"):
        SchedulerState("balanced-drf", SchedulerConfig(aging_victims="nobody"), [node("n", 1, 1)])


def test_fair_share_preemption_when_enabled():
    st = fresh("drf", [node("n", 4, 16)], preemption=True, preemption_grace=0.0)
    for i in range(4):
        st.submit(req(f"b{i}", "B", cpu=1, preemptible=True), 0)
    st.tick(0)
    st.submit(req("a", "A", cpu=2), 1)
    decisions = st.tick(1)
    assert [d.action for d in decisions] == ["preempt", "preempt", "start"]
    # B keeps 2 of 4 cores: never pushed below the tenant that preempted it
    assert st.dominant_shares() == {"A": 0.5, "B": 0.5}
    assert st.tick(2) == []


def test_slurm_fairshare_prefers_the_tenant_with_less_past_usage():
    st = fresh("slurm-fairshare", [node("n", 4, 16)], slurm_calc_period=0.0)
    st.submit(req("h0", "heavy", cpu=4), 0)
    st.tick(0)
    st.finish("h0", 1000)
    st.submit(req("h1", "heavy", cpu=4), 1000)
    st.submit(req("l1", "light", cpu=4), 1001)
    assert started(st.tick(1001)) == ["l1"]


@pytest.mark.parametrize("billing", ["sum", "max"])
def test_slurm_billing_modes(billing):
    st = fresh("slurm-fairshare", [node("n", 4, 16)], slurm_billing=billing)
    st.submit(req("x", "t", cpu=2, mem_gib=4), 0)
    st.tick(0)
    st.tick(100)
    usage = st.policy.usage["t"]
    assert usage == pytest.approx(100 * (0.5 + 0.25 if billing == "sum" else 0.5), rel=1e-3)


def test_tetris_picks_the_request_aligned_with_free_capacity():
    order = {}
    for policy in ("fifo", "tetris"):
        st = fresh(policy, [node("n", 8, 8, 8)])
        st.submit(req("run", "t", cpu=6), 0)
        st.tick(0)
        st.submit(req("x", "t", cpu=2), 1)
        st.submit(req("y", "u", cpu=1, gpu=4), 2)
        order[policy] = started(st.tick(2))
    assert order == {"fifo": ["x"], "tetris": ["y"]}


def test_stranded_shares_matches_its_definition_resource_by_resource():
    """The vectorised stranding test equals the per-resource loop it replaced: free r on a
    node is stranded when another free resource c is below the smallest queued need of c
    among the units that need r."""
    import numpy as np

    from loophub.scheduler.state import EPS, stranded_shares

    rng = np.random.default_rng(3)
    for _ in range(50):
        free = rng.integers(0, 9, size=(20, 3)).astype(float)
        inv = 1.0 / rng.integers(1, 9, size=(20, 3))
        ref = rng.integers(0, 5, size=(3, 3)).astype(float)
        ref[rng.random(3) < 0.3] = np.nan  # nothing queued needs that resource
        expected = np.zeros(20)
        for r in range(3):
            if np.isnan(ref[r, 0]):
                continue
            blocked = np.zeros(20, dtype=bool)
            for c in range(3):
                if c != r and ref[r, c] > 0:
                    blocked |= free[:, c] < ref[r, c] - EPS
            expected += np.where(blocked, free[:, r] * inv[:, r], 0.0)
        assert np.allclose(stranded_shares(free, inv, ref), expected)


@pytest.mark.parametrize("weight, expected", [(0.0, "b"), (8.0, "a")])
def test_balanced_placement_best_fits_gpu_units(weight, expected):
    """With the GPU best-fit term a 2-GPU unit fills the node that has exactly 2 GPUs left
    (keeping the other node whole for an 8-GPU gang); without it, spreading the node's
    CPU use evenly sends it to the empty node (stranding counted in full, as before
    ``balanced_stranding_pressure``)."""
    cfg = SchedulerConfig(balanced_gpu_fit_weight=weight, balanced_stranding_pressure=0.0)
    state = SchedulerState("balanced-drf", cfg, [node("a", 32, 256, 8), node("b", 32, 256, 8)],
                           auto_schedule=False)
    state.submit(req("x", "t", cpu=16, mem_gib=8, gpu=6), 0)
    state.tick(0)
    assert state.allocation("x").units[0].node == "a"
    state.submit(req("y", "t", cpu=4, mem_gib=8, gpu=2), 1)
    state.tick(1)
    assert state.allocation("y").units[0].node == expected


@pytest.mark.parametrize("exponent, second", [(0.0, "b"), (4.0, "a")])
def test_stranding_counts_by_pressure(exponent, second):
    """GPUs are the bottleneck (an 8-GPU gang waits) and cores plentiful: a 1-GPU unit fills
    the small node's last GPU, leaving its cores beside no free GPU, rather than taking a GPU
    of the large node. Counting those cores as stranded in full (exponent 0, the rule
    before) kept the small node's GPU idle and sent the unit to the large node."""
    cfg = SchedulerConfig(balanced_stranding_pressure=exponent)
    state = SchedulerState("balanced-drf", cfg, [node("a", 64, 512, 2), node("b", 96, 512, 8)],
                           auto_schedule=False)
    state.submit(req("g", "t1", cpu=60, mem_gib=200, gpu=4), 0)
    state.tick(0)
    state.submit(req("h", "t2", cpu=20, mem_gib=100, gpu=8), 1)
    for i in range(3):
        state.submit(req(f"s{i}", "t3", cpu=8, mem_gib=16, gpu=1), 1)
    state.tick(1)
    assert [state.allocation(r).units[0].node for r in ("g", "s0", "s1")] == ["b", "a", second]
    assert list(state.queued) == ["h"]


def test_stranding_scale_follows_the_bottleneck():
    """A resource's stranding counts by its pressure (allocated + queued, over capacity,
    at most 1) relative to the most pressed resource's, to the exponent."""
    from loophub.scheduler.policies import stranding_scale

    state = SchedulerState("balanced-drf", SchedulerConfig(),
                           [node("a", 64, 512, 2), node("c", 128, 128)], auto_schedule=False)
    assert stranding_scale(state, 4.0) is None  # nothing held or wanted
    state.submit(req("g", "t", cpu=8, mem_gib=16, gpu=2), 0)
    state.submit(req("w", "t", cpu=8, mem_gib=16, gpu=2), 0)  # waits: GPUs are the bottleneck
    state.tick(0)
    cpu, mem, gpu = stranding_scale(state, 4.0)
    assert gpu == 1.0 and cpu == 0.0 and mem == 0.0
    assert stranding_scale(state, 0.0) is None
    for i in range(4):  # cores are wanted beyond capacity too: both count in full
        state.submit(req(f"c{i}", "u", cpu=120, mem_gib=8), 1)
    state.tick(1)
    assert stranding_scale(state, 4.0)[0::2] == (1.0, 1.0)
    state = SchedulerState("balanced-drf", SchedulerConfig(),
                           [node("a", 64, 512, 8), node("c", 128, 128)], auto_schedule=False)
    state.submit(req("g", "t", cpu=8, mem_gib=16, gpu=1), 0)
    for i in range(4):  # cores are the bottleneck, one GPU of eight is used
        state.submit(req(f"c{i}", "u", cpu=100, mem_gib=8), 0)
    state.tick(0)
    cpu, mem, gpu = stranding_scale(state, 4.0)
    assert cpu == 1.0 and gpu == 0.0 and mem == 0.0


def test_few_node_scores_equal_the_vectorised_scores():
    """The plain-Python scorer used for a handful of candidate nodes rates them exactly as
    balanced_scores does (random pools, queues and units)."""
    import numpy as np

    from loophub.scheduler.policies import _few_node_scores, balanced_scores
    from loophub.scheduler.state import FitTracker

    rng = np.random.default_rng(5)
    compared = 0
    for trial in range(30):
        nodes = [node(f"n{i}", 32, 128, int(rng.choice([0, 2, 8]))) for i in range(5)]
        state = SchedulerState("balanced-drf", SchedulerConfig(), nodes, auto_schedule=False)
        for j in range(12):
            state.submit(req(f"r{trial}-{j}", "t", cpu=float(rng.integers(1, 20)),
                             mem_gib=float(rng.integers(1, 60)),
                             gpu=int(rng.choice([0, 0, 1, 2]))), 0)
        state.tick(0)
        FitTracker(state)  # sets the stranding reference from the queue
        if state.stranding_ref is None:
            continue
        d = np.array([2.0, 4.0 * 1024**3, float(rng.choice([0, 1]))])
        idx = np.arange(len(nodes))
        expected = balanced_scores(state, idx, d, state.free)
        assert np.allclose(_few_node_scores(state, idx, d, state.free), expected)
        compared += 1
    assert compared >= 10


def _random_scored_state(rng, trial: int, n_nodes: int = 12):
    from loophub.scheduler.state import FitTracker

    nodes = [node(f"n{i}", float(rng.choice([16, 32, 96])), float(rng.choice([64, 128, 384])),
                  int(rng.choice([0, 2, 4, 8]))) for i in range(n_nodes)]
    cfg = SchedulerConfig(balanced_gpu_fit_weight=float(rng.choice([0.0, 0.3, 1.0])),
                          balanced_packing_weight=float(rng.uniform(0.1, 2.0)),
                          balanced_stranding_weight=float(rng.uniform(0.1, 2.0)))
    state = SchedulerState("balanced-drf", cfg, nodes, auto_schedule=False)
    for j in range(3 * n_nodes):
        request = req(f"r{trial}-{j}", f"t{j % 3}", cpu=float(rng.uniform(0.5, 24)),
                      mem_gib=float(rng.uniform(0.3, 90)), gpu=int(rng.choice([0, 0, 1, 2, 4])))
        if not state.fits_ever(request):
            state.submit(request, 0)
    state.tick(0)
    FitTracker(state)  # sets the stranding reference from the queue
    return state


def test_exact_scores_equal_the_vectorised_scores_bit_for_bit():
    """The plain-Python scorer the score cache uses for a few stale nodes gives exactly the
    floats balanced_scores gives (so mixing the two never changes a choice), on nodes of
    all sizes and states, including ones scored on their own."""
    import numpy as np

    from loophub.scheduler.policies import (
        _blocks,
        _exact_scores,
        balanced_scores,
        stranding_thresholds,
    )

    rng = np.random.default_rng(11)
    compared = 0
    for trial in range(40):
        state = _random_scored_state(rng, trial)
        if state.stranding_ref is None:
            continue
        thr = _blocks(stranding_thresholds(state.stranding_ref))
        most = float(state.cap[:, 2].max(initial=0.0))
        for _ in range(5):
            d = np.array([float(rng.uniform(0.1, 8)), float(rng.uniform(0.1, 32)) * 1024**3,
                          float(rng.choice([0, 1, 2]))])
            idx = np.arange(len(state.free))
            expected = balanced_scores(state, idx, d, state.free)
            got = _exact_scores(state, idx, d, state.free[idx].tolist(), thr, most)
            assert np.array_equal(np.array(got), expected)
            for i in idx.tolist():  # one node alone: the same float as among all
                assert balanced_scores(state, idx[i:i + 1], d, state.free)[0] == expected[i]
            compared += 1
    assert compared >= 100


def test_score_cache_chooses_as_scoring_from_scratch():
    """balanced_score with its per-shape node score cache picks the same node as scoring
    every candidate afresh, while nodes' free capacity changes between calls."""
    import numpy as np

    from loophub.scheduler import policies
    from loophub.scheduler.policies import _few_node_scores, balanced_score, balanced_scores

    rng = np.random.default_rng(3)
    for trial in range(15):
        state = _random_scored_state(rng, trial, n_nodes=16)
        if state.stranding_ref is None:
            continue
        shapes = [np.array([float(c), float(m) * 1024**3, float(g)])
                  for c, m, g in ((1, 2, 0), (4, 16, 1), (2, 8, 2), (8, 30, 0))]
        for _ in range(60):
            d = shapes[int(rng.integers(len(shapes)))]
            fits = np.flatnonzero((state.free >= d - policies.EPS).all(axis=1))
            if fits.size == 0:
                break
            idx = fits[: int(rng.integers(1, fits.size + 1))]
            if idx.size == 1:
                fresh = 0
            elif idx.size <= policies.FEW_NODES:
                scores = _few_node_scores(state, idx, d, state.free)
                fresh = scores.index(min(scores))
            else:
                fresh = int(np.argmin(balanced_scores(state, idx, d, state.free)))
            assert balanced_score(state, idx, d, state.free) == fresh
            slot = int(idx[fresh])
            if rng.random() < 0.7:  # take the unit, or give some capacity back elsewhere
                state.free[slot] -= d
            else:
                other = int(rng.integers(len(state.free)))
                state.free[other] = np.minimum(state.free[other] + d, state.cap[other])


def _one_h100_and_a_held_one(urgent_at):
    """A's week-long job holds the only H100; B (more served than A, still below its fair
    share) waits for that H100."""
    cfg = SchedulerConfig(aging_bound=100.0, aging_quantum=50.0, aging_urgent_at=urgent_at)
    nodes = [node("h", 4, 8, gpu=1, gpu_type="H100")] + [
        node(f"t{i}", 4, 8, gpu=1, gpu_type="T4") for i in range(3)]
    state = SchedulerState("balanced-drf", cfg, nodes, validate=True, auto_schedule=False)
    state.submit(req("a-week", "A", cpu=1, gpu=1, gpu_type="H100", preemptible=True,
                     runtime=604800.0), 0)
    for i in range(2):
        state.submit(req(f"b-t4-{i}", "B", cpu=1, gpu=1, gpu_type="T4", runtime=604800.0), 0)
    state.tick(0)
    state.submit(req("b-h100", "B", cpu=1, gpu=1, gpu_type="H100", preemptible=True,
                     runtime=604800.0), 1)
    return state


def _run_until(state, end):
    """Ticks at every wake-up until ``end``; returns (time, action, request) of each decision."""
    log = []
    now = state.now
    while (wake := state.next_wakeup()) is not None and wake <= end:
        now = max(wake, now)
        log += [(now, d.action, d.request_id) for d in state.tick(now)]
    return log


def test_by_default_the_more_served_tenant_waits_for_the_less_served_ones_job():
    state = _one_h100_and_a_held_one(urgent_at=None)
    assert _run_until(state, 20000) == []
    assert state.queue_position("b-h100") == 0 and "a-week" in state.running


def test_urgent_heads_take_turns_on_the_only_node_they_fit():
    """With aging_urgent_at, B's head takes the H100 from A's job (which has run more than
    a quantum) when it has waited that long; A, now below its share with nothing running,
    takes it back at the aging bound from the more-served B; and so on: turns, not a week's
    wait. The turn-taking state survives export and restore."""
    state = _one_h100_and_a_held_one(urgent_at=200.0)
    turn = [("preempt", "a-week"), ("start", "b-h100"), ("preempt", "b-h100"),
            ("start", "a-week")]
    log = _run_until(state, 850)
    assert [(a, r) for _, a, r in log] == turn * 2 + turn[:2]
    assert [t for t, a, _ in log if a == "start"] == [201.0, 301.0, 501.0, 601.0, 801.0]
    assert state.policy.urgent_served == {"B": 801.0}
    copy = SchedulerState.from_export(state.export_state(), validate=True)
    assert copy.policy.urgent_served == {"B": 801.0}
    assert [(a, r) for _, a, r in _run_until(copy, 1200)] == turn[2:] + turn[:2]


def test_urgent_tenants_take_turns_in_the_order_they_were_last_served():
    """Three tenants whose requests fit only the one H100: B and C (more served, each with
    T4 work) become urgent and take it in turn from A's job and from each other, A gets it
    back at the aging bound, and the queue order shows the tenant served longest ago first."""
    cfg = SchedulerConfig(aging_bound=100.0, aging_quantum=50.0, aging_urgent_at=200.0)
    nodes = [node("h", 4, 8, gpu=1, gpu_type="H100")] + [
        node(f"t{i}", 4, 8, gpu=1, gpu_type="T4") for i in range(5)]
    state = SchedulerState("balanced-drf", cfg, nodes, validate=True, auto_schedule=False)
    state.submit(req("a-week", "A", cpu=1, gpu=1, gpu_type="H100", preemptible=True,
                     runtime=604800.0), 0)
    for tenant in "bc":
        for i in range(2):
            state.submit(req(f"{tenant}-t4-{i}", tenant.upper(), cpu=1, gpu=1,
                             gpu_type="T4", runtime=604800.0), 0)
    state.tick(0)
    for t, tenant in enumerate("bc", start=1):
        state.submit(req(f"{tenant}-h100", tenant.upper(), cpu=1, gpu=1, gpu_type="H100",
                         preemptible=True, runtime=604800.0), t)
    state.tick(2)
    assert state.policy.queue_order(state, 203.0) == ["b-h100", "c-h100"]  # the older first
    state.policy.urgent_served = {"B": 150.0}
    assert state.policy.queue_order(state, 203.0) == ["c-h100", "b-h100"]  # B had a turn
    state.policy.urgent_served = {}
    log = _run_until(state, 560)
    holders = [(t, r) for t, a, r in log if a == "start"]
    assert holders == [(201.0, "b-h100"), (251.0, "c-h100"), (301.0, "a-week"),
                       (451.0, "b-h100"), (501.0, "c-h100"), (551.0, "a-week")]
    assert state.policy.urgent_served == {"B": 451.0, "C": 501.0}


def test_an_urgent_request_wakes_when_the_work_in_its_way_has_run_a_slice():
    """When B's head becomes urgent, the work on the only node it fits (A's, not
    protected: it started from the DRF pass) has run less than a quantum: the scheduler
    wakes when that slice ends, not at an unrelated event or at the work's end."""
    cfg = SchedulerConfig(aging_bound=100.0, aging_quantum=50.0, aging_reserve_at=100.0,
                          aging_urgent_at=100.0)
    nodes = [node("h", 4, 8, gpu=1, gpu_type="H100")] + [
        node(f"t{i}", 4, 8, gpu=1, gpu_type="T4") for i in range(3)]
    state = SchedulerState("balanced-drf", cfg, nodes, validate=True, auto_schedule=False)
    state.submit(req("c-h100", "C", cpu=1, gpu=1, gpu_type="H100", runtime=220.0), 0)
    for i in range(2):
        state.submit(req(f"b-t4-{i}", "B", cpu=1, gpu=1, gpu_type="T4", runtime=604800.0), 0)
    state.tick(0)
    state.submit(req("b-h100", "B", cpu=1, gpu=1, gpu_type="H100", preemptible=True,
                     runtime=604800.0), 150)
    state.tick(150)
    state.submit(req("a-h100", "A", cpu=1, gpu=1, gpu_type="H100", preemptible=True,
                     runtime=604800.0), 215)
    state.tick(215)
    state.finish("c-h100", 220)
    assert started(state.tick(220)) == ["a-h100"]  # A is the less served: DRF order
    assert state.next_wakeup() == 250.0  # b-h100 becomes urgent
    assert state.tick(250.0) == []  # a-h100 has run 30 s of its 50 s slice
    assert state.next_wakeup() == 270.0
    took = state.tick(270.0)
    assert [(d.action, d.request_id) for d in took] == [("preempt", "a-h100"),
                                                         ("start", "b-h100")]
