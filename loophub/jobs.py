"""Persisted long operations: imports, exports, commits, and next training and evaluation.

A job is a row from the moment it is accepted: its owner, what started it (``cause``),
its parameters, its state, progress (done / total and a message), a tail of its log
(the whole log goes to the blob store when it ends), its result or its error. Progress
is served live by the process that runs the job (the SDK's progress bars and the CLI
poll it) and written to the row when the job ends; a restart of the API finds every job
that was running and reports it ``interrupted`` instead of forgetting it.

This module is the domain side: ``JobStore`` creates, reads, cancels and finishes jobs
and ``run`` executes one job's work in the calling thread; the API service's shell
decides which thread (extensions/api/jobs.py).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Index, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from loophub import audit
from loophub.errors import Conflict, InvalidInput, LoophubError, NotFound
from loophub.identity import Actor
from loophub.store import BlobStore, Database
from loophub.store.models import Base, iso, utcnow

log = logging.getLogger("loophub.jobs")
# Every job kind shares these; training uses the fine ones (starting, preempted, retrying)
ACTIVE = ("queued", "starting", "running", "preempted", "retrying")
ENDED = ("succeeded", "failed", "cancelled", "interrupted")
STATES = ACTIVE + ENDED
# A job that runs once (an import, an export, a commit); training has its own table
ONCE: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled", "interrupted"}),
    "running": frozenset({"succeeded", "failed", "cancelled", "interrupted"}),
}
LOG_TAIL = 16 * 1024  # characters of the log kept in the row while the job runs
PROGRESS_EVERY = 0.5  # seconds between progress writes


class Job(Base):
    """One long operation, from acceptance to its end."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    owner: Mapped[str] = mapped_column(String(255))
    target: Mapped[str] = mapped_column(String(512), default="")
    state: Mapped[str] = mapped_column(String(16), index=True)
    done: Mapped[int] = mapped_column(BigInteger, default=0)
    total: Mapped[int] = mapped_column(BigInteger, default=0)
    message: Mapped[str] = mapped_column(Text, default="")
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    result: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    error: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    log_tail: Mapped[str] = mapped_column(Text, default="")
    log_blob: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cause: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (Index("ix_jobs_owner_created", "owner", "created_at"),)


class JobEvent(Base):
    """A job moved to another state: when, why, and who or what moved it."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(255), default="")

    __table_args__ = (Index("ix_job_events_job", "job_id", "id"),)


def check_transition(current: str, new: str, table: dict[str, frozenset[str]] = ONCE) -> None:
    """Raise Conflict unless a job may move from CURRENT to NEW under TABLE."""
    if new not in STATES:
        raise Conflict(f"unknown job state {new!r}")
    if current in ENDED:
        raise Conflict(f"the job already ended ({current})")
    if new not in table.get(current, frozenset()):
        raise Conflict(f"a job cannot go from {current} to {new}")


def move(session: Session, job: Job, state: str, reason: str, *, actor: str = "",
         table: dict[str, frozenset[str]] = ONCE) -> None:
    """Move JOB to STATE in the caller's transaction, recording the event with its reason."""
    check_transition(job.state, state, table)
    now = utcnow()
    job.state, job.message = state, reason
    if state in ("starting", "running") and job.started_at is None:
        job.started_at = now
    if state in ENDED:
        job.ended_at = now
    session.add(JobEvent(job_id=job.id, at=now, state=state, reason=reason, actor=actor))


class JobCancelled(LoophubError):
    """Raised inside a job's work when its owner cancelled it."""

    status = 409


def view(job: Job) -> dict[str, Any]:
    """The JSON form every route and the SDK use."""
    return {
        "id": job.id, "kind": job.kind, "owner": job.owner, "target": job.target,
        "state": job.state, "done": job.done, "total": job.total, "message": job.message,
        "params": job.params, "result": job.result, "error": job.error,
        "cause": job.cause, "has_log": bool(job.log_blob or job.log_tail),
        "created_at": iso(job.created_at), "started_at": iso(job.started_at),
        "ended_at": iso(job.ended_at),
    }


class JobContext:
    """What a job's work gets: report progress, write log lines, notice a cancel."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store, self.job_id = store, job_id
        self.done = self.total = 0
        self.message = ""
        self._lines: list[str] = []
        self._written_at = 0.0
        self._dirty = False

    def progress(self, done: int, total: int | None = None, message: str | None = None) -> None:
        """Where the work is (written at most every PROGRESS_EVERY s); raises JobCancelled
        when the owner cancelled, so long loops stop at their next report."""
        self.done = int(done)
        if total is not None:
            self.total = int(total)
        if message is not None:
            self.message = message
        self._dirty = True
        self.check_cancelled()
        if time.monotonic() - self._written_at >= PROGRESS_EVERY:
            self.flush()

    def log(self, line: str) -> None:
        self._lines.append(line.rstrip("\n"))
        self._dirty = True

    def log_text(self) -> str:
        return "\n".join(self._lines) + ("\n" if self._lines else "")

    def check_cancelled(self) -> None:
        if self.store.cancel_requested(self.job_id):
            raise JobCancelled("cancelled by its owner")

    def flush(self) -> None:
        if not self._dirty:
            return
        self._written_at = time.monotonic()
        self._dirty = False
        self.store.set_live(self.job_id, self.done, self.total, self.message,
                            self.log_text()[-LOG_TAIL:])


Work = Callable[[JobContext], "dict | None"]


class JobStore:
    """Creates, runs, reads and cancels jobs; one per process."""

    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self.db, self.blobs = db, blobs
        self._cancel: set[str] = set()
        self._stopping = ""  # why every running job is being stopped (the service stops)
        self._live: dict[str, dict] = {}
        self._lock = threading.Lock()

    # -- creating and running ------------------------------------------------------

    def create(self, actor: Actor, kind: str, *, target: str = "", params: dict | None = None,
               cause: str = "") -> dict:
        """Accept a job (state queued); the caller then runs it."""
        with self.db.transaction() as s:
            job = Job(id=uuid.uuid4().hex, kind=kind, owner=actor.name, target=target,
                      state="queued", params=params or {}, cause=cause or actor.name,
                      message="waiting to start")
            s.add(job)
            s.add(JobEvent(job_id=job.id, state="queued", reason="accepted", actor=actor.name))
            audit.record(s, actor, f"job.{kind}", f"job:{job.id}", target=target)
            s.flush()
            return view(job)

    def run(self, job_id: str, work: Work) -> dict:
        """Run WORK for the job in this thread: running, then succeeded / failed /
        cancelled with its result or error. Never raises for the work's own errors."""
        ctx = JobContext(self, job_id)
        with self.db.transaction() as s:
            job = s.get(Job, job_id)
            if job is None or job.state != "queued":
                return view(job) if job else {}
            if self.cancel_requested(job_id):
                return self._end(job_id, ctx, "cancelled", message="cancelled before it started")
            move(s, job, "running", "running")
        try:
            result = work(ctx)
        except JobCancelled as exc:
            state = "interrupted" if self._stopping else "cancelled"
            return self._end(job_id, ctx, state, message=self._stopping or exc.message)
        except LoophubError as exc:
            ctx.log(f"error: {exc.message}")
            return self._end(job_id, ctx, "failed", error={**exc.to_dict(), "status": exc.status},
                             message=exc.message)
        except Exception as exc:  # a job reports its failure; it must not kill its thread
            log.exception("job %s failed", job_id)
            ctx.log(traceback.format_exc())
            return self._end(job_id, ctx, "failed", message=f"failed: {exc}",
                             error={"error": f"internal error: {exc}; the service log has "
                                             "the details", "detail": None, "status": 500})
        return self._end(job_id, ctx, "succeeded", result=result or {}, message="done")

    def _end(self, job_id: str, ctx: JobContext, state: str, *, result: dict | None = None,
             error: dict | None = None, message: str = "") -> dict:
        text = ctx.log_text()
        digest = self.blobs.put_bytes(text.encode()) if text else None
        with self.db.transaction() as s:
            job = s.get(Job, job_id)
            if job.state != state:
                move(s, job, state, message)
            job.done, job.total = max(job.done, ctx.done), max(job.total, ctx.total)
            if state == "succeeded" and job.total:
                job.done = job.total
            job.result, job.error = result, error
            job.log_tail, job.log_blob = text[-LOG_TAIL:], digest
            out = view(job)
        with self._lock:
            self._cancel.discard(job_id)
            self._live.pop(job_id, None)
        return out

    def set_live(self, job_id: str, done: int, total: int, message: str, log_tail: str) -> None:
        """A running job's progress, served from this process: a write transaction per
        report would wait behind the job's own (SQLite has one writer), so the row gets
        the figures when the job ends."""
        with self._lock:
            self._live[job_id] = {"done": done, "total": total, "message": message,
                                  "log_tail": log_tail}

    def _with_live(self, job: Job) -> dict:
        out = view(job)
        if job.state == "running":
            with self._lock:
                live = self._live.get(job.id)
            if live is not None:
                out.update(done=live["done"], total=live["total"],
                           message=live["message"] or out["message"])
        return out

    # -- reading -------------------------------------------------------------------

    def _visible(self, s, actor: Actor, job_id: str) -> Job:
        job = s.get(Job, job_id)
        if job is None or not (actor.admin or job.owner == actor.name):
            raise NotFound(f"no job {job_id!r} of yours; list yours with GET jobs")
        return job

    def get(self, actor: Actor, job_id: str) -> dict:
        with self.db.transaction() as s:
            return self._with_live(self._visible(s, actor, job_id))

    def list(self, actor: Actor, *, kind: str | None = None, state: str | None = None,
             owner: str | None = None, limit: int = 50) -> list[dict]:
        """Newest first: the actor's own jobs; admins everyone's (or ``owner``'s)."""
        if state is not None and state not in STATES:
            raise InvalidInput(f"state must be one of {', '.join(STATES)}")
        query = select(Job).order_by(Job.created_at.desc()).limit(max(1, min(limit, 500)))
        if not actor.admin:
            owner = actor.name
        if owner:
            query = query.where(Job.owner == owner)
        if kind:
            query = query.where(Job.kind == kind)
        if state:
            query = query.where(Job.state == state)
        with self.db.transaction() as s:
            return [self._with_live(j) for j in s.scalars(query)]

    def log_text(self, actor: Actor, job_id: str) -> str:
        """The whole log once the job ended, else what it has written so far."""
        with self.db.transaction() as s:
            job = self._visible(s, actor, job_id)
            digest, tail, running = job.log_blob, job.log_tail, job.state == "running"
        if running:
            with self._lock:
                tail = (self._live.get(job_id) or {}).get("log_tail", tail)
        return self.blobs.get_bytes(digest).decode() if digest else tail

    # -- cancelling and restarting ---------------------------------------------------

    def cancel(self, actor: Actor, job_id: str) -> dict:
        """Cancel a queued job at once, or ask a running one to stop at its next report.
        (Kinds with processes of their own, training, cancel through their room; the API
        routes every job's cancel to the right one.)"""
        with self.db.transaction() as s:
            job = self._visible(s, actor, job_id)
            if job.state in ENDED:
                raise Conflict(f"job {job_id} already ended ({job.state})")
            with self._lock:
                self._cancel.add(job_id)
            if job.state == "queued":
                move(s, job, "cancelled", f"cancelled by {actor.name}", actor=actor.name)
            else:
                job.message = f"cancel requested by {actor.name}"
            audit.record(s, actor, "job.cancel", f"job:{job_id}")
            return view(job)

    def events(self, actor: Actor, job_id: str) -> list[dict]:
        """Every state the job went through, with when and why."""
        with self.db.transaction() as s:
            self._visible(s, actor, job_id)
            return [{"at": iso(e.at), "state": e.state, "reason": e.reason, "actor": e.actor}
                    for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id)
                                       .order_by(JobEvent.id))]

    def cancel_requested(self, job_id: str) -> bool:
        with self._lock:
            return bool(self._stopping) or job_id in self._cancel

    def stop_all(self, reason: str) -> None:
        """The process is stopping: every running job stops at its next progress report
        (imports roll back) and is recorded interrupted, queued ones never start."""
        with self._lock:
            self._stopping = reason

    def interrupt_active(self, reason: str, *, resumable: tuple[str, ...] = ()) -> list[str]:
        """At start-up: every job a stopped process was running is reported interrupted,
        but for RESUMABLE kinds, whose rooms pick them up again (training)."""
        with self.db.transaction() as s:
            jobs = list(s.scalars(select(Job).where(Job.state.in_(ACTIVE),
                                                    Job.kind.not_in(resumable))))
            for job in jobs:
                move(s, job, "interrupted", reason, actor="loophub",
                     table={job.state: frozenset({"interrupted"})})
            ids = [job.id for job in jobs]
        for job_id in ids:
            log.warning("job %s was interrupted: %s", job_id, reason)
        return ids


# -- work in a child process --------------------------------------------------------------
# CPU-heavy work (an export zips and encodes every record) run on one of the API's threads
# holds the GIL in long stretches, and every request waits behind it. Such work runs in a
# child Python process instead; the job itself (its row, progress, cancel, log) stays in
# the API's thread, which relays what the child reports. The child speaks JSON lines on
# stdout ({"progress": ...}, {"log": ...}, then {"result": ...} or {"error": ...}) and gets
# its spec on stdin, so a database password never shows in a process list.

CHILD_POLL = 0.25  # seconds between looks at a silent child (a cancel is noticed this fast)


def run_in_child(ctx: JobContext, module: str, spec: dict[str, Any]) -> dict:
    """Run ``python -m MODULE`` (whose main is ``child_main``) with SPEC, relaying its
    progress and log to CTX; its result is returned, its error raised as the same
    LoophubError; a cancel (or the service stopping) kills it."""
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen([sys.executable, "-m", module], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=stderr)
        try:
            child.stdin.write(json.dumps(spec).encode())
            child.stdin.close()
            outcome = _relay(ctx, child)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
            child.stdout.close()
        if outcome is None:
            stderr.seek(0)
            tail = stderr.read()[-4000:].decode(errors="replace")
            ctx.log(tail)
            raise RuntimeError(f"the job's process ended with exit code {child.returncode} "
                               "and no result")
    if "error" in outcome:
        raise _error_from(outcome["error"])
    return outcome["result"]


def _relay(ctx: JobContext, child: subprocess.Popen) -> dict | None:
    """Pass the child's reports on until its result or error (None: it died silently).
    A thread reads the pipe so this one can look for a cancel while the child is quiet."""
    lines: queue.Queue[bytes] = queue.Queue()

    def read() -> None:
        for line in iter(child.stdout.readline, b""):
            lines.put(line)
        lines.put(b"")  # the end

    threading.Thread(target=read, daemon=True, name=f"job-{ctx.job_id[:8]}").start()
    while True:
        try:
            line = lines.get(timeout=CHILD_POLL)
        except queue.Empty:
            ctx.check_cancelled()
            continue
        if not line:
            return None
        message = json.loads(line)
        if "progress" in message:
            ctx.progress(*message["progress"])  # raises JobCancelled on a cancel
        elif "log" in message:
            ctx.log(message["log"])
        else:
            return message


def _error_from(error: dict) -> LoophubError:
    from loophub import errors

    kind = getattr(errors, error.get("type", ""), None)
    if not (isinstance(kind, type) and issubclass(kind, LoophubError)):
        kind = LoophubError
    return kind(error["message"], detail=error.get("detail"))


class ChildContext:
    """What work in a child process gets: the ``progress`` and ``log`` of a JobContext,
    sent to the parent (progress at most every PROGRESS_EVERY / 5 s)."""

    def __init__(self, out: Any) -> None:
        self._out, self._sent_at = out, 0.0

    def _send(self, message: dict) -> None:
        self._out.write(json.dumps(message) + "\n")
        self._out.flush()

    def progress(self, done: int, total: int | None = None, message: str | None = None) -> None:
        if time.monotonic() - self._sent_at >= PROGRESS_EVERY / 5:
            self._sent_at = time.monotonic()
            self._send({"progress": [done, total, message]})

    def log(self, line: str) -> None:
        self._send({"log": line})


def child_main(work: Callable[[dict, ChildContext], dict]) -> None:
    """A child's main: read the spec, run WORK at a lower priority than the API (which
    must keep answering), report its result or error; exit 0 either way."""
    os.nice(5)
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints must not break the protocol
    ctx = ChildContext(out)
    try:
        result = work(json.load(sys.stdin), ctx)
    except LoophubError as exc:
        ctx._send({"error": {"type": type(exc).__name__, "message": exc.message,
                             "detail": exc.detail}})
    else:
        ctx._send({"result": result or {}})
