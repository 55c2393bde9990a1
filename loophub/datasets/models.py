"""Dataset tables (migration 0002). The draft lives in ``dataset_records``; versions
are rows pointing at manifest blobs; packs, manifests and media are blobs."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from loophub.store.models import Base, utcnow

STATES = ("active", "published", "archived", "deleted")
VISIBILITIES = ("private", "group", "public")


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    group_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    visibility: Mapped[str] = mapped_column(String(16), default="private")
    description: Mapped[str] = mapped_column(Text, default="")
    label_schema: Mapped[dict] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="active")
    state_changed_by: Mapped[str] = mapped_column(String(255))
    state_changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Every draft write takes the next seq under this row's lock; a commit covers seq <= N.
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    committed_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    head_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    version_count: Mapped[int] = mapped_column(Integer, default=0)
    purged: Mapped[bool] = mapped_column(Boolean, default=False)  # GC removed its blobs


class DraftRecord(Base):
    """The working copy of one record; ``revision`` is its optimistic-concurrency token."""

    __tablename__ = "dataset_records"

    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"),
                                            primary_key=True)
    record_id: Mapped[str] = mapped_column(String(1024), primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    seq: Mapped[int] = mapped_column(BigInteger)
    content: Mapped[str] = mapped_column(Text)
    hash: Mapped[str] = mapped_column(String(64))
    split: Mapped[str | None] = mapped_column(String(64), nullable=True)
    labels: Mapped[str] = mapped_column(Text, default="")
    annotated: Mapped[bool] = mapped_column(Boolean, default=False)
    annotators: Mapped[str] = mapped_column(Text, default="")
    media_sha: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # lowest pending prediction score of a record no person labeled (records.
    # prediction_confidence): the labelers' "uncertain first" order (migration 0010)
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    base_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    base_labels: Mapped[str | None] = mapped_column(Text, nullable=True)
    # where a bulk import already packed ``content`` (None after a single-record edit)
    pack: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pack_offset: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    pack_length: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_by: Mapped[str] = mapped_column(String(255), default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        Index("ix_dataset_records_seq", "dataset_id", "seq"),
        Index("ix_dataset_records_annotated", "dataset_id", "annotated"),
        # a commit's stream of rows no import packed (migration 0006)
        Index("ix_dataset_records_unpacked", "dataset_id", "seq",
              sqlite_where=text("pack IS NULL"), postgresql_where=text("pack IS NULL")),
        # who holds a blob (may a user refer to a digest? loophub.store.grants)
        Index("ix_dataset_records_media", "media_sha", sqlite_where=text("media_sha IS NOT NULL"),
              postgresql_where=text("media_sha IS NOT NULL")),
        # uncertain-first leases read it in order; only predicted, unlabeled rows are in it
        Index("ix_dataset_records_confidence", "dataset_id", "confidence", "record_id",
              sqlite_where=text("confidence IS NOT NULL"),
              postgresql_where=text("confidence IS NOT NULL")),
    )


class DatasetVersion(Base):
    __tablename__ = "dataset_versions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"),
                                            index=True)
    number: Mapped[int] = mapped_column(Integer)
    parents: Mapped[list] = mapped_column(JSON, default=list)
    author: Mapped[str] = mapped_column(String(255))
    message: Mapped[str] = mapped_column(Text, default="")
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delta: Mapped[str | None] = mapped_column(String(64), nullable=True)
    snapshot: Mapped[str | None] = mapped_column(String(64), nullable=True)
    chain: Mapped[int] = mapped_column(Integer, default=0)
    record_count: Mapped[int] = mapped_column(Integer, default=0)
    label_counts: Mapped[dict] = mapped_column(JSON, default=dict)
    label_schema: Mapped[dict] = mapped_column(JSON)
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (UniqueConstraint("dataset_id", "number"),)


class DatasetTag(Base):
    __tablename__ = "dataset_tags"

    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"),
                                            primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("dataset_versions.id"), index=True)
    created_by: Mapped[str] = mapped_column(String(255))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DatasetStateChange(Base):
    __tablename__ = "dataset_state_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"),
                                            index=True)
    from_state: Mapped[str] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DatasetLineage(Base):
    """A model version trained (or evaluated) on a dataset version. The models registry
    refers to these rows by (model_name, model_version)."""

    __tablename__ = "dataset_lineage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("dataset_versions.id"), index=True)
    model_name: Mapped[str] = mapped_column(String(255))
    model_version: Mapped[str] = mapped_column(String(255))
    relation: Mapped[str] = mapped_column(String(32), default="trained_on")
    created_by: Mapped[str] = mapped_column(String(255))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        UniqueConstraint("version_id", "model_name", "model_version", "relation"),
        Index("ix_dataset_lineage_model", "model_name", "model_version"),
    )


class DatasetPin(Base):
    """An explicit reference (a release, a report) that keeps a version from collection."""

    __tablename__ = "dataset_pins"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("dataset_versions.id"), index=True)
    ref: Mapped[str] = mapped_column(String(512))
    created_by: Mapped[str] = mapped_column(String(255))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("version_id", "ref"),)


class DatasetBlob(Base):
    """Blobs the datasets room wrote: the only ones its garbage collector may delete."""

    __tablename__ = "dataset_blobs"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
