"""The training room's tables: one run row per training job (what it resolved and holds),
its metrics as a time series, its checkpoints and its workers' log lines. The job itself
is a loophub.jobs row (kind "train"), so every job is listed, cancelled and audited the
same way."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from loophub.store.models import Base, utcnow


class TrainingRun(Base):
    """What a training job resolved when it was accepted, and what it holds now."""

    __tablename__ = "training_runs"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dataset: Mapped[str] = mapped_column(String(255))
    version_id: Mapped[str] = mapped_column(String(64))       # the exact dataset version
    version_number: Mapped[int] = mapped_column(Integer)
    task: Mapped[str] = mapped_column(String(64), default="")
    groups: Mapped[list] = mapped_column(JSON, default=list)  # the owner's, at submission
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # starts, retries included
    retries: Mapped[int] = mapped_column(Integer, default=0)  # after lost workers
    preemptions: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(BigInteger, default=0)  # the last step reported
    checkpoint_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    packages: Mapped[dict] = mapped_column(JSON, default=dict)


class TrainingMetric(Base):
    """One value of one metric at one step (loss, lr, throughput, validation metrics)."""

    __tablename__ = "training_metrics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(BigInteger)
    epoch: Mapped[float | None] = mapped_column(Float, nullable=True)
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_training_metrics_job", "job_id", "id"),)


class TrainingCheckpoint(Base):
    """A checkpoint blob (model, optimizer, scheduler, RNG states, step, epoch)."""

    __tablename__ = "training_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32))
    step: Mapped[int] = mapped_column(BigInteger)
    epoch: Mapped[float | None] = mapped_column(Float, nullable=True)
    digest: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    metric: Mapped[float | None] = mapped_column(Float, nullable=True)  # for "keep the best"
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_training_checkpoints_job", "job_id", "step"),)


class TrainingLog(Base):
    """A line a worker wrote (rank, time), read incrementally by the log tail."""

    __tablename__ = "training_logs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32))
    rank: Mapped[int] = mapped_column(Integer, default=0)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    line: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_training_logs_job", "job_id", "id"),)
