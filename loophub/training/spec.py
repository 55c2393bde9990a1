"""What a training job is: what to train, on which data, with which parameters, on how
many workers of what size. Pure values, validated with messages that name the field.

``TrainingSpec.from_json`` is what the API, the SDK and the CLI share; the JSON form is
stored as the job's parameters, so a job can be read back (and re-run) exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from loophub.errors import InvalidInput
from loophub.pool import GIB, check_cpu_gpu, check_gpu_type, parse_mem
from loophub.scheduler.model import Resources

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
DIGEST = re.compile(r"^[0-9a-f]{64}$")
MAX_WORKERS = 64
SCALAR = {"type": ["string", "number", "integer", "boolean", "null"]}
SPEC_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["dataset"],
    "properties": {
        "recipe": {"type": "string", "maxLength": 64,
                   "description": "a built-in recipe (GET training/recipes); or function"},
        "function": {"type": "object", "additionalProperties": False,
                     "required": ["blob", "name", "sha256"], "properties": {
                         "blob": {"type": "string", "pattern": "^[0-9a-f]{64}$",
                                  "description": "the cloudpickled function (an upload)"},
                         "name": {"type": "string", "maxLength": 255},
                         "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                         "source": {"type": "string", "maxLength": 200_000}}},
        "dataset": {"type": "string", "maxLength": 300,
                    "description": "NAME@VERSION: a version number, v<n>, a tag or head"},
        "params": {"type": "object", "maxProperties": 64,
                   "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]{0,63}$"},
                   "additionalProperties": {"anyOf": [
                       SCALAR, {"type": "array", "maxItems": 64, "items": SCALAR}]}},
        "workers": {"type": "integer", "minimum": 1, "maximum": MAX_WORKERS},
        "per_worker": {"type": "object", "additionalProperties": False, "properties": {
            "cpu": {"type": "number", "exclusiveMinimum": 0, "maximum": 1024},
            "mem": {"type": ["string", "integer"], "maxLength": 32, "minimum": 1},
            "gpu": {"type": "integer", "minimum": 0, "maximum": 64},
            "gpu_type": {"type": ["string", "null"], "maxLength": 64}}},
        "preemptible": {"type": "boolean"},
        "max_retries": {"type": "integer", "minimum": 0, "maximum": 20},
        "checkpoint_every": {"type": ["integer", "null"], "minimum": 1, "maximum": 10**9,
                             "description": "steps between checkpoints (default: each epoch)"},
        "keep_checkpoints": {"type": "integer", "minimum": 1, "maximum": 100},
        "max_runtime": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1e8},
        "name": {"type": ["string", "null"], "maxLength": 128},
    },
}


@dataclass(frozen=True)
class DatasetRef:
    """``digits@v1``: a dataset and one of its versions (number, v<n>, tag, id or head)."""

    name: str
    version: str = "head"

    @classmethod
    def parse(cls, text: str) -> DatasetRef:
        name, _, version = str(text).partition("@")
        if not NAME.match(name):
            raise InvalidInput(f"training.dataset: {text!r} is not NAME@VERSION (e.g. "
                               "digits@v1)", detail={"field": "dataset"})
        version = version or "head"
        if version == "draft":
            raise InvalidInput("training.dataset: train on a committed version, not the "
                               "draft (commit it first: its version is what the model's "
                               "lineage records)", detail={"field": "dataset"})
        if not NAME.match(version):
            raise InvalidInput(f"training.dataset: {version!r} is not a version",
                               detail={"field": "dataset"})
        return cls(name, version)

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class WorkerSize:
    cpu: float = 1.0
    mem: int = 2 * GIB
    gpu: int = 0
    gpu_type: str | None = None

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None) -> WorkerSize:
        data = data or {}
        try:
            cpu, gpu = check_cpu_gpu(data.get("cpu", 1.0), data.get("gpu", 0), "per_worker")
            mem = parse_mem(data.get("mem", "2G"), "per_worker")
            gpu_type = check_gpu_type(data.get("gpu_type"), "per_worker")
        except ValueError as exc:
            raise InvalidInput(str(exc), detail={"field": "per_worker"}) from exc
        if mem <= 0 or cpu <= 0:
            raise InvalidInput("per_worker: cpu and mem must be positive",
                               detail={"field": "per_worker"})
        return cls(cpu, mem, gpu, gpu_type)

    def demand(self) -> Resources:
        return Resources(cpu=self.cpu, mem=self.mem, gpu=self.gpu)

    def to_json(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "mem": self.mem, "gpu": self.gpu, "gpu_type": self.gpu_type}


@dataclass(frozen=True)
class FunctionRef:
    """The analyst's own training function: cloudpickled bytes in the blob store (only the
    job's workers, acting as the job's owner, ever unpickle them), its name and source."""

    blob: str
    name: str
    sha256: str
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"blob": self.blob, "name": self.name, "sha256": self.sha256,
                "source": self.source}


@dataclass(frozen=True)
class TrainingSpec:
    dataset: DatasetRef
    recipe: str | None = None
    function: FunctionRef | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    workers: int = 1
    per_worker: WorkerSize = field(default_factory=WorkerSize)
    preemptible: bool = False
    max_retries: int = 2
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    max_runtime: float | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if (self.recipe is None) == (self.function is None):
            raise InvalidInput("training: give either a recipe (by name) or your own "
                               "function, not both and not neither",
                               detail={"field": "recipe"})
        if not 1 <= self.workers <= MAX_WORKERS:
            raise InvalidInput(f"training.workers: 1 to {MAX_WORKERS}",
                               detail={"field": "workers"})

    @property
    def what(self) -> str:
        return self.recipe or (self.function.name if self.function else "?")

    def to_json(self) -> dict[str, Any]:
        return {"dataset": str(self.dataset), "recipe": self.recipe,
                "function": self.function.to_json() if self.function else None,
                "params": dict(self.params), "workers": self.workers,
                "per_worker": self.per_worker.to_json(), "preemptible": self.preemptible,
                "max_retries": self.max_retries, "checkpoint_every": self.checkpoint_every,
                "keep_checkpoints": self.keep_checkpoints, "max_runtime": self.max_runtime,
                "name": self.name}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainingSpec:
        if not isinstance(data, Mapping):
            raise InvalidInput("training: expected an object with a dataset and a recipe")
        unknown = set(data) - set(SPEC_SCHEMA["properties"])
        if unknown:
            raise InvalidInput(f"training: unknown fields {sorted(unknown)}",
                               detail={"field": sorted(unknown)[0]})
        function = data.get("function")
        if function is not None:
            if not isinstance(function, Mapping) or not all(
                    isinstance(function.get(k), str) for k in ("blob", "name", "sha256")) \
                    or not DIGEST.match(function["blob"]) or not DIGEST.match(
                        function["sha256"]):
                raise InvalidInput("training.function: {blob, name, sha256} of an upload",
                                   detail={"field": "function"})
            function = FunctionRef(function["blob"], function["name"], function["sha256"],
                                   str(function.get("source") or ""))
        return cls(
            dataset=DatasetRef.parse(data.get("dataset", "")),
            recipe=data.get("recipe") or None, function=function,
            params=_params(data.get("params") or {}),
            workers=_int(data, "workers", 1, 1, MAX_WORKERS),
            per_worker=WorkerSize.parse(data.get("per_worker")),
            preemptible=_bool(data, "preemptible", False),
            max_retries=_int(data, "max_retries", 2, 0, 20),
            checkpoint_every=_int(data, "checkpoint_every", None, 1, 10**9),
            keep_checkpoints=_int(data, "keep_checkpoints", 2, 1, 100),
            max_runtime=_seconds(data.get("max_runtime")),
            name=data.get("name"))


def _int(data: Mapping[str, Any], key: str, default: int | None, low: int, high: int
         ) -> int | None:
    value = data.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"training.{key}: a whole number from {low} to {high}, got "
                           f"{value!r}", detail={"field": key})
    return value


def _bool(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"training.{key}: true or false", detail={"field": key})
    return value


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value > 0):
        raise InvalidInput("training.max_runtime: seconds > 0", detail={"field": "max_runtime"})
    return float(value)


def _params(params: Any) -> dict[str, Any]:
    if not isinstance(params, Mapping):
        raise InvalidInput("training.params: an object of names to values",
                           detail={"field": "params"})
    out = {}
    for key, value in params.items():
        if not isinstance(key, str) or not PARAM_NAME.match(key):
            raise InvalidInput(f"training.params: {key!r} is not a parameter name",
                               detail={"field": "params"})
        values = value if isinstance(value, list) else [value]
        if not all(v is None or isinstance(v, str | int | float | bool) for v in values):
            raise InvalidInput(f"training.params.{key}: numbers, strings, booleans or lists "
                               "of them", detail={"field": f"params.{key}"})
        out[key] = value
    return out


def parse_param(text: str) -> tuple[str, Any]:
    """``lr=0.01`` from the CLI: numbers and booleans as such, anything else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not PARAM_NAME.match(key):
        raise InvalidInput(f"--param {text!r}: expected NAME=VALUE, e.g. lr=0.01")
    for convert in (int, float):
        try:
            return key, convert(raw)
        except ValueError:
            pass
    return key, {"true": True, "false": False}.get(raw.lower(), raw)
