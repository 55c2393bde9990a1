"""Property tests over random pools and request streams (hypothesis).

Validate mode checks the invariants after every event: no over-allocation, free capacity equal
to capacity minus allocations, gangs whole, GPU indices distinct.
"""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sched_helpers import node, req

from loophub.scheduler import POLICIES, SchedulerConfig, SchedulerError, SchedulerState
from loophub.scheduler.sim import Job, simulate

FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

pools = st.lists(
    st.tuples(st.sampled_from([4, 8, 16, 32]), st.sampled_from([8, 32, 64]),
              st.sampled_from([0, 0, 2, 4, 8]), st.sampled_from([None, "A", "B"])),
    min_size=1, max_size=6)
requests = st.tuples(st.integers(0, 3), st.sampled_from([0.5, 1, 2, 4, 8]),
                     st.sampled_from([0, 1, 4, 16]), st.sampled_from([0, 0, 1, 2, 4]),
                     st.integers(1, 3), st.booleans(), st.sampled_from([None, "A", "A|B"]),
                     st.sampled_from([None, 5.0, 50.0]))
ops = st.lists(st.tuples(st.sampled_from(["submit", "submit", "submit", "finish", "cancel",
                                          "tick", "remove", "add"]), requests),
               min_size=5, max_size=40)


def make_pool(spec):
    return [node(f"n{i}", c, m, g, t if g else None) for i, (c, m, g, t) in enumerate(spec)]


@FAST
@given(policy=st.sampled_from(sorted(POLICIES)), pool=pools, stream=ops,
       preemption=st.booleans())
def test_random_event_streams_keep_every_invariant(policy, pool, stream, preemption):
    cfg = SchedulerConfig(aging_bound=20.0, preemption=preemption, preemption_grace=0.0,
                          quotas={"t3": {"gpu": 4}})
    state = SchedulerState(policy, cfg, make_pool(pool), validate=True)
    t, n = 0.0, 0
    for op, (tenant, cpu, mem, gpu, count, pre, gtype, rt) in stream:
        t += 3.0
        if op == "submit":
            r = req(f"r{n}", f"t{tenant}", cpu=cpu, mem_gib=mem, gpu=gpu, count=count,
                    preemptible=pre, gpu_type=gtype, runtime=rt, groups=(f"g{tenant % 2}",))
            n += 1
            if state.fits_ever(r) is None:
                decisions = state.submit(r, t)
            else:
                try:
                    state.submit(r, t)
                    raise AssertionError("an impossible request was accepted")
                except SchedulerError:
                    continue
        elif op in ("finish", "cancel") and (
                ids := sorted(state.running) if op == "finish" else sorted(
                    [*state.running, *state.queued])):
            decisions = getattr(state, op)(ids[tenant % len(ids)], t)
        elif op == "remove" and len(state.node_names()) > 1:
            decisions = state.remove_node(sorted(state.node_names())[0], t)
        elif op == "add":
            decisions = state.add_node(node(f"x{n}", 16, 64, 4, "A"), t)
            n += 1
        else:
            decisions = state.tick(t)
        for d in decisions:
            if d.action == "start":
                assert len(d.allocation.units) == state.running[d.request_id].item.request.count
    state.check_invariants()
    json.dumps(state.export_state())


@FAST
@given(pool=st.tuples(st.sampled_from([8, 16, 64]), st.sampled_from([16, 64, 256]),
                      st.sampled_from([0, 8])),
       tenants=st.lists(st.tuples(st.sampled_from([1, 2, 3]),
                                  st.sampled_from([0.5, 1, 2]), st.sampled_from([0, 1, 2]),
                                  st.sampled_from([0, 1])), min_size=2, max_size=4),
       policy=st.sampled_from(["drf", "balanced-drf"]))
def test_sharing_incentive_and_weights(pool, tenants, policy):
    """With unbounded demand of small tasks on one node, each tenant's dominant share is at
    least (w_i / W) * (1 - sum of unit shares) of the pool (the discrete sharing-incentive
    bound), and weighted dominant shares end up within one task of each other."""
    cpu, mem, gpu = pool
    cap = np.array([cpu, mem, gpu], dtype=float)
    picked = [(float(w), np.array([c, m, g if gpu else 0], dtype=float))
              for w, c, m, g in tenants]
    picked = [(w, u) for w, u in picked if (u <= cap / 8).all() and u.any()]
    if len(picked) < 2:
        return
    shares = _fill_one_node(policy, pool, picked)
    safe = np.where(cap > 0, cap, np.inf)
    unit_share = [float((u / safe).max()) for _, u in picked]
    total_w = sum(w for w, _ in picked)
    for i, (w, _) in enumerate(picked):
        assert shares[f"t{i}"] * w >= (w / total_w) * (7 / 8 - sum(unit_share)) - 1e-9


def _fill_one_node(policy, pool, picked) -> dict[str, float]:
    cpu, mem, gpu = pool
    cap = np.array([cpu, mem, gpu], dtype=float)
    safe = np.where(cap > 0, cap, np.inf)
    weights = {f"t{i}": w for i, (w, _) in enumerate(picked)}
    state = SchedulerState(policy, SchedulerConfig(weights=weights), [node("n", cpu, mem, gpu)],
                           auto_schedule=False)
    for i, (_, u) in enumerate(picked):
        for k in range(int(1 / float((u / safe).max())) + 2):  # more than the pool holds
            state.submit(req(f"t{i}-{k}", f"t{i}", cpu=u[0], mem_gib=u[1], gpu=int(u[2])), 0)
    state.tick(0)
    return state.dominant_shares()


@FAST
@given(weights=st.lists(st.sampled_from([1, 2, 3, 5]), min_size=2, max_size=5),
       unit=st.tuples(st.sampled_from([0.5, 1, 2]), st.sampled_from([0, 1, 4]),
                      st.sampled_from([0, 1])),
       pool=st.tuples(st.sampled_from([16, 64]), st.sampled_from([64, 256]),
                      st.sampled_from([0, 8, 16])),
       policy=st.sampled_from(["drf", "balanced-drf"]))
def test_weights_respected(weights, unit, pool, policy):
    """Tenants with the same demand end with weighted dominant shares one task apart."""
    u = np.array([unit[0], unit[1], unit[2] if pool[2] else 0], dtype=float)
    shares = _fill_one_node(policy, pool, [(float(w), u) for w in weights])
    cap = np.array(pool, dtype=float)
    task = float((u / np.where(cap > 0, cap, np.inf)).max())
    weighted = list(shares.values())
    assert max(weighted) - min(weighted) <= task / min(weights) + 1e-9


@settings(max_examples=40, deadline=None)
@given(small=st.lists(st.tuples(st.integers(0, 2), st.floats(0, 300), st.floats(5, 60),
                                st.sampled_from([1, 2, 4])), min_size=5, max_size=40),
       bound=st.sampled_from([30.0, 100.0]), preempt=st.booleans(),
       reserve_at=st.sampled_from([None, 10.0, 1e9]))
def test_aging_bound_holds(small, bound, preempt, reserve_at):
    """The request that ages first is never kept waiting past the bound plus the longest
    runtime of the work in its way (reservation); with preemption of preemptible work it
    starts at the bound at the latest. Everything else still finishes."""
    jobs = [Job("big", "A", 0.0, 20.0, 0, 8.0, 0, "job", False)]
    jobs += [Job(f"s{i}", f"t{t}", sub, dur, 0, float(c), 0, "job", True)
             for i, (t, sub, dur, c) in enumerate(small)]
    jobs.sort(key=lambda j: (j.submit, j.job_id != "big"))
    if min(jobs[1:], key=lambda j: j.submit).submit == 0.0:
        jobs = [jobs[0], *(j for j in jobs[1:] if j.submit > 0)]
    cfg = SchedulerConfig(aging_bound=bound, preempt_on_aging=preempt,
                          aging_reserve_at=reserve_at)  # 1e9: no early reservation
    res = simulate(jobs, [node("n", 8, 8)], "balanced-drf", cfg, validate=True)
    assert res.metrics["unfinished"] == 0 and res.metrics["jobs"] == len(jobs)
    slack = 0.0 if preempt else max(j.duration for j in jobs)
    assert res.first_start["big"] <= bound + slack + 1e-6


@settings(max_examples=40, deadline=None)
@given(bound=st.sampled_from([30.0, 100.0]), quantum=st.sampled_from([10.0, 30.0, 100.0, 250.0]),
       gap=st.floats(1.0, 50.0), lengths=st.tuples(st.floats(3, 10), st.floats(3, 10)),
       restart=st.sampled_from([0.0, 5.0]), reserve_at=st.sampled_from([None, 10.0, 1e9]))
def test_aging_bounds_every_stretch_of_waiting(bound, quantum, gap, lengths, restart,
                                               reserve_at):
    """Two long whole-node preemptible jobs: once one runs as aged work, the other ages again
    from its preemption and takes the node back when its protection quantum ends, so neither
    waits longer than max(bound, quantum) at a stretch. (Aged work protected forever would
    keep the other waiting until it finishes.)"""
    long = (bound + quantum) * 2
    jobs = [Job("a", "A", 0.0, long * lengths[0], 0, 8.0, 0, "job", True),
            Job("b", "B", gap, long * lengths[1], 0, 8.0, 0, "job", True)]
    cfg = SchedulerConfig(aging_bound=bound, aging_quantum=quantum, aging_reserve_at=reserve_at)
    res = simulate(jobs, [node("n", 8, 8)], "balanced-drf", cfg, validate=True,
                   restart_cost=restart)
    assert res.metrics["unfinished"] == 0
    assert res.metrics["preemptions"] >= 2  # the node really changed hands back and forth
    assert res.metrics["wait_stretch_max"] <= max(bound, quantum) + 1e-6


@FAST
@given(pool=pools, stream=st.lists(requests, min_size=1, max_size=25), probe=requests,
       excluded=st.lists(st.booleans(), max_size=6))
def test_release_count_for_a_reservation_matches_placing_unit_by_unit(pool, stream, probe,
                                                                      excluded):
    """The counted shortcut (_releases_until_fit) finds the same number of releases as
    placing the gang unit by unit after each release, on any pool and any running set."""
    from loophub.scheduler.state import _releases_until_fit, first_fit

    state = SchedulerState("fifo", SchedulerConfig(), make_pool(pool), auto_schedule=False)
    for n, (tenant, cpu, mem, gpu, count, pre, gtype, rt) in enumerate(stream):
        r = req(f"r{n}", f"t{tenant}", cpu=cpu, mem_gib=mem, gpu=gpu, count=count,
                preemptible=pre, gpu_type=gtype, runtime=rt)
        if state.fits_ever(r) is None:
            state.submit(r, 0.0)
            state.tick(0.0)
    tenant, cpu, mem, gpu, count, _, gtype, _ = probe
    r = req("probe", "tp", cpu=cpu, mem_gib=mem, gpu=gpu, count=count, gpu_type=gtype)
    if state.fits_ever(r) is not None:
        return
    state.submit(r, 0.0)
    item = state.queued["probe"]
    mask = state.eligible(item.types) & ~np.array(
        (excluded + [False] * len(state.active))[:len(state.active)], dtype=bool)
    rel = state._releases()

    def fits_after(k: int) -> bool:
        free = state.free.copy()
        for run in rel.runs[:k]:
            for slot in run.slots:
                free[slot] += run.item.unit
        return state.place(item, free, mask, first_fit) is not None

    expected = next((k for k in range(len(rel.runs) + 1) if fits_after(k)), None)
    got = _releases_until_fit(state.free, mask, item.unit, item.request.count, rel)
    assert got == expected
