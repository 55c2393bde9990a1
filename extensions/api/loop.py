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


class CollectHandler(ApiHandler):
    openapi = {"post": Op(
        "Copy production inputs of the release, chosen by a rule (low_confidence, flagged, "
        "drifted, random), into a dataset's draft as unlabeled records with their "
        "provenance and the model's answer as a pre-annotation; deduplicated by content "
        "(owner and admins, who may write the dataset)",
        access="release:manage", response=COLLECTED,
        body={"type": "object", "required": ["dataset", "rule"],
              "additionalProperties": False, "properties": {
                  "dataset": {"type": "string", "minLength": 1, "maxLength": 255},
                  "rule": {"enum": ["low_confidence", "flagged", "drifted", "random"]},
                  "limit": {"type": "integer", "minimum": 1, "maximum": 10000},
                  "threshold": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                  "window_s": {"type": "number", "exclusiveMinimum": 0},
                  "seed": {"type": "integer"}}},
        body_example={"dataset": "matrix", "rule": "low_confidence", "limit": 50,
                      "threshold": 0.6})}

    async def post(self, release: str) -> None:
        body = self.body
        options = {k: body[k] for k in ("limit", "threshold", "window_s", "seed") if k in body}
        self.write_json(await in_thread(self.ctx.loop.collect, self.actor, release,
                                        into=body["dataset"], rule=body["rule"], **options))


R = "releases/(?P<release>[^/]+)"
ROUTES: list[tuple[str, type]] = [
    (R + "/feedback", FeedbackHandler),
    (R + "/collect", CollectHandler),
]
