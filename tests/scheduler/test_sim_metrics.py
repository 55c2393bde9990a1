"""The simulator's fragmentation and starved_under_share metrics on tiny hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest
from sched_helpers import node

from loophub.scheduler import GIB, SchedulerConfig
from loophub.scheduler.sim import Job, gpu_fragmentation, simulate

HOUR = 3600.0


def gangs(*rows: tuple[int, int]) -> np.ndarray:
    return np.array(rows, dtype=float).reshape(-1, 2)


def test_free_gpus_split_across_nodes_are_fragmented_for_a_whole_node_gang():
    # 4 + 4 free GPUs: an 8-GPU unit fits by total but on no node
    assert gpu_fragmentation(np.array([4.0, 4.0, 0.0]), gangs((8, 1)), 24.0) == pytest.approx(
        8 / 24)


def test_a_small_queued_unit_can_use_any_free_gpu():
    assert gpu_fragmentation(np.array([4.0, 4.0]), gangs((8, 1), (1, 1)), 16.0) == 0.0


def test_only_nodes_below_the_smallest_fitting_unit_count():
    # a 4-GPU unit fits the node with 6 free; the 2 free on the other are fragmented
    assert gpu_fragmentation(np.array([6.0, 2.0]), gangs((4, 1)), 16.0) == pytest.approx(2 / 16)


def test_no_fragmentation_when_capacity_itself_is_short():
    assert gpu_fragmentation(np.array([4.0, 4.0]), gangs((8, 2)), 16.0) == 0.0


def test_fragmentation_undefined_without_queued_gpu_work():
    assert gpu_fragmentation(np.array([4.0]), gangs(), 8.0) is None


def job(jid: str, tenant: str, submit: float, duration: float, gpu: int,
        preemptible: bool = False) -> Job:
    return Job(jid, tenant, submit, duration, gpu, 4.0 * gpu, 16 * GIB * gpu, "job", preemptible)


ONE_NODE = [node("g1", 64, 512, 8)]


def test_a_tenant_below_its_share_waiting_past_the_bound_is_starved():
    # alice holds the whole node for 10 h; bob (no share) waits 10 h for one GPU
    jobs = [job("a1", "alice", 0, 10 * HOUR, 8), job("b1", "bob", 1, HOUR, 1)]
    m = simulate(jobs, ONE_NODE, "drf", SchedulerConfig(aging_bound=4 * HOUR)).metrics
    assert m["starved_under_share"] == 1


def test_a_wait_within_the_bound_is_not_starvation():
    jobs = [job("a1", "alice", 0, 2 * HOUR, 8), job("b1", "bob", 1, HOUR, 1)]
    m = simulate(jobs, ONE_NODE, "drf", SchedulerConfig(aging_bound=4 * HOUR)).metrics
    assert m["starved_under_share"] == 0


def test_a_tenant_at_or_above_its_share_may_wait():
    # alone in the pool, alice's second request waits 10 h, but she holds all she is owed
    jobs = [job("a1", "alice", 0, 10 * HOUR, 8), job("a2", "alice", 1, HOUR, 8)]
    m = simulate(jobs, ONE_NODE, "drf", SchedulerConfig(aging_bound=4 * HOUR)).metrics
    assert m["starved_under_share"] == 0


def test_balanced_drf_preempts_for_the_starved_tenant():
    jobs = [job("a1", "alice", 0, 10 * HOUR, 8, preemptible=True),
            job("b1", "bob", 1, HOUR, 1)]
    m = simulate(jobs, ONE_NODE, "balanced-drf", SchedulerConfig(aging_bound=4 * HOUR)).metrics
    assert m["starved_under_share"] == 0 and m["preemptions"] == 1
