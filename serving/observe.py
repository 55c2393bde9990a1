"""Monitoring a release: its replicas' request logs over a window, summarised per
version (monitoring.summarize) and compared with the training data (monitoring.drift).

The reference a version is compared with is built once per artifact from the dataset
version it was trained on (a uniform sample of REFERENCE_RECORDS records: their images'
or texts' summary features, and the label counts of every record) and kept in
``serving_references``; a version registered without a dataset has no reference, and
the answer says so instead of a drift flag.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loophub.errors import InvalidInput
from loophub.identity import Actor
from loophub.releases.tables import ServingReference
from loophub.store import BlobStore, Database
from loophub.training.recipes.labels import class_label

from . import monitoring

REFERENCE_RECORDS = 1000
READER = Actor("loophub", admin=True, kind="service")  # a reference is aggregate figures
CLASS_KIND = {"image_classification": "image_class", "text_classification": "text_class"}


class Monitor:
    def __init__(self, db: Database, blobs: BlobStore, datasets, models, logs: Path) -> None:
        self.db, self.blobs, self.datasets, self.models = db, blobs, datasets, models
        self.logs = Path(logs)

    def report(self, release: dict, window_s: float, *, now: float | None = None,
               bucket_s: float | None = None, with_series: bool = True) -> dict:
        """RELEASE's (its view) figures over the last WINDOW_S seconds, with the latest
        errors and (WITH_SERIES) the same over time in buckets of BUCKET_S (default: 60 points
        per window, at least 10 s)."""
        until = now or time.time()
        records = monitoring.read_log(self.log_files(release["name"]), until - window_s,
                                      until)
        summary = monitoring.summarize(records, window_s=window_s)
        since = until - window_s
        series = self._series(records, until, window_s, bucket_s) if with_series else None
        drift = {}
        for version in sorted(summary.get("versions") or {}):
            served = [r for r in records if r.get("version") == version]
            drift[version] = self._drift(version, served)
        return {"release": release["name"], "window_s": window_s,
                "since": since, "until": until, "malformed": records.malformed,
                "summary": summary, "drift": drift, "series": series,
                "recent_errors": monitoring.recent_errors(records)}

    @staticmethod
    def _series(records: list[dict], until: float, window_s: float,
                bucket_s: float | None) -> dict:
        bucket = bucket_s or default_bucket(window_s)
        buckets = math.ceil(window_s / bucket)
        if buckets > monitoring.MAX_BUCKETS:
            raise InvalidInput(f"bucket: {buckets} buckets of {bucket:g} s in the window; at "
                               f"most {monitoring.MAX_BUCKETS}", detail={"field": "bucket"})
        return monitoring.timeseries(records, until - bucket * buckets, until, bucket)

    def log_files(self, name: str) -> list[Path]:
        """A release's request logs (every replica's; read_log adds the rotated ones)."""
        folder = self.logs / name
        # read_log reads each log's rotated PATH.1 beside it
        return sorted(folder.glob("*.requests.jsonl")) if folder.is_dir() else []

    def _drift(self, version: str, records: list[dict]) -> dict:
        try:
            reference = self.reference(version)
        except Exception as exc:  # a deleted version, an unreadable dataset: say so
            return {"drifted": None, "insufficient": f"no reference for {version}: {exc}"}
        if reference is None:
            return {"drifted": None, "insufficient": f"{version} was registered without "
                    "the dataset it learnt from, so there is nothing to compare with"}
        return monitoring.drift(reference, records)

    def reference(self, version: str) -> dict | None:
        """VERSION's reference sample (built and kept on first use); None without a
        dataset lineage."""
        view = self.models.resolve(READER, version)
        artifact = view["artifact"]["blob"]
        with self.db.session() as s:
            row = s.get(ServingReference, artifact)
            if row is not None:
                return row.reference
        if not view.get("dataset") or not view.get("dataset_version_id"):
            return None
        reference = self._build(view)
        with self.db.transaction() as s:
            if s.get(ServingReference, artifact) is None:
                s.add(ServingReference(artifact=artifact, version=version,
                                       dataset=view["dataset"], reference=reference))
        return reference

    def _build(self, view: dict) -> dict:
        name = view["dataset"].partition("@")[0]
        records = self.datasets.version_records(READER, name, view["dataset_version_id"])
        labels: Counter = Counter()
        sample, _ = monitoring.reservoir(_counting(records, labels, view.get("task")),
                                         REFERENCE_RECORDS, random.Random(0))
        instances = [self._instance(record) for record in sample]
        out = monitoring.reference_sample([i for i in instances if i is not None],
                                          limit=REFERENCE_RECORDS,
                                          vocabulary=monitoring.vocabulary_of(view["meta"]))
        out["labels"] = dict(labels) if labels else None
        out["dataset"] = view["dataset"]
        return out

    def _instance(self, record: dict) -> Any:
        media = record.get("media") or {}
        if media.get("sha256"):
            return self.blobs.get_bytes(media["sha256"])
        return record.get("text")


def default_bucket(window_s: float) -> float:
    """About 60 points per window, whole seconds, at least 10 s."""
    return float(max(10, math.ceil(window_s / 60)))


def _counting(records: Iterator[dict], labels: Counter, task: str | None) -> Iterator[dict]:
    """The records, counting their class labels on the way (classification tasks, the
    label as the recipes read it)."""
    kind = CLASS_KIND.get(task or "")
    for record in records:
        if kind and (label := class_label(record, kind)) is not None:
            labels[label] += 1
        yield record

