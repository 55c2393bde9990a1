"""Labeling details a new user hits first: hotkeys of one-character classes, progress on
a dataset imported with labels, and which items "needs my label" offers first."""

from loophub.widgets.session import default_hotkeys
from tests.labeling.conftest import make_dataset, png_bytes


def schema(*names):
    return {"task": "image_classification",
            "classes": [{"id": i, "name": n} for i, n in enumerate(names)]}


def test_digit_classes_use_their_own_keys():
    keys = default_hotkeys(schema(*"0123456789"))
    assert keys == {str(d): str(d) for d in range(10)}


def test_one_character_classes_keep_their_key_and_others_fill_in():
    keys = default_hotkeys(schema("cat", "1", "b", "dog"))
    assert keys["1"] == "1" and keys["b"] == "b"
    assert keys["cat"] not in ("1", "b") and keys["dog"] not in ("1", "b")
    assert len(set(keys.values())) == 4
    # a one-character name the labeler needs for itself (s: skip) gets a free key
    keys = default_hotkeys(schema("s", "x"))
    assert keys["x"] == "x" and keys["s"] not in ("s", "x")
    # the schema's own hotkey and the caller's overrides still win
    with_hotkey = schema("0", "1")
    with_hotkey["classes"][0]["hotkey"] = "1"
    assert default_hotkeys(with_hotkey) == {"0": "1", "1": "2"}
    assert default_hotkeys(schema("0", "1"), {"0": "q"}) == {"0": "q", "1": "1"}


def imported(api, tmp_path, labeled: int = 9, total: int = 12) -> list[str]:
    owner = api.client("owen")
    ids = [f"img{i:02d}" for i in range(total)]
    records = [{"id": rid, "media": {"path": f"{rid}.png"},
                "annotations": ([{"type": "image_class", "label": "cat"}] if i < labeled
                                else [])} for i, rid in enumerate(ids)]
    make_dataset(owner, "pets", "image_classification", ["cat", "dog"], records,
                 tmp_path / "pets", images={f"{rid}.png": png_bytes() for rid in ids})
    owner.datasets.update("pets", visibility="group", group="team")
    return ids


def test_progress_counts_labels_from_an_import(api, tmp_path):
    imported(api, tmp_path)
    ann = api.labeling("ann")
    progress = ann.progress("pets")
    assert progress["done"] == 9 and progress["total"] == 12
    assert progress["imported"] == 9 and progress["labeled"] == 0
    # a person confirming an imported label keeps it done, now labeled by people
    item = ann.lease("pets", 1)[0]
    ann.datasets.annotate("pets", item["record"]["id"],
                          {"type": "image_class", "label": "dog"}, item["revision"])
    progress = ann.progress("pets")
    assert progress["done"] == 10 and progress["labeled"] == 1 and progress["mine"] == 1


def test_needs_my_label_offers_items_without_any_label_first(api, tmp_path):
    ids = imported(api, tmp_path)
    ann = api.labeling("ann")
    assert [i["record"]["id"] for i in ann.lease("pets", 4)] == [*ids[9:], ids[0]]


def test_with_overlap_items_no_person_labeled_come_before_others_labels(api, tmp_path):
    ids = imported(api, tmp_path, labeled=0, total=4)
    api.labeling("owen").configure("pets", overlap=2)
    ben = api.labeling("ben")
    item = ben.lease("pets", 1)[0]
    assert item["record"]["id"] == ids[0]
    ben.datasets.annotate("pets", ids[0], {"type": "image_class", "label": "cat"},
                          item["revision"])
    ben.release("pets")
    ann = api.labeling("ann")
    assert [i["record"]["id"] for i in ann.lease("pets", 4)] == [*ids[1:], ids[0]]
