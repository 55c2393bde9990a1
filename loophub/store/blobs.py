"""Content-addressed blob store: a blob's name is the sha256 of its bytes.

Any fsspec URL works (a local folder by default, s3://... at scale). Writes go to a
temporary name and are moved into place, so a reader never sees half a blob and a
crash leaves only garbage in tmp/. Equal content is stored once. Reads are checked
against the name: a corrupted blob raises instead of returning wrong bytes. Large
files stream through in chunks; nothing needs the whole blob in memory.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import fsspec

CHUNK = 1024 * 1024
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class BlobNotFound(KeyError):
    """No blob with that digest."""


class BlobIntegrityError(IOError):
    """A stored blob's bytes no longer hash to its name."""


class BlobTooLarge(ValueError):
    """A stream exceeded the size limit given to ``put_stream``."""


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int
    created: bool  # False when the content was already stored (dedup)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ValueError(f"not a sha256 hex digest: {digest!r}")
    return digest


class _VerifyingReader(io.RawIOBase):
    """Streams a blob and raises BlobIntegrityError at EOF if the hash differs."""

    def __init__(self, raw: BinaryIO, digest: str) -> None:
        self._raw, self._digest, self._hash = raw, digest, hashlib.sha256()
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._raw.read(len(buffer))
        if not data:
            self._verify()
            return 0
        self._hash.update(data)
        buffer[: len(data)] = data
        return len(data)

    def _verify(self) -> None:
        if not self._checked:
            self._checked = True
            if self._hash.hexdigest() != self._digest:
                raise BlobIntegrityError(
                    f"blob {self._digest} is corrupted (its content hashes to "
                    f"{self._hash.hexdigest()}); restore it from a backup or re-import the data"
                )

    def close(self) -> None:
        self._raw.close()
        super().close()


class BlobStore:
    """Blobs under ``url``, laid out as ab/cd/<digest> so no folder grows huge."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.local = "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )
        self.fs.makedirs(self._tmp_dir, exist_ok=True)

    @property
    def _tmp_dir(self) -> str:
        return f"{self.root}/tmp"

    def path(self, digest: str) -> str:
        check_digest(digest)
        return f"{self.root}/{digest[:2]}/{digest[2:4]}/{digest}"

    # -- writing ---------------------------------------------------------------

    def put_bytes(self, data: bytes) -> str:
        return self._put((data,), sha256_bytes(data)).digest

    def put_parts(self, parts: Sequence[bytes]) -> BlobInfo:
        """Store the concatenation of ``parts`` (a large blob built piece by piece, like a
        manifest) without joining them into one more copy in memory."""
        hasher = hashlib.sha256()
        for part in parts:
            hasher.update(part)
        return self._put(parts, hasher.hexdigest())

    def put_many(self, blobs: Iterable[bytes]) -> list[str]:
        """Store many small blobs (records); the local fast path skips fsspec overhead."""
        return [self._put((data,), sha256_bytes(data)).digest for data in blobs]

    def _put(self, parts: Sequence[bytes], digest: str) -> BlobInfo:
        final, size = self.path(digest), sum(map(len, parts))
        if self.local:
            if os.path.exists(final):
                return BlobInfo(digest, size, False)
            tmp = f"{self._tmp_dir}/{uuid.uuid4().hex}"
            with open(tmp, "wb") as out:
                out.writelines(parts)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(tmp, final)
            return BlobInfo(digest, size, True)
        if self.fs.exists(final):
            return BlobInfo(digest, size, False)
        tmp = f"{self._tmp_dir}/{uuid.uuid4().hex}"
        self.fs.pipe_file(tmp, parts[0] if len(parts) == 1 else b"".join(parts))
        self._move_into_place(tmp, final)
        return BlobInfo(digest, size, True)

    def put_stream(self, stream: BinaryIO, *, max_bytes: int | None = None) -> BlobInfo:
        """Store a stream of any size, hashing while writing; ``max_bytes`` bounds it."""
        tmp = f"{self._tmp_dir}/{uuid.uuid4().hex}"
        hasher, size = hashlib.sha256(), 0
        try:
            with self.fs.open(tmp, "wb") as out:
                while chunk := stream.read(CHUNK):
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise BlobTooLarge(
                            f"upload is larger than the limit of {max_bytes} bytes; "
                            "split it or ask an admin to raise the limit"
                        )
                    hasher.update(chunk)
                    out.write(chunk)
        except BaseException:
            self.fs.rm(tmp) if self.fs.exists(tmp) else None
            raise
        digest = hasher.hexdigest()
        final = self.path(digest)
        if self.fs.exists(final):
            self.fs.rm(tmp)
            return BlobInfo(digest, size, False)
        self._move_into_place(tmp, final)
        return BlobInfo(digest, size, True)

    def put_file(self, path: str | os.PathLike) -> BlobInfo:
        with open(path, "rb") as stream:
            return self.put_stream(stream)

    def _move_into_place(self, tmp: str, final: str) -> None:
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        if self.local:
            os.replace(tmp, final)
        else:
            self.fs.mv(tmp, final)

    # -- reading ---------------------------------------------------------------

    def exists(self, digest: str) -> bool:
        path = self.path(digest)
        return os.path.exists(path) if self.local else self.fs.exists(path)

    def size(self, digest: str) -> int:
        try:
            return int(self.fs.size(self.path(digest)))
        except FileNotFoundError as exc:
            raise BlobNotFound(digest) from exc

    def open(self, digest: str) -> BinaryIO:
        """A verified stream of the blob; corruption raises at the end of the read."""
        try:
            raw = self.fs.open(self.path(digest), "rb")
        except FileNotFoundError as exc:
            raise BlobNotFound(digest) from exc
        return io.BufferedReader(_VerifyingReader(raw, digest), CHUNK)

    def get_bytes(self, digest: str) -> bytes:
        path = self.path(digest)
        try:
            if self.local:
                with open(path, "rb") as stream:
                    data = stream.read()
            else:
                data = self.fs.cat_file(path)
        except FileNotFoundError as exc:
            raise BlobNotFound(digest) from exc
        if sha256_bytes(data) != digest:
            raise BlobIntegrityError(
                f"blob {digest} is corrupted; restore it from a backup or re-import the data"
            )
        return data

    def verify(self, digest: str) -> bool:
        try:
            with self.open(digest) as stream:
                while stream.read(CHUNK):
                    pass
        except BlobIntegrityError:
            return False
        return True

    def iter_digests(self) -> Iterator[str]:
        for path in self.fs.find(self.root):
            name = path.rsplit("/", 1)[-1]
            if _DIGEST.match(name):
                yield name

    # -- removal (only garbage collection should call this) ---------------------

    def delete(self, digest: str) -> bool:
        path = self.path(digest)
        try:
            self.fs.rm(path)
        except FileNotFoundError:
            return False
        return True

    def check(self) -> None:
        """Write, read back and remove a probe: raises if the store is not usable."""
        probe = f"loophub-probe-{uuid.uuid4().hex}".encode()
        digest = self.put_bytes(probe)
        if self.get_bytes(digest) != probe:
            raise BlobIntegrityError(f"blob store {self.url} returned other bytes than written")
        self.delete(digest)
