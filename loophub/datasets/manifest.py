"""Version manifests and record packs, as blobs.

A manifest lists a version's records sorted by id, one line per record:
``op id hash labels media pack offset length old_hash old_labels`` (tab separated,
op ``+`` added, ``~`` changed, ``-`` removed). A version stores the delta against its
parent; every MAX_CHAIN versions (and the first) it also stores a snapshot, which is
the same format with only ``+`` lines. So ten 1% edits of a 1M-record dataset cost
ten small deltas, a diff against the parent reads only the delta, and reading any
version reads one snapshot plus at most MAX_CHAIN deltas.

Packs hold the canonical JSON of the records an import or a commit added or changed,
newline separated, compressed, up to PACK_BYTES each. A manifest line points into a
pack by (digest, offset, length) of the uncompressed bytes. New packs and manifests are
zstd level 1 (five times faster than zlib level 1, and smaller); zlib ones written
before still read.
"""

from __future__ import annotations

import codecs
import json
import struct
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import NamedTuple

import zstandard

from loophub.store.blobs import BlobStore

MAGIC = b"LHM1"
PACK_BYTES = 8 * 1024 * 1024
MAX_CHAIN = 16
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LEVEL = 1
READ_STEP = 1 << 20  # compressed bytes decompressed at a time
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def escape(text: str) -> str:
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        return text.translate(_ESCAPES)
    return text


def unescape(text: str) -> str:
    if "\\" not in text:
        return text
    # strict=False: ids and labels may hold control characters other than the four
    # escaped (packed labels always hold \x1f); a strict parse refused them, and a
    # version with a non-ASCII id or label containing a backslash could not be read
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape") \
        if text.isascii() else json.loads('"' + text.replace('"', '\\"') + '"', strict=False)


class Entry(NamedTuple):
    """One record of a version, as its manifest line says (a tuple: every manifest line
    read builds one, and a tuple is built in about half the time of a frozen dataclass)."""

    record_id: str
    hash: str
    labels: str
    media: str
    pack: str
    offset: int
    length: int


class Change(NamedTuple):
    op: str  # "+", "~" or "-"
    record_id: str
    new: Entry | None
    old_hash: str
    old_labels: str


# -- compression -------------------------------------------------------------------

def compress(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=LEVEL).compress(data)


def decompress(data: bytes) -> bytes:
    if data[:4] == ZSTD_MAGIC:
        return zstandard.ZstdDecompressor().decompress(data)
    return zlib.decompress(data)


def _decompressor(head: bytes):
    """A streaming decompressor for data starting with ``head``."""
    if head[:4] == ZSTD_MAGIC:
        return zstandard.ZstdDecompressor().decompressobj()
    return zlib.decompressobj()


# -- packs -------------------------------------------------------------------------

class PackWriter:
    """Appends record bytes to packs of at most PACK_BYTES, each stored as one blob."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.written: list[tuple[str, int]] = []  # (digest, compressed size) per closed pack
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, content: bytes) -> tuple[int, int, int]:
        """Store ``content``: (pack number, offset, length); the pack's digest is
        ``written[number][0]`` once it is closed."""
        where = (len(self.written), self._size, len(content))
        self._parts.append(content)
        self._parts.append(b"\n")
        self._size += len(content) + 1
        if self._size >= PACK_BYTES:
            self.flush()
        return where

    def flush(self) -> None:
        if not self._parts:
            return
        data = compress(b"".join(self._parts))
        self.written.append((self.blobs.put_bytes(data), len(data)))
        self._parts, self._size = [], 0


class PackReader:
    """Reads records out of packs, keeping the last few packs decompressed."""

    def __init__(self, blobs: BlobStore, cache: int = 4) -> None:
        self.blobs, self.cache_size = blobs, cache
        self._cache: OrderedDict[str, bytes] = OrderedDict()

    def _pack(self, digest: str) -> bytes:
        data = self._cache.get(digest)
        if data is None:
            data = decompress(self.blobs.get_bytes(digest))
            self._cache[digest] = data
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(digest)
        return data

    def read(self, entry: Entry) -> bytes:
        return self._pack(entry.pack)[entry.offset: entry.offset + entry.length]


# -- manifests ---------------------------------------------------------------------

def format_line(op: str, entry: Entry | None, record_id: str, old_hash: str = "",
                old_labels: str = "") -> str:
    if entry is None:
        fields = (op + escape(record_id), "", "", "", "", "", "", old_hash, escape(old_labels))
    else:
        fields = (op + escape(record_id), entry.hash, escape(entry.labels), entry.media,
                  entry.pack, str(entry.offset), str(entry.length), old_hash, escape(old_labels))
    return "\t".join(fields) + "\n"


def parse_line(line: str) -> Change:
    (head, hash_, labels, media, pack, offset, length, old_hash, old_labels) = line.split("\t")
    op, record_id = head[0], unescape(head[1:])
    entry = None
    if op != "-":
        entry = Entry(record_id, hash_, unescape(labels), media, pack, int(offset), int(length))
    return Change(op, record_id, entry, old_hash, unescape(old_labels))


class ManifestWriter:
    """Writes sorted manifest lines into one compressed blob without holding them."""

    def __init__(self, blobs: BlobStore, header: dict) -> None:
        self.blobs = blobs
        head = json.dumps(header).encode()
        self._parts = [MAGIC, struct.pack(">I", len(head)), head]
        # a worker thread of zstd compresses while this one formats the next lines
        self._zip = zstandard.ZstdCompressor(level=LEVEL, threads=1).compressobj()
        self._buffer: list[str] = []
        self.count = 0
        self.last_id = ""  # ids are non-empty: any id sorts after it

    def write(self, line: str, record_id: str) -> None:
        if record_id <= self.last_id:
            raise ValueError(f"manifest ids out of order: {record_id!r} after {self.last_id!r}")
        self.last_id = record_id
        self._buffer.append(line)
        if len(self._buffer) >= 8192:
            self._drain()

    def write_block(self, text: str, first_id: str, last_id: str, count: int) -> None:
        """Append ``count`` finished lines whose ids run from ``first_id`` to ``last_id``
        in order (the caller's query sorted them)."""
        if first_id <= self.last_id or last_id < first_id:
            raise ValueError(f"manifest ids out of order: {first_id!r} after {self.last_id!r}")
        self._drain()
        self.last_id = last_id
        self.count += count
        self._parts.append(self._zip.compress(text.encode()))

    def _drain(self) -> None:
        self.count += len(self._buffer)
        self._parts.append(self._zip.compress("".join(self._buffer).encode()))
        self._buffer = []

    def close(self) -> tuple[str, int]:
        self._drain()
        self._parts.append(self._zip.flush())
        info = self.blobs.put_parts(self._parts)
        return info.digest, info.size


def read_manifest(blobs: BlobStore, digest: str) -> tuple[dict, Iterator[str]]:
    """(header, lines) of a manifest, the lines decompressed as they are read."""
    header, blocks = read_manifest_blocks(blobs, digest)
    return header, chain.from_iterable(blocks)


def read_manifest_blocks(blobs: BlobStore, digest: str) -> tuple[dict, Iterator[list[str]]]:
    """(header, lines) of a manifest, the lines (none empty) in blocks as decompressed."""
    data = blobs.get_bytes(digest)
    if data[:4] != MAGIC:
        raise ValueError(f"blob {digest} is not a loophub manifest")
    (size,) = struct.unpack(">I", data[4:8])
    header = json.loads(data[8: 8 + size])
    return header, _line_blocks(data[8 + size:])


def _line_blocks(compressed: bytes) -> Iterator[list[str]]:
    unzip = _decompressor(compressed)
    utf8 = codecs.getincrementaldecoder("utf-8")()  # a chunk can end inside a character
    rest = ""
    for start in range(0, len(compressed), READ_STEP):
        chunk = unzip.decompress(compressed[start: start + READ_STEP])
        lines = (rest + utf8.decode(chunk)).split("\n")
        rest = lines.pop()
        if lines:
            yield lines
    tail = [line for line in (rest + utf8.decode(unzip.flush(), final=True)).split("\n")
            if line]
    if tail:
        yield tail


def iter_changes(blobs: BlobStore, digest: str) -> Iterator[Change]:
    _, lines = read_manifest(blobs, digest)
    for line in lines:
        if line:
            yield parse_line(line)


def compose(changes_per_delta: Iterable[Iterable[Change]]) -> dict[str, Change]:
    """Fold consecutive deltas into one: first old state, last new state per id."""
    combined: dict[str, Change] = {}
    for changes in changes_per_delta:
        for change in changes:
            first = combined.get(change.record_id)
            if first is None:
                combined[change.record_id] = change
                continue
            existed_before = first.op != "+"
            if change.new is None:
                op = "-" if existed_before else None
            else:
                op = "~" if existed_before else "+"
            if op is None:
                del combined[change.record_id]
            else:
                combined[change.record_id] = Change(op, change.record_id, change.new,
                                                    first.old_hash, first.old_labels)
    return combined


def apply(snapshot: Iterator[Entry], combined: dict[str, Change]) -> Iterator[Entry]:
    """Merge a sorted snapshot with composed changes, in id order."""
    added = sorted(rid for rid, c in combined.items() if c.op == "+")
    position = 0
    for entry in snapshot:
        while position < len(added) and added[position] < entry.record_id:
            yield combined[added[position]].new
            position += 1
        change = combined.get(entry.record_id)
        if change is None:
            yield entry
        elif change.new is not None:
            yield change.new
    for rid in added[position:]:
        yield combined[rid].new


def snapshot_entries(blobs: BlobStore, digest: str) -> Iterator[Entry]:
    for change in iter_changes(blobs, digest):
        if change.new is not None:
            yield change.new
