"""The scheduler room's tables: requests (kept after they end, for accounting), the core's
exported state, and every transition of every request with its cause."""

from __future__ import annotations

from sqlalchemy import JSON, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from loophub.store.models import Base


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
    # who submitted it (the holder: the spawner for servers, the server for kernels); an end
    # caused by anyone else stops the process it holds
    submitted_by: Mapped[str] = mapped_column(String(255), default="")


class SchedSnapshot(Base):
    """The scheduler core's exported state (one row), saved with every change."""

    __tablename__ = "sched_snapshot"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[dict] = mapped_column()
    saved_at: Mapped[float] = mapped_column(Float)


class SchedTransition(Base):
    """A request moved from one state to another: when, why, and on which stimulus.

    The stimulus id ties together everything one event caused (a submit that preempted
    two servers, a tick that started five requests), as in distributed's scheduler."""

    __tablename__ = "sched_transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float)
    action: Mapped[str] = mapped_column(String(16))  # submit start preempt end
    state: Mapped[str] = mapped_column(String(20))   # the state it moved to
    stimulus: Mapped[str] = mapped_column(String(128), index=True)
    actor: Mapped[str] = mapped_column(String(255), default="")
    reason: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (Index("ix_sched_transitions_request", "request_id", "id"),)
