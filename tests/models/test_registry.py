"""The model registry through the API and the SDK: versions, aliases and their history,
the promotion gate, deletion rules, lineage both ways, servability, who sees what."""

from __future__ import annotations

import io
import zipfile

import pytest

from loophub import errors
from tests.models.conftest import DIGITS, small_cnn


def register_cnn(client, name="digits-cnn", **kw):
    import torch

    return client.models.register(name, small_cnn(), example_input=torch.zeros(1, 1, 16, 16),
                                  task="image_classification", labels=DIGITS,
                                  dataset="digits@v1", **kw)


def test_a_module_becomes_a_servable_version_with_lineage_both_ways(digits):
    import torch

    view = register_cnn(digits, metrics={"accuracy": 0.5}, card={"intended_use": "tests"})
    assert (view["model"], view["version"], view["dataset"]) == ("digits-cnn", 1, "digits@v1")
    assert view["signature"]["response"]["properties"]["predictions"]["items"]["properties"][
        "label"]["enum"] == DIGITS
    assert view["meta"]["preprocess"]["mode"] == "L" and view["test_status"] == "untested"
    assert view["framework"]["packages"]["torch"] == torch.__version__
    # the bytes served are TorchScript that gives the module's answer, no user code needed
    loaded = torch.jit.load(io.BytesIO(digits.models.artifact("digits-cnn@v1")))
    x = torch.rand(2, 1, 16, 16)
    assert torch.allclose(loaded(x), small_cnn().eval()(x))
    # lineage: model -> dataset version, and dataset version -> model
    lineage = digits.models.lineage("digits-cnn@1")
    assert [(d["dataset"], d["number"]) for d in lineage["datasets"]] == [("digits", 1)]
    assert {"model": "digits-cnn", "model_version": "v1"} in [
        {k: m[k] for k in ("model", "model_version")} for m in digits.datasets.models(
            "digits", "v1")]
    shown = digits.models.show("digits-cnn")
    assert (shown["task"], shown["latest"], shown["labels"]) == (
        "image_classification", 1, DIGITS)


def test_aliases_move_with_their_history_and_champion_needs_passed_tests(digits):
    register_cnn(digits)
    register_cnn(digits)
    digits.models.alias("digits-cnn", "challenger", 1, reason="first try")
    digits.models.alias("digits-cnn", "challenger", "v2", reason="more data")
    assert digits.models.get("digits-cnn@challenger")["version"] == 2
    with pytest.raises(errors.Conflict, match="tests have not passed"):
        digits.models.alias("digits-cnn", "champion", 2)
    assert "champion" not in digits.models.show("digits-cnn")["aliases"]
    digits.models.alias("digits-cnn", "champion", 2, reason="demo day", force=True)
    moves = digits.models.history("digits-cnn", subject="alias:challenger")
    assert [(m["from"], m["to"], m["reason"], m["actor"]) for m in moves] == [
        (None, {"version": 1}, "first try", "ann"),
        ({"version": 1}, {"version": 2}, "more data", "ann")]
    forced = digits.models.history("digits-cnn", subject="alias:champion")[-1]
    assert forced["to"] == {"version": 2, "forced": True, "test_status": "untested"}
    digits.models.update("digits-cnn@v1", tags={"note": "baseline"}, state="archived",
                         reason="superseded")
    actions = [e["action"] for e in digits.models.history("digits-cnn", subject="v1")]
    assert actions == ["registered", "tags.set", "state.set"]
    with pytest.raises(errors.NotFound, match="no alias 'staging'"):
        digits.models.get("digits-cnn@staging")
    with pytest.raises(errors.NotFound, match="no version 7"):
        digits.models.alias("digits-cnn", "challenger", 7)
    with pytest.raises(errors.InvalidInput, match="'latest' is reserved"):
        digits.models.alias("digits-cnn", "latest", 1)


def test_a_version_an_alias_points_at_cannot_be_deleted(digits):
    register_cnn(digits)
    register_cnn(digits)
    digits.models.alias("digits-cnn", "challenger", 1)
    with pytest.raises(errors.Conflict, match="challenger point at"):
        digits.models.delete("digits-cnn@v1")
    with pytest.raises(errors.Conflict, match="still has aliases"):
        digits.models.delete("digits-cnn")
    digits.models.remove_alias("digits-cnn", "challenger", reason="retired")
    assert digits.models.delete("digits-cnn@v1", reason="bad data")["state"] == "deleted"
    with pytest.raises(errors.NotFound, match="no version 1"):
        digits.models.get("digits-cnn@1")
    assert digits.models.get("digits-cnn")["version"] == 2  # latest skips the deleted one
    lineage = {m["model_version"] for m in digits.datasets.models("digits", "v1")
               if m["model"] == "digits-cnn"}
    assert lineage == {"v2"}  # v1's lineage row went with it
    assert [e["action"] for e in digits.models.history("digits-cnn")][-2:] == [
        "alias.deleted", "version.deleted"]


def _refused(client, name, match, **body):
    with pytest.raises(errors.InvalidInput, match=match):
        client.request("POST", f"models/{name}/versions", json=body)
    with pytest.raises(errors.NotFound):
        client.models.show(name)  # nothing half-written


def test_an_artifact_that_is_not_servable_is_refused_and_nothing_is_written(digits):
    import torch

    meta = {"format": "torchscript", "task": "image_classification", "labels": DIGITS,
            "preprocess": {"kind": "image"}}
    junk = digits.datasets.upload(io.BytesIO(b"not a model at all"))["digest"]
    _refused(digits, "junk", "not a TorchScript archive", artifact=junk, meta=meta)
    state = io.BytesIO()
    torch.save(small_cnn().state_dict(), state)  # a pickle in a zip: not servable
    pickled = digits.datasets.upload(io.BytesIO(state.getvalue()))["digest"]
    _refused(digits, "pickled", "no code/ and data.pkl", artifact=pickled, meta=meta)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("x/readme.txt", "hello")
    plain = digits.datasets.upload(io.BytesIO(zipped.getvalue()))["digest"]
    _refused(digits, "zipped", "not a TorchScript archive", artifact=plain, meta=meta)
    good = digits.datasets.upload(io.BytesIO(_script_bytes()))["digest"]
    _refused(digits, "no-labels", "meta.labels", artifact=good, meta={**meta, "labels": []})
    _refused(digits, "bad-task", "has no model support", artifact=good,
             meta={**meta, "task": "captioning"})
    with pytest.raises(errors.NotFound, match="no blob"):
        digits.request("POST", "models/unseen/versions",
                       json={"artifact": "0" * 64, "meta": meta})

    class Untraceable(torch.nn.Module):
        def forward(self, x):
            return {"a": [x.numpy().tolist()]}  # neither scriptable nor traceable

    with pytest.raises(errors.InvalidInput, match="neither scripted nor traced"):
        digits.models.register("odd", Untraceable(), example_input=torch.zeros(1, 1, 4, 4),
                               task="image_classification", labels=DIGITS)


def _script_bytes() -> bytes:
    import torch

    from loophub.client.models import to_torchscript

    return to_torchscript(small_cnn(), torch.zeros(1, 1, 16, 16))


def test_a_new_version_must_predict_the_same_labels(digits):
    import torch

    register_cnn(digits)
    with pytest.raises(errors.InvalidInput, match="register it under a new name"):
        digits.models.register("digits-cnn", small_cnn(), example_input=torch.zeros(
            1, 1, 16, 16), task="image_classification", labels=DIGITS[::-1])
    assert digits.models.show("digits-cnn")["versions"] == 1


def test_who_sees_and_changes_a_model(digits, api):
    register_cnn(digits)
    bob, root = api.client("bob"), api.client("root")
    with pytest.raises(errors.NotFound, match="that you can see"):
        bob.models.get("digits-cnn")
    with pytest.raises(errors.NotFound, match="that you can see"):
        bob.models.register("digits-cnn", small_cnn(), example_input=__import__(
            "torch").zeros(1, 1, 16, 16), task="image_classification", labels=DIGITS)
    assert [m["name"] for m in bob.models.list()] == []
    assert root.models.get("digits-cnn")["version"] == 1  # admins see everything
    digits.models.share("digits-cnn", visibility="public", reason="demo")
    assert bob.models.get("digits-cnn")["version"] == 1
    assert [m["name"] for m in bob.models.list()] == ["digits-cnn"]
    with pytest.raises(errors.PermissionDenied, match="not change it"):
        bob.models.alias("digits-cnn", "challenger", 1)
    with pytest.raises(errors.PermissionDenied):
        bob.models.delete("digits-cnn@v1")
    digits.models.share("digits-cnn", visibility="group", group="team")
    bob.models.alias("digits-cnn", "challenger", 1, reason="group member")  # write
    with pytest.raises(errors.PermissionDenied, match="only the owner"):
        bob.models.delete("digits-cnn@v1")
    assert digits.models.history("digits-cnn", subject="alias:challenger")[0]["actor"] == "bob"


def test_the_cli_lists_shows_moves_and_tells_the_history(digits, api, capsys):
    import json

    from loophub.cli import main

    register_cnn(digits)
    register_cnn(digits)
    auth = ["--url", api.url, "--token", "user:ann"]

    def cli(*args: str) -> str:
        capsys.readouterr()
        code = main(["models", *args, *auth])
        out = capsys.readouterr()
        assert code == 0, out.err
        return out.out

    assert "digits-cnn" in cli("list")
    cli("alias", "digits-cnn", "challenger", "v1", "--reason", "first")
    moved = json.loads(cli("alias", "digits-cnn", "challenger", "2", "--json"))
    assert moved["aliases"] == {"challenger": 2}
    version = json.loads(cli("show", "digits-cnn@challenger", "--json"))
    assert (version["version"], version["dataset"]) == (2, "digits@v1")
    history = json.loads(cli("history", "digits-cnn", "--subject", "alias:challenger",
                             "--json"))
    assert [(e["from"], e["to"]) for e in history] == [
        (None, {"version": 1}), ({"version": 1}, {"version": 2})]
    assert "challenger" in cli("history", "digits-cnn")
    assert "trained_on: digits@v1" in cli("lineage", "digits-cnn@2")
    capsys.readouterr()
    assert main(["models", "alias", "digits-cnn", "champion", "1", *auth]) == 2
    assert "tests have not passed" in capsys.readouterr().err
    assert json.loads(cli("list", "--json"))[0]["aliases"] == {"challenger": 2}
