"""The contract between FairSpawner and an execution backend.

FairSpawner owns the queue (the loophub scheduler decides *whether* and *where*);
a backend only runs the single-user server on the placement it is given, reports
whether it still runs, and stops it. One backend instance per spawner; state it
returns from ``get_state`` is saved in the hub database with the spawner's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from traitlets.config import LoggingConfigurable

if TYPE_CHECKING:
    from loophub.spawner.fairspawner import FairSpawner


@dataclass(frozen=True)
class Placement:
    """One unit of an allocation, as the scheduler placed it."""

    node: str
    cpu: float
    mem: int
    gpus: tuple[int, ...] = ()
    cores: tuple[int, ...] | None = None
    runtime: float | None = None  # seconds the server may run (Slurm --time)

    @classmethod
    def from_unit(cls, unit: dict, runtime: float | None = None) -> Placement:
        cores = unit.get("cores")
        return cls(node=unit["node"], cpu=float(unit["cpu"]), mem=int(unit["mem"]),
                   gpus=tuple(unit.get("gpus") or ()),
                   cores=tuple(cores) if cores is not None else None, runtime=runtime)

    def env(self) -> dict[str, str]:
        """What the server's processes see of their allocation."""
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


class Backend(LoggingConfigurable):
    """Subclass and implement launch/poll/stop; keep per-server state in traits."""

    async def launch(self, spawner: FairSpawner, placement: Placement) -> tuple[str, int]:
        """Start the server; return (ip, port) once it is started (not necessarily ready)."""
        raise TypeError(f"{type(self).__name__} must implement launch()")

    async def poll(self, spawner: FairSpawner) -> int | None:
        """None while running, else an exit status."""
        raise TypeError(f"{type(self).__name__} must implement poll()")

    async def stop(self, spawner: FairSpawner, now: bool = False) -> None:
        raise TypeError(f"{type(self).__name__} must implement stop()")

    def get_state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        """Restore what get_state returned (after a hub restart)."""

    def clear_state(self) -> None:
        """Forget the server (it has stopped)."""
