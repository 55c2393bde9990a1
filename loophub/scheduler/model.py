"""Value types of the scheduler: resource vectors, nodes, requests, allocations, decisions.

Units: cpu in cores (float), mem in bytes (int), gpu in devices (int); any other key is an
extensible resource counted in its own unit. Everything here is plain data and JSON-able.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loophub.pool import NodeSpec

BASE_KEYS: tuple[str, ...] = ("cpu", "mem", "gpu")
KINDS: frozenset[str] = frozenset({"server", "kernel", "job", "service"})
GIB = 1024**3


@dataclass(frozen=True, slots=True)
class Resources:
    """An immutable resource vector; ``extra`` holds extensible resources as sorted pairs."""

    cpu: float = 0.0
    mem: int = 0
    gpu: int = 0
    extra: tuple[tuple[str, float], ...] = ()

    def get(self, key: str) -> float:
        if key in BASE_KEYS:
            return getattr(self, key)
        return dict(self.extra).get(key, 0.0)

    def keys(self) -> list[str]:
        return [*BASE_KEYS, *(k for k, _ in self.extra)]

    def as_dict(self) -> dict[str, float]:
        return {"cpu": self.cpu, "mem": self.mem, "gpu": self.gpu, **dict(self.extra)}

    @classmethod
    def from_dict(cls, values: Mapping[str, float]) -> Resources:
        extra = tuple(sorted((k, float(v)) for k, v in values.items() if k not in BASE_KEYS))
        return cls(cpu=float(values.get("cpu", 0.0)), mem=int(values.get("mem", 0)),
                   gpu=int(values.get("gpu", 0)), extra=extra)

    def scaled(self, factor: int) -> Resources:
        return Resources.from_dict({k: v * factor for k, v in self.as_dict().items()})

    def __add__(self, other: Resources) -> Resources:
        a, b = self.as_dict(), other.as_dict()
        return Resources.from_dict({k: a.get(k, 0) + b.get(k, 0) for k in {*a, *b}})


def parse_gpu_types(value: str | Iterable[str] | None) -> frozenset[str] | None:
    """A gpu_type constraint: one type, or alternatives separated by '|'. None: any type."""
    if value is None or value == "":
        return None
    items = value.split("|") if isinstance(value, str) else list(value)
    types = frozenset(t.strip() for t in items if t.strip())
    return types or None


@dataclass(frozen=True, slots=True)
class Node:
    """A node of the pool: capacity and the GPU type it offers."""

    name: str
    capacity: Resources
    gpu_type: str | None = None
    backend: str = "local"

    @classmethod
    def from_spec(cls, spec: NodeSpec) -> Node:
        return cls(name=spec.name, capacity=Resources(cpu=float(spec.cpu), mem=int(spec.mem),
                                                      gpu=int(spec.gpu)),
                   gpu_type=spec.gpu_type, backend=spec.backend)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "capacity": self.capacity.as_dict(),
                "gpu_type": self.gpu_type, "backend": self.backend}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Node:
        return cls(name=data["name"], capacity=Resources.from_dict(data["capacity"]),
                   gpu_type=data.get("gpu_type"), backend=data.get("backend", "local"))


@dataclass(frozen=True, slots=True)
class Request:
    """A gang of ``count`` identical units, each needing ``demand``; all start or none do."""

    id: str
    tenant: str
    demand: Resources
    count: int = 1
    groups: tuple[str, ...] = ()
    kind: str = "job"
    preemptible: bool = False
    runtime: float | None = None
    gpu_type: str | None = None

    def total(self) -> Resources:
        return self.demand.scaled(self.count)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "tenant": self.tenant, "demand": self.demand.as_dict(),
                "count": self.count, "groups": list(self.groups), "kind": self.kind,
                "preemptible": self.preemptible, "runtime": self.runtime,
                "gpu_type": self.gpu_type}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Request:
        return cls(id=data["id"], tenant=data["tenant"],
                   demand=Resources.from_dict(data["demand"]), count=int(data.get("count", 1)),
                   groups=tuple(data.get("groups", ())), kind=data.get("kind", "job"),
                   preemptible=bool(data.get("preemptible", False)),
                   runtime=data.get("runtime"), gpu_type=data.get("gpu_type"))


@dataclass(frozen=True, slots=True)
class UnitPlacement:
    """Where one unit of a gang runs: node, GPU indices, CPU cores (and core ids), memory."""

    node: str
    gpus: tuple[int, ...]
    cpu: float
    cores: tuple[int, ...] | None
    mem: int

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "gpus": list(self.gpus), "cpu": self.cpu,
                "cores": None if self.cores is None else list(self.cores), "mem": self.mem}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UnitPlacement:
        cores = data.get("cores")
        return cls(node=data["node"], gpus=tuple(data.get("gpus", ())), cpu=float(data["cpu"]),
                   cores=None if cores is None else tuple(cores), mem=int(data["mem"]))


@dataclass(frozen=True, slots=True)
class Allocation:
    request_id: str
    tenant: str
    units: tuple[UnitPlacement, ...]
    start: float

    def nodes(self) -> list[str]:
        return sorted({u.node for u in self.units})

    def to_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "tenant": self.tenant, "start": self.start,
                "units": [u.to_dict() for u in self.units]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Allocation:
        return cls(request_id=data["request_id"], tenant=data["tenant"], start=data["start"],
                   units=tuple(UnitPlacement.from_dict(u) for u in data["units"]))


@dataclass(frozen=True, slots=True)
class Decision:
    """What the caller must do: ``start`` a request on ``allocation`` or ``preempt`` it."""

    action: str
    request_id: str
    allocation: Allocation | None = None
    reason: str = ""


@dataclass
class SchedulerConfig:
    """Tenancy and policy knobs. Weights default to 1; quotas cap what is held at once."""

    weights: dict[str, float] = field(default_factory=dict)
    group_weights: dict[str, float] = field(default_factory=dict)
    # quota: resource key -> cap (bytes for mem); keys not named are not capped
    quotas: dict[str, dict[str, float]] = field(default_factory=dict)
    group_quotas: dict[str, dict[str, float]] = field(default_factory=dict)
    # balanced-drf: requests waiting this long preempt (reserved for from aging_reserve_at);
    # an hour, well inside the starvation guarantee's 4 h (sim.STARVATION_BOUND)
    aging_bound: float = 3600.0
    # balanced-drf: work started by an aged request may not be preempted for this long
    # (None: aging_bound; math.inf: never, the rule before aging_quantum existed)
    aging_quantum: float | None = 1800.0
    max_reservations: int = 4             # aged requests holding reservations at once
    # balanced-drf: whose preemptible work an aged request may take: its own tenant's or
    # more-served tenants' ("more-served": fairness first), or any tenant's ("any": the
    # bound first; see docs/scheduler.md)
    aging_victims: str = "more-served"
    aging_attempts: int = 64              # balanced-drf: aged requests tried per pass
    # balanced-drf: whose aged requests jump DRF order: "tiered" (tenants below their weighted
    # fair share first, as "under-share"; then the other tenants' requests past aging_bound,
    # with reservations but no preemption), "under-share" (only tenants below their share: the
    # guarantee that holds under overload) or "all" (every aged request: under sustained
    # overload everything ages and the order becomes age order)
    aging_scope: str = "tiered"
    # balanced-drf, aging_scope "tiered": what an over-share tenant's request past aging_bound
    # may do when it does not fit: "swap" out its own tenant's work (moves no share), else
    # reserve; or only "reserve"
    aging_over_share: str = "swap"
    # balanced-drf: from this many seconds of waiting a request is served before DRF order and
    # reserved for, but preempts only from aging_bound (None: half of aging_bound)
    aging_reserve_at: float | None = None
    # balanced-drf: a tenant below its fair share (any tenant with aging_scope "all") whose
    # queue head has waited this long (at least aging_bound) is served before every other
    # aged request, the tenants in turn (whoever was served so longest ago first), and may
    # preempt any tenant's preemptible work that has run one quantum: time-slicing, so the
    # starvation guarantee holds even where the only nodes a request fits on are held by a
    # less-served tenant's long job. None: off (the default; it costs Jain on the tuning
    # half, docs/scheduler.md "What was changed" item 14)
    aging_urgent_at: float | None = None
    preemption: bool = False              # preempt preemptible work for below-fair-share tenants
    preemption_grace: float = 300.0       # a request waits this long before it may preempt
    preempt_on_aging: bool = True         # balanced-drf: aged requests preempt preemptible work
    backfill: bool = True                 # fifo / slurm-fairshare: EASY backfill
    backfill_depth: int = 200             # queued requests examined per backfill pass
    slurm_billing: str = "max"            # slurm-fairshare: "sum" or "max" (MAX_TRES)
    slurm_half_life: float = 7 * 86400.0  # decay half-life of recorded usage
    slurm_age_weight: float = 1000.0
    slurm_fairshare_weight: float = 10000.0
    slurm_max_age: float = 7 * 86400.0
    slurm_calc_period: float = 300.0      # priorities are recomputed at most this often
    tetris_window: int = 64               # queued requests considered per tetris pick
    tenant_lookahead: int = 8             # drf / balanced-drf: queued requests tried per tenant
    score_sample: int = 128               # feasible nodes scored per unit, in node order
    balanced_stranding_weight: float = 4.0
    balanced_packing_weight: float = 4.0
    # balanced-drf: weight of best fit on GPUs for GPU units (0: off, the placement before it)
    balanced_gpu_fit_weight: float = 8.0
    # balanced-drf: stranding of a resource counts (its pressure / the bottleneck's) ** this
    # (policies.stranding_scale; 0: every resource in full, the rule before)
    balanced_stranding_pressure: float = 4.0

    def quantum(self) -> float:
        return self.aging_bound if self.aging_quantum is None else self.aging_quantum

    def to_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SchedulerConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})
