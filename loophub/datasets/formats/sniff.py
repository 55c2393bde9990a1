"""Which format a file looks like, for the message when it does not parse as the one
declared ("... looks like coco: import it as format 'coco'"). A guess from the content,
never used to choose a reader."""

from __future__ import annotations

import json
import re
import zipfile
from itertools import islice
from pathlib import Path

HEAD = 1 << 16
WHOLE_JSON = 32 << 20  # parse a JSON file whole up to this size, else guess from its head
_NUMBER = r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?"
_YOLO_LINE = re.compile(rf"^\d+(\s+{_NUMBER}){{4,}}\s*$")
_BIO_TAG = re.compile(r"^(O|[BIESLU]-\S+)$")


def sniff_format(path: str | Path) -> str | None:
    """The format name the file, zip or folder at PATH looks like, or None."""
    path = Path(path)
    try:
        if path.is_dir():
            return _sniff_folder(path)
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return _sniff_names(z.namelist())
        return _sniff_file(path)
    except (OSError, zipfile.BadZipFile, UnicodeError):
        return None


def _sniff_folder(folder: Path) -> str | None:
    names = [str(p.relative_to(folder)) for p in islice(folder.rglob("*"), 2000)]
    found = _sniff_names(names)
    if found is None:
        files = [p for p in folder.iterdir() if p.is_file()]
        if len(files) == 1:
            return _sniff_file(files[0])
    return found


def _sniff_names(names: list[str]) -> str | None:
    base = {n.rstrip("/").rsplit("/", 1)[-1] for n in names}
    if base & {"data.yaml", "obj.names", "classes.names"} or any(
            "labels/" in n and n.endswith(".txt") for n in names):
        return "yolo"
    if "Annotations" in "/".join(names) and any(n.endswith(".xml") for n in names):
        return "voc"
    return None


def _sniff_file(path: Path) -> str | None:
    with open(path, "rb") as stream:
        head = stream.read(HEAD)
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if text.startswith(("{", "[")):
        return _sniff_json(path, text)
    lines = [line for line in text.splitlines()[:50] if line.strip()]
    if len(head) == HEAD and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut
    if not lines:
        return None
    if all(_YOLO_LINE.match(line) for line in lines):
        return "yolo"
    if _looks_conll(lines):
        return "conll"
    if _looks_csv(lines):
        return "csv"
    return None


def _sniff_json(path: Path, head: str) -> str | None:
    data = None
    if path.stat().st_size <= WHOLE_JSON:
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except ValueError:
            data = None
    if data is None:  # JSON Lines, or too big: look at the first line
        try:
            data = json.loads(head.splitlines()[0])
        except (ValueError, IndexError):
            data = None
        if data is None and '"images"' in head and '"annotations"' in head:
            return "coco"
    if isinstance(data, dict) and "images" in data and "annotations" in data:
        return "coco"
    if isinstance(data, dict) and "id" in data and ("annotations" in data or "media" in data):
        return "loophub"  # one record per line
    if isinstance(data, dict) and "text" in data:
        return "jsonl"
    if isinstance(data, list) and data and all(isinstance(t, dict) for t in data[:20]):
        first = data[0]
        if "data" in first or "annotations" in first:
            return "labelstudio"
    return None


def _looks_conll(lines: list[str]) -> bool:
    if lines[0].startswith("-DOCSTART-"):
        return True
    rows = [line.split() for line in lines]
    tagged = sum(1 for row in rows if len(row) >= 2 and _BIO_TAG.match(row[-1]))
    return tagged >= max(1, len(rows) * 0.8) and "," not in lines[0]


def _looks_csv(lines: list[str]) -> bool:
    counts = {line.count(",") for line in lines}
    return len(lines) >= 1 and min(counts) >= 1 and len(counts) == 1
