"""The labeler widgets' Python models, driven by the messages the front-end sends,
against the real API routes (in-process) and SQLite."""

import pytest

from loophub import errors
from loophub.widgets import (
    BoxLabeler,
    ImageClassifier,
    ReviewLabeler,
    SpanLabeler,
    TextClassifier,
    labeler_for,
)
from tests.labeling.conftest import image_dataset, make_dataset


class FrontEnd:
    """Stands in for labeler.js: sends its messages, records the widget's answers."""

    def __init__(self, widget) -> None:
        self.widget, self.received = widget, []
        widget.send = lambda content, buffers=None: self.received.append((content, buffers))
        self.req = 0
        self.say({"type": "ready"})

    def say(self, msg: dict) -> dict | None:
        before = len(self.received)
        self.widget._on_message(self.widget, msg, [])
        return self.received[-1][0] if len(self.received) > before else None

    def op(self, record_id: str, **fields) -> dict:
        self.req += 1
        return self.say({"type": "op", "req": self.req, "t0": 0, "record_id": record_id,
                         **fields})

    def current(self) -> str:
        return self.widget.session.current.id


@pytest.fixture
def pets(api, tmp_path):
    ids = image_dataset(api.client("owen"), "pets", tmp_path / "pets", count=6,
                        classes=("cat", "dog", "bird"))
    api.client("owen").datasets.update("pets", visibility="group", group="team")
    return ids


def labels_on_server(api, dataset, user="ann"):
    out = {}
    for entry in api.client(user).datasets.records(dataset):
        anns = [a for a in entry["record"]["annotations"]
                if (a.get("source") or {}).get("kind") == "user"]
        if anns:
            out[entry["record"]["id"]] = sorted(a["label"] for a in anns)
    return out


def test_image_classifier_saves_each_label_and_resumes(api, pets):
    widget = ImageClassifier("pets", client=api.client("ann"), prefetch=2)
    fe = FrontEnd(widget)
    sync = fe.received[0]
    assert sync[0]["type"] == "sync" and len(sync[0]["items"]) == 3
    assert sync[1][0][:4] == b"\x89PNG"  # the image bytes travel with the item
    assert widget.hotkeys == {"cat": "1", "dog": "2", "bird": "3"}
    ack = fe.op(pets[0], action="set_labels", labels=["cat"])
    assert ack["type"] == "ack" and ack["record"]["annotations"][0]["label"] == "cat"
    fe.say({"type": "nav", "pos": 1})
    fe.op(pets[1], action="set_labels", labels=["dog"])
    fe.op(pets[1], action="set_labels", labels=["bird"])  # a change replaces, never adds
    fe.say({"type": "nav", "pos": 2})
    assert labels_on_server(api, "pets") == {pets[0]: ["cat"], pets[1]: ["bird"]}
    assert widget.progress["mine"] == 2 and widget.progress["labels"] == {"bird": 1, "cat": 1}
    # "Kernel restart": a new widget resumes at the item it was on; nothing was lost.
    again = ImageClassifier("pets", client=api.client("ann"), prefetch=2)
    assert again.session.current.id == pets[2]
    assert again.progress["mine"] == 2


def test_undo_redo_skip_back(api, pets):
    widget = ImageClassifier("pets", client=api.client("ann"))
    fe = FrontEnd(widget)
    fe.op(pets[0], action="set_labels", labels=["cat"])
    fe.op(pets[0], action="set_labels", labels=["dog"])
    shown = fe.say({"type": "undo"})
    assert shown["type"] == "show" and shown["record_id"] == pets[0]
    assert labels_on_server(api, "pets") == {pets[0]: ["cat"]}
    fe.say({"type": "undo"})
    assert labels_on_server(api, "pets") == {}
    fe.say({"type": "redo"})
    assert labels_on_server(api, "pets") == {pets[0]: ["cat"]}
    assert widget.progress["mine"] == 1
    fe.say({"type": "skip", "pos": 1})
    assert fe.current() == pets[2]
    fe.say({"type": "nav", "pos": 1})  # going back to a skipped item still lets you label it
    fe.op(pets[1], action="set_labels", labels=["bird"])
    assert labels_on_server(api, "pets")[pets[1]] == ["bird"]
    other = ImageClassifier("pets", client=api.client("ann"))
    assert pets[1] not in [i.id for i in other.session.items]


def test_two_labelers_get_disjoint_items(api, pets):
    ann = ImageClassifier("pets", client=api.client("ann"), prefetch=2)
    ben = ImageClassifier("pets", client=api.client("ben"), prefetch=2)
    assert not {i.id for i in ann.session.items} & {i.id for i in ben.session.items}
    ann.close()  # closing gives the unlabeled items back at once
    cid = ImageClassifier("pets", client=api.client("cid"), prefetch=2)
    assert [i.id for i in cid.session.items] == pets[:3]


def test_multi_label_toggles(api, tmp_path):
    image_dataset(api.client("ann"), "tags", tmp_path / "tags", count=2,
                  classes=("indoor", "person"), multi_label=True)
    widget = ImageClassifier("tags", client=api.client("ann"))
    assert widget.multi_label
    fe = FrontEnd(widget)
    fe.op("img00", action="set_labels", labels=["indoor", "person"])
    fe.op("img00", action="set_labels", labels=["person"])
    assert labels_on_server(api, "tags") == {"img00": ["person"]}


def test_filters_browse_by_label_and_annotator(api, pets):
    widget = ImageClassifier("pets", client=api.client("ann"))
    fe = FrontEnd(widget)
    fe.op(pets[0], action="set_labels", labels=["cat"])
    fe.op(pets[1], action="set_labels", labels=["dog"])
    by_label = ImageClassifier("pets", client=api.client("ann"), label="dog")
    assert [i.id for i in by_label.session.items] == [pets[1]]
    by_user = ImageClassifier("pets", client=api.client("ann"), annotator="ann")
    assert [i.id for i in by_user.session.items] == pets[:2]
    everything = ImageClassifier("pets", client=api.client("ann"), unlabeled=False,
                                 prefetch=10)
    assert len(everything.session.items) == 6


def test_suggestions_are_accepted_as_the_users_labels(api, pets):
    api.labeling("owen").put_predictions("pets", [
        {"record_id": pets[0], "model": "cnn", "version": "1",
         "annotations": [{"type": "image_class", "label": "bird", "score": 0.8}]}])
    widget = ImageClassifier("pets", client=api.client("ann"))
    fe = FrontEnd(widget)
    assert widget.session.suggestions(widget.session.current)[0]["label"] == "bird"
    fe.op(pets[0], action="accept")
    assert labels_on_server(api, "pets") == {pets[0]: ["bird"]}


def test_stale_revision_is_retried_without_duplicates(api, pets):
    widget = ImageClassifier("pets", client=api.client("ann"))
    fe = FrontEnd(widget)
    # Someone else writes the record meanwhile (the widget's revision goes stale).
    ben = api.client("ben")
    rev = ben.datasets.record("pets", pets[0])["revision"]
    ben.datasets.annotate("pets", pets[0], {"type": "image_class", "label": "dog"}, rev)
    ack = fe.op(pets[0], action="set_labels", labels=["cat"])
    assert ack["type"] == "ack"
    server = api.client("ann").datasets.record("pets", pets[0])["record"]["annotations"]
    assert sorted((a["source"]["name"], a["label"]) for a in server) == [
        ("ann", "cat"), ("ben", "dog")]


def test_text_classifier_and_wrong_task(api, tmp_path):
    records = [{"id": f"t{i}", "text": text, "annotations": []}
               for i, text in enumerate(["great film", "awful plot", "meh"])]
    make_dataset(api.client("ann"), "reviews", "text_classification", ["pos", "neg"], records,
                 tmp_path / "reviews")
    with pytest.raises(errors.InvalidInput, match="text_classification"):
        ImageClassifier("reviews", client=api.client("ann"))
    widget = labeler_for("reviews", client=api.client("ann"))
    assert isinstance(widget, TextClassifier)
    fe = FrontEnd(widget)
    fe.op("t0", action="set_labels", labels=["pos"])
    assert labels_on_server(api, "reviews") == {"t0": ["pos"]}


def test_boxes_draw_move_resize_relabel_delete(api, tmp_path):
    image_dataset(api.client("ann"), "street", tmp_path / "street", count=2,
                  classes=("car", "person"), task="object_detection")
    widget = BoxLabeler("street", client=api.client("ann"))
    fe = FrontEnd(widget)
    box = {"id": "b1", "type": "bbox", "label": "car", "bbox": [5, 5, 20, 10]}
    fe.op("img00", action="add", annotation=box)
    fe.op("img00", action="update", annotation_id="b1", fields={"bbox": [10, 8, 20, 10]})
    fe.op("img00", action="update", annotation_id="b1", fields={"bbox": [10, 8, 30, 16]})
    fe.op("img00", action="update", annotation_id="b1", fields={"label": "person"})
    saved = api.client("ann").datasets.record("street", "img00")["record"]["annotations"]
    assert [(a["label"], a["bbox"]) for a in saved] == [("person", [10, 8, 30, 16])]
    fe.op("img00", action="delete", annotation_id="b1")
    assert api.client("ann").datasets.record("street", "img00")["record"]["annotations"] == []
    fe.say({"type": "undo"})
    saved = api.client("ann").datasets.record("street", "img00")["record"]["annotations"]
    assert [(a["id"], a["label"]) for a in saved] == [("b1", "person")]


def test_ner_spans_use_code_point_offsets(api, tmp_path):
    text = "Ana 🇵🇹 met 李小龍 in Zürich 🎉 today"
    make_dataset(api.client("ann"), "ner", "ner", ["PER", "LOC"],
                 [{"id": "s1", "text": text, "annotations": []}], tmp_path / "ner")
    widget = SpanLabeler("ner", client=api.client("ann"))
    fe = FrontEnd(widget)
    start = text.index("李小龍")  # Python indexes by code point, as the widget does
    fe.op("s1", action="add", annotation={"type": "span", "label": "PER", "start": start,
                                           "end": start + 3, "text": "李小龍"})
    saved = api.client("ann").datasets.record("ner", "s1")["record"]["annotations"][0]
    # The flag is two code points (regional indicators): 李 starts at 11, not 9 or 13.
    assert text[saved["start"]:saved["end"]] == "李小龍" and saved["start"] == 11


def test_review_accepts_rejects_and_fixes(api, pets):
    api.labeling("owen").configure("pets", overlap=2)
    for user, label in (("ann", "cat"), ("ben", "dog")):
        widget = ImageClassifier("pets", client=api.client(user))
        FrontEnd(widget).op(pets[0], action="set_labels", labels=[label])
    review = ReviewLabeler("pets", client=api.client("owen"))
    fe = FrontEnd(review)
    assert review.session.current.id == pets[0] and review.session.current.agreement == 0.0
    fe.op(pets[0], action="fix", labels=["cat"])
    anns = api.client("owen").datasets.record("pets", pets[0])["record"]["annotations"]
    states = {a["source"]["name"]: (a["label"], a.get("review", {}).get("state")) for a in anns}
    assert states == {"ann": ("cat", "accepted"), "ben": ("dog", "rejected"),
                      "owen": ("cat", "accepted")}
    assert api.labeling("owen").review_queue("pets") == []


def test_a_labeler_reviewing_their_own_item(api, pets):
    api.labeling("owen").configure("pets", overlap=2)
    for user, label in (("ann", "cat"), ("ben", "dog")):
        FrontEnd(ImageClassifier("pets", client=api.client(user))).op(
            pets[0], action="set_labels", labels=[label])
    fe = FrontEnd(ReviewLabeler("pets", client=api.client("ann")))
    ack = fe.op(pets[0], action="fix", labels=["cat"])  # ann already says cat: no new label
    assert ack["type"] == "ack"
    anns = api.client("ann").datasets.record("pets", pets[0])["record"]["annotations"]
    assert sorted((a["source"]["name"], a["review"]["state"]) for a in anns) == [
        ("ann", "accepted"), ("ben", "rejected")]
    assert fe.say({"type": "undo", "req": 99})["type"] == "show"
    anns = api.client("ann").datasets.record("pets", pets[0])["record"]["annotations"]
    assert {a["review"]["state"] for a in anns} == {"pending"}


def test_python_api_labels_like_the_keys(api, pets):
    widget = ImageClassifier("pets", client=api.client("ann"))
    FrontEnd(widget)
    widget.label("cat")
    assert widget.current["id"] == pets[1]
    widget.skip()
    widget.back()
    widget.label("dog")
    widget.undo()
    widget.redo()
    assert labels_on_server(api, "pets") == {pets[0]: ["cat"], pets[1]: ["dog"]}


def test_filter_bar_switches_to_browsing(api, pets):
    widget = ImageClassifier("pets", client=api.client("ann"))
    fe = FrontEnd(widget)
    fe.op(pets[0], action="set_labels", labels=["dog"])
    sync = fe.say({"type": "filter", "label": "dog", "split": "", "annotator": "",
                   "unlabeled": True})
    assert sync["type"] == "sync" and [i["record"]["id"] for i in sync["items"]] == [pets[0]]
    assert widget.filters == {"split": None, "label": "dog", "annotator": None,
                              "unlabeled": True, "origin": None}
    assert api.labeling("ann").leases("pets") == []  # browsing holds no leases
    # "from production": only what the feedback loop collected (none of these pets)
    sync = fe.say({"type": "filter", "label": "", "split": "", "annotator": "",
                   "unlabeled": True, "origin": "production"})
    assert sync["type"] == "sync" and sync["items"] == []
    assert widget.filters["origin"] == "production"
