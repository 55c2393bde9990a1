"""CSV for image or text classification: an image or text column, a label column,
an optional id and split column; every other column is kept as metadata (as text)."""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path

from loophub.datasets.formats.base import (
    Bundle,
    ExportNames,
    FolderMedia,
    bad,
    build_label_schema,
    copy_media,
    media_name,
    output_file,
)

IMAGE_COLUMNS = ("image", "image_name", "image_path", "filename", "file_name", "file", "path")
LABEL_COLUMNS = ("label", "label_name", "class", "category", "target", "sentiment", "intent")
MULTI_SEPARATOR = ";"


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    for bom, encoding in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                          (codecs.BOM_UTF16_BE, "utf-16")):
        if raw.startswith(bom):
            return raw.decode(encoding)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad(path, f"byte {exc.start}", "not UTF-8 (or UTF-16 with a BOM) text") from None


def _pick(header: list[str], wanted, contains: str | None = None) -> str | None:
    lowered = {h.strip().lower(): h for h in header}
    for name in wanted:
        if name in lowered:
            return lowered[name]
    if contains:
        return next((h for h in header if contains in h.lower()), None)
    return None


def read(src: Path) -> Bundle:
    files = [src] if src.is_file() else sorted(src.rglob("*.csv"))
    if not files:
        raise bad(src, "folder", "no .csv file in it")
    records, tasks = [], set()
    for path in files:
        records.extend(_read_file(path, tasks))
    names = sorted({a["label"] for r in records for a in r["annotations"]})
    task = "image_classification" if "image" in tasks else "text_classification"
    label_schema = build_label_schema(task, names)
    if any(len(r["annotations"]) > 1 for r in records):
        label_schema["multi_label"] = True
    root = src if src.is_dir() else src.parent
    return Bundle(label_schema, records, FolderMedia([root, root / "images"]))


def _read_file(path: Path, tasks: set) -> list[dict]:
    reader = csv.reader(io.StringIO(_decode(path), newline=""))
    header = next(reader, None)
    if not header:
        raise bad(path, "line 1", "empty file: a header row is expected")
    header = [h.strip() for h in header]
    image_col = _pick(header, IMAGE_COLUMNS)
    text_col = None if image_col else _pick(header, ("text", "sentence", "content"), "text")
    if not image_col and not text_col:
        raise bad(path, "line 1", f"no image or text column among {header}")
    multi_col = _pick(header, ("labels",))
    label_col = multi_col or _pick(header, LABEL_COLUMNS)
    tasks.add("image" if image_col else "text")
    records, seen = [], set()
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise bad(path, f"line {line}", f"{len(row)} fields where the header has {len(header)}")
        values = dict(zip(header, row, strict=True))
        record = _record(values, image_col, text_col, label_col, multi_col is not None, line)
        if record["id"] in seen:
            raise bad(path, f"line {line}", f"id {record['id']!r} repeats")
        seen.add(record["id"])
        records.append(record)
    return records


def _record(values: dict, image_col, text_col, label_col, multi: bool, line: int) -> dict:
    rest = {k: v for k, v in values.items() if k not in (image_col, text_col, label_col, "id",
                                                         "split")}
    if image_col:
        record = {"id": values.get("id") or values[image_col], "media": {"path": values[image_col]}}
        kind = "image_class"
    else:
        record = {"id": values.get("id") or f"row-{line}", "text": values[text_col]}
        kind = "text_class"
    raw = values.get(label_col, "") if label_col else ""
    labels = [v.strip() for v in raw.split(MULTI_SEPARATOR)] if multi else [raw.strip()]
    record["annotations"] = [{"type": kind, "label": label} for label in labels if label]
    if values.get("split"):
        record["split"] = values["split"]
    if rest:
        record["metadata"] = rest
    return record


def write(bundle: Bundle, dst: Path) -> None:
    target = output_file(dst, "data.csv")
    records = list(bundle.records)
    image = any(r.get("media") for r in records)
    multi = any(len(_labels(r)) > 1 for r in records)
    meta_keys = sorted({k for r in records for k in (r.get("metadata") or {})})
    header = ["id", "image" if image else "text", "labels" if multi else "label", "split",
              *meta_keys]
    images = ExportNames()  # images/<path>, safe and one per record; the column says it
    with open(target, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        for record in records:
            if not image:
                content = record.get("text", "")
            elif record.get("media"):
                content = images.claim(media_name(record), fallback=record["id"])
            else:
                content = ""
            meta = record.get("metadata") or {}
            extra = [_cell(meta.get(key, "")) for key in meta_keys]
            writer.writerow([record["id"], content, MULTI_SEPARATOR.join(_labels(record)),
                             record.get("split") or "", *extra])
            if content and image:
                copy_media(bundle.media, record, target.parent / "images" / content)


def _labels(record: dict) -> list[str]:
    return [a["label"] for a in record["annotations"] if a["type"] in ("image_class", "text_class")]


def _cell(value) -> str:
    return value if isinstance(value, str) else str(value)
