"""What every format module shares: the bundle it reads and writes, media sources,
error helpers, the names of exported files, safe zip extraction and image-size sniffing."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from loophub.errors import InvalidInput

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_NAMES = {"train", "val", "valid", "validation", "test", "trainval", "dev"}
# what an export download holds beside the format's files (the dataset's label schema):
# readers of formats whose files are .json leave it out
EXPORT_LABEL_SCHEMA = "label_schema.json"
MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
               ".bmp": "image/bmp", ".gif": "image/gif", ".webp": "image/webp",
               ".tif": "image/tiff", ".tiff": "image/tiff"}


class MediaSource(Protocol):
    def open(self, record: dict) -> BinaryIO | None:
        """The record's media bytes, or None when they are not available."""


class NoMedia:
    def open(self, record: dict) -> BinaryIO | None:
        return None


@dataclass
class FolderMedia:
    """Media found by the record's media.path under one or more folders."""

    roots: list[Path]

    def __post_init__(self) -> None:
        self._dirs: dict[str, bool] = {}  # folder existence, so 1M missing files stay cheap

    def locate(self, record: dict) -> Path | None:
        rel = (record.get("media") or {}).get("path")
        if not rel or rel.startswith(("/", "\\")) or ".." in rel.replace("\\", "/").split("/"):
            return None
        for root in self.roots:
            candidate = os.path.join(root, rel)
            folder = os.path.dirname(candidate)
            if folder not in self._dirs:
                self._dirs[folder] = os.path.isdir(folder)
            if self._dirs[folder] and os.path.isfile(candidate):
                return Path(candidate)
        return None

    def open(self, record: dict) -> BinaryIO | None:
        path = self.locate(record)
        return open(path, "rb") if path else None


@dataclass
class Bundle:
    """A dataset in flight: its label schema, its records (possibly a stream) and media.

    ``infer_classes``: the label schema lists no classes because they are the labels the
    records use, known only once the records have streamed (``with_classes`` gives it then).
    """

    label_schema: dict
    records: Iterable[dict]
    media: MediaSource = field(default_factory=NoMedia)
    infer_classes: bool = False

    def with_classes(self, names: Iterable[str]) -> dict:
        """The label schema with ``names`` as its classes, in name order."""
        return {**self.label_schema, **build_label_schema(self.label_schema["task"], sorted(names))}


def bad(source: str | os.PathLike, where: str, reason: str) -> InvalidInput:
    """An import error naming the file, the line or JSON path, and the reason."""
    return InvalidInput(f"{source}: {where}: {reason}",
                        detail={"source": str(source), "location": where, "reason": reason})


def build_label_schema(task: str, names: Iterable[str], extra: dict | None = None) -> dict:
    """Classes with ids in first-seen order (ids from 0), unless ``extra`` gives them."""
    classes, seen = [], set()
    for name in names:
        if name not in seen:
            seen.add(name)
            classes.append({"id": len(classes), "name": name, **(extra or {}).get(name, {})})
    return {"task": task, "classes": classes}


def class_names(label_schema: dict) -> list[str]:
    return [c["name"] for c in sorted(label_schema.get("classes", ()), key=lambda c: c["id"])]


def split_of(parts: Iterable[str]) -> str | None:
    for part in parts:
        if part.lower() in SPLIT_NAMES:
            return part
    return None


def number(value: float):
    """An int where the float is integral, so exports print 10 and not 10.0."""
    return int(value) if float(value).is_integer() else value


def copy_media(media: MediaSource, record: dict, dst: Path) -> bool:
    stream = media.open(record)
    if stream is None:
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    with stream, open(dst, "wb") as out:
        shutil.copyfileobj(stream, out, 1024 * 1024)
    return True


def output_file(dst: Path, default_name: str) -> Path:
    """``dst`` itself when it names a file with a suffix, else ``dst/default_name``."""
    if dst.suffix and not dst.is_dir():
        dst.parent.mkdir(parents=True, exist_ok=True)
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    return dst / default_name


# -- exported file names -------------------------------------------------------------

# Control characters, and what Windows refuses in a name (":" also names a drive or an
# NTFS stream; safe_extract refuses it in a zip member).
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"|?*]')
_DRIVE = re.compile(r"^[A-Za-z]:$")
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                    *(f"LPT{i}" for i in range(1, 10))}
MAX_NAME_BYTES = 200  # file systems stop at 255 bytes a name; room for a dedup suffix


def safe_component(name: str) -> str:
    """``name`` as one file or folder name ("" when nothing of it is left): slashes,
    backslashes, control characters and characters Windows refuses become ``_``; leading
    and trailing spaces and trailing dots go (Windows drops them); ``.``/``..`` give "";
    Windows device names (``NUL``, ``COM1``) get a leading ``_``; a name longer than
    MAX_NAME_BYTES is cut and ends with a hash of the whole, so two long names stay two."""
    cleaned = _UNSAFE_CHARS.sub("_", name.replace("/", "_").replace("\\", "_"))
    cleaned = cleaned.strip(" ").rstrip(". ")
    if not cleaned.strip("."):
        return ""
    if cleaned.split(".", 1)[0].upper() in _WINDOWS_DEVICES:
        cleaned = "_" + cleaned
    if len(cleaned.encode("utf-8")) > MAX_NAME_BYTES:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        suffix = PurePosixPath(cleaned).suffix
        suffix = suffix if len(suffix) <= 16 else ""
        keep = MAX_NAME_BYTES - len(suffix) - len(digest) - 1
        head = cleaned[:-len(suffix)] if suffix else cleaned
        head = head.encode("utf-8")[:keep].decode("utf-8", "ignore")
        cleaned = f"{head}-{digest}{suffix}"
    return cleaned


def safe_path(path: str) -> str:
    """``path`` as a relative POSIX path that stays inside the folder it is written to
    ("" when nothing of it is left): ``\\`` separates like ``/``; empty, ``.`` and ``..``
    parts and a leading drive (``C:``) are dropped; each part is made safe by
    ``safe_component``."""
    parts = path.replace("\\", "/").split("/")
    if parts and _DRIVE.match(parts[0]):
        parts = parts[1:]
    return "/".join(filter(None, (safe_component(part) for part in parts)))


class ExportNames:
    """The names of the files an export writes in one folder: one per record, each safe
    (``safe_path``) and unique.

    A name an earlier record took (compared case-insensitively, since Windows and macOS
    file systems are) gets ``-1``, ``-2``, ... before its suffix, so N records give N
    files whatever their ids share, and the same records in the same order give the same
    names. ``reserved``: last parts never given, in any folder (names a reader of the
    format takes for something else).
    """

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self._reserved = {name.casefold() for name in reserved}
        self._files: set[str] = set()
        self._folders: set[str] = set()

    def claim(self, wanted: str, *, fallback: str = "record", keep_suffix: bool = True) -> str:
        """A free name for ``wanted`` (a relative path; ``fallback`` when nothing of it is
        safe). ``keep_suffix=False``: ``wanted`` is a stem, and the counter goes at its end
        (YOLO names a label and an image after one stem)."""
        name = safe_path(wanted) or safe_component(fallback) or "record"
        if self._under_a_file(name):
            name = safe_component(name)  # flat, beside the file that holds its folder's name
        folder, _, last = name.rpartition("/")
        suffix = PurePosixPath(last).suffix if keep_suffix else ""
        stem = last[:len(last) - len(suffix)] if suffix else last
        candidate, number = name, 0
        while self._taken(candidate):
            number += 1
            candidate = f"{folder}/" if folder else ""
            candidate += f"{stem}-{number}{suffix}"
        self._files.add(candidate.casefold())
        parts = candidate.split("/")
        self._folders.update("/".join(parts[:i]).casefold() for i in range(1, len(parts)))
        return candidate

    def _taken(self, name: str) -> bool:
        key = name.casefold()
        return (key in self._files or key in self._folders
                or key.rpartition("/")[2] in self._reserved)

    def _under_a_file(self, name: str) -> bool:
        parts = name.casefold().split("/")
        return any("/".join(parts[:i]) in self._files for i in range(1, len(parts)))


def media_name(record: dict) -> str:
    """What a record's media file is called: its media path, else its id. Not yet safe:
    see ExportNames."""
    return (record.get("media") or {}).get("path") or record["id"]


def image_suffix(record: dict) -> str:
    """The image suffix of a record's media file: its media path's (else its id's) when
    that is an image suffix, else the one of its media type, else ``.jpg``."""
    suffix = PurePosixPath(media_name(record).replace("\\", "/")).suffix
    if suffix.lower() in IMAGE_SUFFIXES:
        return suffix
    media_type = (record.get("media") or {}).get("type")
    return next((s for s, t in MEDIA_TYPES.items() if t == media_type), ".jpg")


# -- zip input ---------------------------------------------------------------------

MAX_ZIP_BYTES = 20 * 1024**3
MAX_ZIP_MEMBERS = 2_000_000
MAX_ZIP_RATIO = 200  # a member expanding more than this is treated as a bomb


def safe_extract(archive: Path, target: Path, *, max_bytes: int = MAX_ZIP_BYTES) -> None:
    """Extract ``archive`` into ``target``, refusing traversal, links and zip bombs."""
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise bad(archive, "zip", f"{len(members)} members is more than {MAX_ZIP_MEMBERS}")
        total = 0
        for info in members:
            _check_member(archive, info)
            total += info.file_size
            if total > max_bytes:
                raise bad(archive, info.filename, f"expands beyond {max_bytes} bytes")
        root = target.resolve()
        for info in members:
            dest = (root / info.filename).resolve()
            if not dest.is_relative_to(root):
                raise bad(archive, info.filename, "path leaves the extraction folder")
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            _copy_bounded(zf, info, dest, archive)


def _check_member(archive: Path, info: zipfile.ZipInfo) -> None:
    name = PurePosixPath(info.filename.replace("\\", "/"))
    if name.is_absolute() or ".." in name.parts or ":" in info.filename:
        raise bad(archive, info.filename, "path traversal in a zip member name is refused")
    if (info.external_attr >> 16) & 0o170000 == 0o120000:
        raise bad(archive, info.filename, "symbolic links in zips are refused")
    if info.compress_size and info.file_size / info.compress_size > MAX_ZIP_RATIO:
        raise bad(archive, info.filename,
                  f"compression ratio above {MAX_ZIP_RATIO} looks like a zip bomb")


def _copy_bounded(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, archive: Path) -> None:
    # The header's sizes can lie; count the bytes actually inflated.
    written = 0
    with zf.open(info) as src, open(dest, "wb") as out:
        while chunk := src.read(1024 * 1024):
            written += len(chunk)
            if written > info.file_size:
                raise bad(archive, info.filename, "member inflates beyond its declared size")
            out.write(chunk)


@contextmanager
def source_folder(src: str | os.PathLike) -> Iterator[Path]:
    """A folder or file to read: zips are extracted safely into a temporary folder."""
    src = Path(src)
    if not src.exists():
        raise InvalidInput(f"{src}: no such file or folder; check the path")
    if src.is_file() and zipfile.is_zipfile(src):
        with tempfile.TemporaryDirectory(prefix="loophub-zip-") as tmp:
            safe_extract(src, Path(tmp))
            entries = list(Path(tmp).iterdir())
            try:
                yield entries[0] if len(entries) == 1 and entries[0].is_dir() else Path(tmp)
            except InvalidInput as exc:
                # name the file inside the zip, not the folder it was extracted to
                exc.message = exc.message.replace(tmp, str(src))
                exc.args = (exc.message,)
                raise
    else:
        yield src


# -- image headers -----------------------------------------------------------------

def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) read from a PNG, GIF, BMP or JPEG header; None if unknown."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(32)
            if head.startswith(b"\x89PNG") and len(head) >= 24:
                return struct.unpack(">II", head[16:24])
            if head[:6] in (b"GIF87a", b"GIF89a"):
                return struct.unpack("<HH", head[6:10])
            if head.startswith(b"BM") and len(head) >= 26:
                width, height = struct.unpack("<ii", head[18:26])
                return width, abs(height)
            if head.startswith(b"\xff\xd8"):
                stream.seek(2)
                return _jpeg_size(stream)
    except (OSError, struct.error):
        return None
    return None


def _jpeg_size(stream: BinaryIO) -> tuple[int, int] | None:
    while True:
        marker = stream.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        if marker[1] in (0xD8, 0x01) or 0xD0 <= marker[1] <= 0xD7:
            continue
        (length,) = struct.unpack(">H", stream.read(2))
        if 0xC0 <= marker[1] <= 0xCF and marker[1] not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">xHH", stream.read(5))
            return width, height
        stream.seek(length - 2, os.SEEK_CUR)


def media_entry(root: Path, path: Path, width=None, height=None) -> dict:
    """A media reference by relative path, with the size read from the file when present."""
    entry = {"path": path.relative_to(root).as_posix() if path.is_absolute() else str(path)}
    full = path if path.is_absolute() else root / path
    if full.suffix.lower() in MEDIA_TYPES:
        entry["type"] = MEDIA_TYPES[full.suffix.lower()]
    if width is None and full.is_file():
        size = image_size(full)
        if size:
            width, height = size
    if width:
        entry["width"], entry["height"] = int(width), int(height)
    return entry


ProgressFn = Callable[[int, int], None]
