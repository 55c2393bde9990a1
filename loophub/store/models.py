"""SQLAlchemy models shared by every room. Each room adds its tables here or in its
own module importing ``Base``; every table change ships with an Alembic migration."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, DateTime, Float, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSON}


class Account(Base):
    """A login for loophub's own authenticator (passwords hashed with scrypt)."""

    __tablename__ = "accounts"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    password_hash: Mapped[str] = mapped_column(Text)
    admin: Mapped[bool] = mapped_column(default=False)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    password_changed: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEvent(Base):
    """Who did what to what, and when: the trail admins read after the fact."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(255), index=True)
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str] = mapped_column(String(512), default="")
    detail: Mapped[dict] = mapped_column(default=dict)


class SchedRequest(Base):
    """One request to the fair scheduler, from submission to its end (kept for accounting)."""

    __tablename__ = "sched_requests"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str | None] = mapped_column(String(512), index=True)
    tenant: Mapped[str] = mapped_column(String(255), index=True)
    groups: Mapped[list] = mapped_column(JSON, default=list)
    kind: Mapped[str] = mapped_column(String(20))
    spec: Mapped[dict] = mapped_column(default=dict)
    meta: Mapped[dict] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(20), index=True)  # queued running done cancelled
    reason: Mapped[str] = mapped_column(Text, default="")
    submitted_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float)
    allocation: Mapped[dict | None] = mapped_column(JSON)
    preemptions: Mapped[int] = mapped_column(Integer, default=0)


class SchedSnapshot(Base):
    """The scheduler core's exported state (one row), saved with every change."""

    __tablename__ = "sched_snapshot"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[dict] = mapped_column()
    saved_at: Mapped[float] = mapped_column(Float)
