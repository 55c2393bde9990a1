"""Execution backends: where a FairSpawner runs a server once the scheduler placed it."""

from .base import Backend, Placement
from .local import LocalBackend

BACKENDS: dict[str, str] = {
    "local": "loophub.spawner.backends.local.LocalBackend",
    "slurm": "loophub.spawner.backends.slurm.SlurmBackend",
}

__all__ = ["BACKENDS", "Backend", "LocalBackend", "Placement"]
