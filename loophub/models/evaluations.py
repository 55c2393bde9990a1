"""Evaluations of model versions, as the registry keeps them.

An evaluation is asked for on the platform's side (checked whole before anything is
written: the version and the dataset version are readable, their tasks agree, the slice
fields are known), run as a fairly scheduled job by the training runner (the built-in
``evaluate`` recipe, loophub/models/recipe.py: no second executor), and its result is
reported by that job's rank, as the job's owner, while the job runs. It names both exact
references (version number, dataset version id) so the same numbers can be had again.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import select

from loophub import audit
from loophub.errors import Conflict, InvalidInput, NotFound
from loophub.identity import Actor
from loophub.jobs import Job
from loophub.models.evaluation import check_slices
from loophub.models.recipe import EVALUATE
from loophub.models.registry import ModelRegistry, Ref
from loophub.models.tables import ModelEvaluation, RegisteredModel
from loophub.store.models import iso, utcnow

MAX_RESULT = 32 * 1024 ** 2  # bytes of one result as JSON (a 1000-class confusion matrix)


class Evaluations:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.db, self.datasets = registry.db, registry.datasets

    def check(self, actor: Actor, ref: str, dataset: str, *, split: str | None,
              slices: list[str]) -> dict:
        """What an evaluation will read, resolved and checked: the version, the dataset
        version (both readable by ACTOR) of the same task."""
        version = self.registry.resolve(actor, ref)
        name, _, selector = (dataset or "").partition("@")
        if not name:
            raise InvalidInput("evaluate: dataset NAME@VERSION is needed",
                               detail={"field": "dataset"})
        data = self.datasets.resolve_version(actor, name, selector or "head")
        if data["task"] != version["task"]:
            raise InvalidInput(f"{version['ref']} is a {version['task']} model; dataset "
                               f"{name}@v{data['number']} is {data['task'] or 'without a task'}"
                               ": evaluate on a dataset of the model's task",
                               detail={"field": "dataset"})
        return {"version": version, "data": data, "split": split or None,
                "slices": check_slices(slices)}

    def spec(self, checked: dict, evaluation_id: str, per_worker: dict | None = None,
             preemptible: bool = False, *, checks: bool = False) -> dict:
        """The job that runs it: the ``evaluate`` recipe, one worker, on the exact dataset
        version, reading the exact model version; CHECKS: it also runs the version's
        example and invariance tests."""
        version, data = checked["version"], checked["data"]
        examples = [t for t in version["tests"] if t["kind"] != "metric"] if checks else []
        return {"recipe": EVALUATE, "dataset": f"{data['dataset']}@v{data['number']}",
                "workers": 1, "per_worker": dict(per_worker or {"cpu": 1, "mem": "2G"}),
                "preemptible": preemptible, "name": version["ref"], "max_retries": 1,
                "params": {"model": version["ref"], "evaluation": evaluation_id,
                           "split": checked["split"] or "",
                           "slices": ",".join(checked["slices"]),
                           "dataset": f"{data['dataset']}@v{data['number']}",
                           "checks": json.dumps(examples) if examples else ""}}

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def create(self, actor: Actor, checked: dict, job_id: str, evaluation_id: str) -> dict:
        version, data = checked["version"], checked["data"]
        with self.db.transaction() as s:
            model = self.registry.model_row(s, actor, version["model"])
            row = ModelEvaluation(
                id=evaluation_id, model_id=model.id, version=version["version"],
                dataset=data["dataset"], dataset_version_id=data["id"],
                dataset_version_number=data["number"], split=checked["split"],
                slices=checked["slices"], job_id=job_id, result=None,
                created_by=actor.name, created=utcnow())
            s.add(row)
            audit.record(s, actor, "model.evaluate", f"model:{model.name}/v{row.version}",
                         dataset=f"{row.dataset}@v{row.dataset_version_number}", job=job_id)
            s.flush()
            return self._view(s, model, row)

    def record(self, actor: Actor, ref: str, evaluation_id: str, job_id: str,
               result: Any) -> dict:
        """The result, sent by the evaluation's own job while it runs (as its owner):
        anything else is refused, so a result always comes from the run it names."""
        parsed = Ref.parse(ref)
        if not isinstance(result, dict) or not isinstance(result.get("metrics"), dict):
            raise InvalidInput("evaluation.result: {task, count, metrics, slices, timing}",
                               detail={"field": "result"})
        if len(json.dumps(result)) > MAX_RESULT:
            raise InvalidInput(f"evaluation.result: larger than {MAX_RESULT} bytes as JSON",
                               detail={"field": "result"})
        with self.db.transaction() as s:
            model, row = self._row(s, actor, parsed.name, evaluation_id)
            job = s.get(Job, row.job_id) if row.job_id else None
            if job is None or job.id != job_id or job.owner != actor.name or \
                    job.state != "running":
                raise Conflict(f"evaluation {evaluation_id} takes its result from its own "
                               "running job only")
            if row.result is not None:
                raise Conflict(f"evaluation {evaluation_id} already has its result")
            row.result, row.finished = result, utcnow()
            view = self._view(s, model, row)
        self.datasets.link_version(row.dataset_version_id, model.name, f"v{row.version}",
                                   relation="evaluated_on", by=actor.name)
        return view

    def _row(self, s, actor: Actor, name: str, evaluation_id: str
             ) -> tuple[RegisteredModel, ModelEvaluation]:
        model = self.registry.model_row(s, actor, name)
        row = s.get(ModelEvaluation, evaluation_id)
        if row is None or row.model_id != model.id:
            raise NotFound(f"model {name!r} has no evaluation {evaluation_id!r}")
        return model, row

    def of_run(self, actor: Actor, ref: str, evaluation_ids: list[str]) -> list[dict]:
        """The views of EVALUATION_IDS, which must be REF's and have succeeded."""
        name = Ref.parse(ref).name
        found = [self.get(actor, name, i) for i in evaluation_ids]
        unfinished = [e["id"] for e in found if e["state"] != "succeeded"]
        if unfinished:
            raise Conflict(f"evaluations {', '.join(unfinished)} have not succeeded; wait "
                           "for them or run them again")
        return found

    def get(self, actor: Actor, name: str, evaluation_id: str) -> dict:
        with self.db.session() as s:
            model, row = self._row(s, actor, name, evaluation_id)
            return self._view(s, model, row)

    def list(self, actor: Actor, ref: str | None = None, *, name: str | None = None
             ) -> list[dict]:
        """The evaluations of a version (REF), or of every version of model NAME."""
        with self.db.session() as s:
            if ref is not None:
                version = self.registry.resolve(actor, ref)
                model = self.registry.model_row(s, actor, version["model"])
                query = select(ModelEvaluation).where(ModelEvaluation.model_id == model.id,
                                                      ModelEvaluation.version ==
                                                      version["version"])
            else:
                model = self.registry.model_row(s, actor, name or "")
                query = select(ModelEvaluation).where(ModelEvaluation.model_id == model.id)
            rows = s.scalars(query.order_by(ModelEvaluation.created, ModelEvaluation.id))
            return [self._view(s, model, row) for row in rows]

    def _view(self, s, model: RegisteredModel, row: ModelEvaluation) -> dict:
        job = s.get(Job, row.job_id) if row.job_id else None
        state = "succeeded" if row.result is not None and (
            job is None or job.state == "succeeded") else (job.state if job else "lost")
        return {"id": row.id, "model": model.name, "version": row.version,
                "ref": f"{model.name}@v{row.version}",
                "dataset": f"{row.dataset}@v{row.dataset_version_number}",
                "dataset_version_id": row.dataset_version_id, "split": row.split,
                "slices": row.slices, "job": row.job_id, "state": state,
                "error": (job.error or {}).get("error") if job and job.error else None,
                "result": row.result, "created_by": row.created_by,
                "created": iso(row.created), "finished": iso(row.finished)}
