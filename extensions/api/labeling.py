"""Labeling routes: thin adapters over loophub.labeling.service.LabelingService.

Leases, labeling settings (overlap, lease length), progress, media bytes for the
labeling widgets, agreement, the review queue and model predictions.
"""

from __future__ import annotations

from loophub.errors import InvalidInput

from .datasets import DatasetHandler


def labeling_service(ctx):
    """One LabelingService per API process, built on first use beside ctx.datasets."""
    service = ctx.__dict__.get("labeling_service")
    if service is None:
        from loophub.labeling.service import LabelingService

        service = ctx.__dict__["labeling_service"] = LabelingService(ctx.db, ctx.datasets)
    return service


class LabelingHandler(DatasetHandler):
    @property
    def labeling(self):
        return labeling_service(self.ctx)

    def int_argument(self, name: str, default: int) -> int:
        try:
            return int(self.get_argument(name, str(default)))
        except ValueError as exc:
            raise InvalidInput(f"{name} must be a whole number") from exc


class SettingsHandler(LabelingHandler):
    openapi = {"get": {"summary": "Labeling settings: overlap (labels wanted per item), "
                                  "lease_seconds"},
               "put": {"summary": "Change {overlap?, lease_seconds?} (owner or admin)"}}

    def get(self, name: str) -> None:
        self.write_json(self.labeling.settings(self.actor, name))

    def put(self, name: str) -> None:
        body = self.body_dict()
        if set(body) - {"overlap", "lease_seconds"}:
            raise InvalidInput(f"unknown fields {sorted(set(body) - {'overlap', 'lease_seconds'})}")
        self.write_json(self.labeling.configure(self.actor, name, **body))


class LeasesHandler(LabelingHandler):
    openapi = {"get": {"summary": "Active leases: who holds which item until when"},
               "post": {"summary": "Lease up to {count} items needing your label {count, "
                                   "split?}; items you hold come first (resume)"}}

    def get(self, name: str) -> None:
        self.write_json({"leases": self.labeling.leases(self.actor, name)})

    def post(self, name: str) -> None:
        body = self.body_dict()
        count, split = body.get("count", 1), body.get("split")
        if not isinstance(count, int) or (split is not None and not isinstance(split, str)):
            raise InvalidInput("expected {\"count\": n, \"split\": name or null}")
        self.write_json({"items": self.labeling.acquire(self.actor, name, count, split=split)})


class ReleaseHandler(LabelingHandler):
    openapi = {"post": {"summary": "Give back your leases {record_ids?} (all when omitted)"}}

    def post(self, name: str) -> None:
        ids = self.body_dict().get("record_ids")
        if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str)
                                                                  for i in ids)):
            raise InvalidInput("record_ids must be a list of record ids")
        self.write_json({"released": self.labeling.release(self.actor, name, ids)})


class SkipsHandler(LabelingHandler):
    openapi = {"post": {"summary": "Skip an item {record_id}: not offered to you again"}}

    def post(self, name: str) -> None:
        record_id = self.body_dict().get("record_id")
        if not isinstance(record_id, str):
            raise InvalidInput("expected {\"record_id\": ...}")
        self.write_json(self.labeling.skip(self.actor, name, record_id))


class SkipHandler(LabelingHandler):
    openapi = {"delete": {"summary": "Undo a skip"}}

    def delete(self, name: str, record_id: str) -> None:
        self.labeling.unskip(self.actor, name, record_id)
        self.set_status(204)
        self.finish()


class ProgressHandler(LabelingHandler):
    openapi = {"get": {"summary": "Labeling progress: total, done, mine, per-label and "
                                  "per-split counts"}}

    def get(self, name: str) -> None:
        self.write_json(self.labeling.progress(self.actor, name))


class MediaHandler(LabelingHandler):
    openapi = {"get": {"summary": "A record's media bytes (image) for the labeling widgets"}}

    def get(self, name: str, record_id: str) -> None:
        data, kind = self.labeling.media(self.actor, name, record_id)
        self.set_header("Content-Type", kind)
        self.set_header("Cache-Control", "private, max-age=3600")
        self.finish(data)


class AgreementHandler(LabelingHandler):
    openapi = {"get": {"summary": "Inter-annotator agreement: Cohen's and Fleiss' kappa "
                                  "(classes), IoU-matched F1 (boxes), span F1 (NER), per item"}}

    def get(self, name: str) -> None:
        self.write_json(self.labeling.agreement(self.actor, name))


class ReviewQueueHandler(LabelingHandler):
    openapi = {"get": {"summary": "Items with unreviewed annotations, most disputed first "
                                  "?limit=&annotator="}}

    def get(self, name: str) -> None:
        self.write_json({"items": self.labeling.review_queue(
            self.actor, name, limit=self.int_argument("limit", 50),
            annotator=self.get_argument("annotator", None))})


class PredictionsHandler(LabelingHandler):
    openapi = {"post": {"summary": "Store model predictions as pre-annotations {predictions: "
                                   "[{record_id, model, version?, annotations}]}"}}

    def post(self, name: str) -> None:
        predictions = self.body_dict().get("predictions")
        if not isinstance(predictions, list):
            raise InvalidInput("expected {\"predictions\": [...]}")
        self.write_json(self.labeling.put_predictions(self.actor, name, predictions))


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
