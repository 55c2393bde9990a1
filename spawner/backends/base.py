"""The contract between FairSpawner and an execution backend.

FairSpawner owns the queue (the loophub scheduler decides *whether* and *where*);
a backend only runs the single-user server on the placement it is given, reports
whether it still runs, and stops it. One backend instance per spawner; state it
returns from ``get_state`` is saved in the hub database with the spawner's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from traitlets.config import LoggingConfigurable

from loophub.runtime import Placement

if TYPE_CHECKING:
    from loophub.spawner.fairspawner import FairSpawner


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
