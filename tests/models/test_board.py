"""The model board: its data shaping on hand-made views (no API), then the widget on a
real registry (in-process API): the versions table, the alias history, "try it" equal to
the Predictor; and, with real evaluation and training jobs on Dask, the confusion
heatmaps, the metric-vs-version series and the training curves."""

from __future__ import annotations

import pytest

from loophub import errors
from loophub.widgets.models import (
    REGISTERED,
    ModelBoard,
    alias_moves,
    comparison_rows,
    confusion,
    confusion_figure,
    curve_series,
    describe,
    headline,
    metric_columns,
    metric_series,
    per_class,
    per_class_figure,
    rows_html,
    score_bars,
)
from tests.models.conftest import DIGITS, small_cnn


def _classification(accuracy: float, confusion_matrix: list[list[int]]) -> dict:
    return {"task": "image_classification", "count": 4, "metrics": {
        "accuracy": accuracy, "macro_f1": 0.5, "micro_f1": accuracy, "ece": 0.1,
        "labels": ["a", "b"], "confusion": confusion_matrix,
        "per_class": {"a": {"precision": 1.0, "recall": 0.5, "f1": 0.67, "support": 2},
                      "b": {"precision": 0.67, "recall": 1.0, "f1": 0.8, "support": 2}},
        "top_k": {"top_1": accuracy, "top_2": 1.0}}}


def _evaluation(version: int, result: dict | None, *, split: str = "test",
                state: str = "succeeded", dataset: str = "d@v1") -> dict:
    return {"id": f"e{version}{split}{state}{id(result)}", "version": version,
            "ref": f"m@v{version}", "dataset": dataset, "split": split, "state": state,
            "result": result}


VERSIONS = [
    {"version": 2, "ref": "m@v2", "dataset": "d@v2", "job": None, "test_status": "passed",
     "aliases": ["champion"], "metrics": {"val_accuracy": 0.9}, "state": "ready",
     "created": "2025-01-02T00:00:00", "created_by": "ann"},
    {"version": 1, "ref": "m@v1", "dataset": "d@v1", "job": "j1", "test_status": "untested",
     "aliases": [], "metrics": {"val_accuracy": 0.7, "note": "text is not a metric"},
     "state": "ready", "created": "2025-01-01T00:00:00", "created_by": "ann"},
    {"version": 3, "ref": "m@v3", "dataset": None, "job": None, "state": "deleted",
     "aliases": [], "metrics": {}},
]
EVALUATIONS = [
    _evaluation(1, _classification(0.5, [[1, 1], [1, 1]])),
    _evaluation(1, _classification(0.75, [[1, 1], [0, 2]])),  # the later one stands
    _evaluation(2, None, state="failed"),
    _evaluation(2, _classification(1.0, [[2, 0], [0, 2]]), split="val"),
]


def test_rows_hold_each_version_its_metrics_and_its_latest_evaluation_per_key():
    rows = comparison_rows(VERSIONS, EVALUATIONS)
    assert [(r["version"], r["dataset"], r["job"], r["test_status"], r["aliases"])
            for r in rows] == [(1, "d@v1", "j1", "untested", []),
                               (2, "d@v2", None, "passed", ["champion"])]
    assert rows[0]["registered"] == {"val_accuracy": 0.7}
    assert rows[0]["evaluated"] == {"d@v1/test": {
        "accuracy": 0.75, "macro_f1": 0.5, "micro_f1": 0.75, "ece": 0.1, "top_2": 1.0}}
    assert list(rows[1]["evaluated"]) == ["d@v1/val"]  # the failed one is left out
    assert metric_columns(rows)[:3] == [(REGISTERED, "val_accuracy"), ("d@v1/test", "accuracy"),
                                        ("d@v1/test", "macro_f1")]
    assert metric_series(rows, REGISTERED, "val_accuracy") == ([1, 2], [0.7, 0.9])
    assert metric_series(rows, "d@v1/test", "accuracy") == ([1, 2], [0.75, None])
    html = rows_html(rows)
    assert html.count("<tr data-version=") == 2 and "champion" in html and "0.75" in html


def test_headline_metrics_per_task():
    assert headline({"task": "ner", "metrics": {"precision": 0.5, "recall": 1.0, "f1": 0.67,
                                                "macro_f1": None, "per_type": {}}}) == {
        "precision": 0.5, "recall": 1.0, "f1": 0.67}
    assert headline({"task": "object_detection", "metrics": {
        "map": 0.3, "map_50": 0.6, "map_75": 0.2, "per_class": {}}}) == {
        "map": 0.3, "map_50": 0.6, "map_75": 0.2}
    assert headline(None) == {} and headline({"task": "ner", "metrics": {}}) == {}


def test_alias_moves_say_from_to_who_when_why():
    history = [
        {"subject": "v1", "action": "registered", "actor": "ann", "at": "t0", "from": None,
         "to": {"version": 1}, "reason": ""},
        {"subject": "alias:challenger", "action": "alias.set", "actor": "ann", "at": "t1",
         "from": None, "to": {"version": 1}, "reason": "first"},
        {"subject": "alias:champion", "action": "alias.set", "actor": "bob", "at": "t2",
         "from": {"version": 1}, "to": {"version": 2, "forced": True}, "reason": "demo"},
        {"subject": "alias:challenger", "action": "alias.deleted", "actor": "ann",
         "at": "t3", "from": {"version": 1}, "to": None, "reason": None}]
    assert [(m["alias"], m["from"], m["to"], m["forced"], m["who"], m["when"], m["why"])
            for m in alias_moves(history)] == [
        ("challenger", None, 1, False, "ann", "t1", "first"),
        ("champion", 1, 2, True, "bob", "t2", "demo"),
        ("challenger", 1, None, False, "ann", "t3", "")]


def test_confusion_and_per_class_bars_come_from_the_evaluation():
    ev = EVALUATIONS[1]
    assert confusion(ev) == {"z": [[1, 1], [0, 2]], "x": ["a", "b"], "y": ["a", "b"]}
    assert per_class(ev) == {"labels": ["a", "b"],
                             "series": {"precision": [1.0, 0.67], "recall": [0.5, 1.0]}}
    figure = confusion_figure([("v1", ev), ("v2", EVALUATIONS[3])])
    assert [(t.type, [list(r) for r in t.z]) for t in figure.data] == [
        ("heatmap", [[1, 1], [0, 2]]), ("heatmap", [[2, 0], [0, 2]])]
    bars = per_class_figure([("v1", ev), ("v2", EVALUATIONS[3])])
    assert [(t.name, tuple(t.y)) for t in bars.data] == [
        ("v1", (1.0, 0.67)), ("v1", (0.5, 1.0)), ("v2", (1.0, 0.67)), ("v2", (0.5, 1.0))]
    ner = {"result": {"task": "ner", "metrics": {"per_type": {
        "PER": {"precision": 1.0, "recall": 0.5, "f1": 0.67, "support": 2}}}}}
    assert confusion(ner) is None
    assert per_class(ner) == {"labels": ["PER"], "series": {"precision": [1.0],
                                                            "recall": [0.5]}}
    boxes = {"result": {"task": "object_detection", "metrics": {"per_class": {
        "car": {"ap": 0.4, "ap_50": 0.8, "support": 3}}}}}
    assert per_class(boxes)["series"] == {"ap": [0.4], "ap_50": [0.8]}
    assert confusion_figure([("v1", ner)]) is None


def test_curves_scores_and_descriptions():
    points = [{"step": 2, "name": "loss", "value": 0.5}, {"step": 1, "name": "loss",
                                                          "value": 0.9},
              {"step": 2, "name": "val_accuracy", "value": 0.6}]
    assert curve_series(points) == {"loss": ([1, 2], [0.9, 0.5]),
                                    "val_accuracy": ([2], [0.6])}
    prediction = {"label": "b", "index": 1, "scores": [0.25, 0.75]}
    assert score_bars("image_classification", prediction, ["a", "b"]) == (
        ["b", "a"], [0.75, 0.25])
    assert describe("image_classification", prediction) == "b (75.0%)"
    spans = {"spans": [{"start": 0, "end": 3, "label": "PER", "text": "Ana", "score": 0.9}]}
    assert score_bars("ner", spans, []) == (["Ana (PER)"], [0.9])
    assert describe("ner", spans) == "1 entities: Ana → PER"
    assert describe("object_detection", {"boxes": []}) == "0 boxes"


# -- the widget on a real registry --------------------------------------------------------------

def _register(client, seed: int, **kw) -> dict:
    import torch

    torch.manual_seed(seed)
    module = small_cnn() if seed == 0 else _reseeded(seed)
    return client.models.register("cnn", module, example_input=torch.zeros(1, 1, 16, 16),
                                  task="image_classification", labels=DIGITS,
                                  dataset="digits@v1", **kw)


def _reseeded(seed: int):
    import torch

    module = small_cnn()
    torch.manual_seed(seed)
    for parameter in module.parameters():
        torch.nn.init.normal_(parameter)
    return module


def _image(tmp_path) -> bytes:
    return next(iter(sorted((tmp_path / "digits").glob("*.png")))).read_bytes()


def test_the_board_compares_versions_and_tries_one_as_the_predictor_does(digits, tmp_path):
    from loophub.models.predictor import Predictor

    _register(digits, 0, metrics={"val_accuracy": 0.4})
    _register(digits, 1, metrics={"val_accuracy": 0.6})
    digits.models.alias("cnn", "challenger", 1, reason="first")
    digits.models.alias("cnn", "challenger", 2, reason="better on val")
    board = ModelBoard("cnn", client=digits)
    assert [(r["version"], r["aliases"], r["dataset"], r["test_status"], r["registered"])
            for r in board.rows] == [(1, [], "digits@v1", "untested", {"val_accuracy": 0.4}),
                                     (2, ["challenger"], "digits@v1", "untested",
                                      {"val_accuracy": 0.6})]
    assert "challenger" in board.moves.value and "better on val" in board.moves.value
    assert board.metric_choice.value == (REGISTERED, "val_accuracy")
    assert list(board.metric_plot.children[0].data[0].y) == [0.4, 0.6]
    assert "no confusion matrix" in board.confusions.children[0].value
    assert "no training curves" in board.curve_plot.children[0].value

    image = _image(tmp_path)
    assert board.try_version.value == "cnn@v2"  # the latest first
    board.try_version.value = "cnn@v1"
    first = board.try_it(image)
    assert first.latency_ms > 0 and first.load_ms > 0
    board.try_version.value = "cnn@v2"  # the same image goes through the chosen version
    assert "cnn@v2 says" in board.try_result.value
    for ref in ("cnn@v1", "cnn@v2"):
        board.try_version.value = ref
        trial = board.try_it()
        assert trial.load_ms == 0  # each version was loaded once, then reused
        direct = Predictor.load(digits.models.artifact(ref), digits.models.get(ref)["meta"])
        assert trial.prediction == direct.predict_images([image])[0]
        assert trial.ref == ref and trial.latency_ms > 0
        assert f"{ref} says" in board.try_result.value and " ms" in board.try_result.value
        assert trial.prediction["label"] in board.try_result.value
        assert board.try_plot.children[0].data[0].x[0] == max(trial.prediction["scores"])
    assert [t.ref for t in board.try_every_version()] == ["cnn@v2", "cnn@v1"]
    assert board.try_table.value.count("<tr>") == 3


def _drawing() -> bytes:
    """A "1" drawn as the pad's front end would send it: an opaque RGBA PNG (what
    canvas.toDataURL gives) of the pad's size, a white stroke on black."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (160, 160), "black")
    ImageDraw.Draw(image).line([(80, 20), (80, 140)], fill="white", width=14)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_a_drawing_on_the_pad_is_tried_as_the_predictor_tries_it(digits, tmp_path):
    """The pad's data URL, set as the front end sets it at a stroke's end, runs the chosen
    version at once; its answer is the Predictor's on the same PNG (which its own
    preprocessing shrinks to the model's 16x16). Clear takes the drawing back."""
    import base64

    import traitlets

    from loophub.models.predictor import Predictor
    from loophub.widgets.drawpad import DATA_URL, DrawPad, png_of

    _register(digits, 0)
    _register(digits, 1)
    board = ModelBoard("cnn", client=digits)
    assert board.drawing.children == (board.pad,)  # an image classifier: a pad to draw on
    assert (board.pad.width, board.pad.height, board.pad.color, board.pad.background) == (
        160, 160, "white", "black")
    drawn = _drawing()
    board.pad.value = DATA_URL + base64.b64encode(drawn).decode()
    assert board.status.value == "" and board.pad.png == drawn
    direct = {ref: Predictor.load(digits.models.artifact(ref), digits.models.get(ref)["meta"])
              for ref in ("cnn@v1", "cnn@v2")}
    expected = direct["cnn@v2"].predict_images([drawn])[0]
    assert board.trial.ref == "cnn@v2" and board.trial.prediction == expected
    assert describe("image_classification", expected) in board.try_result.value
    assert " ms" in board.try_result.value
    assert board.try_plot.children[0].data[0].x[0] == max(expected["scores"])
    board.try_version.value = "cnn@v1"  # another version gets the same drawing
    assert board.trial.ref == "cnn@v1"
    assert board.trial.prediction == direct["cnn@v1"].predict_images([drawn])[0]
    board.pad.clear()  # as the Clear button does: nothing left to predict
    board.try_button.click()
    assert "draw or upload an image" in board.status.value
    with pytest.raises(traitlets.TraitError):
        board.pad.value = "data:text/plain;base64,aGk="
    with pytest.raises(errors.InvalidInput):
        png_of(DATA_URL + "not base64!")
    pad = DrawPad(width=64, height=32, stroke=4, color="black", background="white")
    assert (pad.width, pad.height, pad.stroke, pad.png) == (64, 32, 4.0, None)
    image = _image(tmp_path)
    board.try_it(image)  # an upload after a drawing: the upload is what is tried now
    assert board.try_it().prediction == direct["cnn@v1"].predict_images([image])[0]


def test_the_board_says_what_is_wrong_instead_of_failing(digits):
    from datetime import UTC, datetime

    _register(digits, 0)
    board = ModelBoard("cnn", client=digits)
    board.try_button.click()  # nothing uploaded yet
    assert "upload an image" in board.status.value
    board.upload.value = ({"name": "x.png", "type": "image/png", "size": 3,
                           "content": memoryview(b"not an image"),
                           "last_modified": datetime.now(UTC)},)  # as the browser sends
    assert "not an image that can be read" in board.status.value
    assert board.upload.value == ()  # cleared, so the same file can be tried again
    with pytest.raises(errors.NotFound):
        ModelBoard("absent", client=digits)


def _model_board_entry_points() -> list:
    from importlib.metadata import entry_points

    return [e for e in entry_points(group="loophub.notebook_widgets")
            if e.name == "model_board"]


def test_the_client_gives_the_board(digits, monkeypatch):
    """client.models.board(name) is the board, found as the job monitor is (the SDK
    imports no widget): here through an entry point like the one setup.cfg declares."""
    import importlib.metadata

    _register(digits, 0)
    entry = importlib.metadata.EntryPoint(name="model_board", group="loophub.notebook_widgets",
                                          value="loophub.widgets.models:ModelBoard")
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [entry] if group == entry.group else [])
    board = digits.models.board("cnn")
    assert isinstance(board, ModelBoard) and board.client is digits
    assert [r["ref"] for r in board.rows] == ["cnn@v1"]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [])
    with pytest.raises(errors.InvalidInput, match="model board is not installed"):
        digits.models.board("cnn")


def test_the_board_entry_point_is_installed():
    found = _model_board_entry_points()
    assert found, ("setup.cfg's loophub.notebook_widgets lacks model_board = "
                   "loophub.widgets.models:ModelBoard, or pip install -e . is due")
    assert found[0].load() is ModelBoard


@pytest.mark.training
def test_the_board_shows_evaluations_and_curves_of_real_jobs(digits, tmp_path):
    """v1 from a real training job (its curves), v2 from a module; both evaluated by
    real evaluation jobs: the heatmaps hold the evaluations' confusion matrices."""
    job = digits.training.run("image-cnn", dataset="digits@v1", workers=1,
                              per_worker={"cpu": 1, "mem": "2G"},
                              params={"epochs": 3, "image_size": 16, "batch_size": 32})
    job.wait(progress=False, timeout=300)
    digits.models.register("cnn", job=job)
    _register(digits, 1)
    evaluated = [digits.models.evaluate(f"cnn@v{n}", dataset="digits@v1", split="test",
                                        progress=False) for n in (1, 2)]
    board = ModelBoard("cnn", client=digits)
    key = "digits@v1/test"
    accuracies = [ev["result"]["metrics"]["accuracy"] for ev in evaluated]
    assert [r["evaluated"][key]["accuracy"] for r in board.rows] == accuracies
    assert board.rows[0]["job"] == job.id and board.rows[1]["job"] is None
    assert board.evaluation_choice.value == key
    heatmaps = board.confusions.children[0].data
    assert [[list(row) for row in h.z] for h in heatmaps] == [
        ev["result"]["metrics"]["confusion"] for ev in evaluated]
    assert list(heatmaps[0].x) == DIGITS
    bars = board.bars.children[0].data
    assert [b.name for b in bars] == ["v1", "v1", "v2", "v2"]
    assert list(bars[0].y) == [evaluated[0]["result"]["metrics"]["per_class"][c]["precision"]
                               for c in DIGITS]
    board.metric_choice.value = (key, "accuracy")
    assert metric_series(board.rows, key, "accuracy") == ([1, 2], accuracies)
    assert list(board.metric_plot.children[0].data[0].y) == accuracies
    assert board.curve_choice.value == "loss"
    curve = board.curve_plot.children[0].data
    assert [c.name for c in curve] == ["v1"] and len(curve[0].x) > 1
    trial = board.try_it(_image(tmp_path))
    assert trial.ref == "cnn@v2" and trial.latency_ms > 0


def test_a_text_model_is_tried_on_typed_text(api, tmp_path):
    """A text classifier the recipe really trained, registered as its job would, answers
    the typed text in the board as its Predictor does."""
    import io

    from tests.models.test_predictor import TOPICS, class_schema, topic_records, train

    trained = train(tmp_path, "text-classifier", topic_records(160),
                    class_schema("text_classification", sorted(TOPICS)),
                    {"epochs": 3, "batch_size": 16, "max_len": 32, "hidden": 16,
                     "embedding_dim": 16})
    client = api.client("ann")
    digest = client.datasets.upload(io.BytesIO(trained.artifact))["digest"]
    client.request("POST", "models/topics/versions",
                   json={"artifact": digest, "meta": trained.meta})
    board = ModelBoard("topics", client=client)
    assert board.inputs.children == (board.text,)  # a text box, not an upload
    assert board.drawing.children == ()  # nor a pad to draw on
    board.text.value = "the match ended with a late goal"
    board.try_button.click()
    expected = trained.predictor().predict_texts([board.text.value])[0]
    assert expected["label"] in board.try_result.value and board.status.value == ""
    assert board.try_it().prediction == expected


def test_the_board_links_the_releases_apps_and_dashboards():
    from loophub.widgets.models import releases_html

    assert releases_html([]) == ""
    out = releases_html([{"name": "shop<1>", "version": "cnn@v2", "status": "serving",
                          "app": "http://hub/services/apps/shop", "dashboard": "http://d"},
                         {"name": "quiet", "version": "cnn@v1", "status": "stopped",
                          "app": "", "dashboard": ""}])
    assert "shop&lt;1&gt;" in out and "href='http://hub/services/apps/shop'" in out
    assert "class='lh-release-dashboard'" in out and "quiet</b> (cnn@v1, stopped)</div>" in out
