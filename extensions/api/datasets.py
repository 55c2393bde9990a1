"""Dataset routes: thin adapters over loophub.datasets.service.DatasetService.

Long operations run as persisted jobs (imports, exports, commits: loophub.jobs) or in a
worker thread (diffs, checkouts), so the service keeps answering; uploads and exports
stream, so no file is ever held whole in memory. Every body and query parameter is
checked against the schema below before any work (base.Op).
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path

from tornado import iostream

from loophub.datasets.export_job import MODULE as EXPORT_MODULE
from loophub.datasets.export_job import export_spec
from loophub.datasets.formats import FORMATS
from loophub.datasets.models import STATES, VISIBILITIES
from loophub.datasets.schemas import inline_schema
from loophub.errors import InvalidInput, TooLarge
from loophub.jobs import JobContext, run_in_child

from .base import DRAIN_LIMIT, ApiHandler, Op, in_thread
from .jobs import JOB_VIEW

NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"}
DIGEST = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
REF = {"type": ["string", "integer"], "maxLength": 255, "minimum": 0,
       "description": "a version number, v<n>, a tag, a version id, 'head' or 'draft'"}
MAX_INT32 = 2**31 - 1  # the database's integer columns (revisions, version numbers)
REVISION = {"type": "integer", "minimum": 0, "maximum": MAX_INT32,
            "description": "the revision you read (or If-Match); 409 when someone wrote since"}
TEXT = {"type": "string", "maxLength": 10_000}
# The dataset room's own JSON Schemas (GET datasets/schemas), self-contained: a body the
# document calls valid passes the rules the room checks (dataset classes aside).
LABEL_SCHEMA = {**inline_schema("label_schema"),
                "description": "task and classes (GET datasets/schemas)"}
RECORD = inline_schema("record")
ANNOTATION = inline_schema("record", "annotation")
STRING, INTEGER, TIME = {"type": "string"}, {"type": "integer"}, {"type": "string"}
DATASET_VIEW = {"type": "object", "required": ["name", "owner", "state"], "properties": {
    "name": STRING, "owner": STRING, "group": {"type": ["string", "null"]},
    "visibility": {"enum": list(VISIBILITIES)}, "description": STRING,
    "label_schema": {"type": "object"}, "state": {"enum": list(STATES)},
    "state_changed_by": STRING, "state_changed_at": TIME, "created": TIME,
    "head_version": {"type": ["string", "null"]}, "versions": INTEGER,
    "draft_records": INTEGER, "uncommitted": {"type": "boolean"}}}
RECORD_ITEM = {"type": "object", "required": ["record", "revision"], "properties": {
    "record": {"type": "object"}, "revision": INTEGER, "updated_by": STRING,
    "updated_at": TIME}}
WRITTEN = {"type": "object", "required": ["id", "revision"],
           "properties": {"id": STRING, "revision": INTEGER}}
ANNOTATION_WRITTEN = {"type": "object", "required": ["revision", "annotation_id"],
                      "properties": {"revision": INTEGER, "annotation_id": STRING}}
VERSION_VIEW = {"type": "object", "required": ["id", "number"], "properties": {
    "id": STRING, "number": INTEGER, "parents": {"type": "array", "items": STRING},
    "author": STRING, "message": STRING, "created": TIME, "records": INTEGER,
    "label_counts": {"type": "object", "additionalProperties": INTEGER},
    "stored_bytes": INTEGER, "tags": {"type": "array", "items": STRING}}}
COMMITTED = {**VERSION_VIEW, "properties": {
    **VERSION_VIEW["properties"], "added": INTEGER, "changed": INTEGER, "removed": INTEGER,
    "job": STRING}}
IDS = {"type": "array", "items": STRING}
FORMAT = {"enum": list(FORMATS)}
ACCEPTED = {"type": "object", "properties": {"job": JOB_VIEW}}


class DatasetHandler(ApiHandler):
    @property
    def datasets(self):
        return self.ctx.datasets

    def revision(self) -> int:
        raw = (self.body or {}).get("revision") if isinstance(self.body, dict) else None
        if raw is None:
            raw = self.query.get("revision") if self.query else None
        if raw is None:
            raw = self.request.headers.get("If-Match", "").strip('"') or None
        try:
            revision = int(raw)
            if not 0 <= revision <= MAX_INT32:  # If-Match is not checked by a schema
                raise ValueError(raw)
            return revision
        except (TypeError, ValueError) as exc:
            self.refused_unless_allowed("write")
            raise InvalidInput("send the record's revision (body 'revision', ?revision= or "
                               "If-Match: a whole number from 0) so concurrent edits are not "
                               "lost", detail={"field": "revision"}) from exc

    def refused_unless_allowed(self, need: str) -> None:
        """Before answering that a request is incomplete: a caller who may not NEED the
        dataset in the path gets that refusal instead (404 when they cannot read it), so
        what they learn does not depend on what they sent."""
        self.datasets.check_access(self.actor, self.path_kwargs["name"], need)


class SchemasHandler(DatasetHandler):
    openapi = {"get": Op("The JSON Schemas (2020-12) of records, annotations and label "
                         "schemas, and the supported formats", response={
                             "type": "object", "required": ["schemas", "formats"],
                             "properties": {"schemas": {"type": "object"},
                                            "formats": {"type": "array", "items": FORMAT}}})}

    def get(self) -> None:
        self.write_json({"schemas": self.datasets.schemas(), "formats": self.datasets.formats()})


class DatasetsHandler(DatasetHandler):
    openapi = {
        "get": Op("Datasets you can read (?state=archived|deleted|...)",
                  query={"state": {"enum": list(STATES)}},
                  response={"type": "object", "properties": {
                      "datasets": {"type": "array", "items": DATASET_VIEW}}}),
        "post": Op("Create a dataset", status=201, response=DATASET_VIEW,
                   body={"type": "object", "required": ["name"], "additionalProperties": False,
                         "properties": {"name": NAME, "label_schema": LABEL_SCHEMA,
                                        "visibility": {"enum": list(VISIBILITIES)},
                                        "group": {"type": "string", "maxLength": 255},
                                        "description": TEXT}},
                   errors={409: "a dataset with that name exists"},
                   body_example={"name": "matrix-new"}),
    }

    def get(self) -> None:
        self.write_json({"datasets": self.datasets.list_datasets(
            self.actor, state=self.query["state"])})

    def post(self) -> None:
        body = dict(self.body)
        self.write_json(self.datasets.create_dataset(self.actor, body.pop("name"), **body))


class OneDatasetHandler(DatasetHandler):
    openapi = {
        "get": Op("A dataset: schema, state, visibility, draft size", access="dataset:read",
                  response=DATASET_VIEW),
        "patch": Op("Change label_schema, visibility, group or description",
                    access="dataset:manage", response=DATASET_VIEW,
                    body={"type": "object", "additionalProperties": False, "properties": {
                        "label_schema": LABEL_SCHEMA,
                        "visibility": {"enum": list(VISIBILITIES)},
                        "group": {"type": ["string", "null"], "maxLength": 255},
                        "description": TEXT}},
                    body_example={"description": "x"}),
    }

    async def get(self, name: str) -> None:
        # counts the draft: a scan that grows with the dataset, so off the loop
        self.write_json(await in_thread(self.datasets.get_dataset, self.actor, name))

    def patch(self, name: str) -> None:
        self.write_json(self.datasets.update_dataset(self.actor, name, **self.body))


class StateHandler(DatasetHandler):
    openapi = {"get": Op("Lifecycle history: who changed the state, when",
                         access="dataset:read", response={
                             "type": "object", "required": ["history"], "properties": {
                                 "history": {"type": "array", "items": {
                                     "type": "object", "properties": {
                                         "from": STRING, "to": STRING, "by": STRING,
                                         "at": TIME}}}}}),
               "put": Op("Move to another lifecycle state", access="dataset:manage",
                         body={"type": "object", "required": ["state"],
                               "additionalProperties": False,
                               "properties": {"state": {"enum": list(STATES)}}},
                         response=DATASET_VIEW, errors={409: "not allowed from this state"},
                         body_example={"state": "active"})}

    def get(self, name: str) -> None:
        self.write_json({"history": self.datasets.state_history(self.actor, name)})

    def put(self, name: str) -> None:
        self.write_json(self.datasets.set_state(self.actor, name, self.body["state"]))


class UploadHandler(DatasetHandler):
    """The body is streamed to a temporary file, never held in memory."""

    openapi = {"post": Op("Upload a file (any format, streamed; raw body); returns its digest "
                          "for an import", raw_body="application/octet-stream", status=201,
                          max_body=20 * 1024**3, response={
                              "type": "object", "required": ["digest", "size"], "properties": {
                                  "digest": DIGEST, "size": {"type": "integer", "minimum": 1},
                                  "by": STRING}},
                          errors={413: "over the size limit"})}

    async def prepare(self) -> None:
        await super().prepare()
        limit = self.ctx.max_upload_bytes
        # the connection reads what a refusal drains; data_received holds the upload limit
        self.request.connection.set_max_body_size(max(limit, DRAIN_LIMIT))
        if self._refusal is not None:
            return
        length = self.request.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > limit:
            self.refuse(TooLarge(f"the upload is {int(length)} bytes; the limit is {limit} "
                                 "bytes", detail={"limit": limit}))
            return
        self._size = 0
        self._spool = tempfile.TemporaryFile()  # noqa: SIM115 (closed in post)

    def data_received(self, chunk: bytes) -> None:
        if self._refusal is not None:  # drained, then refused
            super().data_received(chunk)
            return
        self._size += len(chunk)
        if self._size > self.ctx.max_upload_bytes:
            self._spool.close()
            self._body_size = self._size - len(chunk)
            self._refusal = TooLarge(f"the upload is larger than {self.ctx.max_upload_bytes} "
                                     "bytes", detail={"limit": self.ctx.max_upload_bytes})
            super().data_received(chunk)
            return
        self._spool.write(chunk)

    async def post(self) -> None:
        self.check_refusal()
        if not self._size:
            self._spool.close()
            raise InvalidInput("the upload is empty: send the file's bytes as the body")
        self._spool.seek(0)
        try:
            info = await in_thread(self.datasets.upload, self.actor, self._spool)
        finally:
            self._spool.close()
        self.write_json(info)

    def on_connection_close(self) -> None:
        spool = getattr(self, "_spool", None)
        if spool is not None:
            spool.close()


class ImportsHandler(DatasetHandler):
    openapi = {"post": Op(
        "Import an upload into the draft, all records or none; runs as a job (GET jobs/ID)",
        access="dataset:write", status=202, response=JOB_VIEW,
        body={"type": "object", "required": ["format", "upload"], "additionalProperties": False,
              "properties": {"format": FORMAT, "upload": DIGEST,
                             "filename": {"type": "string", "maxLength": 255,
                                          "description": "the file's name on your side, used "
                                                         "in error messages"}}},
        body_example={"format": "loophub", "upload": "0" * 64})}

    def post(self, name: str) -> None:
        fmt, digest = self.body["format"], self.body["upload"]
        who, datasets = self.actor, self.datasets
        datasets.check_import(who, name, digest)  # write access and the upload, before the job
        source = self.body.get("filename") or "your upload"

        def work(ctx: JobContext) -> dict:
            return asdict(datasets.import_blob(who, name, fmt, digest, progress=ctx.progress,
                                               source_name=source))

        self.write_json(self.ctx.jobs.start(who, "import", work, target=f"dataset:{name}",
                                            params={"format": fmt, "upload": digest,
                                                    "filename": source}))


class RecordsHandler(DatasetHandler):
    openapi = {
        "get": Op("A page of draft records", access="dataset:read", query={
            "label": {"type": "string", "maxLength": 255},
            "split": {"type": "string", "maxLength": 255},
            "annotated": {"type": "boolean"}, "annotator": {"type": "string", "maxLength": 255},
            "origin": {"enum": ["production"],
                       "description": "production: inputs collected from a release"},
            "after": {"type": "string", "maxLength": 2048},
            "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
            "total": {"type": "boolean", "default": False}},
            response={"type": "object", "required": ["records"], "properties": {
                "records": {"type": "array", "items": RECORD_ITEM},
                "next_cursor": {"type": ["string", "null"]},
                "total": {"type": ["integer", "null"]}}}),
        "post": Op("Add a record", access="dataset:write", status=201,
                   body={"type": "object", "required": ["record"], "additionalProperties": False,
                         "properties": {"record": RECORD}},
                   response=WRITTEN, errors={409: "a record with that id exists"},
                   body_example={"record": {"id": "matrix-new", "annotations": []}}),
    }

    async def get(self, name: str) -> None:
        q = self.query
        page = await in_thread(
            self.datasets.list_records, self.actor, name, label=q["label"], split=q["split"],
            annotated=q["annotated"], annotator=q["annotator"], after=q["after"],
            limit=q["limit"], with_total=q["total"], origin=q["origin"])
        # no asdict (it deep-copies every record) and serialized off the loop
        await self.write_json_off_loop({"records": page.records,
                                        "next_cursor": page.next_cursor, "total": page.total})

    def post(self, name: str) -> None:
        record = self.body["record"]
        revision = self.datasets.put_record(self.actor, name, record)
        self.write_json({"id": record.get("id"), "revision": revision})


R_QUERY = {"revision": REVISION}


class RecordHandler(DatasetHandler):
    openapi = {
        "get": Op("One draft record with its revision", access="dataset:read",
                  response=RECORD_ITEM),
        "put": Op("Replace a record", access="dataset:write", response=WRITTEN,
                  body={"type": "object", "required": ["record"], "additionalProperties": False,
                        "properties": {"record": RECORD, "revision": REVISION}},
                  errors={409: "stale revision"},
                  body_example={"record": {"id": "r1", "annotations": []}, "revision": 1}),
        "delete": Op("Delete a record (?revision= or If-Match)", access="dataset:write",
                     query=R_QUERY, status=204, errors={409: "stale revision"}),
    }

    def get(self, name: str, record_id: str) -> None:
        self.write_json(self.datasets.get_record(self.actor, name, record_id))

    def put(self, name: str, record_id: str) -> None:
        record = self.body["record"]
        if record.get("id") != record_id:
            self.refused_unless_allowed("write")
            raise InvalidInput("body.record.id: must equal the record id in the path",
                               detail={"field": "body.record.id"})
        revision = self.datasets.put_record(self.actor, name, record, self.revision())
        self.write_json({"id": record_id, "revision": revision})

    def delete(self, name: str, record_id: str) -> None:
        self.datasets.delete_record(self.actor, name, record_id, self.revision())
        self.set_status(204)
        self.finish()


class NextHandler(DatasetHandler):
    openapi = {"get": Op("The next unlabeled record", access="dataset:read",
                         query={"after": {"type": "string", "maxLength": 2048},
                                "split": {"type": "string", "maxLength": 255}},
                         response={"type": "object", "required": ["item"], "properties": {
                             "item": {"anyOf": [RECORD_ITEM, {"type": "null"}]}}})}

    def get(self, name: str) -> None:
        self.write_json({"item": self.datasets.next_unlabeled(
            self.actor, name, after=self.query["after"], split=self.query["split"])})


ANNOTATION_BODY = {"type": "object", "required": ["annotation"], "additionalProperties": False,
                   "properties": {"annotation": ANNOTATION, "revision": REVISION}}


class AnnotationsHandler(DatasetHandler):
    openapi = {"post": Op("Add an annotation", access="dataset:write", status=201,
                          body=ANNOTATION_BODY, response=ANNOTATION_WRITTEN,
                          errors={409: "stale revision"},
                          body_example={"annotation": {"type": "image_class", "label": "x"},
                                        "revision": 1})}

    def post(self, name: str, record_id: str) -> None:
        self.write_json(self.datasets.add_annotation(self.actor, name, record_id,
                                                     self.body["annotation"], self.revision()))


class AnnotationHandler(DatasetHandler):
    openapi = {"put": Op("Replace an annotation", access="dataset:write", body=ANNOTATION_BODY,
                         response=ANNOTATION_WRITTEN, errors={409: "stale revision"},
                         body_example={"annotation": {"type": "image_class", "label": "x"},
                                       "revision": 1}),
               "delete": Op("Delete an annotation (?revision= or If-Match)",
                            access="dataset:write", query=R_QUERY, response=ANNOTATION_WRITTEN,
                            errors={409: "stale revision"})}

    def put(self, name: str, record_id: str, annotation_id: str) -> None:
        self.write_json(self.datasets.update_annotation(
            self.actor, name, record_id, annotation_id, self.body["annotation"],
            self.revision()))

    def delete(self, name: str, record_id: str, annotation_id: str) -> None:
        self.write_json(self.datasets.delete_annotation(
            self.actor, name, record_id, annotation_id, self.revision()))


class ReviewHandler(DatasetHandler):
    openapi = {"post": Op("Review an annotation", access="dataset:write",
                          body={"type": "object", "required": ["state"],
                                "additionalProperties": False, "properties": {
                                    "state": {"enum": ["pending", "accepted", "rejected"]},
                                    "revision": REVISION, "comment": TEXT}},
                          response=ANNOTATION_WRITTEN, errors={409: "stale revision"},
                          body_example={"state": "accepted", "revision": 1})}

    def post(self, name: str, record_id: str, annotation_id: str) -> None:
        body = self.body
        self.write_json(self.datasets.review_annotation(
            self.actor, name, record_id, annotation_id, body["state"], self.revision(),
            body.get("comment", "")))


class SplitsHandler(DatasetHandler):
    openapi = {"post": Op("Assign train/val/test splits by record hash, stratified",
                          access="dataset:write",
                          body={"type": "object", "additionalProperties": False, "properties": {
                              "ratios": {"type": "object", "maxProperties": 16,
                                         "additionalProperties": {"type": "number",
                                                                  "minimum": 0, "maximum": 1}},
                              "seed": {"type": "string", "maxLength": 64},
                              "stratify": {"type": "boolean"}}},
                          response={"type": "object", "required": ["splits"], "properties": {
                              "splits": {"type": "object", "additionalProperties": INTEGER}}},
                          body_example={})}

    async def post(self, name: str) -> None:
        self.write_json({"splits": await in_thread(self.datasets.assign_splits, self.actor,
                                                   name, **self.body)})


class CommitsHandler(DatasetHandler):
    openapi = {
        "post": Op("Commit the draft as a new immutable version; runs as a job and answers "
                   "when it ends (201, with the job's id) or at once with ?wait=false (202)",
                   access="dataset:write", status=201,
                   query={"wait": {"type": "boolean", "default": True}},
                   body={"type": "object", "required": ["message"],
                         "additionalProperties": False,
                         "properties": {"message": {**TEXT, "minLength": 1}}},
                   response=COMMITTED,
                   errors={202: "accepted (wait=false): poll the job",
                           409: "someone else committed this dataset at the same time"},
                   body_example={"message": "matrix"}),
        "get": Op("The version log", access="dataset:read",
                  query={"limit": {"type": "integer", "minimum": 1, "maximum": 1000,
                                   "default": 50}},
                  response={"type": "object", "required": ["versions"], "properties": {
                      "versions": {"type": "array", "items": VERSION_VIEW}}}),
    }

    async def post(self, name: str) -> None:
        message = self.body["message"]
        if not message.strip():
            raise InvalidInput("body.message: a commit needs a message",
                               detail={"field": "body.message"})
        who, datasets = self.actor, self.datasets
        datasets.check_access(who, name, "write")

        def work(ctx: JobContext) -> dict:
            return datasets.commit(who, name, message, ctx.progress)

        options = {"target": f"dataset:{name}", "params": {"message": message}}
        if not self.query["wait"]:
            self.write_json(self.ctx.jobs.start(who, "commit", work, **options), 202)
            return
        job = await self.ctx.jobs.run(who, "commit", work, **options)
        self.finish_job(job)

    def finish_job(self, job: dict) -> None:
        if job["state"] == "succeeded":
            self.write_json({**job["result"], "job": job["id"]}, 201)
            return
        error = job.get("error") or {"error": job["message"], "detail": None}
        status = 409 if job["state"] == "cancelled" else (error.get("status") or 400)
        self.write_json({**error, "job": job["id"]}, status)

    def get(self, name: str) -> None:
        self.write_json({"versions": self.datasets.log(self.actor, name,
                                                       limit=self.query["limit"])})


class DiffHandler(DatasetHandler):
    openapi = {"get": Op("Diff two versions (target=draft: the uncommitted changes)",
                         access="dataset:read",
                         required_query=("base",),
                         query={"base": {"type": "string", "minLength": 1, "maxLength": 255},
                                "target": {"type": "string", "minLength": 1, "maxLength": 255,
                                           "default": "head"}},
                         response={"type": "object", "properties": {
                             "base": STRING, "target": STRING, "added": INTEGER,
                             "removed": INTEGER, "changed": INTEGER,
                             "label_change": {"type": "object",
                                              "additionalProperties": INTEGER},
                             "base_number": INTEGER,
                             "target_number": {"type": ["integer", "null"]},
                             "added_ids": IDS, "removed_ids": IDS, "changed_ids": IDS}})}

    async def get(self, name: str) -> None:
        if not self.query["base"]:
            self.refused_unless_allowed("read")
            raise InvalidInput("query parameter base is required (a version number, v<n>, a "
                               "tag or 'head')", detail={"field": "base"})
        self.write_json(await in_thread(self.datasets.diff, self.actor, name,
                                        self.query["base"], self.query["target"]))


class TagsHandler(DatasetHandler):
    openapi = {"post": Op("Tag a version", access="dataset:write", status=201,
                          body={"type": "object", "required": ["tag"],
                                "additionalProperties": False,
                                "properties": {"tag": NAME, "version": REF}},
                          response={"type": "object", "required": ["tag", "version"],
                                    "properties": {"tag": STRING, "version": STRING,
                                                   "number": INTEGER}},
                          errors={409: "the tag exists"},
                          body_example={"tag": "matrix", "version": "head"})}

    def post(self, name: str) -> None:
        self.write_json(self.datasets.tag(self.actor, name, self.body["tag"],
                                          str(self.body.get("version", "head"))))


class TagHandler(DatasetHandler):
    openapi = {"delete": Op("Remove a tag", access="dataset:write", status=204)}

    def delete(self, name: str, tag: str) -> None:
        self.datasets.delete_tag(self.actor, name, tag)
        self.set_status(204)
        self.finish()


class CheckoutHandler(DatasetHandler):
    openapi = {"post": Op("Make the draft equal to a version; with revert=true, also commit "
                          "that as a new version", access="dataset:write",
                          body={"type": "object", "required": ["version"],
                                "additionalProperties": False, "properties": {
                                    "version": REF, "revert": {"type": "boolean"},
                                    "message": {"type": ["string", "null"], "maxLength": 10_000}}},
                          response={"type": "object", "properties": {
                              **COMMITTED["properties"], "records": INTEGER}},
                          body_example={"version": "head"})}

    async def post(self, name: str) -> None:
        body = self.body
        version = str(body["version"])
        if body.get("revert"):
            result = await in_thread(self.datasets.revert, self.actor, name, version,
                                     body.get("message"))
        else:
            result = await in_thread(self.datasets.checkout, self.actor, name, version)
        self.write_json(result)


DENSE_IDS = {"type": "boolean", "default": False,
             "description": "yolo only: class indices 0..n-1 instead of the class ids "
                            "(e.g. COCO's category ids), which data.yaml keeps in "
                            "category_ids"}
EXPORT_QUERY = {"format": {**FORMAT, "default": "loophub"},
                "version": {"type": "string", "minLength": 1, "maxLength": 255,
                            "default": "head"},
                "dense_ids": DENSE_IDS}


class ExportHandler(DatasetHandler):
    openapi = {"get": Op("Export a version, streamed (JSONL for loophub, a zip otherwise)",
                         access="dataset:read", query=EXPORT_QUERY,
                         produces=("application/x-ndjson", "application/zip"))}

    async def get(self, name: str) -> None:
        fmt, version = self.query["format"], self.query["version"]
        chunks = await in_thread(self.datasets.export, self.actor, name, fmt, version=version,
                                 dense_ids=self.query["dense_ids"])
        first = await in_thread(next, chunks, None)  # permission/version errors raise here
        self.set_header("Content-Type", _media_type(fmt))
        self.set_header("Content-Disposition",
                        f'attachment; filename="{_export_name(name, version, fmt)}"')
        chunk = first
        try:
            while chunk is not None:
                self.write(chunk)
                await self.flush()
                chunk = await in_thread(next, chunks, None)
        except iostream.StreamClosedError:
            chunks.close()
            return
        self.finish()


class ExportsHandler(DatasetHandler):
    openapi = {"post": Op("Export a version as a job (progress in GET jobs/ID; the file at "
                          "GET jobs/ID/result, kept a day)", access="dataset:read", status=202,
                          body={"type": "object", "additionalProperties": False,
                                "properties": {"format": FORMAT, "version": REF,
                                               "dense_ids": DENSE_IDS}},
                          response=JOB_VIEW, body_example={"format": "loophub"})}

    def post(self, name: str) -> None:
        fmt = self.body.get("format", "loophub")
        version = str(self.body.get("version", "head"))
        dense_ids = bool(self.body.get("dense_ids", False))
        who, datasets, folder = self.actor, self.datasets, self.ctx.job_files
        datasets.check_access(who, name, "read")
        if dense_ids and fmt != "yolo":
            raise InvalidInput(f"dense ids apply to the yolo format, not {fmt}")
        filename = _export_name(name, version, fmt)

        def work(ctx: JobContext) -> dict:  # in a child process: the API keeps answering
            target = Path(folder) / ctx.job_id / filename
            target.parent.mkdir(parents=True, exist_ok=True)
            spec = export_spec(datasets, who, name, fmt, version=version, dense_ids=dense_ids,
                               target=target)
            size = run_in_child(ctx, EXPORT_MODULE, spec)["size"]
            return {"file": str(target), "filename": filename, "size": size,
                    "media_type": _media_type(fmt)}

        self.write_json(self.ctx.jobs.start(who, "export", work, target=f"dataset:{name}",
                                            params={"format": fmt, "version": version}))


def _media_type(fmt: str) -> str:
    return "application/x-ndjson" if fmt == "loophub" else "application/zip"


def _export_name(name: str, version: str, fmt: str) -> str:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{name}-{version}-{fmt}")
    return f"{safe}.{'jsonl' if fmt == 'loophub' else 'zip'}"


class LineageHandler(DatasetHandler):
    openapi = {"get": Op("Models trained on a version", access="dataset:read",
                         query={"version": {"type": "string", "maxLength": 255,
                                            "default": "head"}},
                         response={"type": "object", "required": ["models"], "properties": {
                             "models": {"type": "array", "items": {
                                 "type": "object", "properties": {
                                     "model": STRING, "model_version": STRING,
                                     "relation": STRING, "by": STRING}}}}}),
               "post": Op("Record that a model version was trained on a version (writers "
                          "only: the owner sees it)", access="dataset:write", status=201,
                          body={"type": "object", "required": ["version", "model_name",
                                                               "model_version"],
                                "additionalProperties": False, "properties": {
                                    "version": REF,
                                    "model_name": {"type": "string", "minLength": 1,
                                                   "maxLength": 255},
                                    "model_version": {"type": ["string", "integer"],
                                                      "maxLength": 255, "minimum": 0},
                                    "relation": {"enum": ["trained_on", "evaluated_on"]}}},
                          response={"type": "object", "properties": {
                              "dataset": STRING, "version": STRING, "number": INTEGER,
                              "model": STRING, "model_version": STRING, "relation": STRING}},
                          body_example={"version": "head", "model_name": "m",
                                        "model_version": "1"})}

    def get(self, name: str) -> None:
        self.write_json({"models": self.datasets.models_trained_on(
            self.actor, name, self.query["version"])})

    def post(self, name: str) -> None:
        body = self.body
        self.write_json(self.datasets.record_lineage(
            self.actor, name, str(body["version"]), body["model_name"],
            str(body["model_version"]), body.get("relation", "trained_on")))


D = "datasets/(?P<name>[^/]+)"
R = D + "/records/(?P<record_id>[^/]+)"
ROUTES: list[tuple[str, type]] = [
    ("datasets/schemas", SchemasHandler),
    ("datasets/uploads", UploadHandler),
    ("datasets", DatasetsHandler),
    (D, OneDatasetHandler),
    (D + "/state", StateHandler),
    (D + "/imports", ImportsHandler),
    (D + "/records", RecordsHandler),
    (D + "/next", NextHandler),
    (R, RecordHandler),
    (R + "/annotations", AnnotationsHandler),
    (R + "/annotations/(?P<annotation_id>[^/]+)", AnnotationHandler),
    (R + "/annotations/(?P<annotation_id>[^/]+)/review", ReviewHandler),
    (D + "/splits", SplitsHandler),
    (D + "/commits", CommitsHandler),
    (D + "/diff", DiffHandler),
    (D + "/tags", TagsHandler),
    (D + "/tags/(?P<tag>[^/]+)", TagHandler),
    (D + "/checkout", CheckoutHandler),
    (D + "/export", ExportHandler),
    (D + "/exports", ExportsHandler),
    (D + "/lineage", LineageHandler),
]

