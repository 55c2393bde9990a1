"""FairSpawner and its execution backends (README: "Where each room lives")."""

from .fairspawner import FairSpawner

__all__ = ["FairSpawner"]
