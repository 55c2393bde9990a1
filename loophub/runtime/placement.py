"""A unit of a scheduler allocation, and what a process running on it sees."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Placement:
    """One unit of an allocation, as the scheduler placed it."""

    node: str
    cpu: float
    mem: int
    gpus: tuple[int, ...] = ()
    cores: tuple[int, ...] | None = None
    runtime: float | None = None  # seconds the process may run (Slurm --time)

    @classmethod
    def from_unit(cls, unit: Mapping[str, Any], runtime: float | None = None) -> Placement:
        cores = unit.get("cores")
        return cls(node=unit["node"], cpu=float(unit["cpu"]), mem=int(unit["mem"]),
                   gpus=tuple(unit.get("gpus") or ()),
                   cores=tuple(cores) if cores is not None else None, runtime=runtime)

    def env(self) -> dict[str, str]:
        """What the unit's processes see of their allocation."""
        threads = str(max(1, int(self.cpu)))
        return {
            "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in self.gpus),
            "LOOPHUB_ALLOC_CPU": f"{self.cpu:g}",
            "LOOPHUB_ALLOC_MEM": str(self.mem),
            "LOOPHUB_ALLOC_GPUS": ",".join(str(g) for g in self.gpus),
            "LOOPHUB_ALLOC_NODE": self.node,
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
        }


def placements(allocation: Mapping[str, Any], runtime: float | None = None) -> list[Placement]:
    """Every unit of an allocation (a gang of N units gives N placements, in rank order)."""
    units = allocation.get("units") or []
    if not units:
        raise ValueError("the allocation has no units")
    return [Placement.from_unit(unit, runtime) for unit in units]
