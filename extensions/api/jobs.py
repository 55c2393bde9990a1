"""Job routes and the runner: long operations on worker threads, persisted as they go.

The runner is the jobs' I/O shell: it accepts a job (a row, state queued), runs its work
on one of ``job_workers`` threads (loophub.jobs.JobStore.run records progress, log and
outcome), and the routes read the rows, so what a client sees survives a restart.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from loophub.errors import Conflict, NotFound
from loophub.identity import Actor
from loophub.jobs import STATES, JobStore, Work

from .base import ApiHandler, Op, in_thread

log = logging.getLogger("loophub.api")
JOB_VIEW = {"type": "object", "required": ["id", "kind", "state"], "properties": {
    "id": {"type": "string"}, "kind": {"type": "string"}, "owner": {"type": "string"},
    "target": {"type": "string"},
    "state": {"enum": list(STATES)}, "done": {"type": "integer"}, "total": {"type": "integer"},
    "message": {"type": "string"}, "result": {"type": ["object", "null"]},
    "params": {"type": "object"}, "cause": {"type": "string"}, "has_log": {"type": "boolean"},
    "error": {"type": ["object", "null"]}, "created_at": {"type": "string"},
    "started_at": {"type": ["string", "null"]}, "ended_at": {"type": ["string", "null"]}}}


class JobRunner:
    def __init__(self, store: JobStore, *, workers: int = 2) -> None:
        self.store = store
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="loophub-job")

    def start(self, actor: Actor, kind: str, work: Work, *, target: str = "",
              params: dict[str, Any] | None = None, cause: str = "") -> dict:
        """Accept a job and queue its work; returns its view (state queued)."""
        job = self.store.create(actor, kind, target=target, params=params, cause=cause)
        self.pool.submit(self.store.run, job["id"], work)
        return job

    async def run(self, actor: Actor, kind: str, work: Work, **kwargs: Any) -> dict:
        """Accept a job and wait for its end (its row records it all the same)."""
        job = self.start(actor, kind, work, **kwargs)
        return await in_thread(self.wait, job["id"], actor)

    def wait(self, job_id: str, actor: Actor) -> dict:
        import time

        while True:
            view = self.store.get(actor, job_id)
            if view["state"] not in ("queued", "running"):
                return view
            time.sleep(0.05)

    def shutdown(self) -> None:
        """Stop promptly: running jobs stop at their next progress report (recorded
        interrupted, imports rolled back), queued ones are dropped (interrupted at the
        next start), so the process exits instead of waiting for a long import."""
        self.store.stop_all("the loophub API service stopped while this job ran; nothing "
                            "it did was kept: run it again")
        self.pool.shutdown(wait=True, cancel_futures=True)


class JobsHandler(ApiHandler):
    openapi = {"get": Op(
        "Your jobs, newest first (admins: everyone's, or ?owner=): imports, exports, commits",
        query={"kind": {"type": "string", "maxLength": 32},
               "state": {"enum": list(STATES)}, "owner": {"type": "string", "maxLength": 255},
               "limit": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
        response={"type": "object", "properties": {"jobs": {"type": "array",
                                                            "items": JOB_VIEW}}})}

    def get(self) -> None:
        self.write_json({"jobs": self.ctx.jobs.store.list(
            self.actor, kind=self.query["kind"], state=self.query["state"],
            owner=self.query["owner"], limit=self.query["limit"])})


class JobHandler(ApiHandler):
    openapi = {
        "get": Op("A job: state, progress (done/total, message), result or error",
                  access="own", response=JOB_VIEW),
        "delete": Op("Cancel a job: at once when queued, at its next progress report when "
                     "running (imports then write nothing)", access="own", response=JOB_VIEW,
                     errors={409: "already ended"}),
    }

    def get(self, job_id: str) -> None:
        self.write_json(self.ctx.jobs.store.get(self.actor, job_id))

    async def delete(self, job_id: str) -> None:
        view = self.ctx.jobs.store.get(self.actor, job_id)
        if view["kind"] == "train":  # its ranks run on the scheduler's allocation
            self.write_json(await self.ctx.cancel_training(self.actor, job_id))
            return
        self.write_json(self.ctx.jobs.store.cancel(self.actor, job_id))


class JobLogHandler(ApiHandler):
    openapi = {"get": Op("A job's log (text): all of it once it ended, so far while it runs",
                         access="own", produces="text/plain")}

    async def get(self, job_id: str) -> None:
        text = await in_thread(self.ctx.jobs.store.log_text, self.actor, job_id)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(text)


class JobResultHandler(ApiHandler):
    openapi = {"get": Op("Download the file a job produced (an export), streamed",
                         access="own", produces=("application/x-ndjson", "application/zip",
                                                 "application/octet-stream"),
                         errors={409: "the job has not succeeded or produced no file"})}

    async def get(self, job_id: str) -> None:
        job = self.ctx.jobs.store.get(self.actor, job_id)
        result = job.get("result") or {}
        path = Path(result.get("file") or "")
        if job["state"] != "succeeded" or not result.get("file"):
            raise Conflict(f"job {job_id} has no file to download (state {job['state']})")
        if not path.is_file():
            raise NotFound(f"job {job_id}'s file has expired; run the export again")
        self.set_header("Content-Type", result.get("media_type", "application/octet-stream"))
        self.set_header("Content-Disposition",
                        f'attachment; filename="{result.get("filename", path.name)}"')
        self.set_header("Content-Length", str(path.stat().st_size))
        await self.write_stream(open(path, "rb"))  # noqa: SIM115 - write_stream closes it


J = "jobs/(?P<job_id>[^/]+)"
ROUTES: list[tuple[str, type]] = [
    ("jobs", JobsHandler),
    (J, JobHandler),
    (J + "/log", JobLogHandler),
    (J + "/result", JobResultHandler),
]
