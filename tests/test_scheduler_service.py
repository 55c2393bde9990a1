"""The scheduler's I/O shell: persistence, restart, accounting, refusals."""

import pytest

from loophub.errors import InvalidInput
from loophub.pool import GIB, NodeSpec
from loophub.scheduler.service import SchedulerService, Tenancy, Unschedulable
from loophub.store import Database

POOL = [NodeSpec(name="n1", cpu=2, mem=8 * GIB, gpu=4)]


class Clock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self):
        return self.t


def gpu_request(gpu=1, cpu=0.5, mem=GIB, **kw):
    return {"kind": "server", "demand": {"cpu": cpu, "mem": mem, "gpu": gpu}, **kw}


def test_lower_share_starts_first_and_views_explain(db_url):
    clock = Clock()
    svc = SchedulerService(Database(db_url), POOL, clock=clock)
    a1, _ = svc.submit(gpu_request(3), tenant="alice")
    assert a1["state"] == "running" and len(a1["allocation"]["units"][0]["gpus"]) == 3
    a2, _ = svc.submit(gpu_request(1), tenant="alice", key="server:alice/x")
    b1, _ = svc.submit(gpu_request(2), tenant="bob", key="server:bob/")
    assert a2["state"] == "running"  # 1 GPU was free
    assert b1["state"] == "queued" and b1["position"] == 1 and b1["blocking"] == "gpu"
    assert "position 1 of 1" in b1["message"] and "waiting for gpu" in b1["message"]
    # the same key returns the same active request instead of a second one
    again, _ = svc.submit(gpu_request(2), tenant="bob", key="server:bob/")
    assert again["id"] == b1["id"]
    clock.t += 10
    _, changed = svc.cancel(a1["id"])
    assert b1["id"] in changed
    assert svc.get(b1["id"])["state"] == "running"


def test_restart_restores_queue_and_allocations(db_url):
    clock = Clock()
    db = Database(db_url)
    svc = SchedulerService(db, POOL, clock=clock)
    running, _ = svc.submit(gpu_request(4), tenant="alice")
    queued, _ = svc.submit(gpu_request(1), tenant="bob")
    restarted = SchedulerService(Database(db_url), POOL, clock=clock)
    assert restarted.get(queued["id"])["state"] == "queued"
    assert restarted.state.allocation(running["id"]).units[0].gpus == (0, 1, 2, 3)
    restarted.cancel(running["id"])
    assert restarted.get(queued["id"])["state"] == "running"


def test_refusals_are_immediate_and_say_why(db_url):
    svc = SchedulerService(Database(db_url), POOL, clock=Clock())
    with pytest.raises(Unschedulable, match="larger than the pool"):
        svc.submit(gpu_request(5), tenant="alice")
    svc.set_tenancy(Tenancy({}, {}, {"alice": {"gpu": 1}}, {}))
    with pytest.raises(Unschedulable, match="quota"):
        svc.submit(gpu_request(2), tenant="alice")
    for bad, message in [({"kind": "vm", "demand": {"cpu": 1}}, "request.kind"),
                         ({"demand": {"cpu": -1}}, "request.demand.cpu"),
                         ({"demand": {"gpu": 0.5}}, "request.demand.gpu"),
                         ({"demand": {}}, "request.demand"),
                         ({"demand": {"cpu": 1}, "count": 0}, "request.count"),
                         ({"demand": {"cpu": 1}, "colour": 1}, "unknown fields")]:
        with pytest.raises(InvalidInput, match=message):
            svc.submit(bad, tenant="alice")


def test_usage_counts_resource_hours_per_user_and_group(db_url):
    clock = Clock()
    svc = SchedulerService(Database(db_url), POOL, clock=clock)
    start = clock.t
    req, _ = svc.submit(gpu_request(2, cpu=1, mem=2 * GIB), tenant="alice", groups=["vision"])
    clock.t += 1800
    svc.cancel(req["id"])
    clock.t += 3600  # an ended run stays ended: usage must not grow afterwards
    usage = svc.usage(start - 100, clock.t + 100)
    assert usage["users"]["alice"] == pytest.approx(
        {"cpu_hours": 0.5, "gpu_hours": 1.0, "mem_gib_hours": 1.0})
    assert usage["groups"]["vision"]["gpu_hours"] == pytest.approx(1.0)


def test_dead_servers_are_released(db_url):
    clock = Clock()
    svc = SchedulerService(Database(db_url), POOL, clock=clock)
    req, _ = svc.submit(gpu_request(1), tenant="alice", key="server:alice/")
    clock.t += 120
    assert svc.release_missing("server", {"server:alice/"}) == []
    assert req["id"] in svc.release_missing("server", set())
    assert svc.get(req["id"])["state"] == "done"


def test_pool_change_while_down_is_followed(db_url):
    clock = Clock()
    SchedulerService(Database(db_url), POOL, clock=clock).submit(gpu_request(1), tenant="a")
    bigger = [*POOL, NodeSpec(name="n2", cpu=8, mem=32 * GIB, gpu=0)]
    svc = SchedulerService(Database(db_url), bigger, clock=clock)
    assert {n["name"] for n in svc.pool_view()["nodes"]} == {"n1", "n2"}
    assert svc.pool_view()["running"] == 1
