"""VersionBrowser and DatasetOverview against the in-process API."""

from loophub.widgets import DatasetOverview, ImageClassifier, VersionBrowser
from loophub.widgets.charts import change_bars
from tests.labeling.test_widgets import FrontEnd, image_dataset


def test_commit_tag_and_diff_with_label_chart(api, tmp_path):
    image_dataset(api.client("ann"), "pets", tmp_path / "pets", count=4)
    browser = VersionBrowser("pets", client=api.client("ann"))
    assert browser.draft_changes["added_ids"] == ["img00", "img01", "img02", "img03"]
    assert "+4 added" in browser.draft_view.value
    first = browser.commit("import four images")
    assert first["number"] == 1 and browser.draft_changes["added"] == 0
    labeler = ImageClassifier("pets", client=api.client("ann"))
    fe = FrontEnd(labeler)
    fe.op("img00", action="set_labels", labels=["cat"])
    fe.op("img01", action="set_labels", labels=["dog"])
    browser.refresh()
    assert browser.draft_changes["changed_ids"] == ["img00", "img01"]
    assert "head" in browser.draft_view.value and "0→1 (+1)" in browser.draft_view.value
    browser.commit("first labels")
    browser.tag("baseline", 1)
    assert [v["tags"] for v in browser.versions] == [[], ["baseline"]]
    result = browser.diff("baseline", "head")
    assert result["changed_ids"] == ["img00", "img01"] and result["added"] == 0
    assert "v1 → v2" in browser.diff_view.value and "<svg" in browser.diff_view.value
    browser._guard(browser.commit, "")  # a button press with no message explains itself
    assert "commit message" in browser.status.value


def test_overview_counts_splits_labels_and_samples(api, tmp_path):
    image_dataset(api.client("ann"), "pets", tmp_path / "pets", count=5)
    FrontEnd(ImageClassifier("pets", client=api.client("ann"))).op(
        "img00", action="set_labels", labels=["dog"])
    overview = DatasetOverview("pets", client=api.client("ann"), samples=3)
    assert overview.summary["records"] == 5 and overview.summary["labeled"] == 1
    assert overview.summary["labels"] == {"dog": 1}
    assert overview.body.value.count("<figure>") == 3
    assert "data:image/png;base64," in overview.body.value


def test_change_chart_shows_signed_deltas():
    svg = change_bars({"cat": 3, "dog": 1}, {"cat": 2, "dog": 4, "bird": 1})
    assert "3→2 (-1)" in svg and "1→4 (+3)" in svg and "0→1 (+1)" in svg


def test_overview_reports_agreement(api, tmp_path):
    image_dataset(api.client("owen"), "pets", tmp_path / "pets", count=3)
    api.client("owen").datasets.update("pets", visibility="group", group="team")
    for user, labels in (("ann", ["cat", "cat"]), ("ben", ["cat", "dog"])):
        client = api.client(user)
        for rid, label in zip(("img00", "img01"), labels, strict=True):
            rev = client.datasets.record("pets", rid)["revision"]
            client.datasets.annotate("pets", rid, {"type": "image_class", "label": label}, rev)
    overview = DatasetOverview("pets", client=api.client("owen"))
    assert overview.summary["agreement"]["items"] == 2
    assert "mean agreement 0.50" in overview.body.value and "Cohen's κ ann / ben" in \
        overview.body.value
