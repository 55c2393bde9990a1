"""A dataset version on disk for the ranks of a job (no torch here: the runner uses it).

The runner materializes a version once per machine (``materialize``: records.jsonl with
each record's media linked beside it, label_schema.json, and the count of each split);
each rank then streams its share of a split from that folder (streams.RecordStream).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

RECORDS, SCHEMA, COUNTS = "records.jsonl", "label_schema.json", "splits.json"
UNSPLIT = ""


def materialize(records: Iterable[dict], label_schema: dict, folder: Path,
                open_media) -> dict[str, int]:
    """Write RECORDS into FOLDER with their media (OPEN_MEDIA(digest) -> a path to link, or a
    stream to copy); returns the record count per split ('' for records without one).
    Written beside the final folder and renamed, so a half-written copy is never used."""
    folder = Path(folder)
    with _LOCKS.setdefault(str(folder), threading.Lock()):  # jobs of one version: once
        if (folder / COUNTS).is_file():
            return json.loads((folder / COUNTS).read_text())
        return _write(records, label_schema, folder, open_media)


_LOCKS: dict[str, threading.Lock] = {}


def _write(records: Iterable[dict], label_schema: dict, folder: Path, open_media
           ) -> dict[str, int]:
    tmp = folder.with_name(f"{folder.name}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    (tmp / "media").mkdir(parents=True)
    counts: dict[str, int] = {}
    with open(tmp / RECORDS, "w", encoding="utf-8") as out:
        for record in records:
            digest = (record.get("media") or {}).get("sha256")
            if digest:
                record["media"] = {**record["media"], "path": f"media/{digest}"}
                _place(open_media(digest), tmp / "media" / digest)
            split = record.get("split") or UNSPLIT
            counts[split] = counts.get(split, 0) + 1
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    (tmp / SCHEMA).write_text(json.dumps(label_schema))
    (tmp / COUNTS).write_text(json.dumps(counts))
    try:
        tmp.rename(folder)
    except OSError:  # another process materialized the same version first
        shutil.rmtree(tmp, ignore_errors=True)
    return json.loads((folder / COUNTS).read_text())


def _place(source: Any, target: Path) -> None:
    if target.exists() or source is None:
        return
    if isinstance(source, str | os.PathLike):
        try:
            os.link(source, target)  # same file system as the blob store: free
            return
        except OSError:
            shutil.copyfile(source, target)
            return
    with source, open(target, "wb") as out:
        shutil.copyfileobj(source, out)


def label_names(label_schema: dict) -> list[str]:
    """The class names in the schema's order: the order of a trained model's outputs."""
    return [c["name"] for c in label_schema.get("classes", [])]


class MaterializedVersion:
    """A materialized folder: its label schema, split counts and records."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.label_schema = json.loads((self.folder / SCHEMA).read_text())
        self.counts: dict[str, int] = json.loads((self.folder / COUNTS).read_text())

    @property
    def task(self) -> str:
        return self.label_schema.get("task", "")

    @property
    def label_names(self) -> list[str]:
        return label_names(self.label_schema)

    def splits(self) -> list[str]:
        return sorted(s for s in self.counts if s)

    def count(self, split: str | None) -> int:
        if split is None:
            return sum(self.counts.values())
        return self.counts.get(split, 0)

    def records(self, split: str | None = None) -> Iterator[dict]:
        with open(self.folder / RECORDS, encoding="utf-8") as stream:
            for line in stream:
                record = json.loads(line)
                if split is None or (record.get("split") or UNSPLIT) == split:
                    yield record

    def media_path(self, record: dict) -> Path | None:
        rel = (record.get("media") or {}).get("path")
        return self.folder / rel if rel else None


def share(total: int, world_size: int) -> int:
    """Samples each rank yields from a split of TOTAL: all the same, the last padded."""
    return math.ceil(total / world_size) if total else 0
