"""The notebook SDK's ``client.serving`` and ``loophub serve`` against the in-process API,
with real model servers: one release for the module (replica processes are slow to
start), carried through scale up and down, a rollout, a canary rolled back and one
promoted, keys, history, logs and stop, in file order. A release whose model cannot
load ends the wait with the replica's words; one that cannot get resources ends it at
the timeout, naming where its replica waits.

The in-process API has no hub proxy and no gateway: ``predict`` is checked against the
replica itself (a view pointing there), and for the URL it would call through the hub.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch

from loophub import errors
from loophub.cli import main
from loophub.client.serving import Release
from tests.serving import test_releases
from tests.serving.test_releases import register

pytestmark = pytest.mark.serving
SMALL = {"cpu": 0.25, "mem": "1G"}
digit_nets = test_releases.digit_nets  # its trained MLP, as a fixture of this module too


@pytest.fixture(scope="module")
def api(request, tmp_path_factory) -> Iterator:
    """One in-process API for the module (the conftest's is per test); every release
    still serving is stopped before it goes, so no model server outlives the module."""
    from tests.inprocess import serve_api

    with pytest.MonkeyPatch.context() as patch:
        for running in serve_api(request, tmp_path_factory.mktemp("api"), patch):
            yield running
            for release in running.client("root").serving.list():
                release.stop()


@pytest.fixture(scope="module")
def ann(api):
    return api.client("ann")


@pytest.fixture(scope="module")
def rel(ann, digit_nets) -> Release:
    _, net = digit_nets
    register(ann, "digits", net)
    register(ann, "digits", net)  # v2: the same weights, another version to move to
    return ann.serving.release("digits", "digits@v1", per_replica=SMALL, timeout=120)


def routed(release: Release) -> list[dict]:
    """The replicas in the route (a replaced version's may still be draining: a status
    of serving means they left the route, not that their processes ended)."""
    return [r for r in release.view["replica_list"] if r["state"] != "draining"]


def actions(release: Release) -> list[str]:
    return [h["action"] for h in release.history()]


# -- the SDK ---------------------------------------------------------------------------------


def test_release_waits_until_it_serves(api, ann, rel):
    assert (rel.status, rel.version, rel.ready, rel.replicas) == ("serving", "digits@v1", 1, 1)
    [replica] = rel.view["replica_list"]
    assert replica["state"] == "ready" and replica["version"] == "digits@v1"
    assert rel.url.endswith("/services/models/digits/")
    assert repr(rel) == f"<release digits digits@v1: serving, 1/1 ready at {rel.url}>"
    assert ann.serving.get("digits").view["replica_list"][0]["id"] == replica["id"]
    assert [r.name for r in ann.serving.list()] == ["digits"]
    assert [r.name for r in ann.serving.list(owner="ben")] == []
    ben = api.client("ben")  # access "hub": every hub user may call it
    assert [r.name for r in ben.serving.list()] == ["digits"]
    with pytest.raises(errors.NotFound, match="no release named 'nope'"):
        ann.serving.get("nope")


def test_the_html_view_escapes_what_it_shows(rel):
    odd = Release(rel.serving, {**rel.view, "name": "<b>x</b>", "url": "http://h/'><i>"})
    shown = odd._repr_html_()
    assert "&lt;b&gt;x&lt;/b&gt;" in shown and "<b>" not in shown and "<i>" not in shown
    assert "digits@v1" in shown and "1/1" in shown and "serving" in shown


def test_predict_sends_numpy_instances_and_returns_the_predictions(api, rel, digit_nets):
    images, _ = digit_nets
    replica = rel.view["replica_list"][0]
    direct = Release(rel.serving, {**rel.view, "url": replica["url"] + "/"})
    predictions = direct.predict([{"pixels": images[0]}, {"pixels": images[1]}])
    assert len(predictions) == 2 and all(p["label"] in "0123456789" for p in predictions)
    assert len(direct.predict(({"pixels": images[2]},))) == 1  # a tuple is a list too
    with pytest.raises(errors.InvalidInput, match="instances is a list"):
        direct.predict({"pixels": images[0]})
    # without a public URL the view's URL is relative: it is called on the API's host
    host = api.url.split("/services/")[0]
    with pytest.raises(errors.LoophubError, match=f"{host}/services/models/digits/predict"):
        rel.predict([{"pixels": images[0]}])


def test_scale_up_then_down_drains_the_surplus(rel):
    first = rel.view["replica_list"][0]["id"]
    rel.scale(2, timeout=120)
    assert (rel.status, rel.ready, rel.replicas) == ("serving", 2, 2)
    rel.scale(1)
    [kept] = rel.view["replica_list"]  # drained before the answer came
    assert rel.status == "serving" and kept["id"] != first  # the oldest ready one went


def test_rollout_waits_until_the_new_version_serves_alone(rel):
    rel.rollout("digits@v2", timeout=120)
    assert (rel.status, rel.version) == ("serving", "digits@v2")
    assert [(r["version"], r["state"]) for r in routed(rel)] == [("digits@v2", "ready")]


def test_a_canary_changes_share_and_rolls_back(rel):
    rel.canary("digits@v1", percent=10, guard={"min_requests": 500}, timeout=120)
    assert rel.canary_view["version"] == "digits@v1" and rel.canary_view["percent"] == 10
    assert rel.canary_view["guard"]["min_requests"] == 500
    assert {(r["role"], r["state"]) for r in routed(rel)} == {
        ("stable", "ready"), ("canary", "ready")}
    assert "canary digits@v1 at 10%" in repr(rel)
    assert rel.set_canary(25).canary_view["percent"] == 25
    rel.rollback("too slow")
    assert rel.canary_view is None
    assert [(r["role"], r["version"]) for r in routed(rel)] == [
        ("stable", "digits@v2")]
    with pytest.raises(errors.Conflict, match="no canary"):
        rel.set_canary(30)


def test_promote_waits_until_the_canary_version_serves(rel):
    rel.canary("digits@v1", percent=50, wait=False)
    rel.promote(timeout=120)
    assert (rel.status, rel.version, rel.canary_view) == ("serving", "digits@v1", None)
    assert [(r["version"], r["role"]) for r in routed(rel)] == [("digits@v1", "stable")]


def test_keys_are_shown_once_and_revoked(rel):
    made = rel.create_key("shop front-end")
    assert made["key"].startswith("lhk_") and made["note"] == "shop front-end"
    [listed] = rel.keys()
    assert listed["id"] == made["id"] and "key" not in listed and listed["revoked"] is None
    assert rel.revoke_key(made["id"])["revoked"]
    assert rel.keys()[0]["revoked"]
    with pytest.raises(errors.NotFound, match="no key"):
        rel.revoke_key("nope")


def test_history_and_replica_logs(rel):
    assert actions(rel) == ["release", "scale", "scale", "rollout", "canary",
                            "canary_percent", "rollback", "canary", "promote", "key",
                            "revoke_key"]
    rollback = rel.history()[6]
    assert rollback["actor"] == "ann" and rollback["detail"]["reason"] == "too slow"
    replica = routed(rel)[0]["id"]
    assert "ready" in rel.log(replica)
    with pytest.raises(errors.NotFound, match="no replica 'nope'"):
        rel.log("nope")


def test_a_model_that_cannot_load_ends_the_wait_with_its_words(ann):
    class Refuses(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if bool(x.sum() > -1.0e30):
                raise RuntimeError("this model refuses to run")
            return x.flatten(1)[:, :10]

    register(ann, "broken", Refuses())
    with pytest.raises(errors.Unavailable) as raised:
        ann.serving.release("broken", "broken@v1", per_replica=SMALL, timeout=120)
    message = raised.value.message
    assert "'broken' is not serving broken@v1: replica" in message
    assert "refuses to run" in message, message
    assert ann.serving.get("broken").ready == 0
    ann.serving.stop("broken")


def test_a_release_that_cannot_get_resources_times_out_saying_where_it_waits(ann):
    whole = ann.pool()["nodes"][0]["cpu"]  # fits the node, not beside the running ones
    with pytest.raises(errors.Unavailable) as raised:
        ann.serving.release("queued", "digits@v1", per_replica={"cpu": whole, "mem": "1G"},
                            timeout=1)
    assert "'queued' is not serving digits@v1 after 1 s (status waiting, 0/1 ready)" \
        in raised.value.message
    assert "queued: waiting in the fair queue" in raised.value.message
    assert ann.serving.stop("queued")["status"] == "stopped"


# -- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def serve(api, monkeypatch, capsys):
    """`loophub serve ...` as ann: (exit code, stdout, stderr)."""
    monkeypatch.setenv("LOOPHUB_API_URL", api.url)
    monkeypatch.setenv("LOOPHUB_TOKEN", "user:ann")

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["serve", *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def ok(result: tuple[int, str, str]) -> str:
    code, out, err = result
    assert code == 0, err
    return out


def test_cli_reads_a_release(serve, rel):
    listing = ok(serve("list")).splitlines()
    assert listing[0].split() == ["NAME", "VERSION", "STATUS", "READY", "ACCESS", "OWNER",
                                  "CANARY", "URL"]
    assert listing[1].split()[:7] == ["digits", "digits@v1", "serving", "1/1", "hub", "ann",
                                      "-"]
    assert json.loads(ok(serve("list", "--json")))[0]["name"] == "digits"
    status = ok(serve("status", "digits"))
    replica = routed(rel.refresh())[0]
    assert "digits  digits@v1  serving  1/1 ready  (access hub)" in status
    assert "each replica: cpu 0.25, mem 1 GiB" in status
    row = next(line for line in status.splitlines() if line.startswith(replica["id"]))
    assert row.split()[:6] == [replica["id"], "stable", "digits@v1", "ready", replica["node"],
                               "0"] and "UTC" in row and row.endswith("serving")
    assert json.loads(ok(serve("status", "digits", "--json")))["version"] == "digits@v1"
    history = ok(serve("history", "digits")).splitlines()
    assert history[0].split() == ["AT", "ACTOR", "ACTION", "DETAIL"]
    assert "UTC  ann" in history[1] and "release" in history[1]
    assert "reason=too slow" in next(h for h in history if "rollback" in h)
    assert [e["action"] for e in json.loads(ok(serve("history", "digits", "--json")))] \
        == actions(rel)
    assert "ready" in ok(serve("log", "digits", replica["id"]))
    assert json.loads(ok(serve("log", "digits", replica["id"], "--json")))["replica"] \
        == replica["id"]


def test_cli_changes_a_release(serve, rel):
    assert "digits  digits@v1  serving  1/1 ready" in ok(serve("scale", "digits", "1"))
    code, _, err = serve("canary", "digits", "--percent", "20")
    assert code == 2 and "has no canary" in err
    out = ok(serve("canary", "digits", "digits@v2", "--percent", "20", "--no-guard",
                   "--timeout", "120"))
    assert "canary: digits@v2 at 20% (1 replicas)" in out
    assert rel.refresh().canary_view["guard"] is None
    assert json.loads(ok(serve("canary", "digits", "--percent", "30", "--json")))[
        "canary"]["percent"] == 30
    assert "canary" not in ok(serve("rollback", "digits", "--reason", "cli"))
    assert rel.history()[-1]["detail"] == {"version": "digits@v2", "reason": "cli"}


def test_cli_keys_are_printed_once_with_a_warning(serve, rel):
    code, out, err = serve("keys", "digits", "--create", "cli app")
    assert code == 0 and out.strip().startswith("lhk_") and len(out.split()) == 1
    assert "will not be shown again" in err
    made = rel.keys()
    key_id = next(k["id"] for k in made if k["note"] == "cli app")
    listing = ok(serve("keys", "digits"))
    row = next(line for line in listing.splitlines() if line.startswith(key_id))
    assert "cli app" in row and row.endswith("active")
    assert f"revoked key {key_id}" in ok(serve("keys", "digits", "--revoke", key_id))
    assert json.loads(ok(serve("keys", "digits", "--json")))[-1]["revoked"]


def test_cli_bad_input_exits_2_with_the_reason(serve, rel):
    for args, reason in [
        (("scale", "digits", "0"), "body.replicas must be bigger than or equal to 1"),
        (("status", "nope"), "no release named 'nope' that you can see"),
        (("release", "Bad_Name", "digits@v1"), "release name 'Bad_Name': use 1-63"),
        (("release", "other", "missing@v1"), "no model named 'missing'"),
        (("release", "other", "digits@v1", "--access", "everyone"), "access 'everyone'"),
        (("release", "other", "digits@v1", "--mem", "lots"), "per_replica.mem: 'lots' is not"),
        (("canary", "digits", "digits@v2", "--percent", "100"), "percent must be smaller than"),
        (("promote", "digits"), "release 'digits' has no canary to promote"),
        (("log", "digits", "nope"), "no replica 'nope'"),
    ]:
        code, out, err = serve(*args)
        assert (code, out) == (2, ""), (args, err)
        assert err.startswith("error: ") and reason in err and err.count("\n") == 1, (args, err)
    with pytest.raises(SystemExit) as parse_error:  # argparse: usage on stderr, exit 2
        serve("scale", "digits", "two")
    assert parse_error.value.code == 2
    with pytest.raises(SystemExit):
        serve("keys", "digits", "--create", "x", "--revoke", "y")


def test_cli_releases_and_stops(serve, rel):
    out = ok(serve("release", "digits-cli", "digits@v2", "--cpu", "0.25", "--mem", "1G",
                   "--no-batching", "--access", "group:team", "--timeout", "120"))
    assert "digits-cli  digits@v2  serving  1/1 ready  (access group:team)" in out
    assert "options: batching=False" in ok(serve("status", "digits-cli"))
    assert "stopped release digits-cli" in ok(serve("stop", "digits-cli"))
    assert "digits-cli" not in ok(serve("list"))
    stopped = next(line for line in ok(serve("list", "--all")).splitlines()
                   if line.startswith("digits-cli"))
    assert stopped.split()[:4] == ["digits-cli", "digits@v2", "stopped", "0/1"]
    code, _, err = serve("stop", "digits-cli")
    assert code == 2 and "already stopped" in err


# -- last: stopping the module's release -----------------------------------------------------


def test_stop_drains_every_replica(ann, rel):
    rel.stop()
    assert (rel.status, rel.view["replica_list"]) == ("stopped", [])
    assert actions(rel)[-1] == "stop"
    assert [r.name for r in ann.serving.list()] == []
    assert "digits" in [r.name for r in ann.serving.list(stopped=True)]
    with pytest.raises(errors.Conflict, match="stopped"):
        rel.scale(2)
