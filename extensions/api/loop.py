"""The feedback loop's routes: callers flag a release's answers, owners collect the
release's production inputs into a dataset for labeling (loophub/loop/)."""

from __future__ import annotations

from .base import ApiHandler, Op, in_thread

FEEDBACK_VIEW = {"type": "object", "properties": {
    "id": {"type": "integer"}, "request_id": {"type": "string"},
    "instance": {"type": "integer"}, "label": {"type": ["string", "null"]},
    "note": {"type": "string"}, "by": {"type": "string"}, "created": {"type": "string"}}}
COLLECTED = {"type": "object", "properties": {
    "collected": {"type": "integer"}, "records": {"type": "array", "items": {"type": "string"}},
    "candidates": {"type": "integer"}, "matched": {"type": "integer"},
    "already_in_dataset": {"type": "integer"}, "not_kept_by_the_log": {"type": "integer"}}}


class FeedbackHandler(ApiHandler):
    openapi = {
        "post": Op("Flag an answer of the release: the request_id its answer gave, the "
                   "instance, the label that is right (whoever may call it may flag it)",
                   access="release:read", status=201, response=FEEDBACK_VIEW,
                   body={"type": "object", "required": ["request_id"],
                         "additionalProperties": False, "properties": {
                             "request_id": {"type": "string", "maxLength": 64},
                             "instance": {"type": "integer", "minimum": 0, "maximum": 255},
                             "label": {"type": "string", "maxLength": 255},
                             "note": {"type": "string", "maxLength": 1000}}},
                   body_example={"request_id": "0123456789abcdef", "instance": 0,
                                 "note": "wrong class"}),
        "get": Op("The flags on the release's answers, newest first (owner and admins)",
                  access="release:manage", query={"limit": {"type": "integer", "minimum": 1,
                                                            "maximum": 10000}},
                  response={"type": "object", "properties": {
                      "feedback": {"type": "array", "items": FEEDBACK_VIEW}}}),
    }

    async def post(self, release: str) -> None:
        body = self.body
        view = await in_thread(self.ctx.releases.add_feedback, self.actor, release,
                               body["request_id"], instance=body.get("instance", 0),
                               label=body.get("label"), note=body.get("note", ""))
        self.set_status(201)
        self.write_json(view)

    async def get(self, release: str) -> None:
        self.write_json({"feedback": await in_thread(
            self.ctx.releases.feedback, self.actor, release,
            limit=self.query["limit"] or 1000)})


COLLECT_BODY = {"type": "object", "required": ["dataset", "rule"],
                "additionalProperties": False, "properties": {
                    "dataset": {"type": "string", "minLength": 1, "maxLength": 255},
                    "rule": {"enum": ["low_confidence", "flagged", "drifted", "random"]},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 10000},
                    "threshold": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    "window_s": {"type": "number", "exclusiveMinimum": 0},
                    "seed": {"type": "integer"}}}


class CollectHandler(ApiHandler):
    openapi = {"post": Op(
        "Copy production inputs of the release, chosen by a rule (low_confidence, flagged, "
        "drifted, random), into a dataset's draft as unlabeled records with their "
        "provenance and the model's answer as a pre-annotation; deduplicated by content "
        "(owner and admins, who may write the dataset)",
        access="release:manage", response=COLLECTED, body=COLLECT_BODY,
        body_example={"dataset": "matrix", "rule": "low_confidence", "limit": 50,
                      "threshold": 0.6})}

    async def post(self, release: str) -> None:
        body = self.body
        options = {k: body[k] for k in ("limit", "threshold", "window_s", "seed") if k in body}
        self.write_json(await in_thread(self.ctx.loop.collect, self.actor, release,
                                        into=body["dataset"], rule=body["rule"], **options))


SCHEDULE_VIEW = {"type": "object", "properties": {
    "id": {"type": "string"}, "dataset": {"type": "string"}, "rule": {"type": "string"},
    "options": {"type": "object"}, "every_s": {"type": "integer"},
    "created_by": {"type": "string"}, "next_run": {"type": "string"},
    "last_run": {"type": ["string", "null"]}, "last_result": {"type": ["object", "null"]}}}


class SchedulesHandler(ApiHandler):
    openapi = {
        "get": Op("The release's collection schedules, each with its last outcome (owner "
                  "and admins)", access="release:manage", response={
                      "type": "object", "properties": {
                          "schedules": {"type": "array", "items": SCHEDULE_VIEW}}}),
        "post": Op("Collect every every_s seconds: the platform runs the collection as you "
                   "(by name: the release and the dataset must stay yours to manage and "
                   "write without your groups); its outcome is kept on the schedule",
                   access="release:manage", status=201, response=SCHEDULE_VIEW,
                   body={**COLLECT_BODY, "required": ["dataset", "rule", "every_s"],
                         "properties": {**{k: v for k, v in COLLECT_BODY["properties"].items()
                                           if k != "window_s"}, "every_s": {
                             "type": "integer", "minimum": 60, "maximum": 30 * 86400}}},
                   body_example={"dataset": "matrix", "rule": "random", "limit": 20,
                                 "every_s": 86400}),
    }

    async def get(self, release: str) -> None:
        self.write_json({"schedules": await in_thread(self.ctx.loop.schedules, self.actor,
                                                      release)})

    async def post(self, release: str) -> None:
        body = dict(self.body)
        options = {k: body[k] for k in ("limit", "threshold", "seed") if k in body}
        self.set_status(201)
        self.write_json(await in_thread(
            self.ctx.loop.schedule, self.actor, release, into=body["dataset"],
            rule=body["rule"], every_s=body["every_s"], **options))


class ScheduleHandler(ApiHandler):
    openapi = {"delete": Op("Stop a collection schedule", access="release:manage",
                            response=SCHEDULE_VIEW)}

    async def delete(self, release: str, schedule_id: str) -> None:
        self.write_json(await in_thread(self.ctx.loop.unschedule, self.actor, release,
                                        schedule_id))


class ReleaseLineageHandler(ApiHandler):
    openapi = {"get": Op(
        "Where the release comes from: the model version it serves (and its canary's) -> "
        "the training job -> the dataset versions -> their records' sources (imports, "
        "labelers, production feedback); what you may not read is named, not shown",
        access="release:read", response={"type": "object", "properties": {
            "release": {"type": "object"}, "version": {"type": "object"},
            "canary": {"type": "object"}}})}

    async def get(self, release: str) -> None:
        self.write_json(await in_thread(self.ctx.lineage.of_release, self.actor, release))


class UsedByHandler(ApiHandler):
    openapi = {"get": Op(
        "The model versions trained or evaluated on a dataset version, and the releases "
        "serving them", access="dataset:read",
        query={"version": {"type": "string", "maxLength": 64, "default": "head"}},
        response={"type": "object", "properties": {
            "models": {"type": "array"}, "releases": {"type": "array"}}})}

    async def get(self, name: str) -> None:
        self.write_json(await in_thread(self.ctx.lineage.used_by, self.actor, name,
                                        self.query["version"]))


R = "releases/(?P<release>[^/]+)"
ROUTES: list[tuple[str, type]] = [
    (R + "/lineage", ReleaseLineageHandler),
    ("datasets/(?P<name>[^/]+)/used-by", UsedByHandler),
    (R + "/feedback", FeedbackHandler),
    (R + "/collect", CollectHandler),
    (R + "/collect/schedules", SchedulesHandler),
    (R + "/collect/schedules/(?P<schedule_id>[^/]+)", ScheduleHandler),
]
