"""Dataset routes: thin adapters over loophub.datasets.service.DatasetService.

Long operations (import, commit, export) run in a worker thread so the service keeps
answering; an import is a job whose progress the client polls; uploads and exports
stream, so no file is ever held whole in memory.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
import uuid
from dataclasses import asdict
from functools import partial

from tornado import web

from loophub.errors import InvalidInput, LoophubError, NotFound, TooLarge

from .base import ApiHandler

MAX_UPLOAD = int(os.environ.get("LOOPHUB_MAX_UPLOAD_BYTES", str(20 * 1024**3)))


def _in_thread(func, *args, **kwargs):
    return asyncio.get_running_loop().run_in_executor(None, partial(func, *args, **kwargs))


class DatasetHandler(ApiHandler):
    @property
    def datasets(self):
        return self.ctx.datasets

    def body_dict(self) -> dict:
        body = self.json_body()
        if not isinstance(body, dict):
            raise InvalidInput("expected a JSON object")
        return body

    def revision(self, body: dict | None = None) -> int:
        raw = (body or {}).get("revision", self.request.headers.get("If-Match"))
        try:
            return int(str(raw).strip('"'))
        except (TypeError, ValueError) as exc:
            raise InvalidInput("send the record's revision (body 'revision' or If-Match) so "
                               "concurrent edits are not lost") from exc


def _flag(value: str | None) -> bool | None:
    if value in (None, ""):
        return None
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise InvalidInput(f"expected true or false, got {value!r}")


class SchemasHandler(DatasetHandler):
    openapi = {"get": {"summary": "The JSON Schemas (2020-12) of records, annotations and "
                                  "label schemas, and the supported formats"}}

    def get(self) -> None:
        self.write_json({"schemas": self.datasets.schemas(), "formats": self.datasets.formats()})


class DatasetsHandler(DatasetHandler):
    openapi = {
        "get": {"summary": "Datasets you can read (?state=archived|deleted|...)"},
        "post": {"summary": "Create a dataset {name, label_schema?, visibility: "
                            "private|group|public, group?, description?}",
                 "responses": {"201": {"description": "created"},
                               "409": {"description": "exists"}}},
    }

    def get(self) -> None:
        self.write_json({"datasets": self.datasets.list_datasets(
            self.actor, state=self.get_argument("state", None))})

    def post(self) -> None:
        body = self.body_dict()
        allowed = {"name", "label_schema", "visibility", "group", "description"}
        if set(body) - allowed:
            raise InvalidInput(f"unknown fields {sorted(set(body) - allowed)}")
        if not isinstance(body.get("name"), str):
            raise InvalidInput("'name' (string) is required")
        info = self.datasets.create_dataset(self.actor, body.pop("name"), **body)
        self.write_json(info, 201)


class OneDatasetHandler(DatasetHandler):
    openapi = {
        "get": {"summary": "A dataset: schema, state, visibility, draft size"},
        "patch": {"summary": "Change label_schema, visibility, group or description"},
    }

    def get(self, name: str) -> None:
        self.write_json(self.datasets.get_dataset(self.actor, name))

    def patch(self, name: str) -> None:
        body = self.body_dict()
        allowed = {"label_schema", "visibility", "group", "description"}
        if set(body) - allowed:
            raise InvalidInput(f"unknown fields {sorted(set(body) - allowed)}")
        self.write_json(self.datasets.update_dataset(self.actor, name, **body))


class StateHandler(DatasetHandler):
    openapi = {"get": {"summary": "Lifecycle history: who changed the state, when"},
               "put": {"summary": "Move to state {state: active|published|archived|deleted}"}}

    def get(self, name: str) -> None:
        self.write_json({"history": self.datasets.state_history(self.actor, name)})

    def put(self, name: str) -> None:
        state = self.body_dict().get("state")
        if not isinstance(state, str):
            raise InvalidInput("'state' is required")
        self.write_json(self.datasets.set_state(self.actor, name, state))


@web.stream_request_body
class UploadHandler(DatasetHandler):
    """The body is streamed to a temporary file, never held in memory."""

    openapi = {"post": {"summary": "Upload a file (any format, streamed; raw body); returns its "
                                   "digest for an import", "responses": {
                                       "201": {"description": "stored"},
                                       "413": {"description": "over the size limit"}}}}

    def prepare(self) -> None:
        super().prepare()
        self.request.connection.set_max_body_size(MAX_UPLOAD)
        self._size = 0
        self._spool = tempfile.TemporaryFile()  # noqa: SIM115 (closed in post)

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > MAX_UPLOAD:
            raise TooLarge(f"upload is larger than {MAX_UPLOAD} bytes")
        self._spool.write(chunk)

    async def post(self) -> None:
        self._spool.seek(0)
        try:
            info = await _in_thread(self.datasets.upload, self.actor, self._spool)
        finally:
            self._spool.close()
        self.write_json(info, 201)


class ImportJobs:
    """Imports running in worker threads, with progress; kept for an hour after they end."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict] = {}
        self._lock = threading.Lock()

    def start(self, loop, run) -> dict:
        job = {"id": uuid.uuid4().hex, "state": "running", "done": 0, "total": 0,
               "report": None, "error": None, "started": time.time()}
        with self._lock:
            self._forget_old()
            self.jobs[job["id"]] = job

        def progress(done: int, total: int) -> None:
            job["done"], job["total"] = done, total

        def work() -> None:
            try:
                job["report"] = asdict(run(progress))
                job["state"] = "done"
            except LoophubError as exc:
                job["state"], job["error"] = "failed", exc.to_dict()
            except Exception as exc:  # report, don't crash the worker
                job["state"] = "failed"
                job["error"] = {"error": f"import failed: {exc}", "detail": None}

        loop.run_in_executor(None, work)
        return job

    def _forget_old(self) -> None:
        cutoff = time.time() - 3600
        for key in [k for k, j in self.jobs.items()
                    if j["state"] != "running" and j["started"] < cutoff]:
            del self.jobs[key]


class ImportsHandler(DatasetHandler):
    openapi = {"post": {"summary": "Import an upload {format, upload: digest} into the draft: "
                                   "all records or none; returns a job to poll",
                        "responses": {"202": {"description": "started"}}}}

    def post(self, name: str) -> None:
        body = self.body_dict()
        fmt, digest = body.get("format"), body.get("upload")
        if not isinstance(fmt, str) or not isinstance(digest, str):
            raise InvalidInput("expected {\"format\": ..., \"upload\": <digest from uploads>}")
        if fmt not in self.datasets.formats():
            raise InvalidInput(f"unknown format {fmt!r}; one of {self.datasets.formats()}")
        self.datasets.get_dataset(self.actor, name)  # permission and existence, before the job
        who = self.actor
        job = self.ctx.import_jobs.start(asyncio.get_running_loop(), lambda progress: (
            self.datasets.import_blob(who, name, fmt, digest, progress=progress)))
        job["dataset"], job["owner"] = name, who.name
        self.write_json(job, 202)


class ImportJobHandler(DatasetHandler):
    openapi = {"get": {"summary": "An import job: state, done/total, report or error"}}

    def get(self, job_id: str) -> None:
        job = self.ctx.import_jobs.jobs.get(job_id)
        if job is None or (job.get("owner") != self.actor.name and not self.actor.admin):
            raise NotFound(f"no import job {job_id!r}")
        self.write_json(job)


class RecordsHandler(DatasetHandler):
    openapi = {
        "get": {"summary": "A page of draft records ?label=&split=&annotated=&annotator=&"
                           "after=<cursor>&limit=&total=1"},
        "post": {"summary": "Add a record {record}"},
    }

    def get(self, name: str) -> None:
        try:
            limit = int(self.get_argument("limit", "100"))
        except ValueError as exc:
            raise InvalidInput("limit must be a whole number") from exc
        page = self.datasets.list_records(
            self.actor, name, label=self.get_argument("label", None),
            split=self.get_argument("split", None),
            annotated=_flag(self.get_argument("annotated", None)),
            annotator=self.get_argument("annotator", None),
            after=self.get_argument("after", None), limit=limit,
            with_total=bool(_flag(self.get_argument("total", None))))
        self.write_json(asdict(page))

    def post(self, name: str) -> None:
        record = self.body_dict().get("record")
        if not isinstance(record, dict):
            raise InvalidInput("expected {\"record\": {...}}")
        revision = self.datasets.put_record(self.actor, name, record)
        self.write_json({"id": record.get("id"), "revision": revision}, 201)


class RecordHandler(DatasetHandler):
    openapi = {
        "get": {"summary": "One draft record with its revision"},
        "put": {"summary": "Replace a record {record, revision} (409 when stale)"},
        "delete": {"summary": "Delete a record (?revision= or If-Match)"},
    }

    def get(self, name: str, record_id: str) -> None:
        self.write_json(self.datasets.get_record(self.actor, name, record_id))

    def put(self, name: str, record_id: str) -> None:
        body = self.body_dict()
        record = body.get("record")
        if not isinstance(record, dict) or record.get("id") != record_id:
            raise InvalidInput("expected {\"record\": {...same id...}, \"revision\": n}")
        revision = self.datasets.put_record(self.actor, name, record, self.revision(body))
        self.write_json({"id": record_id, "revision": revision})

    def delete(self, name: str, record_id: str) -> None:
        raw = self.get_argument("revision", None)
        self.datasets.delete_record(self.actor, name, record_id,
                                    self.revision({"revision": raw} if raw else None))
        self.set_status(204)
        self.finish()


class NextHandler(DatasetHandler):
    openapi = {"get": {"summary": "The next unlabeled record (?after=&split=)"}}

    def get(self, name: str) -> None:
        item = self.datasets.next_unlabeled(self.actor, name,
                                            after=self.get_argument("after", None),
                                            split=self.get_argument("split", None))
        self.write_json({"item": item})


class AnnotationsHandler(DatasetHandler):
    openapi = {"post": {"summary": "Add an annotation {annotation, revision}"}}

    def post(self, name: str, record_id: str) -> None:
        body = self.body_dict()
        annotation = body.get("annotation")
        if not isinstance(annotation, dict):
            raise InvalidInput("expected {\"annotation\": {...}, \"revision\": n}")
        self.write_json(self.datasets.add_annotation(self.actor, name, record_id, annotation,
                                                     self.revision(body)), 201)


class AnnotationHandler(DatasetHandler):
    openapi = {"put": {"summary": "Replace an annotation {annotation, revision}"},
               "delete": {"summary": "Delete an annotation (?revision= or If-Match)"}}

    def put(self, name: str, record_id: str, annotation_id: str) -> None:
        body = self.body_dict()
        annotation = body.get("annotation")
        if not isinstance(annotation, dict):
            raise InvalidInput("expected {\"annotation\": {...}, \"revision\": n}")
        self.write_json(self.datasets.update_annotation(
            self.actor, name, record_id, annotation_id, annotation, self.revision(body)))

    def delete(self, name: str, record_id: str, annotation_id: str) -> None:
        raw = self.get_argument("revision", None)
        self.write_json(self.datasets.delete_annotation(
            self.actor, name, record_id, annotation_id,
            self.revision({"revision": raw} if raw else None)))


class ReviewHandler(DatasetHandler):
    openapi = {"post": {"summary": "Review an annotation {state: accepted|rejected, revision, "
                                   "comment?}"}}

    def post(self, name: str, record_id: str, annotation_id: str) -> None:
        body = self.body_dict()
        self.write_json(self.datasets.review_annotation(
            self.actor, name, record_id, annotation_id, body.get("state"), self.revision(body),
            body.get("comment", "")))


class SplitsHandler(DatasetHandler):
    openapi = {"post": {"summary": "Assign train/val/test splits by record hash, stratified "
                                   "{ratios?, seed?, stratify?}"}}

    def post(self, name: str) -> None:
        body = self.body_dict() if self.request.body else {}
        self.write_json({"splits": self.datasets.assign_splits(self.actor, name, **body)})


class CommitsHandler(DatasetHandler):
    openapi = {"post": {"summary": "Commit the draft as a new immutable version {message}",
                        "responses": {"201": {"description": "committed"}}},
               "get": {"summary": "The version log (?limit=)"}}

    async def post(self, name: str) -> None:
        message = self.body_dict().get("message")
        if not isinstance(message, str) or not message.strip():
            raise InvalidInput("a commit needs a 'message'")
        self.write_json(await _in_thread(self.datasets.commit, self.actor, name, message), 201)

    def get(self, name: str) -> None:
        self.write_json({"versions": self.datasets.log(
            self.actor, name, limit=int(self.get_argument("limit", "50")))})


class DiffHandler(DatasetHandler):
    openapi = {"get": {"summary": "Diff two versions ?base=&target=head (numbers, v<n>, tags, "
                                  "ids; target=draft: the uncommitted changes)"}}

    async def get(self, name: str) -> None:
        base = self.get_argument("base", None)
        if not base:
            raise InvalidInput("'base' is required (a version number, v<n>, a tag or 'head')")
        self.write_json(await _in_thread(self.datasets.diff, self.actor, name, base,
                                         self.get_argument("target", "head")))


class TagsHandler(DatasetHandler):
    openapi = {"post": {"summary": "Tag a version {tag, version=head}"}}

    def post(self, name: str) -> None:
        body = self.body_dict()
        if not isinstance(body.get("tag"), str):
            raise InvalidInput("'tag' is required")
        self.write_json(self.datasets.tag(self.actor, name, body["tag"],
                                          body.get("version", "head")), 201)


class TagHandler(DatasetHandler):
    openapi = {"delete": {"summary": "Remove a tag"}}

    def delete(self, name: str, tag: str) -> None:
        self.datasets.delete_tag(self.actor, name, tag)
        self.set_status(204)
        self.finish()


class CheckoutHandler(DatasetHandler):
    openapi = {"post": {"summary": "Make the draft equal to a version {version}; with "
                                   "revert=true, also commit that as a new version"}}

    async def post(self, name: str) -> None:
        body = self.body_dict()
        version = body.get("version")
        if version is None:
            raise InvalidInput("'version' is required")
        if body.get("revert"):
            result = await _in_thread(self.datasets.revert, self.actor, name, str(version),
                                      body.get("message"))
        else:
            result = await _in_thread(self.datasets.checkout, self.actor, name, str(version))
        self.write_json(result)


class ExportHandler(DatasetHandler):
    openapi = {"get": {"summary": "Export a version ?format=&version=head, streamed (JSONL for "
                                  "loophub, a zip otherwise)"}}

    async def get(self, name: str) -> None:
        fmt = self.get_argument("format", "loophub")
        version = self.get_argument("version", "head")
        chunks = await _in_thread(self.datasets.export, self.actor, name, fmt, version=version)
        first = await _in_thread(next, chunks, None)  # permission/version errors raise here
        kind = "application/x-ndjson" if fmt == "loophub" else "application/zip"
        ext = "jsonl" if fmt == "loophub" else "zip"
        self.set_header("Content-Type", kind)
        self.set_header("Content-Disposition",
                        f'attachment; filename="{name}-{version}-{fmt}.{ext}"')
        chunk = first
        while chunk is not None:
            self.write(chunk)
            await self.flush()
            chunk = await _in_thread(next, chunks, None)
        self.finish()


class LineageHandler(DatasetHandler):
    openapi = {"get": {"summary": "Models trained on a version ?version=head"},
               "post": {"summary": "Record that {model_name, model_version} was trained on "
                                   "{version}"}}

    def get(self, name: str) -> None:
        self.write_json({"models": self.datasets.models_trained_on(
            self.actor, name, self.get_argument("version", "head"))})

    def post(self, name: str) -> None:
        body = self.body_dict()
        for key in ("version", "model_name", "model_version"):
            if not isinstance(body.get(key), str | int):
                raise InvalidInput(f"'{key}' is required")
        self.write_json(self.datasets.record_lineage(
            self.actor, name, str(body["version"]), body["model_name"],
            str(body["model_version"]), body.get("relation", "trained_on")), 201)


D = "datasets/(?P<name>[^/]+)"
R = D + "/records/(?P<record_id>[^/]+)"
ROUTES: list[tuple[str, type]] = [
    ("datasets/schemas", SchemasHandler),
    ("datasets/uploads", UploadHandler),
    ("datasets/imports/(?P<job_id>[^/]+)", ImportJobHandler),
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
    (D + "/lineage", LineageHandler),
]
