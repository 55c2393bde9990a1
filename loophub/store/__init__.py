"""Persistence: the relational database (SQLAlchemy + Alembic) and the blob store."""

from loophub.store.blobs import BlobIntegrityError, BlobNotFound, BlobStore
from loophub.store.db import Database, upgrade

__all__ = ["BlobIntegrityError", "BlobNotFound", "BlobStore", "Database", "upgrade"]
