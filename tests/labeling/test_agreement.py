"""Agreement measures against hand-computed and textbook values."""

import pytest

from loophub.labeling.agreement import (
    box_f1,
    cohen_kappa,
    dataset_agreement,
    fleiss_kappa,
    iou,
    span_f1,
)


def test_cohen_kappa_textbook():
    # 50 items: both yes 20, both no 15, A yes/B no 5, A no/B yes 10 -> kappa 0.4
    pairs = [("y", "y")] * 20 + [("n", "n")] * 15 + [("y", "n")] * 5 + [("n", "y")] * 10
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    assert cohen_kappa([("a", "a")] * 3) == 1.0
    assert cohen_kappa([]) is None


def test_fleiss_kappa_wikipedia_example():
    # Fleiss (1971) example from Wikipedia: 10 items, 14 raters, 5 categories -> 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0],
             [2, 2, 8, 1, 1], [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2],
             [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    items = [[str(c) for c, n in enumerate(row) for _ in range(n)] for row in table]
    assert fleiss_kappa(items) == pytest.approx(0.210, abs=1e-3)
    with pytest.raises(ValueError):
        fleiss_kappa([["a", "b"], ["a"]])


def test_boxes_and_spans():
    assert iou([0, 0, 10, 10], [5, 0, 10, 10]) == pytest.approx(50 / 150)
    a = [{"type": "bbox", "label": "car", "bbox": [0, 0, 10, 10]},
         {"type": "bbox", "label": "car", "bbox": [50, 50, 10, 10]}]
    b = [{"type": "bbox", "label": "car", "bbox": [1, 1, 10, 10]},
         {"type": "bbox", "label": "person", "bbox": [50, 50, 10, 10]}]
    assert box_f1(a, b) == pytest.approx(0.5)  # one match out of 2 + 2
    s1 = [{"type": "span", "label": "PER", "start": 0, "end": 5},
          {"type": "span", "label": "LOC", "start": 9, "end": 14}]
    s2 = [{"type": "span", "label": "PER", "start": 0, "end": 5}]
    assert span_f1(s1, s2) == pytest.approx(2 / 3)


def test_dataset_agreement_orders_disputed_first():
    def rec(rid, *votes):
        return {"id": rid, "annotations": [
            {"type": "image_class", "label": label, "source": {"kind": "user", "name": user}}
            for user, label in votes]}
    records = [rec("a", ("u1", "cat"), ("u2", "cat")), rec("b", ("u1", "cat"), ("u2", "dog")),
               rec("c", ("u1", "dog"))]
    result = dataset_agreement("image_classification", records)
    assert result["items"] == 2
    assert [i["record_id"] for i in result["per_item"]] == ["b", "a"]
    assert result["mean_agreement"] == 0.5
    assert result["fleiss_kappa"]["raters"] == 2
    assert "u1|u2" in result["cohen_kappa"]
