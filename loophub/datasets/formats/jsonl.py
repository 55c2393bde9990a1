"""JSONL text classification (``{"text", "label"|"labels"|"cats"}``) and span JSONL
(doccano/flair ``"label": [[start, end, TYPE]]`` or ``"entities"``), streamed line by line.

Other keys are kept as metadata. spaCy ``cats`` become labels where the score is
at least 0.5 (the other scores are dropped). Repeated ids get ``-<line>`` appended.
"""

from __future__ import annotations

import json
from pathlib import Path

from loophub.datasets.formats.base import Bundle, bad, build_label_schema, output_file
from loophub.datasets.formats.native import iter_jsonl

LABEL_KEYS = ("label", "labels", "cats", "entities", "category")


def read(src: Path) -> Bundle:
    files = [src] if src.is_file() else sorted(src.rglob("*.jsonl"))
    if not files:
        raise bad(src, "folder", "no .jsonl file in it")
    records, seen = [], set()
    for path in files:
        for number, obj in iter_jsonl(path):
            record = _record(path, number, obj)
            if record["id"] in seen:
                record["id"] = f"{record['id']}-{number}"
            seen.add(record["id"])
            records.append(record)
    names = sorted({a["label"] for r in records for a in r["annotations"]})
    spans = any(a["type"] == "span" for r in records for a in r["annotations"])
    label_schema = build_label_schema("ner" if spans else "text_classification", names)
    if not spans and any(len(r["annotations"]) > 1 for r in records):
        label_schema["multi_label"] = True
    return Bundle(label_schema, records)


def _record(path: Path, number: int, obj: dict) -> dict:
    text_key = "text" if isinstance(obj.get("text"), str) else "data"
    text = obj.get(text_key)
    if not isinstance(text, str):
        raise bad(path, f"line {number}", "no text: expected a 'text' (or 'data') string")
    record = {"id": str(obj["id"]) if "id" in obj else f"line-{number}", "text": text,
              "annotations": []}
    for key in LABEL_KEYS:
        if key in obj:
            record["annotations"].extend(_annotations(path, number, key, obj[key], text))
    if isinstance(obj.get("split"), str):
        record["split"] = obj["split"]
    rest = {k: v for k, v in obj.items() if k not in (*LABEL_KEYS, "id", "split", text_key)}
    if rest:
        record["metadata"] = rest
    return record


def _annotations(path: Path, number: int, key: str, value, text: str) -> list[dict]:
    where = f"line {number}, $.{key}"
    if isinstance(value, str | int) and not isinstance(value, bool):
        return [{"type": "text_class", "label": str(value)}]
    if isinstance(value, dict):  # spaCy cats
        return [{"type": "text_class", "label": name} for name, score in value.items()
                if isinstance(score, int | float) and score >= 0.5]
    if not isinstance(value, list):
        raise bad(path, where, "labels must be a string, a list or a {class: score} object")
    out = []
    for index, item in enumerate(value):
        if isinstance(item, str):
            out.append({"type": "text_class", "label": item})
        elif isinstance(item, list) and len(item) == 3:
            out.append(_span(path, f"{where}[{index}]", item[0], item[1], item[2], text))
        elif isinstance(item, dict) and {"start_offset", "end_offset", "label"} <= item.keys():
            span = _span(path, f"{where}[{index}]", item["start_offset"], item["end_offset"],
                         item["label"], text)
            if "id" in item:
                span["id"] = str(item["id"])
            out.append(span)
        else:
            raise bad(path, f"{where}[{index}]", "expected a label or [start, end, label]")
    return out


def _span(path: Path, where: str, start, end, label, text: str) -> dict:
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= len(text)):
        raise bad(path, where, f"span [{start}, {end}) is not inside the text of {len(text)} "
                  "characters")
    return {"type": "span", "label": str(label), "start": start, "end": end}


def write(bundle: Bundle, dst: Path) -> None:
    target = output_file(dst, "data.jsonl")
    with open(target, "w", encoding="utf-8") as out:
        for record in bundle.records:
            out.write(json.dumps(_line(record), ensure_ascii=False) + "\n")


def _line(record: dict) -> dict:
    line = {"id": record["id"], "text": record.get("text", "")}
    classes = [a["label"] for a in record["annotations"] if a["type"] == "text_class"]
    span_anns = [a for a in record["annotations"] if a["type"] == "span"]
    spans = [[a["start"], a["end"], a["label"]] for a in span_anns]
    if any("id" in a for a in span_anns):  # doccano's entity objects keep ids for relations
        line["entities"] = [{"id": _id(a.get("id")), "start_offset": a["start"],
                             "end_offset": a["end"], "label": a["label"]} for a in span_anns]
        if classes:
            line["labels"] = classes
    elif spans:
        line["label"] = spans + classes
    elif len(classes) == 1:
        line["label"] = classes[0]
    elif classes:
        line["labels"] = classes
    if record.get("split"):
        line["split"] = record["split"]
    line.update(record.get("metadata") or {})
    return line


def _id(value):
    return int(value) if isinstance(value, str) and value.isdigit() else value
