"""Training routes, and the handler that turns the scheduler's decisions on ``job``
requests into the runner's actions (loophub/training/runner.py).

A submission is checked whole (spec, recipe and parameters, dataset version and task, the
function's upload, whether the request can ever fit) before anything is written; then the
job is a jobs row plus a scheduler request of kind ``job`` (one unit per worker) in the
same fair queue as notebook servers and kernels, and it waits, starts, is preempted and
ends as the scheduler decides.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from loophub.scheduler.service import Transition, Unschedulable
from loophub.scheduler.spec import RequestSpec
from loophub.training.service import RUNNER
from loophub.training.spec import SPEC_SCHEMA, TrainingSpec

from .base import ApiHandler, Op, in_thread
from .jobs import JOB_VIEW

log = logging.getLogger("loophub.api")
TRAINING_VIEW = {**JOB_VIEW, "properties": {
    **JOB_VIEW["properties"], "spec": {"type": "object"}, "dataset": {"type": "string"},
    "attempt": {"type": "integer"}, "step": {"type": "integer"},
    "stop_requested": {"type": ["string", "null"]},
    "queue": {"type": ["object", "null"]}}}
DIGEST = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
AFTER = {"after": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1,  # an id column
                   "default": 0}}


class JobHandler:
    """What the scheduler's decisions on ``job`` requests do: start an attempt on the
    allocation, checkpoint and requeue on preemption (jobs resume), stop on an end that
    was not the runner's own. A job request that names no training job (an admin's plain
    hold, submitted through POST scheduler/requests) only holds its resources."""

    on_preempt = "requeue"

    def __init__(self, runner) -> None:
        self.runner = runner

    def _training(self, t: Transition) -> bool:
        return self.runner.service.exists(t.spec.job)

    async def started(self, t: Transition) -> None:
        if self._training(t):
            await self.runner.start(t.spec.job, t.allocation)

    async def preempted(self, t: Transition) -> None:
        if self._training(t):
            await self.runner.preempt(t.spec.job, t.reason)

    async def ended(self, t: Transition) -> None:
        if t.by_holder or not self._training(t):
            return
        state = "cancelled" if t.actor in (t.spec.owner, "reconcile") else "failed"
        await self.runner.stop(t.spec.job, f"{t.reason} ({t.actor})", state=state)


class TrainingHandler(ApiHandler):
    @property
    def service(self):
        return self.ctx.training

    def queue_info(self, view: dict) -> dict:
        """The waiting job's place in the fair queue (position, blocking, share, ETA)."""
        if view.get("request_id") and view["state"] in ("queued", "preempted"):
            try:
                request = self.ctx.scheduler.service.get(view["request_id"])
            except Exception:  # a view without its queue line is still a view
                return view
            view["queue"] = {k: request.get(k) for k in (
                "position", "queue_length", "blocking", "estimated_start", "message", "share")}
        return view


class RecipesHandler(TrainingHandler):
    openapi = {"get": Op("The built-in recipes: tasks they train, parameters and defaults",
                         response={"type": "object"})}

    def get(self) -> None:
        from loophub.training.recipes import recipes

        self.write_json({"recipes": [r.describe() for r in recipes().values()
                                     if not r.internal]})


class TrainingJobsHandler(TrainingHandler):
    openapi = {
        "post": Op("Submit a training job: a recipe (or your own function, uploaded) on "
                   "NAME@VERSION, on N workers of a size; 201 queued, 422 when the request "
                   "can never fit (quota, larger than the pool)", status=201, body=SPEC_SCHEMA,
                   response=TRAINING_VIEW, errors={422: "can never fit here"},
                   body_example={"recipe": "image-cnn", "dataset": "matrix@v1"}),
        "get": Op("Your training jobs, newest first (admins: everyone's)",
                  query={"state": {"type": "string", "maxLength": 16},
                         "limit": {"type": "integer", "minimum": 1, "maximum": 500,
                                   "default": 50}},
                  response={"type": "object", "properties": {
                      "jobs": {"type": "array", "items": TRAINING_VIEW}}}),
    }

    async def post(self) -> None:
        spec = TrainingSpec.from_json(self.body)
        accepted = await in_thread(self.service.check, self.actor, spec)
        accepted = await in_thread(self.service.pin_start, self.actor, accepted, self.ctx.models)
        self.write_json(self.queue_info(await submit(self, accepted)))

    def get(self) -> None:
        self.write_json({"jobs": [self.queue_info(v) for v in self.service.list(
            self.actor, state=self.query["state"], limit=self.query["limit"])]})


async def submit(handler: ApiHandler, accepted, *, created=None) -> dict:
    """Queue an accepted job for the handler's caller: refused (422) when it can never fit,
    else a jobs row plus a scheduler request of kind ``job`` (one unit per worker).
    CREATED(job view) runs once the job exists, before it is queued (another room's row
    that names the job). Returns the job's view."""
    spec, actor, ctx = accepted.spec, handler.actor, handler.ctx
    request = RequestSpec(kind="job", owner=actor.name, groups=actor.groups,
                          demand=spec.per_worker.demand(), count=spec.workers,
                          preemptible=spec.preemptible, runtime=spec.max_runtime,
                          gpu_type=spec.per_worker.gpu_type, job="pending",
                          labels={"what": spec.what, "dataset": str(spec.dataset)})
    if reason := ctx.scheduler.service.state.fits_ever(request.to_request("check")):
        raise Unschedulable(f"refused: {reason.split(': ', 1)[-1]}", detail={
            "per_worker": spec.per_worker.to_json(), "workers": spec.workers})
    service = ctx.training
    view = await in_thread(service.create, actor, accepted)
    try:
        if created is not None:
            await in_thread(created, view)
        queued = await ctx.scheduler.submit(replace(request, job=view["id"]), actor=RUNNER)
    except Exception as exc:
        await in_thread(service.fail, view["id"], f"the scheduler refused it: {exc}")
        raise
    await in_thread(service.attach_request, view["id"], queued["id"])
    return await in_thread(service.get, actor, view["id"])


class TrainingJobHandler(TrainingHandler):
    openapi = {
        "get": Op("A training job: state, step, attempt, queue position and reason while it "
                  "waits, result when it ends", access="own", response=TRAINING_VIEW),
        "delete": Op("Cancel: a queued job leaves the queue, a running one stops its ranks "
                     "(nothing is left running)", access="own", response=TRAINING_VIEW,
                     errors={409: "already ended"}),
    }

    def get(self, job_id: str) -> None:
        self.write_json(self.queue_info(self.service.get(self.actor, job_id)))

    async def delete(self, job_id: str) -> None:
        self.write_json(await self.ctx.cancel_training(self.actor, job_id))


class MetricsHandler(TrainingHandler):
    openapi = {
        "get": Op("Metric points after ?after=<id> (incremental, for live curves)",
                  access="own", query={**AFTER, "limit": {"type": "integer", "minimum": 1,
                                                          "maximum": 20000, "default": 5000}},
                  response={"type": "object"}),
        "post": Op("A rank reports metric points (the job's owner; while it runs)",
                   access="own", max_body=4 * 1024 * 1024, response={"type": "object"},
                   body={"type": "object", "required": ["metrics"], "additionalProperties": False,
                         "properties": {"metrics": {"type": "array", "maxItems": 5000, "items": {
                             "type": "object", "required": ["step", "name", "value"],
                             "additionalProperties": False, "properties": {
                                 "step": {"type": "integer", "minimum": 0, "maximum": 2**53},
                                 "epoch": {"type": ["number", "null"]},
                                 "name": {"type": "string", "minLength": 1, "maxLength": 64},
                                 "value": {"type": "number"}}}}}},
                   errors={409: "the job is not running"}, body_example={"metrics": []}),
    }

    def get(self, job_id: str) -> None:
        self.write_json(self.service.metrics(self.actor, job_id, after=self.query["after"],
                                             limit=self.query["limit"]))

    async def post(self, job_id: str) -> None:
        count = await in_thread(self.service.add_metrics, self.actor, job_id,
                                self.body["metrics"])
        self.write_json({"stored": count})


class LogsHandler(TrainingHandler):
    openapi = {
        "get": Op("Log lines of the job's workers and runner after ?after=<id>",
                  access="own", query=dict(AFTER), response={"type": "object"}),
        "post": Op("A rank writes log lines (the job's owner; while it runs)", access="own",
                   max_body=4 * 1024 * 1024, response={"type": "object"},
                   body={"type": "object", "required": ["lines"], "additionalProperties": False,
                         "properties": {"rank": {"type": "integer", "minimum": 0,
                                                 "maximum": 4096},
                                        "lines": {"type": "array", "maxItems": 1000,
                                                  "items": {"type": "string",
                                                            "maxLength": 10_000}}}},
                   errors={409: "the job is not running"}, body_example={"lines": []}),
    }

    def get(self, job_id: str) -> None:
        self.write_json(self.service.logs(self.actor, job_id, after=self.query["after"]))

    async def post(self, job_id: str) -> None:
        count = await in_thread(self.service.add_logs, self.actor, job_id,
                                self.body.get("rank", 0), self.body["lines"])
        self.write_json({"stored": count})


class EventsHandler(TrainingHandler):
    openapi = {"get": Op("Every state the job went through, with when and why",
                         access="own", response={"type": "object"})}

    def get(self, job_id: str) -> None:
        self.service.get(self.actor, job_id)  # a training job of the caller's
        self.write_json({"events": self.ctx.jobs.store.events(self.actor, job_id)})


class CheckpointsHandler(TrainingHandler):
    openapi = {
        "get": Op("The job's checkpoints (the last k and the best), oldest first",
                  access="own", response={"type": "object"}),
        "post": Op("Record a checkpoint the rank uploaded (POST datasets/uploads first)",
                   access="own", response={"type": "object"}, status=201,
                   body={"type": "object", "required": ["blob", "step"],
                         "additionalProperties": False, "properties": {
                             "blob": DIGEST,
                             "step": {"type": "integer", "minimum": 0, "maximum": 2**53},
                             "epoch": {"type": ["number", "null"]},
                             "metric": {"type": ["number", "null"]}}},
                   errors={409: "the job is not running"},
                   body_example={"blob": "0" * 64, "step": 1}),
    }

    def get(self, job_id: str) -> None:
        self.write_json({"checkpoints": self.service.checkpoints(self.actor, job_id)})

    async def post(self, job_id: str) -> None:
        body = self.body
        self.write_json(await in_thread(
            self.service.put_checkpoint, self.actor, job_id, body["blob"], step=body["step"],
            epoch=body.get("epoch"), metric=body.get("metric")))


class ArtifactHandler(TrainingHandler):
    openapi = {"post": Op(
        "Record the job's servable artifact (TorchScript, uploaded first) with its "
        "metadata: task, preprocess, labels", access="own", status=201,
        response={"type": "object"}, max_body=4 * 1024 * 1024,
        body={"type": "object", "required": ["blob", "meta"], "additionalProperties": False,
              "properties": {"blob": DIGEST, "meta": {"type": "object"}}},
        errors={409: "the job is not running"},
        body_example={"blob": "0" * 64, "meta": {"format": "torchscript", "preprocess": {},
                                                  "labels": ["cat"]}})}

    async def post(self, job_id: str) -> None:
        self.write_json(await in_thread(self.service.put_artifact, self.actor, job_id,
                                        self.body["blob"], self.body["meta"]))


class BlobHandler(TrainingHandler):
    openapi = {"get": Op("Download a blob of the job: a checkpoint, the artifact or its "
                         "metadata, the function", access="own",
                         produces="application/octet-stream")}

    async def get(self, job_id: str, digest: str) -> None:
        stream = await in_thread(self.service.blob_of, self.actor, job_id, digest)
        self.set_header("Content-Type", "application/octet-stream")
        await self.write_stream(stream)


T = "training/jobs/(?P<job_id>[^/]+)"
ROUTES: list[tuple[str, type]] = [
    ("training/recipes", RecipesHandler),
    ("training/jobs", TrainingJobsHandler),
    (T, TrainingJobHandler),
    (T + "/metrics", MetricsHandler),
    (T + "/logs", LogsHandler),
    (T + "/events", EventsHandler),
    (T + "/checkpoints", CheckpointsHandler),
    (T + "/artifact", ArtifactHandler),
    (T + "/blobs/(?P<digest>[0-9a-f]{64})", BlobHandler),
]
