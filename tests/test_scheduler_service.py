"""The scheduler's persistence shell: the typed request contract, keys scoped to their
owner, transitions with their causes, restart, accounting, refusals, cached views."""

import pytest

from loophub.errors import InvalidInput
from loophub.pool import GIB, NodeSpec
from loophub.scheduler import keys
from loophub.scheduler.model import Resources
from loophub.scheduler.service import SchedulerService, Tenancy, Unschedulable, spec_of
from loophub.scheduler.spec import SPEC_SCHEMA, RequestSpec
from loophub.scheduler.tables import SchedRequest
from loophub.store import Database

POOL = [NodeSpec(name="n1", cpu=2, mem=8 * GIB, gpu=4)]


class Clock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self):
        return self.t


def server(owner, gpu=1, name="", cpu=0.5, mem=GIB, **kw) -> RequestSpec:
    return RequestSpec(kind="server", owner=owner, server=name,
                       demand=Resources(cpu=cpu, mem=mem, gpu=gpu), **kw)


def job(owner, job_id, gpu=1, count=1, **kw) -> RequestSpec:
    return RequestSpec(kind="job", owner=owner, job=job_id, count=count,
                       demand=Resources(cpu=0.25, mem=GIB, gpu=gpu), **kw)


def test_lower_share_starts_first_and_views_explain(db_url):
    clock = Clock()
    svc = SchedulerService(Database(db_url), POOL, clock=clock)
    a1, _ = svc.submit(server("alice", 3, "big"), actor="spawner")
    assert a1["state"] == "running" and len(a1["allocation"]["units"][0]["gpus"]) == 3
    a2, _ = svc.submit(server("alice", 1, "x"), actor="spawner")
    b1, _ = svc.submit(server("bob", 2), actor="spawner")
    assert a2["state"] == "running"  # 1 GPU was free
    assert b1["state"] == "queued" and b1["position"] == 1 and b1["blocking"] == "gpu"
    assert "position 1 of 1" in b1["message"] and "waiting for gpu" in b1["message"]
    # the same server returns the same active request instead of a second one
    again, none = svc.submit(server("bob", 2), actor="spawner")
    assert again["id"] == b1["id"] and none == []
    clock.t += 10
    _, transitions = svc.cancel(a1["id"], reason="stopped", actor="spawner")
    assert [(t.request_id, t.action) for t in transitions] == [
        (a1["id"], "end"), (b1["id"], "start")]
    assert svc.get(b1["id"])["state"] == "running"


def test_keys_are_built_from_the_owner_so_no_one_holds_anothers_place(db_url):
    """Today's attack: alice queued 'server:bob/' first and held bob's slot. A key is now
    made from the owner, so alice's request is alice's, and bob's is found as his."""
    svc = SchedulerService(Database(db_url), POOL, clock=Clock())
    mine, _ = svc.submit(server("alice", 1, name=""), actor="alice")
    bobs, _ = svc.submit(server("bob", 1, name=""), actor="spawner")
    assert mine["key"] == "server:alice/" and bobs["key"] == "server:bob/"
    assert mine["id"] != bobs["id"]
    with pytest.raises(InvalidInput, match="unknown fields"):
        RequestSpec.from_json({"kind": "server", "server": "", "demand": {"cpu": 1},
                               "key": "server:bob/"}, owner="alice")


def test_spec_json_round_trips_and_every_kind_names_what_it_belongs_to():
    for spec in (server("ann", 1, "lab", labels={"profile": "gpu1"}), job("ann", "j1", count=4),
                 RequestSpec(kind="kernel", owner="ann", server="", kernel="k1",
                             demand=Resources(cpu=1)),
                 RequestSpec(kind="service", owner="ann", release="digits", replica="0",
                             demand=Resources(cpu=1))):
        again = RequestSpec.from_json(spec.to_json())
        assert again == spec
        assert keys.parse_key(spec.key).owner == "ann"
        assert set(spec.to_json()) <= set(SPEC_SCHEMA["properties"])
    with pytest.raises(InvalidInput, match="kernel"):
        RequestSpec(kind="kernel", owner="ann", server="", demand=Resources(cpu=1))
    with pytest.raises(InvalidInput, match="job do"):
        RequestSpec(kind="server", owner="ann", server="", job="x", demand=Resources(cpu=1))
    odd = keys.server_key("a/b c", "x/y")
    assert keys.parse_key(odd) == keys.RequestKey("server", "a/b c", ("x/y",))


def test_every_transition_is_recorded_with_its_stimulus_and_reason(db_url):
    clock = Clock()
    svc = SchedulerService(Database(db_url), POOL, clock=clock)
    first, _ = svc.submit(server("alice", 4), actor="spawner")
    second, _ = svc.submit(server("bob", 2), actor="spawner", stimulus="submit-test")
    clock.t += 5
    _, transitions = svc.cancel(first["id"], reason="released by root", actor="root",
                                stimulus="release-test")
    assert {t.stimulus for t in transitions} == {"release-test"}
    history = svc.history(second["id"])
    assert [(h["action"], h["state"], h["stimulus"]) for h in history] == [
        ("submit", "queued", "submit-test"), ("start", "running", "release-test")]
    ended = svc.history(first["id"])[-1]
    assert (ended["action"], ended["state"], ended["actor"], ended["reason"]) == (
        "end", "done", "root", "released by root")
    view = svc.get(first["id"])
    assert view["ended_by"] == "root" and view["submitted_by"] == "spawner"


def test_restart_restores_queue_and_allocations(db_url):
    clock = Clock()
    db = Database(db_url)
    svc = SchedulerService(db, POOL, clock=clock)
    running, _ = svc.submit(server("alice", 4), actor="s")
    queued, _ = svc.submit(server("bob", 1), actor="s")
    restarted = SchedulerService(Database(db_url), POOL, clock=clock)
    assert restarted.get(queued["id"])["state"] == "queued"
    assert restarted.state.allocation(running["id"]).units[0].gpus == (0, 1, 2, 3)
    restarted.cancel(running["id"], reason="x", actor="s")
    assert restarted.get(queued["id"])["state"] == "running"


def test_refusals_are_immediate_and_say_why(db_url):
    svc = SchedulerService(Database(db_url), POOL, clock=Clock())
    with pytest.raises(Unschedulable, match="larger than the pool"):
        svc.submit(server("alice", 5), actor="s")
    svc.set_tenancy(Tenancy({}, {}, {"alice": {"gpu": 1}}, {}))
    with pytest.raises(Unschedulable, match="quota"):
        svc.submit(server("alice", 2), actor="s")
    for bad, message in [({"kind": "vm", "demand": {"cpu": 1}}, "request.kind"),
                         ({"demand": {"cpu": -1}}, "request.demand.cpu"),
                         ({"demand": {"gpu": 0.5}}, "request.demand.gpu"),
                         ({"demand": {}}, "request.demand"),
                         ({"demand": {"cpu": 1}, "count": 0}, "request.count"),
                         ({"demand": {"cpu": 1}, "colour": 1}, "unknown fields")]:
        with pytest.raises(InvalidInput, match=message):
            RequestSpec.from_json({"kind": "job", "job": "j", **bad}, owner="alice")


def test_usage_counts_resource_hours_per_user_and_group(db_url):
    clock = Clock()
    svc = SchedulerService(Database(db_url), POOL, clock=clock)
    start = clock.t
    req, _ = svc.submit(server("alice", 2, cpu=1, mem=2 * GIB, groups=("vision",)), actor="s")
    clock.t += 1800
    svc.cancel(req["id"], reason="x", actor="s")
    clock.t += 3600  # an ended run stays ended: usage must not grow afterwards
    usage = svc.usage(start - 100, clock.t + 100)
    assert usage["users"]["alice"] == pytest.approx(
        {"cpu_hours": 0.5, "gpu_hours": 1.0, "mem_gib_hours": 1.0})
    assert usage["groups"]["vision"]["gpu_hours"] == pytest.approx(1.0)


def test_dead_servers_are_released(db_url):
    clock = Clock()
    svc = SchedulerService(Database(db_url), POOL, clock=clock)
    req, _ = svc.submit(server("alice", 1), actor="s")
    clock.t += 120
    assert svc.release_missing("server", {"server:alice/"}) == []
    ended = svc.release_missing("server", set())
    assert [(t.request_id, t.actor) for t in ended] == [(req["id"], "reconcile")]
    assert svc.get(req["id"])["state"] == "done"


def test_pool_change_while_down_is_followed(db_url):
    clock = Clock()
    SchedulerService(Database(db_url), POOL, clock=clock).submit(server("a", 1), actor="s")
    bigger = [*POOL, NodeSpec(name="n2", cpu=8, mem=32 * GIB, gpu=0)]
    svc = SchedulerService(Database(db_url), bigger, clock=clock)
    assert {n["name"] for n in svc.pool_view()["nodes"]} == {"n1", "n2"}
    assert svc.pool_view()["running"] == 1


def test_views_share_one_queue_order_per_change(db_url, monkeypatch):
    """N waiters reading their views after a change cost one queue order, not N."""
    clock = Clock()
    svc = SchedulerService(Database(db_url), [NodeSpec(name="n1", cpu=1, mem=GIB, gpu=0)],
                           clock=clock)
    svc.submit(RequestSpec(kind="job", owner="z", job="hog", demand=Resources(cpu=1)),
               actor="s")
    ids = [svc.submit(job(f"u{i}", f"j{i}", gpu=0), actor="s")[0]["id"] for i in range(30)]
    calls = []
    original = type(svc.state.policy).queue_order
    monkeypatch.setattr(type(svc.state.policy), "queue_order",
                        lambda self, *a: calls.append(1) or original(self, *a))
    svc.submit(job("late", "j-late", gpu=0), actor="s")  # a change (its view: one order)
    positions = [svc.get(i)["position"] for i in ids]
    assert len(set(positions)) == 30 and len(calls) == 1
    clock.t += 60
    svc.tick()  # time passed: aging may reorder, so one more order for all 30 again
    assert [svc.get(i)["position"] for i in ids] == positions and len(calls) == 2


def test_rows_from_before_typed_specs_still_load(db_url):
    """Requests queued by the previous release (key + meta, no typed fields) keep working."""
    db = Database(db_url)
    svc = SchedulerService(db, POOL, clock=Clock())
    view, _ = svc.submit(server("ann", 1, "lab"), actor="s")
    with db.transaction() as s:
        rec = s.get(SchedRequest, view["id"])
        legacy = {k: v for k, v in rec.spec.items() if k not in ("server", "labels", "owner")}
        rec.spec = {**legacy, "id": rec.id, "tenant": "ann"}
        assert spec_of(rec).server == "lab"
