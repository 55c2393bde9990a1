import io
import os

import pytest
from sqlalchemy import select

from loophub.accounts import Account
from loophub.audit import AuditEvent
from loophub.store import BlobIntegrityError, BlobNotFound, BlobStore, Database
from loophub.store.blobs import BlobTooLarge, sha256_bytes


def test_migrations_create_schema_and_are_idempotent(db_url):
    db = Database(db_url)
    assert {"accounts", "audit_events", "alembic_version"} <= set(db.table_names())
    Database(db_url)  # a second start on the same database migrates nothing and works
    db.dispose()


def test_models_and_migrations_agree(db_url):
    """Every room's tables (store.models.TABLE_MODULES) match what the migrations build:
    a model changed without its migration (or the reverse) shows up here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from loophub.store.models import TABLE_MODULES, load_tables

    db = Database(db_url)
    metadata = load_tables().metadata
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                metadata)
    db.dispose()
    assert diff == []
    owners = {table.name: table.info for table in metadata.sorted_tables}
    assert {"jobs", "sched_requests", "sched_transitions", "datasets",
            "labeling_leases", "accounts", "audit_events"} <= set(owners)
    assert len(TABLE_MODULES) == len(set(TABLE_MODULES))


def test_every_table_lives_with_its_room():
    """No room's tables in the shared store module: it only holds the base."""
    import loophub.store.models as shared
    from loophub.store.models import Base

    assert [name for name, value in vars(shared).items()
            if isinstance(value, type) and issubclass(value, Base) and value is not Base] == []


def test_transaction_rolls_back_on_error(db_url):
    db = Database(db_url)
    with pytest.raises(RuntimeError), db.transaction() as s:
        s.add(AuditEvent(actor="ann", action="x"))
        s.flush()
        raise RuntimeError("boom")
    with db.transaction() as s:
        assert s.scalars(select(AuditEvent)).all() == []
        s.add(Account(name="ann", password_hash="h"))
    with db.transaction() as s:
        assert s.get(Account, "ann").password_hash == "h"
    db.dispose()


def test_sqlite_runs_in_wal_with_foreign_keys(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'x.sqlite'}")
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    db.dispose()


def test_blob_roundtrip_dedup_and_layout(tmp_path):
    store = BlobStore(str(tmp_path / "blobs"))
    digest = store.put_bytes(b"hello")
    assert digest == sha256_bytes(b"hello")
    assert store.put_bytes(b"hello") == digest
    assert list(store.iter_digests()) == [digest]
    assert store.path(digest).endswith(f"/{digest[:2]}/{digest[2:4]}/{digest}")
    assert store.get_bytes(digest) == b"hello"
    assert store.size(digest) == 5


@pytest.mark.parametrize("where", ["folder", "memory"])
def test_blob_from_parts_is_the_blob_of_their_concatenation(tmp_path, where):
    url = str(tmp_path / "blobs") if where == "folder" else f"memory://parts-{tmp_path.name}"
    store = BlobStore(url)
    info = store.put_parts([b"he", b"", b"llo"])
    assert (info.digest, info.size, info.created) == (sha256_bytes(b"hello"), 5, True)
    assert store.get_bytes(info.digest) == b"hello"
    assert store.put_parts([b"hello"]).created is False
    assert store.put_bytes(b"hello") == info.digest


def test_blob_stream_large_file_in_chunks(tmp_path):
    store = BlobStore(str(tmp_path / "blobs"))
    payload = os.urandom(3 * 1024 * 1024 + 17)
    info = store.put_stream(io.BytesIO(payload))
    assert info.created and info.size == len(payload)
    assert store.put_stream(io.BytesIO(payload)).created is False
    with store.open(info.digest) as stream:
        assert stream.read() == payload
    assert os.listdir(tmp_path / "blobs" / "tmp") == []


def test_blob_corruption_is_detected_on_read(tmp_path):
    store = BlobStore(str(tmp_path / "blobs"))
    digest = store.put_bytes(b"important")
    with open(store.path(digest), "wb") as f:
        f.write(b"tampered!")
    with pytest.raises(BlobIntegrityError, match="corrupted"):
        store.get_bytes(digest)
    with pytest.raises(BlobIntegrityError), store.open(digest) as stream:
        stream.read()
    assert store.verify(digest) is False


def test_blob_size_limit_leaves_nothing(tmp_path):
    store = BlobStore(str(tmp_path / "blobs"))
    with pytest.raises(BlobTooLarge, match="limit"):
        store.put_stream(io.BytesIO(b"x" * 100), max_bytes=10)
    assert list(store.iter_digests()) == []
    assert os.listdir(tmp_path / "blobs" / "tmp") == []


def test_blob_missing_and_bad_digest(tmp_path):
    store = BlobStore(str(tmp_path / "blobs"))
    with pytest.raises(BlobNotFound):
        store.get_bytes("0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        store.get_bytes("../etc/passwd")


def test_blob_store_on_other_fsspec_backend():
    store = BlobStore("memory://loophub-test-blobs")
    digest = store.put_stream(io.BytesIO(b"in memory")).digest
    assert store.get_bytes(digest) == b"in memory"
    assert store.exists(digest)
    store.check()
