"""The feedback loop's rules on hand-built request-log records (no processes)."""

from __future__ import annotations

import hashlib

import pytest

from loophub.errors import InvalidInput
from loophub.loop.rules import candidates, choose


def image(n: int, *, stored: bool = True) -> dict:
    return {"image_sha256": hashlib.sha256(f"img{n}".encode()).hexdigest(), "bytes": 10,
            "stored": stored}


def record(rid: str, inputs: list[dict], scores: list[float], *, status: int = 200,
           features: list[dict] | None = None, t: float = 0.0) -> dict:
    return {"id": rid, "time": t, "status": status, "version": "digits@v1",
            "inputs": inputs, "outputs": [{"label": "3", "score": s} for s in scores],
            "features": features or [{"brightness": 0.5} for _ in inputs]}


LOG = [
    record("req-00001", [image(1), image(2)], [0.9, 0.3], t=1),
    record("req-00002", [image(3)], [0.5], t=2),
    record("req-00003", [image(1)], [0.2], t=3),                     # image 1 again
    record("req-00004", [image(4, stored=False)], [0.1], t=4),       # the log dropped it
    record("req-00005", [{"pixels_sha256": "ab" * 32, "shape": [16, 16]}], [0.05], t=5),
    record("req-00006", [image(5)], [0.1], status=500, t=6),         # no answer
    record("req-00007", [{"text": "a short text"}], [0.4], t=7),
    record("req-00008", [{"text": "x" * 1000}], [0.3], t=8),          # cut by the log
]


def test_low_confidence_takes_the_least_sure_collectable_inputs_once_each():
    picked = choose(candidates(LOG), "low_confidence", threshold=0.6)
    assert [(c.request_id, c.instance) for c in picked] == [
        ("req-00003", 0), ("req-00001", 1), ("req-00007", 0), ("req-00002", 0)]
    # image 1 answered 0.9 once and 0.2 once: the unsure answer is what is kept
    assert picked[0].why == {"score": 0.2, "threshold": 0.6}
    assert len(choose(candidates(LOG), "low_confidence", threshold=0.6, limit=2)) == 2
    [least] = choose(candidates(LOG), "low_confidence", threshold=0.25)
    assert least.request_id == "req-00003"


def test_flagged_takes_what_callers_flagged_with_their_label():
    flags = [{"request_id": "req-00001", "instance": 0, "label": "8", "by": "eve"},
             {"request_id": "req-00005", "instance": 0, "label": "1", "by": "eve"}]
    picked = choose(candidates(LOG, flags), "flagged")
    assert [(c.request_id, c.instance) for c in picked] == [("req-00001", 0)]  # pixels: no
    assert picked[0].feedback["label"] == "8" and picked[0].why["flagged_by"] == "eve"


def test_drifted_takes_inputs_outside_the_training_range_farthest_first():
    reference = {"features": {"brightness": [0.4 + 0.001 * i for i in range(100)]}}
    log = [record("req-00010", [image(10)], [0.9], features=[{"brightness": 0.45}]),
           record("req-00011", [image(11)], [0.9], features=[{"brightness": 0.9}]),
           record("req-00012", [image(12)], [0.9], features=[{"brightness": 0.6}])]
    picked = choose(candidates(log), "drifted", reference=reference)
    assert [c.request_id for c in picked] == ["req-00011", "req-00012"]
    assert picked[0].why["feature"] == "brightness" and picked[0].why["distance"] > 4
    with pytest.raises(InvalidInput, match="registered without its dataset"):
        choose(candidates(log), "drifted", reference=None)


def test_random_is_a_seeded_sample_of_the_collectable_inputs():
    first = [c.content_sha for c in choose(candidates(LOG), "random", seed=1)]
    assert first == [c.content_sha for c in choose(candidates(LOG), "random", seed=1)]
    assert sorted(first) == sorted({c.content_sha for c in candidates(LOG)} - {None})
    assert len(first) == 4  # images 1, 2, 3 and the short text; never pixels or cut text


@pytest.mark.parametrize(("rule", "options", "field"), [
    ("loudest", {}, "rule"), ("random", {"limit": 0}, "limit"),
    ("random", {"limit": True}, "limit"), ("low_confidence", {"threshold": 1.5}, "threshold")])
def test_bad_choices_are_refused_naming_the_field(rule, options, field):
    with pytest.raises(InvalidInput) as refused:
        choose(candidates(LOG), rule, **options)
    assert refused.value.detail["field"] == field
