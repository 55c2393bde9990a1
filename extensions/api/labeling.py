"""Labeling routes: thin adapters over loophub.labeling.service.LabelingService.

Leases, labeling settings (overlap, lease length), progress, media bytes for the
labeling widgets, agreement, the review queue and model predictions. Scans (progress,
agreement, review, predictions) run off the event loop.
"""

from __future__ import annotations

from loophub.errors import TooLarge

from .base import Op, in_thread
from .datasets import ANNOTATION, DatasetHandler

RECORD_ID = {"type": "string", "minLength": 1, "maxLength": 1024}
ANY = {"type": "object"}
INTEGER, NUMBER, STRING = {"type": "integer"}, {"type": "number"}, {"type": "string"}
ORDER = {"enum": ["id", "uncertain"]}  # loophub.labeling.service.LEASE_ORDERS
SETTINGS = {"type": "object", "required": ["overlap", "lease_seconds"],
            "properties": {"overlap": INTEGER, "lease_seconds": NUMBER, "order": ORDER}}
COUNTS = {"type": "object", "additionalProperties": INTEGER}


def labeling_service(ctx):
    """The API process's LabelingService (ServiceContext.labeling)."""
    return ctx.labeling


class LabelingHandler(DatasetHandler):
    @property
    def labeling(self):
        return self.ctx.labeling


class SettingsHandler(LabelingHandler):
    openapi = {"get": Op("Labeling settings: overlap (labels wanted per item), lease_seconds, "
                         "order (id, or uncertain: lowest model confidence first)",
                         access="dataset:read", response=SETTINGS),
               "put": Op("Change overlap, lease length and lease order (owner or admin)",
                         access="dataset:manage", response=SETTINGS,
                         body={"type": "object", "additionalProperties": False, "properties": {
                             "overlap": {"type": "integer", "minimum": 1, "maximum": 50},
                             "lease_seconds": {"type": "number", "minimum": 5,
                                               "maximum": 604800},
                             "order": ORDER}},
                         body_example={"overlap": 1})}

    def get(self, name: str) -> None:
        self.write_json(self.labeling.settings(self.actor, name))

    def put(self, name: str) -> None:
        self.write_json(self.labeling.configure(self.actor, name, **self.body))


class LeasesHandler(LabelingHandler):
    openapi = {"get": Op("Active leases: who holds which item until when",
                         access="dataset:read", response={
                             "type": "object", "required": ["leases"], "properties": {
                                 "leases": {"type": "array", "items": {
                                     "type": "object", "properties": {
                                         "record_id": STRING, "holder": STRING,
                                         "slot": {"type": ["integer", "null"]},
                                         "expires_at": NUMBER}}}}}),
               "post": Op("Lease up to count items needing your label; items you hold come "
                          "first (resume), then new ones in order (default: the dataset's "
                          "setting; uncertain: lowest model confidence first)",
                          access="dataset:write", response={
                              "type": "object", "required": ["items"], "properties": {
                                  "items": {"type": "array", "items": {
                                      "type": "object", "required": ["record", "revision"],
                                      "properties": {"record": ANY, "revision": INTEGER,
                                                     "expires_at": NUMBER}}}}},
                          body={"type": "object", "additionalProperties": False, "properties": {
                              "count": {"type": "integer", "minimum": 1, "maximum": 50},
                              "split": {"type": ["string", "null"], "maxLength": 255},
                              "order": {"enum": ["id", "uncertain", None]},
                              "origin": {"enum": ["production", None]}}},
                          body_example={"count": 1})}

    def get(self, name: str) -> None:
        self.write_json({"leases": self.labeling.leases(self.actor, name)})

    async def post(self, name: str) -> None:
        self.write_json({"items": await in_thread(
            self.labeling.acquire, self.actor, name, self.body.get("count", 1),
            split=self.body.get("split"), order=self.body.get("order"),
            origin=self.body.get("origin"))})


class ReleaseHandler(LabelingHandler):
    openapi = {"post": Op("Give back your leases (all when record_ids is omitted)",
                          access="dataset:write", response={
                              "type": "object", "required": ["released"],
                              "properties": {"released": INTEGER}},
                          body={"type": "object", "additionalProperties": False, "properties": {
                              "record_ids": {"type": "array", "items": RECORD_ID,
                                             "maxItems": 1000}}},
                          body_example={})}

    def post(self, name: str) -> None:
        self.write_json({"released": self.labeling.release(self.actor, name,
                                                           self.body.get("record_ids"))})


class SkipsHandler(LabelingHandler):
    openapi = {"post": Op("Skip an item: not offered to you again", access="dataset:write",
                          response={"type": "object", "properties": {
                              "record_id": STRING, "state": {"const": "skipped"}}},
                          body={"type": "object", "required": ["record_id"],
                                "additionalProperties": False,
                                "properties": {"record_id": RECORD_ID}},
                          body_example={"record_id": "r1"})}

    def post(self, name: str) -> None:
        self.write_json(self.labeling.skip(self.actor, name, self.body["record_id"]))


class SkipHandler(LabelingHandler):
    openapi = {"delete": Op("Undo a skip", access="dataset:write", status=204)}

    def delete(self, name: str, record_id: str) -> None:
        self.labeling.unskip(self.actor, name, record_id)
        self.set_status(204)
        self.finish()


class ProgressHandler(LabelingHandler):
    openapi = {"get": Op("Labeling progress: total, done (labeled by overlap people, or "
                         "carrying imported labels), labeled by people, mine, imported, "
                         "per-label and per-split counts", access="dataset:read", response={
                             "type": "object", "properties": {
                                 "total": INTEGER, "done": INTEGER, "labeled": INTEGER,
                                 "mine": INTEGER, "imported": INTEGER, "overlap": INTEGER,
                                 "labels": COUNTS,
                                 "splits": COUNTS}})}

    async def get(self, name: str) -> None:
        self.write_json(await in_thread(self.labeling.progress, self.actor, name))


class MediaHandler(LabelingHandler):
    openapi = {"get": Op("A record's media bytes (image) for the labeling widgets",
                         access="dataset:read", produces=("image/*", "*/*"))}

    async def get(self, name: str, record_id: str) -> None:
        data, kind = await in_thread(self.labeling.media, self.actor, name, record_id)
        self.set_header("Content-Type", kind)
        self.set_header("Cache-Control", "private, max-age=3600")
        self.finish(data)


class AgreementHandler(LabelingHandler):
    openapi = {"get": Op("Inter-annotator agreement: Cohen's and Fleiss' kappa (classes), "
                         "IoU-matched F1 (boxes), span F1 (NER), per item",
                         access="dataset:read", response=ANY)}

    async def get(self, name: str) -> None:
        self.write_json(await in_thread(self.labeling.agreement, self.actor, name))


class ReviewQueueHandler(LabelingHandler):
    openapi = {"get": Op("Items with unreviewed annotations, most disputed first",
                         access="dataset:read", query={
                             "limit": {"type": "integer", "minimum": 1, "maximum": 1000,
                                       "default": 50},
                             "annotator": {"type": "string", "maxLength": 255}},
                         response={"type": "object", "required": ["items"], "properties": {
                             "items": {"type": "array", "items": {
                                 "type": "object", "properties": {
                                     "record": ANY, "revision": INTEGER,
                                     "agreement": {"type": ["number", "null"]},
                                     "pending": {"type": "array", "items": STRING}}}}}})}

    async def get(self, name: str) -> None:
        self.write_json({"items": await in_thread(
            self.labeling.review_queue, self.actor, name, limit=self.query["limit"],
            annotator=self.query["annotator"])})


class PredictionsHandler(LabelingHandler):
    openapi = {"post": Op(
        "Store model predictions as pre-annotations, all or none (at most "
        "LoophubAPI.max_prediction_items per request, 413 past it)", access="dataset:write",
        response={"type": "object", "properties": {"records": INTEGER,
                                                   "annotations": INTEGER}},
        max_body=16 * 1024 * 1024, errors={413: "too many predictions"},
        body={"type": "object", "required": ["predictions"], "additionalProperties": False,
              "properties": {"predictions": {"type": "array", "items": {
                  "type": "object", "required": ["record_id", "model"],
                  "additionalProperties": False, "properties": {
                      "record_id": RECORD_ID,
                      "model": {"type": "string", "minLength": 1, "maxLength": 255},
                      "version": {"type": ["string", "integer", "null"], "maxLength": 255},
                      "annotations": {"type": "array", "maxItems": 1000,
                                      "items": ANNOTATION}}}}}},
        body_example={"predictions": []})}

    async def post(self, name: str) -> None:
        predictions = self.body["predictions"]
        limit = self.ctx.max_prediction_items
        if len(predictions) > limit:
            raise TooLarge(f"{len(predictions)} predictions in one request; send at most "
                           f"{limit} per request", detail={"limit": limit})
        self.write_json(await in_thread(self.labeling.put_predictions, self.actor, name,
                                        predictions))


L = "labeling/(?P<name>[^/]+)"
ROUTES: list[tuple[str, type]] = [
    (L + "/settings", SettingsHandler),
    (L + "/leases", LeasesHandler),
    (L + "/leases/release", ReleaseHandler),
    (L + "/skips", SkipsHandler),
    (L + "/skips/(?P<record_id>[^/]+)", SkipHandler),
    (L + "/progress", ProgressHandler),
    (L + "/media/(?P<record_id>[^/]+)", MediaHandler),
    (L + "/agreement", AgreementHandler),
    (L + "/review", ReviewQueueHandler),
    (L + "/predictions", PredictionsHandler),
]
