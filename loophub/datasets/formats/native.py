"""loophub's own format: records.jsonl (one record per line) and label_schema.json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from loophub.datasets.formats.base import Bundle, FolderMedia, bad, build_label_schema
from loophub.datasets.records import canonical_bytes

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


@dataclass(frozen=True)
class JsonlRecords:
    """The records of a JSONL file, streamed anew by each iteration."""

    path: Path

    def __iter__(self) -> Iterator[dict]:
        return (record for _, record in iter_jsonl(self.path))


def read(src: Path) -> Bundle:
    records_path = src / RECORDS if src.is_dir() else src
    if not records_path.is_file():
        raise bad(src, "folder", f"no {RECORDS} in it; give the records file or its folder")
    records, media = JsonlRecords(records_path), FolderMedia([records_path.parent])
    schema_path = records_path.parent / LABEL_SCHEMA
    if not schema_path.is_file():
        # The classes are the labels the records use: learnt while they are validated, so
        # an import reads the file once.
        return Bundle(build_label_schema("mixed", ()), records, media, infer_classes=True)
    try:
        label_schema = json.loads(schema_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise bad(schema_path, f"line {exc.lineno}", f"invalid JSON: {exc.msg}") from None
    return Bundle(label_schema, records, media)


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
