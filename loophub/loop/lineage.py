"""Lineage across the loop: a release -> the model version it serves -> the training job
-> the dataset versions it learnt from -> where those records came from (imports, the
labelers, production feedback); and, for a dataset version, the models and releases that
used it. ``sources`` is pure; ``Lineage`` reads the rooms, each with the caller's rights
(what they may not read is named, not shown)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from loophub.errors import LoophubError, NotFound
from loophub.identity import Actor

SOURCE_CACHE = 256  # dataset versions whose sources are kept (versions never change)


def sources(records: Iterable[dict]) -> dict[str, Any]:
    """Where a version's records and labels came from: ``records``, ``unlabeled``,
    ``labels`` by source (``user`` per labeler, ``import``, ``model`` per model version)
    and the records ``from_production`` per release (the feedback loop's)."""
    users: Counter[str] = Counter()
    models: Counter[str] = Counter()
    releases: Counter[str] = Counter()
    imported = total = unlabeled = 0
    for record in records:
        total += 1
        annotations = record.get("annotations") or []
        unlabeled += not annotations
        for annotation in annotations:
            source = annotation.get("source") or {}
            kind = source.get("kind") or "import"  # an annotation without a source came in
            if kind == "user":
                users[source.get("name") or "?"] += 1
            elif kind == "model":
                version = source.get("version")
                models[source.get("name", "?") + (f"@{version}" if version else "")] += 1
            else:
                imported += 1
        metadata = record.get("metadata") or {}
        if metadata.get("source") == "production":
            releases[str(metadata.get("release") or "?")] += 1
    return {"records": total, "unlabeled": unlabeled,
            "labels": {"user": dict(users.most_common()), "import": imported,
                       "model": dict(models.most_common())},
            "from_production": {"records": sum(releases.values()),
                                "releases": dict(releases.most_common())}}


class Lineage:
    def __init__(self, releases, models, training, datasets) -> None:
        self.releases, self.models = releases, models
        self.training, self.datasets = training, datasets
        self._sources: dict[str, dict] = {}

    def of_release(self, actor: Actor, name: str) -> dict:
        """The chain behind release NAME (and its canary's version, when one runs)."""
        release = self.releases.get(actor, name)
        chain = {"release": {k: release[k] for k in ("name", "owner", "access", "model",
                                                     "version", "status")},
                 "version": self._version(actor, release["version"])}
        if release.get("canary"):
            chain["canary"] = self._version(actor, release["canary"]["version"])
        return chain

    def _version(self, actor: Actor, ref: str) -> dict:
        try:
            version = self.models.resolve(actor, ref)
        except LoophubError as exc:  # a private model behind a shared release
            return {"ref": ref, "readable": False, "why": exc.message}
        datasets = self.models.lineage(actor, ref)["datasets"]
        return {"ref": version["ref"], "readable": True, "aliases": version["aliases"],
                "created_by": version["created_by"], "created": version["created"],
                "test_status": version["test_status"], "metrics": version["metrics"],
                "job": self._job(actor, version["job"]),
                "datasets": [{**d, "sources": self._sources_of(actor, d)} for d in datasets]}

    def _job(self, actor: Actor, job_id: str | None) -> dict | None:
        if not job_id:
            return None
        try:
            job = self.training.get(actor, job_id)
        except NotFound:  # someone else's job: its id only
            return {"id": job_id, "readable": False}
        spec = job.get("spec") or {}
        return {"id": job_id, "readable": True, "owner": job.get("owner"),
                "state": job.get("state"), "dataset": job.get("dataset"),
                "recipe": spec.get("recipe") or (spec.get("function") or {}).get("name"),
                "params": spec.get("params"), "workers": spec.get("workers"),
                # fine-tuned from this model version (pinned when the job was accepted)
                "started_from": (spec.get("params") or {}).get("init_from") or None}

    def _sources_of(self, actor: Actor, used: dict) -> dict:
        key = used["version"]
        if key not in self._sources:
            if len(self._sources) >= SOURCE_CACHE:
                self._sources.pop(next(iter(self._sources)))
            self._sources[key] = sources(self.datasets.version_records(
                actor, used["dataset"], used["version"]))
        return self._sources[key]

    def used_by(self, actor: Actor, dataset: str, version: str = "head") -> dict:
        """The model versions trained or evaluated on DATASET@VERSION, and the releases
        (the caller may read) that serve one of them or run it as a canary."""
        used = self.datasets.models_trained_on(actor, dataset, version)
        refs = {f"{u['model']}@{u['model_version']}" for u in used
                if str(u["model_version"]).startswith("v")}
        serving = [{"name": r["name"], "version": r["version"],
                    "canary": (r.get("canary") or {}).get("version")}
                   for r in self.releases.list(actor)
                   if r["version"] in refs or (r.get("canary") or {}).get("version") in refs]
        return {"dataset": dataset, "version": version, "models": used, "releases": serving}
