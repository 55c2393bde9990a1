"""The releases' rules without processes: access, validation, what a rollout, scale,
canary, promotion and rollback leave to drain, the gateway's route table, API keys."""

from __future__ import annotations

import random

import pytest

from loophub import errors
from loophub.identity import Actor
from loophub.serving.releases import ReleaseStore, key_digest
from loophub.serving.routing import Backend, ReleaseRoute
from loophub.store import Database

ANN = Actor("ann", groups=("team",))
BEN, CAT = Actor("ben"), Actor("cat", groups=("team",))
ROOT = Actor("root", admin=True)


def version(n: int) -> dict:
    return {"ref": f"digits@v{n}", "artifact": {"blob": f"{n:064x}"},
            "meta": {"task": "image_classification", "labels": ["0", "1"]}}


@pytest.fixture
def store(db_url) -> ReleaseStore:
    return ReleaseStore(Database(db_url))


def release(store: ReleaseStore, name: str = "digits", *, replicas: int = 1,
            access: str = "hub", n: int = 1) -> list[dict]:
    return store.create(ANN, name, model=f"digits@v{n}", version=version(n),
                        replicas=replicas, per_replica={"cpu": 0.5, "mem": "512M"},
                        access_=access, options={"sticky_header": "X-User"})


def ready(store: ReleaseStore, replicas: list[dict]) -> None:
    for i, r in enumerate(replicas):
        store.set_replica(r["id"], "ready", message="serving",
                          url=f"http://127.0.0.1:{20000 + i}")


def states(store: ReleaseStore, name: str = "digits") -> dict[str, str]:
    return {r["id"]: r["state"] for r in store.replicas_of(name)}


def test_bad_input_is_refused_before_anything_is_written(store):
    bad = [dict(name="Digits!"), dict(replicas=0), dict(replicas=17), dict(access="world"),
           dict(access="group:other"), dict(per_replica={"mem": "lots"}),
           dict(per_replica={"disk": 1}), dict(options={"batching": "yes"}),
           dict(options={"max_batch_size": 0}), dict(options={"colour": 1})]
    for change in bad:
        kwargs = {"name": "digits", "model": "digits@v1", "version": version(1),
                  "replicas": 1, "per_replica": None, "access_": "hub", "options": None}
        kwargs.update({"access_" if k == "access" else k: v for k, v in change.items()})
        name = kwargs.pop("name")
        with pytest.raises(errors.InvalidInput) as refused:
            store.create(ANN, name, **kwargs)
        assert refused.value.detail["field"], change
    assert store.list(ROOT, include_stopped=True) == []


def test_access_follows_the_owned_things_rules(store):
    release(store, "shared", access="group:team")
    release(store, "private", access="public-token")
    release(store, "everyone", access="hub")
    assert [v["name"] for v in store.list(BEN)] == ["everyone"]
    assert [v["name"] for v in store.list(CAT)] == ["everyone", "shared"]
    assert store.get(ANN, "private")["access"] == "public-token"
    with pytest.raises(errors.NotFound, match="that you can see"):
        store.get(BEN, "private")
    with pytest.raises(errors.PermissionDenied):
        store.scale(BEN, "everyone", 2)
    store.scale(CAT, "shared", 2)  # a group member may change it
    with pytest.raises(errors.PermissionDenied):
        store.stop(CAT, "shared")  # but only its owner or an admin stops it
    store.stop(ROOT, "shared")
    with pytest.raises(errors.Conflict, match="exists"):
        store.create(BEN, "everyone", model="x@v1", version=version(1), replicas=1,
                     per_replica=None, access_="hub", options=None)


def test_a_rollout_drains_the_old_version_only_when_the_new_one_is_ready(store):
    old = release(store, replicas=2)
    ready(store, old)
    new = store.rollout(ANN, "digits", model="digits@v2", version=version(2))
    assert len(new) == 2 and {r["version"] for r in new} == {"digits@v2"}
    assert store.to_drain("digits") == []  # nothing of v2 ready: v1 keeps serving
    assert store.get(ANN, "digits")["status"] == "updating"
    ready(store, new[:1])
    assert store.to_drain("digits") == []  # one of two is not enough
    route = store.route_table().get("digits")
    assert {b.version for b in route.stable} == {"digits@v1", "digits@v2"}
    ready(store, new)
    drained = store.to_drain("digits")
    assert sorted(r["id"] for r in drained) == sorted(r["id"] for r in old)
    assert {b.version for b in store.route_table().get("digits").stable} == {"digits@v2"}
    assert store.get(ANN, "digits")["status"] == "serving"


def test_scaling_down_drains_the_waiting_replicas_first(store):
    first = release(store)
    ready(store, first)
    added = store.scale(ANN, "digits", 3)
    assert len(added) == 2
    assert store.to_drain("digits") == []
    assert store.scale(ANN, "digits", 1) == []
    drained = {r["id"] for r in store.to_drain("digits")}
    assert drained == {r["id"] for r in added}  # queued ones go, the ready one stays


def test_canary_promote_and_rollback(store):
    ready(store, release(store, replicas=2))
    with pytest.raises(errors.InvalidInput, match="serves already"):
        store.canary(ANN, "digits", model="digits@v1", version=version(1), percent=10)
    [canary] = store.canary(ANN, "digits", model="digits@v2", version=version(2), percent=10)
    with pytest.raises(errors.Conflict, match="already has a canary"):
        store.canary(ANN, "digits", model="digits@v3", version=version(3), percent=10)
    ready(store, [canary])
    route = store.route_table().get("digits")
    assert route.canary_percent == 10 and [b.replica for b in route.canary] == [canary["id"]]
    assert route.sticky_header == "X-User"
    drained = store.rollback(ANN, "digits", reason="error rate")
    assert [r["id"] for r in drained] == [canary["id"]]
    assert store.route_table().get("digits").canary == ()
    [again] = store.canary(ANN, "digits", model="digits@v3", version=version(3), percent=50)
    ready(store, [again])
    added = store.promote(ANN, "digits")
    assert len(added) == 1  # the canary turns stable; one more to reach two
    view = store.get(ANN, "digits")
    assert view["version"] == "digits@v3" and view["canary"] is None
    assert store.to_drain("digits") == []
    store.set_replica(added[0]["id"], "ready", url="http://127.0.0.1:20009")
    assert len(store.to_drain("digits")) == 2  # v1's two replicas
    actions = [h["action"] for h in store.history(ANN, "digits")]
    assert actions == ["release", "canary", "rollback", "canary", "promote"]


def test_every_routing_change_moves_the_generation(store):
    before = store.generation()
    replicas = release(store)
    after_create = store.generation()
    assert after_create > before
    ready(store, replicas)
    assert store.generation() > after_create
    moved = store.generation()
    store.set_replica(replicas[0]["id"], "ready", message="still serving")
    assert store.generation() > moved  # a ready replica's row changed: reload
    store.stop(ANN, "digits")
    assert "digits" not in store.route_table().routes


def test_api_keys_are_kept_hashed_shown_once_and_revocable(store):
    release(store, access="public-token")
    made = store.create_key(ANN, "digits", "shop")
    key = made["key"]
    assert key.startswith("lhk_") and len(key) > 40 and made["prefix"] == key[:12]
    assert store.key_release(key_digest(key)) == "digits"
    assert all("key" not in k for k in store.keys(ANN, "digits"))
    with pytest.raises(errors.NotFound):
        store.create_key(BEN, "digits")
    store.revoke_key(ANN, "digits", made["id"])
    assert store.key_release(key_digest(key)) is None
    with store.db.session() as s:  # nothing stored could give the key back
        from sqlalchemy import text
        rows = s.execute(text("SELECT digest, prefix, note FROM release_keys")).all()
    assert all(key not in " ".join(map(str, row)) for row in rows)


def test_the_canary_share_and_sticky_keys():
    stable = (Backend("http://a", "a", "d@v1"),)
    canary = (Backend("http://b", "b", "d@v2"),)
    route = ReleaseRoute("d", "ann", "public", stable=stable, canary=canary,
                         canary_percent=10)
    rng = random.Random(7)
    picks = [route.choose(rng=rng).version for _ in range(10_000)]
    assert 900 <= picks.count("d@v2") <= 1100
    users = [f"user{i}" for i in range(2000)]
    sides = {u: route.choose(u).version for u in users}
    assert all(route.choose(u).version == sides[u] for u in users)  # sticky
    assert 140 <= list(sides.values()).count("d@v2") <= 260
    assert ReleaseRoute("d", "ann", "public").choose() is None


def test_the_canary_guard_judges_error_rate_and_p99_once_enough_requests_came():
    from loophub.serving.canary import Stats, guard_options, replica_stats, verdict

    text = "\n".join([
        '# TYPE loophub_model_requests_total counter',
        'loophub_model_requests_total{route="predict",status="200"} 90',
        'loophub_model_requests_total{route="predict",status="500"} 10',
        'loophub_model_requests_total{route="health",status="200"} 1000',
        '# TYPE loophub_model_request_duration_seconds histogram',
        'loophub_model_request_duration_seconds_bucket{route="predict",le="0.001"} 50',
        'loophub_model_request_duration_seconds_bucket{route="predict",le="0.01"} 99',
        'loophub_model_request_duration_seconds_bucket{route="predict",le="+Inf"} 100',
        'loophub_model_request_duration_seconds_count{route="predict"} 100',
        'loophub_model_request_duration_seconds_sum{route="predict"} 0.3', ""])
    canary = replica_stats(text)
    assert (canary.requests, canary.errors, canary.quantile(0.99)) == (100, 10, 0.01)
    guard = guard_options({"min_requests": 50})
    fast = Stats(100, 0, {0.001: 100, float("inf"): 100})
    assert "error rate 10.0%" in verdict(fast, canary, guard)
    healthy_but_slow = Stats(100, 0, {0.001: 0, 0.01: 99, float("inf"): 100})
    assert verdict(fast, healthy_but_slow, guard) is None  # 10x, but only 9 ms slower
    strict = guard_options({"min_requests": 50, "latency_floor_ms": 5})
    assert "p99 latency 10.0 ms" in verdict(fast, healthy_but_slow, strict)
    slow = Stats(100, 0, {0.001: 0, 0.01: 0, 0.1: 99, float("inf"): 100})
    assert "p99 latency 100.0 ms is over 3x the stable version's 1.0 ms and 50 ms above" \
        in verdict(fast, slow, guard)
    assert verdict(fast, Stats(10, 10, {}), guard) is None  # too few requests to judge
    assert verdict(fast, fast, guard) is None
    assert (canary - canary).requests == 0


def test_a_release_keeps_its_logs_under_its_budget_dropping_stopped_replicas_first(
        store, tmp_path):
    import os

    from loophub.serving.manager import ReleaseManager
    from loophub.store import BlobStore

    live = release(store)[0]["id"]
    manager = ReleaseManager(store, BlobStore(str(tmp_path / "blobs")), files=tmp_path,
                             end=lambda *_: None, logs_per_release=2500)
    folder = tmp_path / "logs" / "digits"
    folder.mkdir(parents=True)
    names = ["old1.requests.jsonl", "old1.log", "old2.requests.jsonl",
             f"{live}.requests.jsonl"]
    for age, name in enumerate(names):
        (folder / name).write_bytes(b"x" * 1000)
        os.utime(folder / name, (1000 + age, 1000 + age))
    removed = manager.prune_logs("digits")
    assert [p.name for p in removed] == ["old1.requests.jsonl", "old1.log"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(names[2:])


def test_a_stopped_replica_stays_stopped_and_a_release_whose_replicas_gave_up_says_why(store):
    [replica] = release(store)
    store.set_replica(replica["id"], "stopped", message="the model server cannot serve "
                      "digits@v1: bad metadata", routes=True)
    assert store.set_replica(replica["id"], "starting", message="late launch") is None
    assert store.set_replica(replica["id"], "ready", message="late ready") is None
    view = store.get(ANN, "digits")
    assert view["status"] == "failed" and view["replica_list"] == []
    assert "cannot serve" in view["stopped_replicas"][0]["message"]
    [second] = store.scale(ANN, "digits", 2)[:1]
    store.set_replica(second["id"], "draining", message="draining")
    assert store.set_replica(second["id"], "ready", message="back") is None
