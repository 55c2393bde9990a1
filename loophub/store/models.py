"""The declarative base every room's tables derive from, and the list of those rooms.

Each room owns its tables in a module of its own (``TABLE_MODULES``); every table
change ships with an Alembic migration, and tests/test_store.py checks on SQLite and
PostgreSQL that the models and the migrations agree.
"""

from __future__ import annotations

import importlib
from datetime import UTC, datetime

from sqlalchemy import JSON
from sqlalchemy.orm import DeclarativeBase

# The modules that define tables, one per room (imported by migrations and the check).
TABLE_MODULES: tuple[str, ...] = (
    "loophub.accounts",
    "loophub.audit",
    "loophub.store.grants",
    "loophub.jobs",
    "loophub.scheduler.tables",
    "loophub.datasets.models",
    "loophub.labeling.models",
    "loophub.training.tables",
    "loophub.models.tables",
    "loophub.releases.tables",
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """MOMENT with its time zone: SQLite gives back naive datetimes for UTC columns."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def iso(moment: datetime | None) -> str | None:
    """An ISO 8601 time that says its zone ('...+00:00'), for every API answer."""
    return aware(moment).isoformat() if moment is not None else None


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSON}


def load_tables() -> type[Base]:
    """Import every room's tables so ``Base.metadata`` knows them all."""
    for module in TABLE_MODULES:
        importlib.import_module(module)
    return Base
