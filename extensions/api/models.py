"""Model registry routes: models, immutable versions, aliases and their history
(loophub/models/registry.py). Authorised like datasets: owner, group, public, admin."""

from __future__ import annotations

from loophub.training.spec import TrainingSpec

from .base import ApiHandler, Op, in_thread

DIGEST = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
TAGS = {"type": "object", "maxProperties": 64,
        "additionalProperties": {"type": ["string", "null"], "maxLength": 1000}}
CARD = {"type": "object", "additionalProperties": False, "properties": {
    k: {"type": "string", "maxLength": 100_000} for k in ("text", "intended_use", "limits")}}
REASON = {"type": "string", "maxLength": 2000}
SHARING = {"description": {"type": "string", "maxLength": 10_000},
           "visibility": {"type": "string", "enum": ["private", "group", "public"]},
           "group": {"type": ["string", "null"], "maxLength": 255}}
MODEL_VIEW = {"type": "object", "required": ["name", "owner", "task", "aliases"], "properties": {
    "name": {"type": "string"}, "owner": {"type": "string"}, "task": {"type": "string"},
    "visibility": {"type": "string"}, "labels": {"type": "array"},
    "aliases": {"type": "object", "additionalProperties": {"type": "integer"}},
    "latest": {"type": ["integer", "null"]}, "versions": {"type": "integer"}}}
VERSION_VIEW = {"type": "object", "required": ["model", "version", "signature"], "properties": {
    "model": {"type": "string"}, "version": {"type": "integer"}, "ref": {"type": "string"},
    "signature": {"type": "object"}, "artifact": {"type": "object"},
    "job": {"type": ["string", "null"]}, "dataset": {"type": ["string", "null"]},
    "aliases": {"type": "array"}, "test_status": {"type": "string"}}}
REGISTER = {
    "type": "object", "additionalProperties": False,
    "description": "either job (a training job that succeeded) or artifact + meta (a "
                   "TorchScript archive uploaded with POST datasets/uploads)",
    "properties": {
        "job": {"type": "string", "maxLength": 64},
        "artifact": DIGEST, "meta": {"type": "object"},
        "dataset": {"type": "string", "maxLength": 300,
                    "description": "NAME@VERSION it was trained on"},
        "params": {"type": "object"}, "metrics": {"type": "object", "additionalProperties": {
            "type": "number"}},
        "card": CARD, "tags": TAGS, **SHARING}}


class ModelsHandler(ApiHandler):
    @property
    def registry(self):
        return self.ctx.models


class ModelListHandler(ModelsHandler):
    openapi = {"get": Op(
        "The models you can read (yours, your groups', public ones), by name",
        query={"owner": {"type": "string", "maxLength": 255},
               "task": {"type": "string", "maxLength": 64},
               "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
        response={"type": "object", "properties": {"models": {"type": "array",
                                                             "items": MODEL_VIEW}}})}

    async def get(self) -> None:
        q = self.query
        self.write_json({"models": await in_thread(
            self.registry.list, self.actor, owner=q["owner"], task=q["task"],
            limit=q["limit"])})


class ModelHandler(ModelsHandler):
    openapi = {
        "get": Op("A model: task, labels, aliases, latest version", access="model:read",
                  response=MODEL_VIEW),
        "patch": Op("Change a model's description or tags (write), or its sharing "
                    "(visibility, group: owner or admin); each change goes to the history",
                    access="model:write", response=MODEL_VIEW,
                    body={"type": "object", "additionalProperties": False, "properties": {
                        **SHARING, "tags": TAGS, "reason": REASON}},
                    body_example={"description": "digits classifier"}),
        "delete": Op("Delete a model (owner or admin); refused while it has aliases",
                     access="model:manage", response={"type": "object"},
                     query={"reason": REASON}, errors={409: "it still has aliases"}),
    }

    async def get(self, model: str) -> None:
        self.write_json(await in_thread(self.registry.get, self.actor, model))

    async def patch(self, model: str) -> None:
        body = self.body
        self.write_json(await in_thread(
            self.registry.update_model, self.actor, model, description=body.get("description"),
            visibility=body.get("visibility"), group=body.get("group"), tags=body.get("tags"),
            reason=body.get("reason", "")))

    async def delete(self, model: str) -> None:
        self.write_json(await in_thread(self.registry.delete_model, self.actor, model,
                                        reason=self.query["reason"] or ""))


class VersionsHandler(ModelsHandler):
    openapi = {
        "get": Op("The model's versions, oldest first", access="model:read",
                  response={"type": "object", "properties": {"versions": {
                      "type": "array", "items": VERSION_VIEW}}}),
        "post": Op("Register a new version: from a training job that succeeded ({job}) or "
                   "from an uploaded TorchScript archive ({artifact, meta}); the model is "
                   "created on its first version. Refused before anything is written when "
                   "the artifact is not servable", access="model:write", status=201,
                   body=REGISTER, response=VERSION_VIEW, errors={
                       409: "the job has not succeeded or saved no model"},
                   body_example={"job": "0" * 32}),
    }

    async def get(self, model: str) -> None:
        self.write_json({"versions": await in_thread(self.registry.versions, self.actor,
                                                     model)})

    async def post(self, model: str) -> None:
        body = dict(self.body)
        options = {k: body.pop(k) for k in ("description", "visibility", "group", "card",
                                            "tags") if k in body}
        if "job" in body:
            if set(body) - {"job"}:
                raise_mixed()
            view = await in_thread(self.registry.register_job, self.actor, model, body["job"],
                                   **options)
        else:
            if "artifact" not in body or "meta" not in body:
                raise_mixed()
            view = await in_thread(self.registry.register, self.actor, model,
                                   artifact=body["artifact"], meta=body["meta"],
                                   dataset=body.get("dataset"), params=body.get("params"),
                                   metrics=body.get("metrics"), **options)
        self.write_json(view)


def raise_mixed() -> None:
    from loophub.errors import InvalidInput

    raise InvalidInput("register: send either {job} (a training job that succeeded) or "
                       "{artifact, meta[, dataset, params, metrics]}, not both",
                       detail={"field": "job"})


def ref(model: str, version: str) -> str:
    return f"{model}@{version}"


class VersionHandler(ModelsHandler):
    openapi = {
        "get": Op("A version (a number, v<n>, latest or an alias): artifact, signature, "
                  "lineage, metrics, card, tests", access="model:read", response=VERSION_VIEW),
        "patch": Op("Change a version's tags, card or state (ready, archived); the artifact "
                    "never changes; each change goes to the history", access="model:write",
                    response=VERSION_VIEW,
                    body={"type": "object", "additionalProperties": False, "properties": {
                        "tags": TAGS, "card": CARD,
                        "state": {"type": "string", "enum": ["ready", "archived"]},
                        "reason": REASON}},
                    body_example={"tags": {"reviewed": "yes"}}),
        "delete": Op("Delete a version (owner or admin); refused while an alias points at it",
                     access="model:manage", response={"type": "object"},
                     query={"reason": REASON}, errors={409: "an alias points at it"}),
    }

    async def get(self, model: str, version: str) -> None:
        self.write_json(await in_thread(self.registry.resolve, self.actor,
                                        ref(model, version)))

    async def patch(self, model: str, version: str) -> None:
        body = self.body
        self.write_json(await in_thread(
            self.registry.update_version, self.actor, ref(model, version),
            tags=body.get("tags"), card=body.get("card"), state=body.get("state"),
            reason=body.get("reason", "")))

    async def delete(self, model: str, version: str) -> None:
        self.write_json(await in_thread(self.registry.delete_version, self.actor,
                                        ref(model, version), reason=self.query["reason"] or ""))


class LineageHandler(ModelsHandler):
    openapi = {"get": Op("Where a version came from: its training job and the dataset "
                         "versions it was trained on (those you can read)",
                         access="model:read", response={"type": "object"})}

    async def get(self, model: str, version: str) -> None:
        self.write_json(await in_thread(self.registry.lineage, self.actor,
                                        ref(model, version)))


class ArtifactHandler(ModelsHandler):
    openapi = {"get": Op("Download the version's TorchScript archive (its metadata is in "
                         "the version's view)", access="model:read",
                         produces="application/octet-stream")}

    async def get(self, model: str, version: str) -> None:
        stream, view = await in_thread(self.registry.artifact_of, self.actor,
                                       ref(model, version))
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Disposition",
                        f'attachment; filename="{view["model"]}-v{view["version"]}.pt"')
        await self.write_stream(stream)


class AliasHandler(ModelsHandler):
    openapi = {
        "put": Op("Point an alias at a version (champion only at a version whose tests "
                  "passed, unless force); the move and its reason go to the history",
                  access="model:write", response=MODEL_VIEW,
                  body={"type": "object", "required": ["version"], "additionalProperties": False,
                        "properties": {"version": {"type": ["integer", "string"],
                                                   "maxLength": 16, "minimum": 1,
                                                   "maximum": 2**31 - 1},
                                       "reason": REASON, "force": {"type": "boolean"}}},
                  errors={409: "champion to a version whose tests have not passed"},
                  body_example={"version": 1, "reason": "matrix"}),
        "delete": Op("Remove an alias (written to the history)", access="model:write",
                     response=MODEL_VIEW, query={"reason": REASON}),
    }

    async def put(self, model: str, alias: str) -> None:
        body = self.body
        self.write_json(await in_thread(
            self.registry.set_alias, self.actor, model, alias, body["version"],
            reason=body.get("reason", ""), force=body.get("force", False)))

    async def delete(self, model: str, alias: str) -> None:
        self.write_json(await in_thread(self.registry.delete_alias, self.actor, model, alias,
                                        reason=self.query["reason"] or ""))


class HistoryHandler(ModelsHandler):
    openapi = {"get": Op(
        "Every change to the model, oldest first: alias moves (from, to), tags, states, "
        "deletions, with who, when and why (?subject=alias:champion or v3)",
        access="model:read", query={"subject": {"type": "string", "maxLength": 100}},
        response={"type": "object", "properties": {"history": {"type": "array"}}})}

    async def get(self, model: str) -> None:
        self.write_json({"history": await in_thread(self.registry.history, self.actor, model,
                                                    subject=self.query["subject"])})


EVALUATION_VIEW = {"type": "object", "required": ["id", "ref", "dataset", "state"],
                   "properties": {"id": {"type": "string"}, "ref": {"type": "string"},
                                  "dataset": {"type": "string"}, "state": {"type": "string"},
                                  "job": {"type": ["string", "null"]},
                                  "result": {"type": ["object", "null"]}}}
EVALUATIONS = {"type": "object", "properties": {"evaluations": {"type": "array",
                                                                "items": EVALUATION_VIEW}}}


class VersionEvaluationsHandler(ModelsHandler):
    openapi = {
        "post": Op("Evaluate the version on a dataset version's split: a fairly scheduled "
                   "job (the evaluate recipe on the training runner) that stores metrics "
                   "overall and by slice; checked whole first (readable, same task, known "
                   "slice fields); 422 when it can never fit", access="model:read",
                   status=201, response=EVALUATION_VIEW, errors={422: "can never fit here"},
                   body={"type": "object", "required": ["dataset"],
                         "additionalProperties": False, "properties": {
                             "dataset": {"type": "string", "maxLength": 300},
                             "split": {"type": ["string", "null"], "maxLength": 64},
                             "slices": {"type": "array", "maxItems": 16, "items": {
                                 "type": "string", "maxLength": 128}},
                             "per_worker": {"type": "object"},
                             "preemptible": {"type": "boolean"},
                             "checks": {"type": "boolean", "description": "also run the "
                                        "version's example and invariance tests"}}},
                   body_example={"dataset": "matrix@v1", "split": "test"}),
        "get": Op("The version's evaluations, oldest first", access="model:read",
                  response=EVALUATIONS),
    }

    async def post(self, model: str, version: str) -> None:
        from .training import submit

        body, actor = self.body, self.actor
        evaluations = self.ctx.evaluations
        checked = await in_thread(evaluations.check, actor, ref(model, version),
                                  body["dataset"], split=body.get("split", "test"),
                                  slices=body.get("slices", ["label"]))
        evaluation_id = evaluations.new_id()
        spec = TrainingSpec.from_json(evaluations.spec(
            checked, evaluation_id, body.get("per_worker"), body.get("preemptible", False),
            checks=body.get("checks", False)))
        accepted = await in_thread(self.ctx.training.check, actor, spec, internal=True)
        await submit(self, accepted, created=lambda job: evaluations.create(
            actor, checked, job["id"], evaluation_id))
        self.write_json(await in_thread(evaluations.get, actor, model, evaluation_id))

    async def get(self, model: str, version: str) -> None:
        self.write_json({"evaluations": await in_thread(
            self.ctx.evaluations.list, self.actor, ref(model, version))})


class EvaluationsHandler(ModelsHandler):
    openapi = {"get": Op("Every evaluation of every version of the model, oldest first "
                         "(to compare versions)", access="model:read", response=EVALUATIONS)}

    async def get(self, model: str) -> None:
        self.write_json({"evaluations": await in_thread(
            self.ctx.evaluations.list, self.actor, name=model)})


class EvaluationHandler(ModelsHandler):
    openapi = {
        "get": Op("An evaluation: its references, its job's state, its result",
                  access="model:read", response=EVALUATION_VIEW),
        "put": Op("The evaluation's result, sent by its own running job (as its owner)",
                  access="model:read", response=EVALUATION_VIEW, max_body=32 * 1024 ** 2,
                  body={"type": "object", "required": ["job", "result"],
                        "additionalProperties": False, "properties": {
                            "job": {"type": "string", "maxLength": 64},
                            "result": {"type": "object"}}},
                  errors={409: "not from the evaluation's own running job"},
                  body_example={"job": "0" * 32, "result": {"metrics": {}}}),
    }

    async def get(self, model: str, evaluation_id: str) -> None:
        self.write_json(await in_thread(self.ctx.evaluations.get, self.actor, model,
                                        evaluation_id))

    async def put(self, model: str, evaluation_id: str) -> None:
        self.write_json(await in_thread(self.ctx.evaluations.record, self.actor, model,
                                        evaluation_id, self.body["job"], self.body["result"]))


class TestsHandler(ModelsHandler):
    openapi = {"put": Op(
        "Set the version's tests (metric thresholds on an evaluation, per-slice thresholds, "
        "examples, invariances; docs/models.md); their datasets are pinned to exact "
        "versions and the test status goes back to untested", access="model:write",
        response=VERSION_VIEW, body={"type": "object", "required": ["tests"],
                                     "additionalProperties": False, "properties": {
                                         "tests": {"type": "array", "maxItems": 64,
                                                   "items": {"type": "object"}},
                                         "reason": REASON}},
        body_example={"tests": []})}

    async def put(self, model: str, version: str) -> None:
        self.write_json(await in_thread(self.registry.set_tests, self.actor,
                                        ref(model, version), self.body["tests"],
                                        reason=self.body.get("reason", "")))


class TestRunsHandler(ModelsHandler):
    openapi = {"post": Op(
        "Judge the version's tests on its evaluations (ids of evaluations of this version "
        "that succeeded) and keep the outcome, which gates champion", access="model:write",
        response=VERSION_VIEW, errors={409: "no tests, or an evaluation has not succeeded"},
        body={"type": "object", "required": ["evaluations"], "additionalProperties": False,
              "properties": {"evaluations": {"type": "array", "maxItems": 64, "items": {
                  "type": "string", "maxLength": 64}}}},
        body_example={"evaluations": []})}

    async def post(self, model: str, version: str) -> None:
        def run() -> dict:
            reference = ref(model, version)
            self.registry.model_row_check(self.actor, model, "write")
            found = self.ctx.evaluations.of_run(self.actor, reference,
                                                self.body["evaluations"])
            return self.registry.record_tests(self.actor, reference, found)

        self.write_json(await in_thread(run))


M = "models/(?P<model>[^/@]+)"
V = M + "/versions/(?P<version>[^/]+)"
ROUTES: list[tuple[str, type]] = [
    ("models", ModelListHandler),
    (M, ModelHandler),
    (M + "/versions", VersionsHandler),
    (V, VersionHandler),
    (V + "/lineage", LineageHandler),
    (V + "/artifact", ArtifactHandler),
    (M + "/aliases/(?P<alias>[^/]+)", AliasHandler),
    (M + "/history", HistoryHandler),
    (V + "/evaluations", VersionEvaluationsHandler),
    (V + "/tests", TestsHandler),
    (V + "/test-runs", TestRunsHandler),
    (M + "/evaluations", EvaluationsHandler),
    (M + "/evaluations/(?P<evaluation_id>[^/]+)", EvaluationHandler),
]
