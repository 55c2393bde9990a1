"""Shared by the benchmarks that run a real platform (not a test module)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.hubtest import RunningHub, start_hub

__all__ = ["RunningHub", "start_hub"]
