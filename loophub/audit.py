"""The audit trail: who changed what, when, and why; every room writes to it.

A state-changing action records its event in the same transaction as the change, so
the trail and the data never disagree. Admins read it filtered by actor, object
(target, or a prefix such as ``dataset:pets``) and time.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from loophub.identity import Actor
from loophub.store.models import Base, iso, utcnow

MAX_PAGE = 1000


class AuditEvent(Base):
    """Who did what to what, and when: the trail admins read after the fact."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(255), index=True)
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str] = mapped_column(String(512), default="", index=True)
    detail: Mapped[dict] = mapped_column(default=dict)


def actor_name(actor: Actor | str) -> str:
    """'alice', or 'loophub-spawner for alice' when a service acts for a user."""
    if isinstance(actor, str):
        return actor
    return f"{actor.via} for {actor.name}" if actor.via else actor.name


def record(session: Session, actor: Actor | str, action: str, target: str = "", /,
           **detail: object) -> None:
    """Add one event to the caller's transaction (committed, or rolled back, with it)."""
    session.add(AuditEvent(actor=actor_name(actor), action=action, target=target,
                           detail={k: v for k, v in detail.items() if v is not None}))


def events(session: Session, *, actor: str | None = None, action: str | None = None,
           target: str | None = None, since: datetime | None = None,
           until: datetime | None = None, before: int | None = None,
           limit: int = 100) -> list[dict]:
    """Events newest first. ``target`` matches exactly or as a prefix ending in ':' or
    '/' (``dataset:pets`` finds ``dataset:pets`` and ``dataset:pets/v3``); ``action``
    matches exactly or a prefix ending in '.'; ``before`` pages by event id."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(max(1, min(limit, MAX_PAGE)))
    if actor:
        query = query.where(AuditEvent.actor == actor)
    if action:
        query = query.where(AuditEvent.action.startswith(action, autoescape=True)
                            if action.endswith(".") else AuditEvent.action == action)
    if target:
        query = query.where((AuditEvent.target == target)
                            | AuditEvent.target.startswith(target + ":", autoescape=True)
                            | AuditEvent.target.startswith(target + "/", autoescape=True))
    if since:
        query = query.where(AuditEvent.at >= since)
    if until:
        query = query.where(AuditEvent.at < until)
    if before:
        query = query.where(AuditEvent.id < before)
    return [{"id": e.id, "at": iso(e.at), "actor": e.actor, "action": e.action, "target": e.target,
             "detail": e.detail} for e in session.scalars(query)]
