"""Times carry their time zone wherever they are read: API answers (SQLite gives back
naive datetimes) and the CLI's `data log` and `jobs` lines."""

from __future__ import annotations

import argparse
import io
import json
from datetime import datetime

from loophub.datasets.service import Actor, DatasetService
from loophub.store.blobs import BlobStore
from loophub.store.db import Database


def test_a_records_updated_at_says_its_zone(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    service = DatasetService(db, BlobStore(str(tmp_path / "blobs")))
    alice = Actor("alice", [])
    service.create_dataset(alice, "t")
    service.import_data(alice, "t", "loophub",
                        io.BytesIO(json.dumps({"id": "r1", "annotations": []}).encode()))
    updated = service.get_record(alice, "t", "r1")["updated_at"]
    assert datetime.fromisoformat(updated).tzinfo is not None, updated
    db.dispose()


def test_api_json_gives_naive_datetimes_as_utc():
    from loophub.extensions.api.base import _json_default

    assert _json_default(datetime(2026, 12, 6, 14, 0)).endswith("+00:00")


class _Fake:
    def __init__(self, jobs=(), versions=()):
        self.jobs = argparse.Namespace(list=lambda **_: list(jobs))
        self.datasets = argparse.Namespace(log=lambda *_a, **_k: list(versions))


def test_cli_jobs_and_data_log_print_the_zone(monkeypatch, capsys):
    from loophub.datasets import cli as data_cli
    from loophub.training import cli as training_cli

    job = {"id": "j1", "kind": "import", "state": "done",
           "created_at": "2026-12-06T14:03:07.123456+00:00", "target": "dataset:pets"}
    monkeypatch.setattr(training_cli, "client_from", lambda _args: _Fake(jobs=[job]))
    training_cli.handle_jobs(argparse.Namespace(kind=None, state=None, limit=20))
    line = capsys.readouterr().out
    assert "2026-12-06 14:03:07 UTC" in line, line

    version = {"number": 1, "created": "2026-12-06T14:03:07.123456+00:00", "author": "ann",
               "records": 3, "message": "first"}
    monkeypatch.setattr(data_cli, "client_from", lambda _args: _Fake(versions=[version]))
    data_cli.handle_log(argparse.Namespace(name="pets", limit=20))
    line = capsys.readouterr().out
    assert "2026-12-06 14:03:07 UTC" in line, line
