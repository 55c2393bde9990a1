"""loophub's own format: records.jsonl (one record per line) and label_schema.json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from loophub.datasets.formats.base import Bundle, FolderMedia, bad, build_label_schema
from loophub.datasets.records import all_labels_of, canonical_bytes

RECORDS = "records.jsonl"
LABEL_SCHEMA = "label_schema.json"


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line, streamed."""
    with open(path, encoding="utf-8-sig") as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise bad(path, f"line {number}, column {exc.colno}",
                          f"invalid JSON: {exc.msg}") from None
            if not isinstance(value, dict):
                raise bad(path, f"line {number}", "each line must be a JSON object")
            yield number, value


def read(src: Path) -> Bundle:
    records_path = src / RECORDS if src.is_dir() else src
    if not records_path.is_file():
        raise bad(src, "folder", f"no {RECORDS} in it; give the records file or its folder")
    schema_path = records_path.parent / LABEL_SCHEMA
    if schema_path.is_file():
        try:
            label_schema = json.loads(schema_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise bad(schema_path, f"line {exc.lineno}", f"invalid JSON: {exc.msg}") from None
    else:
        label_schema = _infer_schema(records_path)
    records = (record for _, record in iter_jsonl(records_path))
    return Bundle(label_schema, records, FolderMedia([records_path.parent]))


def _infer_schema(path: Path) -> dict:
    # One streamed pass for the label names; the records are streamed again later.
    names: set[str] = set()
    for _, record in iter_jsonl(path):
        try:
            names.update(all_labels_of(record))
        except (AttributeError, KeyError, TypeError):
            continue  # malformed: validation names the record, its path and the rule
    return build_label_schema("mixed", sorted(names))


def write(bundle: Bundle, dst: Path) -> None:
    if dst.suffix == ".jsonl":
        dst.parent.mkdir(parents=True, exist_ok=True)
        records_path, folder = dst, dst.parent
    else:
        dst.mkdir(parents=True, exist_ok=True)
        records_path, folder = dst / RECORDS, dst
    (folder / LABEL_SCHEMA).write_text(json.dumps(bundle.label_schema, indent=2) + "\n")
    with open(records_path, "wb") as out:
        for record in bundle.records:
            out.write(canonical_bytes(record) + b"\n")
