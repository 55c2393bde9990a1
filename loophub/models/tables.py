"""The model registry's tables (migration 0009): registered models, their immutable
versions, aliases (mutable pointers) and the append-only history of every change to
them. A version's artifact and metadata are blobs; its lineage to the dataset version it
learnt from is also a datasets lineage row, so the datasets' GC keeps that version."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from loophub.store.models import Base, utcnow

MODEL_STATES = ("active", "deleted")
VERSION_STATES = ("ready", "archived", "deleted")


class RegisteredModel(Base):
    """A name that versions are registered under, owned and shared like a dataset."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    group_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    visibility: Mapped[str] = mapped_column(String(16), default="private")
    description: Mapped[str] = mapped_column(Text, default="")
    task: Mapped[str] = mapped_column(String(64))
    label_schema: Mapped[dict] = mapped_column(JSON)
    tags: Mapped[dict] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="active")
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    version_count: Mapped[int] = mapped_column(Integer, default=0)


class ModelVersion(Base):
    """One immutable version: what it is (artifact, signature, framework), where it came
    from (job, dataset version, parameters, metrics) and its card. Only its tags, state
    and card change after registration, each change written to the history."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    artifact: Mapped[str] = mapped_column(String(64))      # TorchScript blob
    meta: Mapped[dict] = mapped_column(JSON)                # task, preprocess, labels, ...
    size: Mapped[int] = mapped_column(BigInteger)
    signature: Mapped[dict] = mapped_column(JSON)           # request/response JSON Schemas
    framework: Mapped[dict] = mapped_column(JSON)           # format, torch, packages
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    dataset: Mapped[str | None] = mapped_column(String(255), nullable=True)
    dataset_version_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dataset_version_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    card: Mapped[dict] = mapped_column(JSON, default=dict)  # text, intended_use, limits
    tags: Mapped[dict] = mapped_column(JSON, default=dict)
    # the promotion gate: the version's tests and the outcome of their last run
    tests: Mapped[list] = mapped_column(JSON, default=list)
    test_status: Mapped[str] = mapped_column(String(16), default="untested")
    test_results: Mapped[dict] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="ready")
    created_by: Mapped[str] = mapped_column(String(255))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("model_id", "number", name="uq_model_versions_number"),)


class ModelAlias(Base):
    """NAME@ALIAS points at one version until it is moved (champion, challenger, ...)."""

    __tablename__ = "model_aliases"

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"),
                                          primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    moved_by: Mapped[str] = mapped_column(String(255))
    moved_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelEvent(Base):
    """One change to a model, its versions or aliases, never updated or deleted: who,
    when, what (alias moved, tag set, state changed, version deleted ...), from, to, why."""

    __tablename__ = "model_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(Integer)  # kept after the model is deleted
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(255))        # "v3", "alias:champion", "model"
    before: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (Index("ix_model_history_model", "model_id", "id"),)


class ModelEvaluation(Base):
    """One evaluation of a version on a dataset version's split: the fairly scheduled job
    that ran it and, once it reported, its result (metrics overall and by slice). Both
    references are exact (version number, dataset version id), so it can be rerun."""

    __tablename__ = "model_evaluations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    dataset: Mapped[str] = mapped_column(String(255))
    dataset_version_id: Mapped[str] = mapped_column(String(64))
    dataset_version_number: Mapped[int] = mapped_column(Integer)
    split: Mapped[str | None] = mapped_column(String(64), nullable=True)
    slices: Mapped[list] = mapped_column(JSON, default=list)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    result: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_by: Mapped[str] = mapped_column(String(255))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (Index("ix_model_evaluations_version", "model_id", "version"),)
