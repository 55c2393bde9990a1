"""Fixtures shared by every room's tests: the shared data folder and the databases.

Store-backed tests take ``db_url`` and run once on SQLite and once on PostgreSQL
(127.0.0.1:5432, database ``test``), each in a schema of its own that is dropped after.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("LOOPHUB_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def shared_dir() -> Path:
    """../shared beside the repo, or LOOPHUB_SHARED."""
    return Path(os.environ.get("LOOPHUB_SHARED", REPO.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is absent; set LOOPHUB_SHARED to it (CI has it)")
    return path


def _postgres_reachable() -> str | None:
    import psycopg

    try:
        with psycopg.connect(PG_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    import psycopg

    problem = _postgres_reachable()
    if problem:
        pytest.skip(f"PostgreSQL at {PG_URL} does not answer ({problem}); start it to run these")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'loophub.sqlite'}"
    return request.getfixturevalue("pg_schema_url")


@pytest.fixture
def api(request, tmp_path, monkeypatch):
    """An in-process API with every route (identity from tokens "user:NAME"); SQLite by
    default, parametrize indirectly with "postgres" for PostgreSQL (tests/inprocess.py)."""
    from tests.inprocess import serve_api

    yield from serve_api(request, tmp_path, monkeypatch)


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    """One real platform (`loophub up`: JupyterHub + proxy + API) for the session."""
    from tests.hubtest import start_hub

    running = start_hub(tmp_path_factory.mktemp("hub") / "home")
    yield running
    running.stop()


@pytest.fixture(scope="session")
def admin_token(hub) -> str:
    return hub.token("root", admin=True)
