"""A model server's state file (``--state-file``): where it listens, once it does, then
its exit code. A launcher whose replicas run on other machines (Slurm) reads it from the
shared file system: the port is chosen by the server there, and squeue knows no exit
codes."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_state(path: Path, state: dict) -> None:
    """Written whole, then renamed: a reader never sees half of it."""
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    part.write_text(json.dumps(state))
    part.replace(path)


def read_state(path: Path) -> dict:
    """{} until the server wrote it (or where it cannot be read)."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}
