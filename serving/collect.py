"""Collecting a release's production inputs into a dataset's draft (the I/O around
rules.py): the release's request logs and flags are read, the rule picks, and the picked
inputs become unlabeled records in one transaction, each with its provenance and, for
classification, the model's answer as a pre-annotation the labelers see.

Who may: the release's owner or an admin (its logs hold every caller's inputs) who may
also write the dataset.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, or_, select

from loophub.datasets import draft
from loophub.datasets.models import DraftRecord
from loophub.datasets.records import ORIGINS
from loophub.datasets.validation import RecordValidator
from loophub.errors import Conflict, InvalidInput, LoophubError, NotFound
from loophub.identity import Actor
from loophub.loop.rules import Candidate, candidates, choose
from loophub.releases.tables import CollectSchedule, Release
from loophub.store.models import iso, utcnow

from . import monitoring

log = logging.getLogger("loophub.loop")

SCHEDULER = "loophub-loop"  # the platform, as it runs a schedule for its creator
MIN_EVERY_S, MAX_SCHEDULES = 60, 20  # per release
PREFIX = ORIGINS["production"]  # collected records' ids: PREFIX + the content's sha256
ANNOTATION_TYPE = {"image_classification": "image_class", "text_classification": "text_class"}
MAX_WINDOW_S = 90 * 86400


class LoopService:
    def __init__(self, db, blobs, datasets, releases, monitor) -> None:
        self.db, self.blobs, self.datasets = db, blobs, datasets
        self.releases, self.monitor = releases, monitor

    def collect(self, actor: Actor, release: str, *, into: str, rule: str, limit: int = 100,
                threshold: float = 0.6, window_s: float = 7 * 86400, seed: int = 0) -> dict:
        """Copy up to LIMIT inputs of RELEASE chosen by RULE (over the last WINDOW_S
        seconds of its request logs) into dataset INTO's draft; what was collected and
        what was left out, and why."""
        if not isinstance(window_s, (int, float)) or not 0 < window_s <= MAX_WINDOW_S:
            raise InvalidInput(f"window_s: seconds from 1 to {MAX_WINDOW_S}",
                               detail={"field": "window_s"})
        self.releases.check(actor, release, "manage")
        view = self.releases.get(actor, release)
        self.datasets.check_access(actor, into, "write")
        now = time.time()
        logged = monitoring.read_log(self.monitor.log_files(release), now - window_s, now)
        flags = self.releases.feedback(actor, release) if rule == "flagged" else []
        reference = self.monitor.reference(view["version"]) if rule == "drifted" else None
        found = candidates(logged, flags)
        picked = choose(found, rule, limit=10000, threshold=threshold, reference=reference,
                        seed=seed)
        stored = [c for c in picked if not self._image_lost(c)]
        new, known = self._write(actor, into, view, rule, stored, limit)
        return {"release": release, "dataset": into, "rule": rule,
                "collected": len(new), "records": [r["id"] for r in new],
                "candidates": len(found), "matched": len(picked),
                "already_in_dataset": known,
                "not_kept_by_the_log": sum(1 for c in found if c.content_sha is None)
                + len(picked) - len(stored)}

    def _image_lost(self, c: Candidate) -> bool:
        """The log says it kept the image, but the blob store does not hold it (its write
        failed): the candidate cannot become a record; it is counted, not an error."""
        digest = c.content_sha
        return digest is not None and "image_sha256" in c.input and \
            not self.blobs.exists(digest)

    # -- schedules ---------------------------------------------------------------------------

    def schedule(self, actor: Actor, release: str, *, into: str, rule: str, every_s: int,
                 **options: Any) -> dict:
        """Collect every EVERY_S seconds (the platform runs it as ACTOR, by name: the
        release and the dataset must stay theirs to manage and write without groups).
        Checked now as a collection is: access, the rule and its options."""
        if isinstance(every_s, bool) or not isinstance(every_s, int) or not \
                MIN_EVERY_S <= every_s <= 30 * 86400:
            raise InvalidInput(f"every_s: seconds between runs, {MIN_EVERY_S} to "
                               f"{30 * 86400}", detail={"field": "every_s"})
        self.releases.check(actor, release, "manage")
        self.datasets.check_access(actor, into, "write")
        choose([], rule, **{k: v for k, v in options.items() if k in ("limit", "threshold")})
        with self.db.transaction() as s:
            row = s.scalars(select(Release).where(Release.name == release)).one()
            if s.scalar(select(func.count()).select_from(CollectSchedule).where(
                    CollectSchedule.release_id == row.id)) >= MAX_SCHEDULES:
                raise Conflict(f"release {release!r} has {MAX_SCHEDULES} collection "
                               "schedules; delete one first")
            schedule = CollectSchedule(
                id=uuid.uuid4().hex[:12], release_id=row.id, dataset=into, rule=rule,
                options=options, every_s=every_s, created_by=actor.name, created=utcnow(),
                next_run=time.time() + every_s)
            s.add(schedule)
            s.flush()
            return schedule_view(schedule, release)

    def schedules(self, actor: Actor, release: str) -> list[dict]:
        self.releases.check(actor, release, "manage")
        with self.db.session() as s:
            rows = s.scalars(select(CollectSchedule).join(
                Release, Release.id == CollectSchedule.release_id).where(
                Release.name == release).order_by(CollectSchedule.created))
            return [schedule_view(r, release) for r in rows]

    def unschedule(self, actor: Actor, release: str, schedule_id: str) -> dict:
        self.releases.check(actor, release, "manage")
        with self.db.transaction() as s:
            row = s.scalars(select(CollectSchedule).join(
                Release, Release.id == CollectSchedule.release_id).where(
                Release.name == release, CollectSchedule.id == schedule_id)).first()
            if row is None:
                raise NotFound(f"no collection schedule {schedule_id!r} on release "
                               f"{release!r}; GET releases/{release}/collect/schedules")
            view = schedule_view(row, release)
            s.delete(row)
            return view

    def run_due(self, now: float | None = None) -> list[dict]:
        """Run every schedule whose time has come (NOW: epoch seconds; the API calls
        this every few seconds, on a thread); each run's outcome, failures included, is
        kept on it."""
        now = time.time() if now is None else now
        with self.db.session() as s:
            due = s.execute(select(CollectSchedule, Release.name).join(
                Release, Release.id == CollectSchedule.release_id).where(
                CollectSchedule.next_run <= now)).all()
            due = [(schedule_view(row, name), name) for row, name in due]
        return [self._run(view, name, now) for view, name in due]

    def _run(self, view: dict, release: str, now: float) -> dict:
        actor = Actor(view["created_by"], via=SCHEDULER)
        try:
            result = self.collect(actor, release, into=view["dataset"], rule=view["rule"],
                                  window_s=max(view["every_s"], 3600) * 2, **view["options"])
        except LoophubError as exc:  # access lost, dataset archived: said on the schedule
            result = {"error": exc.message}
            log.warning("collection schedule %s of %s: %s", view["id"], release, exc.message)
        with self.db.transaction() as s:
            row = s.get(CollectSchedule, view["id"])
            if row is not None:  # not deleted meanwhile
                row.last_run, row.last_result = utcnow(), result
                row.next_run = now + row.every_s
        return {"schedule": view["id"], **result}

    def _write(self, actor: Actor, into: str, view: dict, rule: str,
               picked: list[Candidate], limit: int) -> tuple[list[dict], int]:
        with self.db.transaction() as session:
            dataset = self.datasets.dataset_for(session, actor, into, "write")
            draft.take_seq(session, dataset.id)  # the dataset's write lock, then read
            present = _present(session, dataset.id, picked)
            fresh = [c for c in picked if c.content_sha not in present][:limit]
            validator = RecordValidator(dataset.label_schema)
            records = [self._record(c, view, rule, validator, into) for c in fresh]
            draft.upsert_many(session, dataset.id, records, actor.name)
        return records, sum(c.content_sha in present for c in picked)

    def _record(self, c: Candidate, view: dict, rule: str, validator: RecordValidator,
                into: str) -> dict:
        record: dict[str, Any] = {"id": PREFIX + c.content_sha[:24], "annotations": []}
        if "text" in c.input:
            record["text"] = c.input["text"]
        else:
            record["media"] = self._media(c.content_sha)
        record["metadata"] = {"source": "production", "release": view["name"],
                              "version": c.version or view["version"],
                              "request_id": c.request_id, "request_time": _iso(c.time),
                              "rule": rule, "why": c.why, "prediction": c.output,
                              **({"feedback": c.feedback} if c.feedback else {})}
        annotation = _pre_annotation(c, view)
        if annotation is not None:
            record["annotations"] = [annotation]
            if validator.issues(record):  # the model's label is no class of this dataset
                record["annotations"] = []
        validator.validate(record, source=f"collect into {into}")
        return record

    def _media(self, digest: str) -> dict:
        from PIL import Image  # only collecting images needs it

        data = self.blobs.get_bytes(digest)
        media = {"sha256": digest, "size": len(data)}
        try:
            with Image.open(io.BytesIO(data)) as image:
                media["width"], media["height"] = image.size
                if image.format in Image.MIME:
                    media["type"] = Image.MIME[image.format]
        except OSError:
            pass  # the server decoded it once; a size is a nicety
        return media


def _present(session, dataset_id: int, picked: list[Candidate]) -> set[str]:
    """The content shas of PICKED the dataset already holds (as a collected record, or
    as an image imported some other way)."""
    shas = sorted({c.content_sha for c in picked})
    present: set[str] = set()
    for start in range(0, len(shas), 400):
        part = shas[start:start + 400]
        ids = {PREFIX + sha[:24]: sha for sha in part}
        for record_id, media_sha in session.execute(
                select(DraftRecord.record_id, DraftRecord.media_sha).where(
                    DraftRecord.dataset_id == dataset_id, DraftRecord.deleted.is_(False),
                    or_(DraftRecord.record_id.in_(list(ids)),
                        DraftRecord.media_sha.in_(part)))):
            present.add(ids.get(record_id) or media_sha)
    return present


def _pre_annotation(c: Candidate, view: dict) -> dict | None:
    """The model's answer as a labeler's suggestion (classification: the top label)."""
    kind = ANNOTATION_TYPE.get(view.get("task") or "")
    label = c.output.get("label")
    if kind is None or not isinstance(label, str):
        return None
    name, _, number = (c.version or view["version"]).partition("@")
    annotation = {"type": kind, "label": label,
                  "source": {"kind": "model", "name": name, "version": number or None}}
    if c.score is not None:
        annotation["score"] = c.score
    return annotation


def schedule_view(row: CollectSchedule, release: str) -> dict:
    return {"id": row.id, "release": release, "dataset": row.dataset, "rule": row.rule,
            "options": row.options, "every_s": row.every_s, "created_by": row.created_by,
            "created": iso(row.created), "next_run": _iso(row.next_run),
            "last_run": iso(row.last_run), "last_result": row.last_result}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()
