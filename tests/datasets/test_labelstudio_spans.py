"""Label Studio text spans in texts with characters beyond U+FFFF (emoji): offsets in
code points (Python tools) and in UTF-16 units (Label Studio's UI) are both read, told
apart by the span's value.text; export writes UTF-16 units."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loophub.datasets.formats import read_dataset, write_dataset
from loophub.errors import InvalidInput

TEXT = "I 🤔 love 🇫🇷 Paris and Lyon"


def units16(text: str, offset: int) -> int:
    return len(text[:offset].encode("utf-16-le")) // 2


def cp_span(text: str, word: str) -> tuple[int, int]:
    start = text.index(word)
    return start, start + len(word)


def utf16_span(text: str, word: str) -> tuple[int, int]:
    start, end = cp_span(text, word)
    return units16(text, start), units16(text, end)


def task(text: str, spans: list[tuple[int, int, str | None, str]], kind="annotations") -> dict:
    results = []
    for number, (start, end, covered, label) in enumerate(spans):
        value = {"start": start, "end": end, "labels": [label]}
        if covered is not None:
            value["text"] = covered
        results.append({"id": f"r{number}", "type": "labels", "from_name": "ner",
                        "to_name": "text", "value": value})
    return {"id": 1, "data": {"text": text}, kind: [{"id": 5, "result": results}]}


def write_tasks(path: Path, *tasks: dict) -> Path:
    path.write_text(json.dumps(list(tasks), ensure_ascii=False), encoding="utf-8")
    return path


def load(path: Path) -> list[dict]:
    with read_dataset("labelstudio", path) as bundle:
        return list(bundle.records)


def spans_of(records: list[dict]) -> list[tuple[int, int, str]]:
    return [(a["start"], a["end"], a["label"]) for r in records for a in r["annotations"]
            if a["type"] == "span"]


def test_code_point_and_utf16_offsets_with_emoji_give_the_same_record(tmp_path):
    cp = write_tasks(tmp_path / "cp.json", task(TEXT, [(*cp_span(TEXT, "Paris"), "Paris", "LOC"),
                                                       (*cp_span(TEXT, "Lyon"), "Lyon", "LOC")]))
    u16 = write_tasks(tmp_path / "u16.json", task(TEXT, [
        (*utf16_span(TEXT, "Paris"), "Paris", "LOC"), (*utf16_span(TEXT, "Lyon"), "Lyon", "LOC")]))
    assert cp_span(TEXT, "Paris") != utf16_span(TEXT, "Paris")  # the two units differ here
    from_cp, from_u16 = load(cp), load(u16)
    assert from_cp == from_u16
    assert [TEXT[s:e] for s, e, _ in spans_of(from_cp)] == ["Paris", "Lyon"]


def test_offsets_matching_neither_unit_are_refused_naming_the_fields(tmp_path):
    start, end = cp_span(TEXT, "Paris")
    path = write_tasks(tmp_path / "bad.json", task(TEXT, [(start + 1, end + 1, "Paris", "LOC")]))
    with pytest.raises(InvalidInput) as caught:
        load(path)
    message = caught.value.message
    assert "bad.json" in message
    assert "$[0].annotations[0].result[0].value" in message
    assert "value.start/value.end" in message and "value.text 'Paris'" in message
    assert "code points" in message and "UTF-16" in message


def test_a_round_trip_is_stable_and_exports_utf16(tmp_path):
    cp = write_tasks(tmp_path / "cp.json", task(TEXT, [(*cp_span(TEXT, "Paris"), "Paris", "LOC")],
                                                kind="predictions"))
    records = load(cp)
    with read_dataset("labelstudio", cp) as bundle:
        write_dataset("labelstudio", bundle, tmp_path / "out.json")
    exported = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    value = exported[0]["predictions"][0]["result"][0]["value"]
    assert (value["start"], value["end"]) == utf16_span(TEXT, "Paris")
    assert load(tmp_path / "out.json") == records
    with read_dataset("labelstudio", tmp_path / "out.json") as bundle:
        write_dataset("labelstudio", bundle, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == (tmp_path / "out.json").read_text()


def test_without_value_text_offsets_are_utf16_units(tmp_path):
    path = write_tasks(tmp_path / "t.json", task(TEXT, [(*utf16_span(TEXT, "Paris"), None,
                                                         "LOC")]))
    (start, end, _), = spans_of(load(path))
    assert TEXT[start:end] == "Paris"
    # an offset inside a surrogate pair is no UTF-16 offset: refused, not moved
    inside = units16(TEXT, TEXT.index("🤔")) + 1
    path = write_tasks(tmp_path / "split.json", task(TEXT, [(inside, inside + 3, None, "LOC")]))
    with pytest.raises(InvalidInput, match=r"result\[0\]\.value: .*add value\.text"):
        load(path)


def test_a_span_both_units_fit_follows_the_other_spans_of_its_file(tmp_path):
    text = "😀xx x"
    # "x" at 2-3 is the second x in code points and the first in UTF-16 units
    ambiguous = (2, 3, "x", "A")
    told_cp = (4, 5, "x", "B")     # code points: the last x; UTF-16 4-5 is the space
    told_u16 = (5, 6, "x", "B")    # UTF-16: the last x; code point 5 is past the end
    cp_file = write_tasks(tmp_path / "cp.json", task(text, [ambiguous, told_cp]))
    u16_file = write_tasks(tmp_path / "u16.json", task(text, [ambiguous, told_u16]))
    alone = write_tasks(tmp_path / "alone.json", task(text, [ambiguous]))
    assert spans_of(load(cp_file)) == [(2, 3, "A"), (4, 5, "B")]
    assert spans_of(load(u16_file)) == [(1, 2, "A"), (4, 5, "B")]
    assert spans_of(load(alone)) == [(1, 2, "A")]  # nothing tells: UTF-16, as the UI writes


def test_texts_without_astral_characters_count_code_points(tmp_path):
    text = "café in Zürich"
    path = write_tasks(tmp_path / "t.json", task(text, [(*cp_span(text, "Zürich"), "Zürich",
                                                         "LOC")]))
    (start, end, _), = spans_of(load(path))
    assert text[start:end] == "Zürich"
