"""The releases' tables (migration 0011): a release (a model served at a stable URL,
its desired version, replicas and canary), its replicas (one scheduler request and one
process each), the append-only history of every change, and its API keys (hashed)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from loophub.store.models import Base, utcnow

RELEASE_STATES = ("active", "stopped")
# queued: its scheduler request waits; starting: its process loads the model;
# ready: routable; draining: out of the route, finishing what it holds; stopped; failed:
# its process died (restarted while the release wants it)
REPLICA_STATES = ("queued", "starting", "ready", "draining", "stopped", "failed")
ROLES = ("stable", "canary")


class Release(Base):
    """A model version served under /services/models/NAME/, owned and shared like a
    dataset (visibility from its access: hub -> public to hub users, group:G -> group,
    public-token -> private, outsiders come with API keys)."""

    __tablename__ = "releases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    visibility: Mapped[str] = mapped_column(String(16))
    group_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    model: Mapped[str] = mapped_column(String(512))        # as asked: NAME@champion
    version: Mapped[str] = mapped_column(String(512))      # resolved: NAME@v3
    artifact: Mapped[str] = mapped_column(String(64))      # its TorchScript blob
    meta: Mapped[dict] = mapped_column(JSON)
    replicas: Mapped[int] = mapped_column(Integer)
    per_replica: Mapped[dict] = mapped_column(JSON)        # demand of one replica
    options: Mapped[dict] = mapped_column(JSON)            # batching, log sampling, ...
    canary: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="active")
    generation: Mapped[int] = mapped_column(Integer, default=1)  # routing changes
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReleaseReplica(Base):
    """One replica: the version it serves, its scheduler request, where its process runs."""

    __tablename__ = "release_replicas"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    version: Mapped[str] = mapped_column(String(512))
    artifact: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    node: Mapped[str | None] = mapped_column(String(255), nullable=True)
    url: Mapped[str | None] = mapped_column(String(255), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    job: Mapped[str | None] = mapped_column(String(64), nullable=True)  # Slurm job (0012)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str] = mapped_column(Text, default="")
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_release_replicas_release_state", "release_id", "state"),)


class ReleaseEvent(Base):
    """Append-only: who changed what about a release, when and why."""

    __tablename__ = "release_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"),
                                            index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


class ReleaseKey(Base):
    """An API key for applications outside the hub: only its sha256 is kept; the key is
    shown once, when it is made."""

    __tablename__ = "release_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"),
                                            index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # lhk_ and 8 characters, to recognise it
    note: Mapped[str] = mapped_column(String(255), default="")
    created_by: Mapped[str] = mapped_column(String(255))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ServingReference(Base):
    """The reference sample drift is measured against, per model artifact: summary
    features of a sample of the training data (the version's dataset), its label counts."""

    __tablename__ = "serving_references"

    artifact: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(512))
    dataset: Mapped[str | None] = mapped_column(String(512), nullable=True)
    reference: Mapped[dict] = mapped_column(JSON)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReleaseFeedback(Base):
    """A caller's word on one answer of a release (migration 0013): the request's id as
    the answer gave it, which instance, the label the caller says is right, a note. The
    feedback loop collects flagged inputs for labeling from these."""

    __tablename__ = "release_feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"))
    request_id: Mapped[str] = mapped_column(String(64))
    instance: Mapped[int] = mapped_column(Integer, default=0)
    label: Mapped[str | None] = mapped_column(String(255), nullable=True)
    note: Mapped[str] = mapped_column(String(1000), default="")
    by: Mapped[str] = mapped_column(String(255))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_release_feedback_release_request", "release_id",
                            "request_id"),)


class CollectSchedule(Base):
    """A collection the platform runs every ``every_s`` seconds (migration 0014): the
    release's inputs chosen by ``rule`` into ``dataset``, as its creator (by name only:
    the run needs no group to reach the release or the dataset)."""

    __tablename__ = "collect_schedules"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"),
                                            index=True)
    dataset: Mapped[str] = mapped_column(String(255))
    rule: Mapped[str] = mapped_column(String(32))
    options: Mapped[dict] = mapped_column(JSON)
    every_s: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(255))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    next_run: Mapped[float] = mapped_column(Float, index=True)  # epoch s: compared in SQL
    last_run: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_result: Mapped[dict | None] = mapped_column(JSON, nullable=True)
