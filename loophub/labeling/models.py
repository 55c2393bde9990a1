"""Tables of the labeling room: per-dataset labeling settings and item leases."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Float, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from loophub.store.models import Base, utcnow


class LabelingConfig(Base):
    """How a dataset is labeled: annotations wanted per item (overlap), lease length, and the
    order items are handed out in."""

    __tablename__ = "labeling_configs"

    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"),
                                            primary_key=True)
    overlap: Mapped[int] = mapped_column(Integer, default=1)
    lease_seconds: Mapped[float] = mapped_column(Float, default=600.0)
    # the order new items are leased in: "id", or "uncertain" (lowest model confidence
    # first; migration 0010)
    lease_order: Mapped[str] = mapped_column(String(16), default="id")
    updated_by: Mapped[str] = mapped_column(String(255), default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Lease(Base):
    """One item held by one labeler until ``expires_at`` (epoch seconds).

    An active lease occupies one of the item's ``overlap`` slots; the unique slot
    constraint is what keeps two labelers racing for the last slot from both winning.
    A skipped item keeps a row without a slot so it is not offered to that labeler again.
    """

    __tablename__ = "labeling_leases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    record_id: Mapped[str] = mapped_column(String(1024))
    holder: Mapped[str] = mapped_column(String(255))
    slot: Mapped[int | None] = mapped_column(Integer, nullable=True)
    state: Mapped[str] = mapped_column(String(16))  # active | skipped
    acquired_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        UniqueConstraint("dataset_id", "record_id", "slot", name="uq_lease_slot"),
        UniqueConstraint("dataset_id", "record_id", "holder", name="uq_lease_holder"),
        Index("ix_labeling_leases_holder", "dataset_id", "holder"),
    )
