"""The one request contract: what a server, kernel, job or service asks the scheduler for.

``RequestSpec`` is typed; its JSON form (``SPEC_SCHEMA``) is what the API accepts, the
SDK sends and the database keeps. What a request belongs to is a typed field (the
server's name, the kernel id, the job id, the release and replica), from which its key
is built (keys.py): nothing the platform acts on is read from free-form data.
``labels`` are free-form and only shown to people (e.g. the profile a server asked for).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from loophub.errors import InvalidInput
from loophub.scheduler import keys
from loophub.scheduler.model import KINDS, Request, Resources

NAME = {"type": "string", "maxLength": 255}
MAX_AMOUNT = 1e18  # bytes of memory in a unit at most (and any other resource)
SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "demand"],
    "properties": {
        "kind": {"enum": sorted(KINDS)},
        "owner": {**NAME, "minLength": 1, "description":
                  "whose request it is (default: the caller; admins and the hub's spawner "
                  "may name another user)"},
        "groups": {"type": "array", "items": NAME, "maxItems": 256, "description":
                   "the owner's groups (only with owner; default: the caller's groups)"},
        "demand": {"type": "object", "minProperties": 1, "maxProperties": 16,
                   "propertyNames": {"pattern": "^[a-z_][a-z0-9_]{0,31}$"},
                   "additionalProperties": {"type": "number", "minimum": 0,
                                            "maximum": MAX_AMOUNT},
                   "description": "per unit: cpu (cores), mem (bytes), gpu (devices)"},
        "count": {"type": "integer", "minimum": 1, "maximum": 4096,
                  "description": "units of a gang: all start together or none does"},
        "preemptible": {"type": "boolean"},
        "runtime": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1e9,
                    "description": "expected seconds (for estimates and Slurm --time)"},
        "gpu_type": {"type": ["string", "null"], "maxLength": 255,
                     "description": "a GPU type, or alternatives like 'a100|h100'"},
        "server": {**NAME, "description": "server and kernel requests: the server's name "
                                          "('' for the default server)"},
        "kernel": {**NAME, "minLength": 1, "description": "kernel requests: the kernel id"},
        "job": {**NAME, "minLength": 1, "description": "job requests: the job id"},
        "release": {**NAME, "minLength": 1, "description": "service requests: the release"},
        "replica": {**NAME, "minLength": 1, "description": "service requests: the replica"},
        "labels": {"type": "object", "maxProperties": 32,
                   "additionalProperties": {"type": "string", "maxLength": 1024},
                   "description": "free-form, shown to people; never acted on"},
    },
}
# What each kind must say it belongs to (the parts of its key).
BELONGS_TO: dict[str, tuple[str, ...]] = dict(keys.PARTS)


@dataclass(frozen=True)
class RequestSpec:
    kind: str
    owner: str
    demand: Resources
    count: int = 1
    groups: tuple[str, ...] = ()
    preemptible: bool = False
    runtime: float | None = None
    gpu_type: str | None = None
    server: str | None = None
    kernel: str | None = None
    job: str | None = None
    release: str | None = None
    replica: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidInput(f"request.kind: {self.kind!r} is not one of {sorted(KINDS)}")
        missing = [name for name in BELONGS_TO[self.kind] if getattr(self, name) is None]
        if missing:
            raise InvalidInput(f"request: a {self.kind} request names what it belongs to: "
                               f"{', '.join(missing)}", detail={"field": missing[0]})
        others = [name for parts in BELONGS_TO.values() for name in parts
                  if name not in BELONGS_TO[self.kind] and getattr(self, name) is not None]
        if others:
            raise InvalidInput(f"request: {', '.join(sorted(set(others)))} do(es) not apply "
                               f"to a {self.kind} request", detail={"field": others[0]})
        if self.kind in ("server", "kernel") and self.count != 1:
            raise InvalidInput(f"request.count: a {self.kind} runs on one unit (got "
                               f"{self.count}); ask for a larger unit instead",
                               detail={"field": "count"})
        if not any(v > 0 for v in self.demand.as_dict().values()):
            raise InvalidInput("request.demand: ask for some cpu, mem or gpu",
                               detail={"field": "demand"})

    @property
    def key(self) -> str:
        """The request's key, built from its owner and what it belongs to."""
        return str(keys.RequestKey(self.kind, self.owner, tuple(
            getattr(self, name) for name in BELONGS_TO[self.kind])))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind, "owner": self.owner, "groups": list(self.groups),
            "demand": self.demand.as_dict(), "count": self.count,
            "preemptible": self.preemptible, "runtime": self.runtime,
            "gpu_type": self.gpu_type, "labels": dict(self.labels)}
        out.update({name: getattr(self, name) for name in BELONGS_TO[self.kind]})
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, owner: str | None = None,
                  groups: tuple[str, ...] | list[str] | None = None) -> RequestSpec:
        """A spec from its JSON form (already shape-checked against SPEC_SCHEMA by the API,
        checked again here for other callers). OWNER/GROUPS, when given, are the ones the
        caller is entitled to and replace what the data says."""
        if not isinstance(data, Mapping):
            raise InvalidInput("request: expected an object with kind and demand")
        unknown = set(data) - set(SPEC_SCHEMA["properties"])
        if unknown:
            raise InvalidInput(f"request: unknown fields {sorted(unknown)}",
                               detail={"field": sorted(unknown)[0]})
        demand = data.get("demand")
        if not isinstance(demand, Mapping) or not demand:
            raise InvalidInput('request.demand: expected {"cpu": cores, "mem": bytes, '
                               '"gpu": devices}', detail={"field": "demand"})
        bad = [k for k in demand if not isinstance(k, str) or not k.isidentifier()]
        if bad:
            raise InvalidInput(f"request.demand: {bad[0]!r} is not a resource name",
                               detail={"field": "demand"})
        values = {k: _amount(v, f"demand.{k}", integer=k in ("mem", "gpu"))
                  for k, v in demand.items()}
        count = data.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 4096:
            raise InvalidInput("request.count: a whole number from 1 to 4096",
                               detail={"field": "count"})
        runtime = data.get("runtime")
        if runtime is not None:
            runtime = _amount(runtime, "runtime")
            if runtime <= 0:
                raise InvalidInput("request.runtime: seconds > 0", detail={"field": "runtime"})
        preemptible = data.get("preemptible", False)
        if not isinstance(preemptible, bool):
            raise InvalidInput("request.preemptible: true or false",
                               detail={"field": "preemptible"})
        labels = data.get("labels") or {}
        if not isinstance(labels, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise InvalidInput("request.labels: an object of strings", detail={"field": "labels"})
        owner = owner or data.get("owner")
        if not isinstance(owner, str) or not owner:
            raise InvalidInput("request.owner: missing", detail={"field": "owner"})
        groups = tuple(groups if groups is not None else data.get("groups") or ())
        if not all(isinstance(g, str) for g in groups):
            raise InvalidInput("request.groups: a list of group names", detail={"field": "groups"})
        belongs = {}
        for name in ("server", "kernel", "job", "release", "replica"):
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise InvalidInput(f"request.{name}: a string", detail={"field": name})
            belongs[name] = value
        gpu_type = data.get("gpu_type") or None
        if gpu_type is not None and not isinstance(gpu_type, str):
            raise InvalidInput("request.gpu_type: a string such as 'a100' or 'a100|h100'",
                               detail={"field": "gpu_type"})
        return cls(kind=data.get("kind", "job"), owner=owner, demand=Resources.from_dict(values),
                   count=count, groups=tuple(sorted(set(groups))), preemptible=preemptible,
                   runtime=runtime, gpu_type=gpu_type, labels=dict(labels), **belongs)

    def to_request(self, request_id: str) -> Request:
        """The scheduler core's value (the core knows tenants and demands, not keys)."""
        return Request(id=request_id, tenant=self.owner, demand=self.demand, count=self.count,
                       groups=self.groups, kind=self.kind, preemptible=self.preemptible,
                       runtime=self.runtime, gpu_type=self.gpu_type)


def _amount(value: Any, where: str, *, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0 <= value <= MAX_AMOUNT:
        raise InvalidInput(f"request.{where}: a number from 0 to {MAX_AMOUNT:g}, got {value!r}",
                           detail={"field": where})
    if integer and value != int(value):
        raise InvalidInput(f"request.{where}: a whole number, got {value!r}",
                           detail={"field": where})
    return int(value) if integer else float(value)
