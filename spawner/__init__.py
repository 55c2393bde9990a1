"""FairSpawner and its execution backends (README: "Where each room lives")."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .fairspawner import FairSpawner

__all__ = ["FairSpawner"]


def __getattr__(name: str):
    # FairSpawner on first use: importing jupyterhub's spawner takes about 1 s, which the
    # kernel provisioner and the `loophub` command would otherwise pay
    if name == "FairSpawner":
        from .fairspawner import FairSpawner

        return FairSpawner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
