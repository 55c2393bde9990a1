"""The model registry: registered models (owned and shared like datasets), immutable
versions with their lineage, aliases that move, and an append-only history of every move.

What MLflow's registry leaves out and this keeps: which version an alias pointed at before
(every alias move, tag change, state change and deletion is a ``model_history`` row with
who, when, from, to and why), lineage both ways (a version names its training job and the
exact dataset version; that version's lineage lists the model version, which also keeps it
from the datasets' garbage collection), and versions that cannot change or vanish while an
alias points at them.

References: ``NAME`` (the latest version), ``NAME@3`` or ``NAME@v3`` (a number),
``NAME@latest``, ``NAME@ALIAS``.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from loophub import access, audit
from loophub.errors import Conflict, InvalidInput, NotFound
from loophub.identity import Actor
from loophub.jobs import Job
from loophub.models import gate
from loophub.models.signature import check_task, signature
from loophub.models.tables import (
    ModelAlias,
    ModelEvent,
    ModelVersion,
    RegisteredModel,
)
from loophub.store import BlobStore, Database, grants
from loophub.store.models import iso, utcnow
from loophub.training.tables import TrainingRun

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
RESERVED_ALIASES = ("latest",)
CARD_FIELDS = ("text", "intended_use", "limits")
MAX_TAGS = 64
MAX_TAG_VALUE = 1000
MAX_META = 4 * 1024 * 1024  # bytes of an artifact's JSON metadata (a tokenizer's vocabulary)


@dataclass(frozen=True)
class Ref:
    """A parsed model reference: NAME and what follows the @ (None: the latest)."""

    name: str
    selector: str | None = None

    @classmethod
    def parse(cls, text: str) -> Ref:
        if not isinstance(text, str) or not text:
            raise InvalidInput("model: a reference NAME, NAME@VERSION or NAME@ALIAS is needed",
                               detail={"field": "model"})
        name, _, selector = text.partition("@")
        if not NAME.match(name) or (_ and not selector):
            raise InvalidInput(f"model {text!r}: expected NAME, NAME@3, NAME@v3 or NAME@ALIAS "
                               "(letters, digits, . _ -)", detail={"field": "model"})
        return cls(name, selector or None)

    def __str__(self) -> str:
        return self.name if self.selector is None else f"{self.name}@{self.selector}"


VERSION = re.compile(r"^v?([0-9]{1,9})$")  # ASCII digits: "³".isdigit() is true


def version_number(selector: str) -> int | None:
    """3 for "3" and "v3"; None for an alias."""
    found = VERSION.match(selector)
    return int(found.group(1)) if found else None


def check_servable(path_or_file, meta: dict) -> None:
    """Refuse an artifact that the platform cannot serve without user code: a TorchScript
    archive (a zip with code/ and data.pkl) whose metadata names a supported task and its
    labels. Checked by its structure; it is loaded (torch.jit.load, never pickle.load) only
    where models run, not in the API service."""
    try:
        with zipfile.ZipFile(path_or_file) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidInput(f"artifact: not a TorchScript archive ({exc}); save the model with "
                           "torch.jit.save (register() scripts or traces a module for you)",
                           detail={"field": "artifact"}) from None
    if not any(n.endswith("/data.pkl") for n in names) or not any("/code/" in n for n in names):
        raise InvalidInput("artifact: a zip, but not a TorchScript archive (no code/ and "
                           "data.pkl); a state_dict or a pickled module is not servable: "
                           "save the model with torch.jit.save", detail={"field": "artifact"})
    check_meta(meta)


def check_meta(meta: Any) -> None:
    if not isinstance(meta, dict) or meta.get("format") != "torchscript":
        raise InvalidInput("artifact.meta: {format: 'torchscript', task, preprocess, labels} "
                           "is needed", detail={"field": "meta"})
    check_task(str(meta.get("task")))
    labels = meta.get("labels")
    if not isinstance(labels, list) or not labels or not all(
            isinstance(label, str) and label for label in labels):
        raise InvalidInput("artifact.meta.labels: the label names, in the order of the "
                           "model's outputs", detail={"field": "meta.labels"})
    if not isinstance(meta.get("preprocess"), dict):
        raise InvalidInput("artifact.meta.preprocess: how inputs are prepared (an object)",
                           detail={"field": "meta.preprocess"})
    if len(json.dumps(meta)) > MAX_META:
        raise InvalidInput(f"artifact.meta: larger than {MAX_META} bytes as JSON",
                           detail={"field": "meta"})


def check_tags(tags: Any, field: str = "tags") -> dict[str, str]:
    if not isinstance(tags, dict) or len(tags) > MAX_TAGS:
        raise InvalidInput(f"{field}: an object of at most {MAX_TAGS} name: text pairs",
                           detail={"field": field})
    for key, value in tags.items():
        if not ALIAS.match(key) or not (value is None or (
                isinstance(value, str) and len(value) <= MAX_TAG_VALUE)):
            raise InvalidInput(f"{field}.{key}: a tag is a name (letters, digits, _ -) and a "
                               f"text of at most {MAX_TAG_VALUE} characters (null removes it)",
                               detail={"field": f"{field}.{key}"})
    return tags


def check_card(card: Any) -> dict[str, str]:
    if not isinstance(card, dict) or set(card) - set(CARD_FIELDS) or not all(
            isinstance(v, str) and len(v) <= 100_000 for v in card.values()):
        raise InvalidInput(f"card: an object with texts {', '.join(CARD_FIELDS)}",
                           detail={"field": "card"})
    return card


class ModelRegistry:
    def __init__(self, db: Database, blobs: BlobStore, datasets) -> None:
        self.db, self.blobs, self.datasets = db, blobs, datasets

    # -- finding ---------------------------------------------------------------------------

    def model_row(self, s, actor: Actor, name: str, need: access.Need = "read"
               ) -> RegisteredModel:
        model = s.scalars(select(RegisteredModel).where(RegisteredModel.name == name)).first()
        if model is None or (model.state == "deleted" and not actor.admin):
            raise NotFound(f"no model named {name!r} that you can see; list them with GET "
                           "models")
        access.require(actor, model, need, noun="model", name=name)
        return model

    def _version(self, s, model: RegisteredModel, selector: str | None) -> ModelVersion:
        if selector in (None, "latest"):
            found = s.scalars(select(ModelVersion).where(
                ModelVersion.model_id == model.id, ModelVersion.state != "deleted")
                .order_by(ModelVersion.number.desc())).first()
            if found is None:
                raise NotFound(f"model {model.name!r} has no versions; register one")
            return found
        number = version_number(selector)
        if number is None:
            alias = s.get(ModelAlias, (model.id, selector))
            if alias is None:
                raise NotFound(f"model {model.name!r} has no alias {selector!r}; its aliases: "
                               f"{', '.join(self._alias_names(s, model)) or 'none'}")
            number = alias.version
        found = s.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id,
                                                     ModelVersion.number == number)).first()
        if found is None or found.state == "deleted":
            raise NotFound(f"model {model.name!r} has no version {number}"
                           + (" (it was deleted)" if found is not None else ""))
        return found

    def _alias_names(self, s, model: RegisteredModel) -> list[str]:
        return sorted(s.scalars(select(ModelAlias.alias).where(
            ModelAlias.model_id == model.id)))

    def model_row_check(self, actor: Actor, name: str, need: access.Need) -> None:
        """Raise unless ACTOR has NEED on model NAME (before other rooms read its parts)."""
        with self.db.session() as s:
            self.model_row(s, actor, name, need)

    def resolve(self, actor: Actor, ref: str | Ref) -> dict:
        """The version REF names (read access), with its artifact's digests."""
        ref = ref if isinstance(ref, Ref) else Ref.parse(ref)
        with self.db.session() as s:
            model = self.model_row(s, actor, ref.name)
            return self.version_view(s, model, self._version(s, model, ref.selector))

    # -- views -------------------------------------------------------------------------

    def model_view(self, s, model: RegisteredModel) -> dict:
        aliases = {a.alias: a.version for a in s.scalars(select(ModelAlias).where(
            ModelAlias.model_id == model.id))}
        latest = s.scalar(select(func.max(ModelVersion.number)).where(
            ModelVersion.model_id == model.id, ModelVersion.state != "deleted"))
        return {"name": model.name, "owner": model.owner, "visibility": model.visibility,
                "group": model.group_name, "description": model.description,
                "task": model.task, "labels": [c["name"] for c in
                                               model.label_schema.get("classes", [])],
                "label_schema": model.label_schema, "tags": model.tags, "state": model.state,
                "created": iso(model.created), "versions": model.version_count,
                "latest": latest, "aliases": aliases}

    def version_view(self, s, model: RegisteredModel, v: ModelVersion) -> dict:
        aliases = sorted(s.scalars(select(ModelAlias.alias).where(
            ModelAlias.model_id == model.id, ModelAlias.version == v.number)))
        return {"model": model.name, "version": v.number, "ref": f"{model.name}@v{v.number}",
                "task": v.meta.get("task"), "labels": v.meta.get("labels"),
                "artifact": {"blob": v.artifact, "size": v.size, "format": v.meta.get("format")},
                "meta": v.meta, "signature": v.signature, "framework": v.framework,
                "params": v.params, "metrics": v.metrics, "job": v.job_id,
                "dataset": (f"{v.dataset}@v{v.dataset_version_number}" if v.dataset else None),
                "dataset_version_id": v.dataset_version_id, "card": v.card, "tags": v.tags,
                "tests": v.tests, "test_status": v.test_status, "test_results": v.test_results,
                "state": v.state, "aliases": aliases, "created_by": v.created_by,
                "created": iso(v.created)}

    def list(self, actor: Actor, *, owner: str | None = None, task: str | None = None,
             limit: int = 100) -> list[dict]:
        with self.db.session() as s:
            query = select(RegisteredModel).where(
                access.readable_filter(actor, RegisteredModel),
                RegisteredModel.state != "deleted").order_by(RegisteredModel.name).limit(limit)
            if owner:
                query = query.where(RegisteredModel.owner == owner)
            if task:
                query = query.where(RegisteredModel.task == task)
            return [self.model_view(s, m) for m in s.scalars(query)]

    def get(self, actor: Actor, name: str) -> dict:
        with self.db.session() as s:
            return self.model_view(s, self.model_row(s, actor, name))

    def versions(self, actor: Actor, name: str) -> list[dict]:
        with self.db.session() as s:
            model = self.model_row(s, actor, name)
            rows = s.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id)
                             .order_by(ModelVersion.number))
            return [self.version_view(s, model, v) for v in rows
                    if v.state != "deleted" or access.can_manage(actor, model)]

    def history(self, actor: Actor, name: str, *, subject: str | None = None) -> list[dict]:
        """Every change to the model, oldest first (SUBJECT: "alias:champion", "v3")."""
        with self.db.session() as s:
            model = self.model_row(s, actor, name)
            query = select(ModelEvent).where(ModelEvent.model_id == model.id)
            if subject:
                query = query.where(ModelEvent.subject == subject)
            return [{"id": e.id, "at": iso(e.at), "actor": e.actor, "action": e.action,
                     "subject": e.subject, "from": e.before, "to": e.after, "reason": e.reason}
                    for e in s.scalars(query.order_by(ModelEvent.id))]

    def lineage(self, actor: Actor, ref: str) -> dict:
        """Where a version came from (its job, the dataset versions it was trained on) and
        the other model versions trained on the same data."""
        version = self.resolve(actor, ref)
        key = f"v{version['version']}"
        return {"model": version["ref"], "job": version["job"],
                "datasets": self.datasets.data_of_model(actor, version["model"], key)}

    # -- registering -------------------------------------------------------------------------

    def _record(self, s, actor: Actor, model: RegisteredModel, action: str, subject: str,
                before: dict | None, after: dict | None, reason: str = "") -> None:
        s.add(ModelEvent(model_id=model.id, at=utcnow(), actor=audit.actor_name(actor),
                         action=action, subject=subject, before=before, after=after,
                         reason=reason))
        audit.record(s, actor, f"model.{action}", f"model:{model.name}/{subject}",
                     before=before, after=after, reason=reason or None)

    def _model_for_register(self, s, actor: Actor, name: str, meta: dict, label_schema: dict,
                            options: dict) -> RegisteredModel:
        """The model NAME (write access), created on first registration; a new version
        must do the same task with the same labels, or it is refused."""
        if not NAME.match(name or ""):
            raise InvalidInput(f"model name {name!r}: letters, digits, . _ - (at most 128)",
                               detail={"field": "name"})
        model = s.scalars(select(RegisteredModel).where(RegisteredModel.name == name)
                          .with_for_update()).first()
        if model is None:
            visibility = options.get("visibility") or "private"
            if visibility not in access.VISIBILITIES:
                raise InvalidInput(f"visibility: one of {', '.join(access.VISIBILITIES)}",
                                   detail={"field": "visibility"})
            group = options.get("group")
            if visibility == "group" and not group:
                raise InvalidInput("group: name the group to share with",
                                   detail={"field": "group"})
            if group and group not in actor.groups and not actor.admin:
                raise InvalidInput(f"group {group!r}: you can only share with your own groups "
                                   f"({', '.join(actor.groups) or 'none'})",
                                   detail={"field": "group"})
            model = RegisteredModel(name=name, owner=actor.name, visibility=visibility,
                                    group_name=group, description=options.get("description", ""),
                                    task=meta["task"], label_schema=label_schema, tags={},
                                    state="active", created=utcnow(), version_count=0)
            s.add(model)
            s.flush()
            self._record(s, actor, model, "created", "model", None,
                         {"task": model.task, "visibility": visibility})
            return model
        if model.state == "deleted":
            raise Conflict(f"model {name!r} was deleted; choose another name")
        access.require(actor, model, "write", noun="model", name=name)
        labels = [c["name"] for c in model.label_schema.get("classes", [])]
        if meta["task"] != model.task or (labels and meta["labels"] != labels):
            raise InvalidInput(
                f"model {name!r} is a {model.task} model with labels {labels}; this artifact "
                f"is {meta['task']} with labels {meta['labels']}: register it under a new name",
                detail={"field": "meta.labels"})
        return model

    def register(self, actor: Actor, name: str, *, artifact: str, meta: dict,
                 job_id: str | None = None, dataset: str | None = None,
                 params: dict | None = None, metrics: dict | None = None,
                 card: dict | None = None, tags: dict | None = None,
                 **options: Any) -> dict:
        """A new version of NAME from an artifact ACTOR uploaded (or may read), checked to
        be servable before anything is written. DATASET ("name@version") is the data it was
        trained on (ACTOR must read it)."""
        self._check_may_add(actor, name)
        check_meta(meta)
        check_card(card or {})
        check_tags(tags or {})
        with self.db.session() as s:
            if missing := grants.may_reference(s, actor, [artifact]):
                raise grants.refuse(missing, "artifact")
        self._check_blob(artifact, meta)
        version = None
        if dataset:
            ds_name, _, ref = dataset.partition("@")
            version = self.datasets.resolve_version(actor, ds_name, ref or "head")
        return self._add_version(actor, name, artifact=artifact, meta=meta, job_id=job_id,
                                 version=version, params=params or {}, metrics=metrics or {},
                                 card=card or {}, tags=tags or {}, options=options)

    def register_job(self, actor: Actor, name: str, job_id: str, *, card: dict | None = None,
                     tags: dict | None = None, **options: Any) -> dict:
        """A new version of NAME from a training job that succeeded: its artifact, the exact
        dataset version, its parameters and final metrics (ACTOR owns the job)."""
        self._check_may_add(actor, name)
        check_card(card or {})
        check_tags(tags or {})
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None or job.kind != "train" or not (
                    actor.admin or job.owner == actor.name):
                raise NotFound(f"job {job_id!r} is not a training job of yours; list yours "
                               "with GET training/jobs")
            if job.state != "succeeded":
                raise Conflict(f"training job {job_id} is {job.state}: only a job that "
                               "succeeded has a model to register")
            result, params = dict(job.result or {}), dict(job.params or {})
            run = s.get(TrainingRun, job_id)
            packages = dict(run.packages or {}) if run else {}
        artifact = result.get("artifact")
        if not artifact:
            raise Conflict(f"training job {job_id} succeeded without saving a model "
                           "(ctx.save_model was not called)")
        with self.blobs.open(artifact["meta"]) as stream:
            meta = {"packages": packages, **json.loads(stream.read())}
        self._check_blob(artifact["blob"], meta)
        version = {"dataset": result["dataset"], "id": result["version_id"],
                   "number": result["version_number"],
                   "label_schema": self._job_label_schema(result, meta)}
        metrics = {**{f"best_{k}": v for k, v in (result.get("best") or {}).items()},
                   **(result.get("metrics") or {})}
        return self._add_version(actor, name, artifact=artifact["blob"], meta=meta,
                                 job_id=job_id, version=version, params=params,
                                 metrics=metrics, card=card or {}, tags=tags or {},
                                 options=options)

    def _check_may_add(self, actor: Actor, name: str) -> None:
        """Before the body is looked at: a model that exists needs write access (what the
        caller cannot read answers 404 whatever they sent); a new name is anyone's."""
        with self.db.session() as s:
            exists = s.scalars(select(RegisteredModel.id).where(
                RegisteredModel.name == name)).first()
        if exists:
            self.model_row_check(actor, name, "write")

    def _check_blob(self, digest: str, meta: dict) -> None:
        if self.blobs.local:
            check_servable(self.blobs.path(digest), meta)
            return
        with tempfile.TemporaryFile() as copy, self.blobs.open(digest) as stream:
            shutil.copyfileobj(stream, copy, 1 << 20)
            check_servable(copy, meta)

    def _job_label_schema(self, result: dict, meta: dict) -> dict:
        return {"task": meta["task"], "classes": [{"name": n} for n in meta["labels"]]}

    def _add_version(self, actor: Actor, name: str, *, artifact: str, meta: dict,
                     job_id: str | None, version: dict | None, params: dict, metrics: dict,
                     card: dict, tags: dict, options: dict) -> dict:
        size = self.blobs.size(artifact)
        label_schema = (version or {}).get("label_schema") or {
            "task": meta["task"], "classes": [{"name": n} for n in meta["labels"]]}
        with self.db.transaction() as s:
            model = self._model_for_register(s, actor, name, meta, label_schema, options)
            model.version_count += 1
            row = ModelVersion(
                model_id=model.id, number=model.version_count, artifact=artifact, meta=meta,
                size=size, signature=signature(meta["task"], meta["labels"],
                                    meta.get("preprocess")),
                framework={"format": meta["format"], "torch": meta.get("torch"),
                           "packages": meta.get("packages") or {}},
                params=params, metrics=metrics, job_id=job_id,
                dataset=version and version["dataset"],
                dataset_version_id=version and version["id"],
                dataset_version_number=version and version["number"],
                card=card, tags={k: v for k, v in tags.items() if v is not None}, tests=[],
                test_status="untested", test_results={}, state="ready",
                created_by=audit.actor_name(actor), created=utcnow())
            s.add(row)
            s.flush()
            grants.grant(s, model.owner, [artifact])
            self._record(s, actor, model, "registered", f"v{row.number}", None, {
                "job": job_id, "dataset": row.dataset and
                f"{row.dataset}@v{row.dataset_version_number}", "artifact": artifact})
            view = self.version_view(s, model, row)
        if version:
            self.datasets.link_version(version["id"], name, f"v{view['version']}",
                                       by=actor.name)
        return view

    # -- changing what may change ------------------------------------------------------

    def set_alias(self, actor: Actor, name: str, alias: str, version: int | str, *,
                  reason: str = "", force: bool = False) -> dict:
        """Point NAME@ALIAS at VERSION (write access). ``champion`` only moves to a version
        whose tests passed, unless FORCE (the force is written to the history)."""
        if not ALIAS.match(alias or "") or alias in RESERVED_ALIASES:
            raise InvalidInput(f"alias {alias!r}: a name that starts with a letter (letters, "
                               "digits, _ -; 'latest' is reserved and numbers are versions)",
                               detail={"field": "alias"})
        number = version if isinstance(version, int) else version_number(str(version))
        if number is None:
            raise InvalidInput(f"version {version!r}: a version number (3 or v3)",
                               detail={"field": "version"})
        with self.db.transaction() as s:
            model = self.model_row(s, actor, name, "write")
            target = self._version(s, model, str(number))
            if alias == "champion" and target.test_status != "passed" and not force:
                raise Conflict(
                    f"{name}@v{number}'s tests have not passed ({target.test_status}): "
                    "champion only moves to a tested version; run models.test, or force the "
                    "move (it is written to the history)", detail={"test_status":
                                                                    target.test_status})
            row = s.get(ModelAlias, (model.id, alias))
            before = {"version": row.version} if row else None
            if row is None:
                row = ModelAlias(model_id=model.id, alias=alias, version=number,
                                 moved_by=actor.name, moved_at=utcnow())
                s.add(row)
            else:
                row.version, row.moved_by, row.moved_at = number, actor.name, utcnow()
            after = {"version": number, **({"forced": True, "test_status": target.test_status}
                                           if force and target.test_status != "passed"
                                           else {})}
            self._record(s, actor, model, "alias.moved", f"alias:{alias}", before, after,
                         reason)
            return self.model_view(s, model)

    def delete_alias(self, actor: Actor, name: str, alias: str, *, reason: str = "") -> dict:
        with self.db.transaction() as s:
            model = self.model_row(s, actor, name, "write")
            row = s.get(ModelAlias, (model.id, alias))
            if row is None:
                raise NotFound(f"model {name!r} has no alias {alias!r}")
            self._record(s, actor, model, "alias.deleted", f"alias:{alias}",
                         {"version": row.version}, None, reason)
            s.delete(row)
            s.flush()
            return self.model_view(s, model)

    def update_version(self, actor: Actor, ref: str, *, tags: dict | None = None,
                       card: dict | None = None, state: str | None = None,
                       reason: str = "") -> dict:
        """Tags (null removes one), the model card, or the state (ready, archived) of a
        version; each change written to the history. The artifact never changes."""
        parsed = Ref.parse(ref)
        with self.db.transaction() as s:
            model = self.model_row(s, actor, parsed.name, "write")
            v = self._version(s, model, parsed.selector)
            subject = f"v{v.number}"
            if tags:
                check_tags(tags)
                new = {**v.tags, **tags}
                new = {k: val for k, val in new.items() if val is not None}
                self._record(s, actor, model, "tags.set", subject, {"tags": v.tags},
                             {"tags": new}, reason)
                v.tags = new
            if card is not None:
                check_card(card)
                self._record(s, actor, model, "card.set", subject, {"card": v.card},
                             {"card": card}, reason)
                v.card = card
            if state is not None and state != v.state:
                if state not in ("ready", "archived"):
                    raise InvalidInput("state: ready or archived (DELETE the version to "
                                       "delete it)", detail={"field": "state"})
                self._record(s, actor, model, "state.set", subject, {"state": v.state},
                             {"state": state}, reason)
                v.state = state
            return self.version_view(s, model, v)

    def set_tests(self, actor: Actor, ref: str, tests: Any, *, reason: str = "") -> dict:
        """The version's tests (gate.py), checked and their datasets pinned to exact
        versions; the test status goes back to untested (write access; in the history)."""
        parsed = Ref.parse(ref)
        self.model_row_check(actor, parsed.name, "write")  # a refusal says nothing of the body
        view = self.resolve(actor, parsed)
        checked = gate.check_tests(tests, task=view["task"], labels=view["labels"])
        pinned = gate.pin(checked, lambda d: self._pinned(actor, d))
        with self.db.transaction() as s:
            model = self.model_row(s, actor, parsed.name, "write")
            v = self._version(s, model, str(view["version"]))
            self._record(s, actor, model, "tests.set", f"v{v.number}",
                         {"tests": len(v.tests), "status": v.test_status},
                         {"tests": len(pinned), "status": "untested"}, reason)
            v.tests, v.test_status, v.test_results = pinned, "untested", {}
            return self.version_view(s, model, v)

    def _pinned(self, actor: Actor, dataset: str) -> str:
        name, _, selector = dataset.partition("@")
        found = self.datasets.resolve_version(actor, name, selector or "head")
        return f"{found['dataset']}@v{found['number']}"

    def record_tests(self, actor: Actor, ref: str, evaluations: list[dict]) -> dict:
        """Judge the version's tests on EVALUATIONS (views of its own evaluations that the
        platform's jobs wrote) and keep the outcome: what gates champion."""
        parsed = Ref.parse(ref)
        with self.db.transaction() as s:
            model = self.model_row(s, actor, parsed.name, "write")
            v = self._version(s, model, parsed.selector)
            if not v.tests:
                raise Conflict(f"{model.name}@v{v.number} has no tests; set them first "
                               "(PUT .../tests)")
            if any(e["model"] != model.name or e["version"] != v.number
                   for e in evaluations):
                raise InvalidInput("evaluations: only this version's own evaluations",
                                   detail={"field": "evaluations"})
            outcome = gate.judge(v.tests, evaluations)
            self._record(s, actor, model, "tests.run", f"v{v.number}",
                         {"status": v.test_status}, {"status": outcome["status"]})
            v.test_status, v.test_results = outcome["status"], outcome
            return self.version_view(s, model, v)

    def update_model(self, actor: Actor, name: str, *, description: str | None = None,
                     visibility: str | None = None, group: str | None = None,
                     tags: dict | None = None, reason: str = "") -> dict:
        with self.db.transaction() as s:
            model = self.model_row(s, actor, name, "write")
            if tags:
                check_tags(tags)
                new = {k: v for k, v in {**model.tags, **tags}.items() if v is not None}
                self._record(s, actor, model, "tags.set", "model", {"tags": model.tags},
                             {"tags": new}, reason)
                model.tags = new
            if description is not None:
                model.description = description
            if visibility is not None or group is not None:
                access.require(actor, model, "manage", noun="model", name=name)
                self._share(s, actor, model, visibility or model.visibility, group, reason)
            return self.model_view(s, model)

    def _share(self, s, actor: Actor, model: RegisteredModel, visibility: str,
               group: str | None, reason: str) -> None:
        if visibility not in access.VISIBILITIES:
            raise InvalidInput(f"visibility: one of {', '.join(access.VISIBILITIES)}",
                               detail={"field": "visibility"})
        group = group if group is not None else model.group_name
        if visibility == "group" and not group:
            raise InvalidInput("group: name the group to share with", detail={"field": "group"})
        if group and group != model.group_name and group not in actor.groups and not actor.admin:
            raise InvalidInput(f"group {group!r}: you can only share with your own groups",
                               detail={"field": "group"})
        self._record(s, actor, model, "shared", "model",
                     {"visibility": model.visibility, "group": model.group_name},
                     {"visibility": visibility, "group": group}, reason)
        model.visibility, model.group_name = visibility, group

    def delete_version(self, actor: Actor, ref: str, *, reason: str = "") -> dict:
        """Delete a version (the model's owner or an admin): refused while an alias points at
        it. Its row stays (the history and other versions' numbers refer to it); its lineage
        rows go, so the dataset version it used may be collected again."""
        parsed = Ref.parse(ref)
        if parsed.selector is None or version_number(parsed.selector) is None:
            raise InvalidInput(f"{ref}: name the version to delete by number (NAME@v3)",
                               detail={"field": "model"})
        with self.db.transaction() as s:
            model = self.model_row(s, actor, parsed.name, "manage")
            v = self._version(s, model, parsed.selector)
            aliases = sorted(s.scalars(select(ModelAlias.alias).where(
                ModelAlias.model_id == model.id, ModelAlias.version == v.number)))
            if aliases:
                raise Conflict(f"{model.name}@v{v.number} is what {', '.join(aliases)} point "
                               "at; move or delete those aliases first",
                               detail={"aliases": aliases})
            self._record(s, actor, model, "version.deleted", f"v{v.number}",
                         {"state": v.state}, {"state": "deleted"}, reason)
            v.state = "deleted"
            number = v.number
        self.datasets.unlink_model(parsed.name, f"v{number}")
        return {"model": parsed.name, "version": number, "state": "deleted"}

    def delete_model(self, actor: Actor, name: str, *, reason: str = "") -> dict:
        """Delete a model (owner or admin): refused while it has aliases."""
        with self.db.transaction() as s:
            model = self.model_row(s, actor, name, "manage")
            aliases = self._alias_names(s, model)
            if aliases:
                raise Conflict(f"model {name!r} still has aliases ({', '.join(aliases)}); "
                               "delete them first", detail={"aliases": aliases})
            self._record(s, actor, model, "model.deleted", "model", {"state": model.state},
                         {"state": "deleted"}, reason)
            model.state = "deleted"
            numbers = list(s.scalars(select(ModelVersion.number).where(
                ModelVersion.model_id == model.id)))
            for v in s.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id)):
                v.state = "deleted"
        for number in numbers:
            self.datasets.unlink_model(name, f"v{number}")
        return {"model": name, "state": "deleted"}

    def artifact_of(self, actor: Actor, ref: str):
        """The version's TorchScript archive as a stream, and its view (read access)."""
        view = self.resolve(actor, ref)
        return self.blobs.open(view["artifact"]["blob"]), view
