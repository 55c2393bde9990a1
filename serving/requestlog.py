"""A sample of a replica's requests as JSON lines, for monitoring and the feedback loop
to collect (the release side stores and reads them; this only writes).

One line per sampled predict request: its id (the one in the answer), time, status,
latency, the served model version
when the logger knows it, and per instance a summary of the input (a text itself, cut at
MAX_TEXT; an image as its sha256 and size, so the collector can deduplicate it against
the blob store) with the prediction's label and score, and the input's numeric summary
``features`` (serving.monitoring.summary_features: what drift is measured on), a list
beside ``inputs``, one dict per instance, so the inputs' own summaries keep their shape.
The file is bounded: past ``max_bytes`` it is rotated to ``PATH.1`` (the older one
dropped). Lines are buffered and flushed once a second, off the request's path; a line
naming an image the log keeps is held until that flush has stored the image, so a reader
of the log never sees an image as kept that the blob store does not hold yet.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from loophub.releases.logformat import MAX_TEXT
from loophub.serving.monitoring import summary_features
from loophub.store.blobs import BlobStore

MAX_PENDING_IMAGES = 1024  # images waiting for the blob store between two flushes


def _input_summary(instance: Any) -> dict[str, Any]:
    if instance.text is not None:
        return {"text": instance.text[:MAX_TEXT]}
    if instance.image is not None:
        return {"image_sha256": hashlib.sha256(instance.image).hexdigest(),
                "bytes": len(instance.image)}
    pixels = instance.pixels
    return {"pixels_sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
            "shape": list(pixels.shape)}


def _output_summary(prediction: dict) -> dict[str, Any]:
    if "scores" in prediction:
        return {"label": prediction["label"], "score": max(prediction["scores"])}
    found = prediction.get("boxes") or prediction.get("spans") or []
    return {"labels": [f["label"] for f in found], "scores": [f["score"] for f in found]}


class RequestLog:
    """Sampled request records in a JSON-lines file at PATH (RATE: share of requests
    kept, 0-1). VERSION (the model's NAME@vN) goes on every record, so the logs of a
    canary and its champion can be told apart; VOCABULARY (the model's tokens) adds the
    oov share to a text's features."""

    def __init__(self, path: str | Path, rate: float = 1.0, *,
                 max_bytes: int = 64 * 1024 * 1024, seed: int | None = None,
                 version: str | None = None,
                 vocabulary: Collection[str] | None = None,
                 blobs: BlobStore | None = None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"log sample rate must be within 0 and 1, got {rate}")
        self.path = Path(path)
        self.rate = rate
        self.max_bytes = max_bytes
        self.version = version
        self.vocabulary = vocabulary
        self.blobs = blobs
        self._images: dict[str, bytes] = {}  # sampled images not yet in the blob store
        self._held: list[str] = []  # lines naming images not yet stored (the next flush)
        self._lock = threading.Lock()  # the file, _images and _held: request path and flush
        self._random = random.Random(seed)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._size = self.path.stat().st_size

    def sampled(self) -> bool:
        return self.rate >= 1.0 or self._random.random() < self.rate

    def write(self, *, status: int, seconds: float, instances: list | None,
              predictions: list[dict] | None, request_id: str | None = None) -> None:
        record: dict[str, Any] = {"time": time.time(), "status": status,
                                  "latency_ms": round(seconds * 1000, 3)}
        if request_id:
            record["id"] = request_id
        if self.version is not None:
            record["version"] = self.version
        if instances is not None:
            record["inputs"] = [_input_summary(i) for i in instances]
            record["features"] = [summary_features(i, vocabulary=self.vocabulary)
                                  for i in instances]
        if predictions is not None:
            record["outputs"] = [_output_summary(p) for p in predictions]
        with self._lock:
            kept = self.blobs is not None and instances is not None and \
                self._keep_images(instances, record["inputs"])
            line = json.dumps(record) + "\n"
            if kept:
                self._held.append(line)
            else:
                self._append(line)

    def _append(self, line: str) -> None:
        self._file.write(line)
        self._size += len(line)
        if self._size > self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self._file.close()
        self.path.replace(self.path.with_name(self.path.name + ".1"))
        self._file = self.path.open("a", encoding="utf-8")
        self._size = 0

    def _keep_images(self, instances: list, inputs: list[dict]) -> bool:
        """Images go to the blob store (deduplicated by their sha256) at the next flush,
        off the request's path; past MAX_PENDING_IMAGES waiting, the record says the
        image was not kept rather than the replica holding unbounded memory. True when
        one was kept."""
        kept = False
        for instance, summary in zip(instances, inputs, strict=True):
            if instance.image is None:
                continue
            digest = summary["image_sha256"]
            if digest in self._images or len(self._images) < MAX_PENDING_IMAGES:
                self._images[digest] = instance.image
                summary["stored"] = kept = True
            else:
                summary["stored"] = False
        return kept

    def flush(self) -> None:
        """Store the images waiting for the blob store, then write the lines held for them
        and flush the file (the server calls this once a second on a thread)."""
        with self._lock:
            held, self._held = self._held, []
            images, self._images = self._images, {}
            self._file.flush()  # the lines that wait for nothing, before the blob writes
        try:
            for digest, data in images.items():  # only filled with a blob store
                if not self.blobs.exists(digest):
                    self.blobs.put_bytes(data)
        finally:  # a failing blob store loses no line (collect skips what it lacks)
            with self._lock:
                for line in held:
                    self._append(line)
                self._file.flush()

    def close(self) -> None:
        self.flush()
        self._file.close()
