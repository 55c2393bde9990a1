"""Helpers for the datasets tests: fixture paths (from the shared folder) and a service."""

from __future__ import annotations

from pathlib import Path

import pytest

from loophub.datasets.service import Actor, DatasetService
from loophub.store.blobs import BlobStore
from loophub.store.db import Database


@pytest.fixture(scope="session")
def fixtures(shared: Path) -> Path:
    path = shared / "fixtures"
    if not path.is_dir():
        pytest.skip(f"{path} is absent; the importer tests read the shared fixture files")
    return path


@pytest.fixture
def service(db_url, tmp_path) -> DatasetService:
    db = Database(db_url)
    yield DatasetService(db, BlobStore(str(tmp_path / "blobs")))
    db.dispose()


@pytest.fixture
def alice() -> Actor:
    return Actor("alice", ["vision"])


@pytest.fixture
def bob() -> Actor:
    return Actor("bob", ["vision"])


@pytest.fixture
def eve() -> Actor:
    return Actor("eve", ["others"])
