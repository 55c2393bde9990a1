"""Training jobs on the platform's side: accept (validated before anything is written),
read, and record what the ranks send (metrics, logs, checkpoints, the artifact) and what
the runner decides (state changes with their reasons, the result and its lineage).

A training job is a loophub.jobs row of kind "train" (listed, cancelled and audited like
every job) plus a TrainingRun row with what it resolved: the exact dataset version, the
owner's groups, its scheduler request, attempts, retries and preemptions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import delete, func, select

from loophub import audit, jobs
from loophub.errors import Conflict, InvalidInput, NotFound, TooLarge
from loophub.identity import Actor
from loophub.jobs import Job, JobStore
from loophub.models.recipe import EVALUATE
from loophub.store import BlobStore, Database, grants
from loophub.store.models import iso
from loophub.training import data
from loophub.training.spec import TrainingSpec
from loophub.training.states import ALLOWED
from loophub.training.tables import (
    TrainingCheckpoint,
    TrainingLog,
    TrainingMetric,
    TrainingRun,
)

log = logging.getLogger("loophub.training")
KIND = "train"
RUNNER = "loophub-training"  # the actor of what the runner decides
MAX_METRIC_ROWS = 5000       # per request
MAX_LOG_LINES = 1000         # per request
MAX_LOG_KEEP = 20_000        # lines kept per job (older ones dropped)
MAX_CHECKPOINT = 8 * 1024**3
MAX_ARTIFACT = 8 * 1024**3


@dataclass(frozen=True)
class Accepted:
    """What a submission resolved, before anything is written."""

    spec: TrainingSpec
    version: dict          # resolve_version's answer: id, number, task, label_schema
    params: dict           # the recipe's parameters with their defaults filled in


class TrainingService:
    def __init__(self, db: Database, blobs: BlobStore, datasets, jobs_store: JobStore,
                 cache_dir: str | Path) -> None:
        self.db, self.blobs, self.datasets, self.jobs = db, blobs, datasets, jobs_store
        self.cache_dir = Path(cache_dir)
        self.stops: dict[str, str] = {}  # job id -> why its ranks must stop now
        self._lock = threading.Lock()

    # -- accepting ---------------------------------------------------------------------

    def check(self, actor: Actor, spec: TrainingSpec, *, internal: bool = False) -> Accepted:
        """Everything a job needs, checked before it is accepted: the recipe and its
        parameters, the version (readable, committed) and its task, the function's
        upload (the owner's own bytes). INTERNAL: another room submits one of the
        platform's own recipes (an evaluation)."""
        version = self.datasets.resolve_version(actor, spec.dataset.name, spec.dataset.version)
        params = dict(spec.params)
        if spec.recipe is not None:
            from loophub.training.recipes import recipe

            found = recipe(spec.recipe, version["task"], internal=internal)
            params = found.check_params(params)
        else:
            with self.db.session() as s:
                missing = grants.may_reference(s, actor, [spec.function.blob])
            if missing:
                raise grants.refuse(missing, "training.function.blob")
            if spec.function.sha256 != spec.function.blob:
                raise InvalidInput("training.function.sha256: must be the upload's digest",
                                   detail={"field": "function.sha256"})
        if not version["records"]:
            raise InvalidInput(f"dataset {spec.dataset} has no records to train on",
                               detail={"field": "dataset"})
        return Accepted(spec, version, params)

    def pin_start(self, actor: Actor, accepted: Accepted, models) -> Accepted:
        """A job that starts from a model version (the ``init_from`` parameter) names it
        exactly (NAME@vN: an alias may move before a retry), after checking that ACTOR
        may read it and that its recipe and labels are the job's. MODELS: the registry."""
        ref = accepted.params.get("init_from")
        if not ref:
            return accepted
        try:
            version = models.resolve(actor, ref)
        except (NotFound, InvalidInput) as exc:
            raise InvalidInput(f"training.params.init_from: {exc}",
                               detail={"field": "params.init_from"}) from None
        recipe_of = (version.get("meta") or {}).get("recipe") or "an analyst's function"
        labels = data.label_names(accepted.version["label_schema"])
        why = None
        if recipe_of != accepted.spec.recipe:
            why = f"it was trained by {recipe_of}, this job runs {accepted.spec.recipe}"
        elif list(version.get("labels") or []) != labels:
            why = f"its labels {version.get('labels')} are not the dataset's {labels}"
        if why:
            raise InvalidInput(f"training.params.init_from: {version['ref']} cannot start "
                               f"this job: {why}; start from a version of the same recipe "
                               "and labels, or leave init_from empty",
                               detail={"field": "params.init_from"})
        return replace(accepted, params={**accepted.params, "init_from": version["ref"]})

    def create(self, actor: Actor, accepted: Accepted, *, cause: str = "") -> dict:
        spec, version = accepted.spec, accepted.version
        stored = {**spec.to_json(), "params": accepted.params}
        job = self.jobs.create(actor, KIND, target=f"dataset:{spec.dataset.name}",
                               params=stored, cause=cause or f"{actor.name} via the API")
        with self.db.transaction() as s:
            s.add(TrainingRun(job_id=job["id"], dataset=spec.dataset.name,
                              version_id=version["id"], version_number=version["number"],
                              task=version["task"], groups=list(actor.groups),
                              packages=packages()))
        return self.get(actor, job["id"])

    def attach_request(self, job_id: str, request_id: str) -> None:
        with self.db.transaction() as s:
            s.get(TrainingRun, job_id).request_id = request_id

    # -- reading -----------------------------------------------------------------------

    def _job(self, s, actor: Actor, job_id: str) -> tuple[Job, TrainingRun]:
        job = s.get(Job, job_id)
        if job is None or job.kind != KIND or not (actor.admin or job.owner == actor.name):
            raise NotFound(f"no training job {job_id!r} of yours; list yours with GET "
                           "training/jobs")
        return job, s.get(TrainingRun, job_id)

    def view(self, job: Job, run: TrainingRun) -> dict:
        out = jobs.view(job)
        out.update(
            spec=job.params, dataset=f"{run.dataset}@v{run.version_number}",
            version_id=run.version_id, request_id=run.request_id, attempt=run.attempt,
            retries=run.retries, preemptions=run.preemptions, step=run.step,
            checkpoint_step=run.checkpoint_step, stop_requested=self.stops.get(job.id))
        return out

    def get(self, actor: Actor, job_id: str) -> dict:
        with self.db.session() as s:
            return self.view(*self._job(s, actor, job_id))

    def list(self, actor: Actor, *, state: str | None = None, limit: int = 50) -> list[dict]:
        query = select(Job, TrainingRun).join(TrainingRun, TrainingRun.job_id == Job.id).where(
            Job.kind == KIND).order_by(Job.created_at.desc()).limit(max(1, min(limit, 500)))
        if not actor.admin:
            query = query.where(Job.owner == actor.name)
        if state:
            query = query.where(Job.state == state)
        with self.db.session() as s:
            return [self.view(job, run) for job, run in s.execute(query)]

    def metrics(self, actor: Actor, job_id: str, *, after: int = 0, limit: int = 5000) -> dict:
        """Metric points after the id AFTER (incremental, for live curves)."""
        with self.db.session() as s:
            self._job(s, actor, job_id)
            rows = s.scalars(select(TrainingMetric).where(
                TrainingMetric.job_id == job_id, TrainingMetric.id > after)
                .order_by(TrainingMetric.id).limit(max(1, min(limit, 20_000)))).all()
            points = [{"id": r.id, "step": r.step, "epoch": r.epoch, "name": r.name,
                       "value": r.value, "attempt": r.attempt, "at": iso(r.at)} for r in rows]
        return {"metrics": points, "next": points[-1]["id"] if points else after}

    def logs(self, actor: Actor, job_id: str, *, after: int = 0, limit: int = 2000) -> dict:
        with self.db.session() as s:
            self._job(s, actor, job_id)
            rows = s.scalars(select(TrainingLog).where(
                TrainingLog.job_id == job_id, TrainingLog.id > after)
                .order_by(TrainingLog.id).limit(max(1, min(limit, 10_000)))).all()
            lines = [{"id": r.id, "rank": r.rank, "at": iso(r.at), "line": r.line}
                     for r in rows]
        return {"lines": lines, "next": lines[-1]["id"] if lines else after}

    # -- what the ranks send (as the job's owner) ------------------------------------------

    def _running(self, s, actor: Actor, job_id: str) -> tuple[Job, TrainingRun]:
        job, run = self._job(s, actor, job_id)
        if job.state not in ("starting", "running", "retrying"):
            raise Conflict(f"training job {job_id} is {job.state}: it takes no reports now")
        return job, run

    def add_metrics(self, actor: Actor, job_id: str, rows: list[dict]) -> int:
        if len(rows) > MAX_METRIC_ROWS:
            raise TooLarge(f"{len(rows)} metric points in one request; send at most "
                           f"{MAX_METRIC_ROWS}", detail={"limit": MAX_METRIC_ROWS})
        with self.db.transaction() as s:
            _, run = self._running(s, actor, job_id)
            for row in rows:
                s.add(TrainingMetric(job_id=job_id, attempt=run.attempt, step=int(row["step"]),
                                     epoch=row.get("epoch"), name=str(row["name"])[:64],
                                     value=float(row["value"])))
            if rows:
                run.step = max(run.step, max(int(r["step"]) for r in rows))
        return len(rows)

    def add_logs(self, actor: Actor, job_id: str, rank: int, lines: list[str]) -> int:
        if len(lines) > MAX_LOG_LINES:
            raise TooLarge(f"{len(lines)} log lines in one request; send at most "
                           f"{MAX_LOG_LINES}", detail={"limit": MAX_LOG_LINES})
        with self.db.transaction() as s:
            self._running(s, actor, job_id)
            for line in lines:
                s.add(TrainingLog(job_id=job_id, rank=rank, line=line[:10_000]))
        return len(lines)

    def log_line(self, job_id: str, line: str, rank: int = -1) -> None:
        """A line from the runner itself (rank -1): starts, losses, retries."""
        with self.db.transaction() as s:
            s.add(TrainingLog(job_id=job_id, rank=rank, line=line))

    def _own_blob(self, s, actor: Actor, digest: str, where: str) -> int:
        """The size of an upload the actor may refer to (they sent it)."""
        missing = grants.may_reference(s, actor, [digest])
        if missing or not self.blobs.exists(digest):
            raise grants.refuse({digest}, where)
        return self.blobs.size(digest)

    def put_checkpoint(self, actor: Actor, job_id: str, digest: str, *, step: int,
                       epoch: float | None, metric: float | None) -> dict:
        """Record an uploaded checkpoint at STEP; keep the last k and the best."""
        with self.db.transaction() as s:
            job, run = self._running(s, actor, job_id)
            size = self._own_blob(s, actor, digest, "checkpoint.blob")
            if size > MAX_CHECKPOINT:
                raise TooLarge(f"checkpoint of {size} bytes; at most {MAX_CHECKPOINT}")
            s.add(TrainingCheckpoint(job_id=job_id, step=step, epoch=epoch, digest=digest,
                                     size=size, metric=metric))
            run.checkpoint_step = step
            keep = int((job.params or {}).get("keep_checkpoints") or 2)
        pruned = self._prune(job_id, keep)
        return {"digest": digest, "size": size, "step": step, "pruned": pruned}

    def _prune(self, job_id: str, keep: int) -> int:
        """Keep the last KEEP checkpoints and the best (highest metric); delete the rest,
        and their blobs where nothing else refers to them."""
        with self.db.transaction() as s:
            rows = s.scalars(select(TrainingCheckpoint).where(
                TrainingCheckpoint.job_id == job_id).order_by(TrainingCheckpoint.step)).all()
            kept = {r.id for r in rows[-keep:]}
            scored = [r for r in rows if r.metric is not None]
            if scored:
                kept.add(max(scored, key=lambda r: (r.metric, r.step)).id)
            doomed = [r for r in rows if r.id not in kept]
            digests = {r.digest for r in doomed}
            s.execute(delete(TrainingCheckpoint).where(
                TrainingCheckpoint.id.in_([r.id for r in doomed])))
            s.flush()
            still = set(s.scalars(select(TrainingCheckpoint.digest).where(
                TrainingCheckpoint.digest.in_(digests))))
        for digest in digests - still:
            self.blobs.delete(digest)
        return len(doomed)

    def latest_checkpoint(self, actor: Actor, job_id: str) -> dict | None:
        with self.db.session() as s:
            self._job(s, actor, job_id)
            row = s.scalars(select(TrainingCheckpoint).where(
                TrainingCheckpoint.job_id == job_id).order_by(
                TrainingCheckpoint.step.desc(), TrainingCheckpoint.id.desc())).first()
            return None if row is None else {"digest": row.digest, "size": row.size,
                                             "step": row.step, "epoch": row.epoch}

    def checkpoints(self, actor: Actor, job_id: str) -> list[dict]:
        with self.db.session() as s:
            self._job(s, actor, job_id)
            return [{"step": r.step, "epoch": r.epoch, "digest": r.digest, "size": r.size,
                     "metric": r.metric, "created_at": iso(r.created_at)}
                    for r in s.scalars(select(TrainingCheckpoint).where(
                        TrainingCheckpoint.job_id == job_id).order_by(TrainingCheckpoint.step))]

    def put_artifact(self, actor: Actor, job_id: str, digest: str, meta: dict) -> dict:
        """The servable artifact (an uploaded TorchScript file) and its metadata (task,
        preprocess, labels), kept in the job's result when it succeeds. Who asks is checked
        first, then what they send, and only then is anything stored."""
        with self.db.session() as s:
            self._running(s, actor, job_id)
            self._own_blob(s, actor, digest, "artifact.blob")
        check_artifact_meta(meta)
        meta_digest = self.blobs.put_bytes(json.dumps(meta, sort_keys=True).encode())
        with self.db.transaction() as s:
            job, _ = self._running(s, actor, job_id)
            size = self._own_blob(s, actor, digest, "artifact.blob")
            grants.grant(s, job.owner, [meta_digest])
            job.result = {**(job.result or {}), "artifact": {
                "blob": digest, "size": size, "meta": meta_digest,
                "format": meta.get("format"), "task": meta.get("task"),
                "labels": meta.get("labels"), "preprocess": meta.get("preprocess")}}
        return {"digest": digest, "size": size, "meta": meta_digest}

    def blob_of(self, actor: Actor, job_id: str, digest: str) -> BinaryIO:
        """A checkpoint or artifact blob of the job (its owner and admins)."""
        with self.db.session() as s:
            job, _ = self._job(s, actor, job_id)
            known = {c for c in s.scalars(select(TrainingCheckpoint.digest).where(
                TrainingCheckpoint.job_id == job_id))}
            artifact = (job.result or {}).get("artifact") or {}
            known |= {artifact.get("blob"), artifact.get("meta"),
                      ((job.params or {}).get("function") or {}).get("blob")}
        if digest not in known:
            raise NotFound(f"training job {job_id} has no blob {digest}")
        return self.blobs.open(digest)

    # -- what the runner decides ------------------------------------------------------------

    def move(self, job_id: str, state: str, reason: str, *, actor: str = RUNNER,
             **run_fields: Any) -> dict:
        with self.db.transaction() as s:
            job, run = s.get(Job, job_id), s.get(TrainingRun, job_id)
            if job.state != state:
                jobs.move(s, job, state, reason, actor=actor, table=ALLOWED)
            else:
                job.message = reason
            for name, value in run_fields.items():
                setattr(run, name, value)
            return self.view(job, run)

    def state_of(self, job_id: str) -> tuple[str, TrainingRun, dict]:
        """(state, run, job params) of a job, for the runner."""
        with self.db.session() as s:
            job, run = s.get(Job, job_id), s.get(TrainingRun, job_id)
            if job is None or run is None:
                raise NotFound(f"no training job {job_id!r}")
            return job.state, run, dict(job.params or {})

    def exists(self, job_id: str) -> bool:
        """Whether JOB_ID is a training job (a kind=job request may be a plain hold)."""
        with self.db.session() as s:
            return s.get(TrainingRun, job_id) is not None

    def owner_of(self, job_id: str) -> Actor:
        with self.db.session() as s:
            job, run = s.get(Job, job_id), s.get(TrainingRun, job_id)
            return Actor(job.owner, tuple(run.groups or ()))

    def active(self) -> list[tuple[str, str, str | None]]:
        """(job id, state, request id) of every training job that has not ended."""
        with self.db.session() as s:
            return [(j.id, j.state, r.request_id) for j, r in s.execute(
                select(Job, TrainingRun).join(TrainingRun, TrainingRun.job_id == Job.id).where(
                    Job.kind == KIND, Job.state.in_(jobs.ACTIVE)))]

    def succeed(self, job_id: str, final: dict[str, float]) -> dict:
        """The job ended well: its result (final and best metrics, the artifact, the
        dataset version) and the lineage from the version to it."""
        with self.db.transaction() as s:
            job, run = s.get(Job, job_id), s.get(TrainingRun, job_id)
            best = best_metrics(s, job_id)
            job.result = {**(job.result or {}), "metrics": final, "best": best,
                          "dataset": run.dataset, "version_id": run.version_id,
                          "version_number": run.version_number, "step": run.step}
            jobs.move(s, job, "succeeded", "finished", actor=RUNNER, table=ALLOWED)
            audit.record(s, RUNNER, "train.succeeded", f"job:{job_id}",
                         dataset=f"{run.dataset}@v{run.version_number}")
            name, version_id, owner = job.params.get("name") or job.params.get(
                "recipe") or "function", run.version_id, job.owner
            relation = "evaluated_on" if job.params.get("recipe") == EVALUATE else \
                "trained_on"
        self.datasets.link_version(version_id, name, f"job:{job_id}", relation=relation,
                                   by=owner)
        with self._lock:
            self.stops.pop(job_id, None)
        return self.get(Actor(owner, admin=True), job_id)

    def fail(self, job_id: str, message: str, *, state: str = "failed",
             actor: str = RUNNER) -> dict:
        with self.db.transaction() as s:
            job, _run = s.get(Job, job_id), s.get(TrainingRun, job_id)
            if job.state not in jobs.ENDED:
                jobs.move(s, job, state, message, actor=actor, table=ALLOWED)
                if state == "failed":
                    job.error = {"error": message, "detail": None, "status": 400}
        with self._lock:
            self.stops.pop(job_id, None)
        return self.get(Actor(job.owner, admin=True), job_id)

    def record_resources(self, job_id: str, hours: dict[str, float]) -> None:
        """The resources the job held (its scheduler request's runs), kept with its result
        (the usage accounting counts them already)."""
        with self.db.transaction() as s:
            job = s.get(Job, job_id)
            job.result = {**(job.result or {}), "resources": hours}

    def request_stop(self, job_id: str, reason: str) -> None:
        with self._lock:
            self.stops[job_id] = reason

    def clear_stop(self, job_id: str) -> None:
        with self._lock:
            self.stops.pop(job_id, None)

    # -- the data a job reads -------------------------------------------------------------

    def materialize(self, job_id: str, usable=None) -> Path:
        """The job's dataset version on disk (once per version; reused by later jobs),
        read as the job's owner with the groups they had when they submitted it."""
        _state, run, params = self.state_of(job_id)
        owner = self.owner_of(job_id)
        folder = self.cache_dir / "datasets" / run.version_id / (
            "all" if usable is None else params.get("recipe") or "all")
        version = self.datasets.resolve_version(owner, run.dataset, run.version_id)
        records = self.datasets.version_records(owner, run.dataset, run.version_id)
        if usable is not None:
            records = (r for r in records if usable(r))
        data.materialize(records, version["label_schema"], folder, self._media_source)
        return folder

    def _media_source(self, digest: str):
        if self.blobs.local:
            return self.blobs.path(digest)
        return self.blobs.open(digest)


def best_metrics(s, job_id: str) -> dict[str, float]:
    """The best value of every validation metric the job reported (max; min for losses)."""
    rows = s.execute(select(TrainingMetric.name, func.max(TrainingMetric.value),
                            func.min(TrainingMetric.value)).where(
        TrainingMetric.job_id == job_id, TrainingMetric.name.startswith("val_"))
        .group_by(TrainingMetric.name)).all()
    return {name: (low if "loss" in name else high) for name, high, low in rows}


def check_artifact_meta(meta: Any) -> None:
    if not isinstance(meta, dict) or meta.get("format") != "torchscript":
        raise InvalidInput("artifact.meta: {format: 'torchscript', task, preprocess, labels}: "
                           "a model the server loads without user code")
    if not isinstance(meta.get("preprocess"), dict):
        raise InvalidInput("artifact.meta.preprocess: how to prepare inputs (an object)")
    labels = meta.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(
            isinstance(x, str) for x in labels)):
        raise InvalidInput("artifact.meta.labels: a list of label names")


def packages() -> dict[str, str]:
    """Versions of what a job's result depends on (recorded with the job)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "numpy", "loophub", "distributed", "cloudpickle"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def function_digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()

