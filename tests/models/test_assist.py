"""Model-assisted labeling through the real API (in-process) and SDK: a registered
version's predictions land in the draft as pre-annotations (model version and score, never
labels), a re-run replaces them, labelers can be served the least confident items first,
and accepting a suggestion records that a person confirmed it."""

from __future__ import annotations

import io
import time
from itertools import islice

import numpy as np
import pytest

from loophub import errors
from loophub.datasets.records import counts_as_label
from loophub.training.recipes.labels import class_label
from loophub.widgets import ImageClassifier
from tests.labeling.conftest import make_dataset
from tests.labeling.test_widgets import FrontEnd
from tests.models.conftest import DIGITS, small_cnn

BACKENDS = pytest.mark.parametrize(
    "api", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


def digits_net(steps: int = 80):
    """A small CNN trained in a second or two on scikit-learn's digits, prepared as the
    dataset's PNGs are (16x16, nearest, pixels / 255): confident where the untrained
    small_cnn is not. It outputs logits (the predictor applies the softmax)."""
    import torch
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.stack([np.asarray(Image.fromarray((img * 255 / 16).astype(np.uint8))
                                  .resize((16, 16), Image.NEAREST)) for img in digits.images])
    x = torch.tensor(pixels / 255, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    return net.eval()


def register(client, name: str, module, labels=DIGITS):
    import torch

    return client.models.register(name, module, example_input=torch.zeros(1, 1, 16, 16),
                                  task="image_classification", labels=labels,
                                  dataset="digits@v1")


def unlabel(client, count: int, *, split: str | None = None) -> dict[str, str]:
    """Take the labels off the first COUNT records (by id): the truth, by record id."""
    truth = {}
    for entry in list(client.datasets.records("digits", split=split))[:count]:
        record = entry["record"]
        truth[record["id"]] = record["annotations"][0]["label"]
        client.datasets.put_record("digits", {**record, "annotations": []}, entry["revision"])
    return truth


def model_annotations(record: dict) -> list[dict]:
    return [a for a in record["annotations"] if (a.get("source") or {}).get("kind") == "model"]


def draft(client) -> dict[str, dict]:
    return {e["record"]["id"]: e for e in client.datasets.records("digits")}


def top_probability(client, ref: str, record_id: str) -> tuple[str, float]:
    """The version's answer on a record computed here, from its artifact and image."""
    import torch
    from PIL import Image

    module = torch.jit.load(io.BytesIO(client.models.artifact(ref)))
    image = Image.open(io.BytesIO(client.labeling.media("digits", record_id)[0])).convert("L")
    x = torch.tensor(np.asarray(image.resize((16, 16))) / 255, dtype=torch.float32)
    with torch.no_grad():
        probs = torch.softmax(module(x[None, None]), 1)[0]
    return DIGITS[int(probs.argmax())], float(probs.max())


def test_predictions_land_as_model_pre_annotations_never_as_labels(digits):
    truth = unlabel(digits, 30)
    register(digits, "digits-net", digits_net())
    before = digits.labeling.progress("digits")
    started = time.perf_counter()
    result = digits.models.predict_into("digits", "digits-net", filter={"annotated": False},
                                        progress=False)
    took = time.perf_counter() - started
    assert {k: result[k] for k in ("predicted", "written", "annotations", "skipped",
                                   "model")} == {
        "predicted": 30, "written": 30, "annotations": 30, "skipped": 0,
        "model": "digits-net@v1"}
    rows = draft(digits)
    for rid, entry in rows.items():
        predicted = model_annotations(entry["record"])
        if rid not in truth:  # the filter kept the labeled records out
            assert predicted == []
            continue
        (ann,) = predicted
        assert ann["source"] == {"kind": "model", "name": "digits-net", "version": "v1"}
        assert ann["type"] == "image_class" and ann["label"] in DIGITS
        assert 0.1 <= ann["score"] <= 1.0
        # never a label: not counted, not learnt from, the record still unlabeled
        assert not counts_as_label(ann) and class_label(entry["record"], "image_class") is None
    label, score = top_probability(digits, "digits-net@v1", sorted(truth)[0])
    ann = model_annotations(rows[sorted(truth)[0]]["record"])[0]
    assert ann["label"] == label and ann["score"] == pytest.approx(score, abs=1e-5)
    right = sum(model_annotations(rows[rid]["record"])[0]["label"] == want
                for rid, want in truth.items())
    assert right >= 27, f"{right}/30 right: the trained model should be good"
    after = digits.labeling.progress("digits")
    assert after == before  # labeled, done, per-label counts: predictions are not labels
    assert {e["record"]["id"] for e in digits.datasets.records("digits", annotated=False)} \
        == set(truth)
    print(f"\npredict_into: 30 records in {took:.2f} s")


def test_a_rerun_replaces_that_models_predictions(digits):
    truth = unlabel(digits, 12)
    register(digits, "digits-net", small_cnn())  # v1: untrained, unsure of everything
    register(digits, "other-net", small_cnn())
    unlabeled = {"annotated": False}
    digits.models.predict_into("digits", "digits-net@v1", filter=unlabeled, progress=False)
    digits.models.predict_into("digits", "other-net", filter=unlabeled, progress=False)
    again = digits.models.predict_into("digits", "digits-net@1", filter=unlabeled,
                                       progress=False)
    assert again["written"] == 12
    register(digits, "digits-net", digits_net())  # v2
    digits.models.alias("digits-net", "challenger", 2)
    newer = digits.models.predict_into("digits", "digits-net@challenger", filter=unlabeled,
                                       progress=False, batch_size=5)
    assert (newer["model"], newer["written"]) == ("digits-net@v2", 12)
    for rid in truth:
        record = digits.datasets.record("digits", rid)["record"]
        sources = sorted((a["source"]["name"], a["source"]["version"])
                         for a in model_annotations(record))
        # one prediction per model: v2 replaced v1 (and v1's re-run replaced itself)
        assert sources == [("digits-net", "v2"), ("other-net", "v1")]


@BACKENDS
def test_uncertain_first_serves_the_least_confident_records_first(api, digits, monkeypatch):
    # small scan batches: the keyset paging of both phases is crossed many times
    monkeypatch.setattr("loophub.labeling.service.SCAN_BATCH", 5)
    truth = unlabel(digits, 24)
    register(digits, "digits-net", digits_net(steps=4))  # barely trained: a spread of scores
    predicted = digits.models.predict_into("digits", "digits-net", progress=False,
                                           filter={"annotated": False, "split": "train"})
    rows = draft(digits)
    scores = {rid: model_annotations(rows[rid]["record"])[0]["score"] for rid in truth
              if model_annotations(rows[rid]["record"])}
    assert len(scores) == predicted["written"] and 0 < len(scores) < len(truth)
    assert len(set(scores.values())) > 5  # a real spread, so the order means something
    # then every record without a prediction in id order: the unlabeled val and test
    # ones, and (as in id order) the imported labels, since no person has labeled them
    unpredicted = sorted(set(rows) - set(scores))
    want = (sorted(scores, key=lambda rid: (scores[rid], rid)) + unpredicted)[:50]
    assert set(truth) - set(scores) <= set(want)

    assert digits.labeling.settings("digits")["order"] == "id"
    assert digits.labeling.configure("digits", order="uncertain")["order"] == "uncertain"
    leased = [i["record"]["id"] for i in digits.labeling.lease("digits", 50)]
    assert leased == want
    # asked explicitly, the draft order is still there; the held items come back first
    digits.labeling.release("digits")
    by_id = [i["record"]["id"] for i in digits.labeling.lease("digits", 50, order="id")]
    assert by_id == sorted(rows)[:50]
    digits.labeling.release("digits")
    # a record a person labeled leaves the queue; the next least confident one leads
    first = want[0]
    revision = digits.datasets.record("digits", first)["revision"]
    digits.datasets.annotate("digits", first, {"type": "image_class", "label": "3"}, revision)
    assert digits.labeling.lease("digits", 1)[0]["record"]["id"] == want[1]
    with pytest.raises(errors.InvalidInput, match="order must be one of"):
        digits.labeling.lease("digits", 1, order="random")


def test_uncertain_first_stays_fast_on_a_100k_record_draft(api, digits):
    """100,000 draft rows, a tenth of them predicted: a lease reads the confidence index
    (no sort of the draft), well under the API's budget for a key press."""
    from loophub.datasets import draft as drafts
    from loophub.datasets.models import Dataset

    db = api.ctx.db
    rng = np.random.default_rng(0)

    def records():
        for n in range(100_000):
            record = {"id": f"x{n:06d}", "annotations": []}
            if n % 10 == 0:
                record["annotations"].append({
                    "type": "image_class", "label": "1", "score": float(rng.random()),
                    "source": {"kind": "model", "name": "m", "version": "v1"}})
            yield record

    with db.transaction() as session:
        dataset_id = session.query(Dataset.id).filter(Dataset.name == "digits").scalar()
        drafts.upsert_many(session, dataset_id, records(), "ann")
    digits.labeling.configure("digits", order="uncertain")
    digits.labeling.lease("digits", 1)  # warm the connection
    digits.labeling.release("digits")
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        items = digits.labeling.lease("digits", 20)
        timings.append(time.perf_counter() - started)
        digits.labeling.release("digits")
    scores = [i["record"]["annotations"][0]["score"] for i in items]
    assert scores == sorted(scores) and len(items) == 20
    # the whole queue, read in batches: 10,000 predicted by confidence, then the rest by id
    from loophub.datasets.draft import RecordFilter
    from loophub.labeling.service import LabelingService

    with db.session() as session:
        queue = [(row.confidence, row.record_id) for row in islice(
            LabelingService._candidates(session, dataset_id, "zed", RecordFilter(),
                                        unlabeled_only=True, order="uncertain"), 10_500)]
    assert queue[:10_000] == sorted(queue[:10_000]) and None not in dict(queue[:10_000])
    rest = queue[10_000:]
    assert {c for c, _ in rest} == {None} and [r for _, r in rest] == sorted(
        {r for _, r in rest}) and len(rest) == 500
    with db.session() as session:
        plan = " ".join(str(row) for row in session.connection().exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT record_id FROM dataset_records WHERE dataset_id = 1 "
            "AND deleted = 0 AND annotators = '' AND confidence IS NOT NULL "
            "ORDER BY confidence, record_id LIMIT 200"))
    assert "ix_dataset_records_confidence" in plan and "TEMP B-TREE" not in plan, plan
    print(f"\nuncertain-first lease of 20 on 100k records: median "
          f"{sorted(timings)[2] * 1000:.1f} ms")
    assert sorted(timings)[2] < 0.5


def test_accepting_a_suggestion_records_the_human_confirmation(digits):
    truth = unlabel(digits, 3)
    register(digits, "digits-net", digits_net())
    digits.models.predict_into("digits", "digits-net", filter={"annotated": False},
                               progress=False)
    widget = ImageClassifier("digits", client=digits)
    front = FrontEnd(widget)
    first = widget.session.current.id
    assert first == sorted(truth)[0]
    suggestion = widget.session.suggestions(widget.session.current)[0]
    ack = front.op(first, action="accept")  # the labeler's "accept (Enter)"
    assert ack["type"] == "ack"
    record = digits.datasets.record("digits", first)["record"]
    mine = [a for a in record["annotations"] if a["source"]["kind"] == "user"]
    assert [(a["source"]["name"], a["label"]) for a in mine] == [("ann", suggestion["label"])]
    assert mine[0]["attributes"]["from_prediction"] == {
        "model": "digits-net", "version": "v1", "annotation": suggestion["id"],
        "label": suggestion["label"], "score": suggestion["score"]}
    # now it is a person's label: counted, learnt from
    assert class_label(record, "image_class") == suggestion["label"]
    assert digits.labeling.progress("digits")["labeled"] == 1
    # the prediction itself stays a prediction (the person's copy is the label)
    assert [a["id"] for a in model_annotations(record)] == [suggestion["id"]]
    # a label the person already gave is marked when they accept the same suggestion
    widget.session.go(1)
    second = widget.session.current.id
    predicted = widget.session.suggestions(widget.session.current)[0]["label"]
    front.op(second, action="set_labels", labels=[predicted])
    front.op(second, action="accept")
    record = digits.datasets.record("digits", second)["record"]
    (mine,) = [a for a in record["annotations"] if a["source"]["kind"] == "user"]
    assert mine["attributes"]["from_prediction"]["label"] == predicted
    widget.close()


def test_bad_input_is_refused_and_nothing_is_written(digits, api, tmp_path):
    unlabel(digits, 5)
    register(digits, "digits-net", small_cnn())
    register(digits, "letters-net", small_cnn(), labels=list("abcdefghij"))
    make_dataset(digits, "reviews", "text_classification", ["positive", "negative"],
                 [{"id": "r0", "text": "Fine.", "annotations": []}], tmp_path / "reviews")
    before = draft(digits)

    def refused(error, match, dataset="digits", model="digits-net", client=digits, **kw):
        with pytest.raises(error, match=match):
            client.models.predict_into(dataset, model, progress=False, **kw)

    refused(errors.NotFound, "no-such-net", model="no-such-net")
    refused(errors.NotFound, "no alias 'champion'", model="digits-net@champion")
    refused(errors.NotFound, "no-such-data", dataset="no-such-data")
    refused(errors.InvalidInput, "is a image_classification model and dataset 'reviews' is "
            "labeled for text_classification", dataset="reviews")
    refused(errors.InvalidInput, "labels dataset 'digits' does not have: 'a'",
            model="letters-net")
    refused(errors.InvalidInput, r"filter keys \['unlabeled'\]", filter={"unlabeled": True})
    refused(errors.InvalidInput, "batch_size", batch_size=0)
    # a reader who may not write the dataset: refused at the first write, nothing written
    digits.datasets.update("digits", visibility="public")
    digits.models.share("digits-net", visibility="public")
    refused(errors.PermissionDenied, "not change it", client=api.client("bob"))
    assert draft(digits) == before
    assert digits.datasets.record("reviews", "r0")["record"]["annotations"] == []


def test_the_migration_gives_existing_predictions_their_confidence(db_url):
    """A draft written before 0010 is ordered as soon as it is upgraded."""
    import json

    from sqlalchemy import text

    from loophub.store.db import make_engine, upgrade

    engine = make_engine(db_url)
    upgrade(engine, "0009")
    ann = {"type": "image_class", "label": "1", "score": 0.25,
           "source": {"kind": "model", "name": "m", "version": "v1"}}
    contents = {
        "a": {"id": "a", "annotations": [ann]},
        "b": {"id": "b", "annotations": [ann, {**ann, "score": 0.75}]},
        "c": {"id": "c", "annotations": [ann, {"type": "image_class", "label": "1",
                                              "source": {"kind": "user", "name": "ann"}}]},
        "d": {"id": "d", "annotations": []},
    }
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO datasets (name, owner, visibility, description, label_schema, state, "
            "state_changed_by, state_changed_at, created, seq, committed_seq, version_count, "
            "purged) VALUES ('d', 'ann', 'private', '', '{}', 'active', 'ann', "
            ":now, :now, 0, 0, 0, :no)"), {"now": "2025-01-01 00:00:00", "no": False})
        for rid, record in contents.items():
            conn.execute(text(
                "INSERT INTO dataset_records (dataset_id, record_id, revision, seq, content, "
                "hash, labels, annotated, annotators, deleted, updated_by, updated_at) "
                "VALUES (1, :r, 1, 1, :c, 'h', '', :no, '', :no, 'ann', :now)"),
                {"r": rid, "c": json.dumps(record, sort_keys=True, separators=(",", ":")),
                 "no": False, "now": "2025-01-01 00:00:00"})
    upgrade(engine, "head")
    with engine.connect() as conn:
        got = dict(conn.execute(text("SELECT record_id, confidence FROM dataset_records"))
                   .tuples().all())
    engine.dispose()
    assert got == {"a": 0.25, "b": 0.25, "c": None, "d": None}
