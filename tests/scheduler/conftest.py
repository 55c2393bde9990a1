"""Fixtures for the scheduler tests."""

from __future__ import annotations

import pytest

from loophub.scheduler.workloads import shared_dir


@pytest.fixture
def traces():
    path = shared_dir() / "traces"
    if not (path / "README.md").exists():
        pytest.skip(f"shared traces not found at {path}; set LOOPHUB_SHARED")
    return path
