"""A digest is a name, not a right: who may refer to a blob.

Knowing a blob's sha256 must not let anyone read it. A user may put a digest in
something of theirs (a record's media, an import, and next a model's artifact or a
checkpoint) only when they uploaded those bytes themselves (a grant, written when the
platform stores bytes a user sent) or can read something that already holds the blob
(each room answers that for its own things, e.g. a dataset the user can read). Rooms
check through ``may_reference`` with their own holders.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from sqlalchemy import DateTime, String, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from loophub.errors import NotFound
from loophub.identity import Actor
from loophub.store.models import Base, utcnow

# A room's answer to "does ACTOR read something that holds these digests?"
Holders = Callable[[Session, Actor, set[str]], set[str]]


class BlobGrant(Base):
    """USER sent these bytes (an upload, a file inside an import)."""

    __tablename__ = "blob_grants"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    user: Mapped[str] = mapped_column(String(255), primary_key=True)
    granted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def grant(session: Session, user: str, digests: Iterable[str]) -> None:
    rows = [{"digest": d, "user": user, "granted_at": utcnow()} for d in set(digests)]
    if not rows:
        return
    insert = pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
    session.execute(insert(BlobGrant).values(rows).on_conflict_do_nothing())


def may_reference(session: Session, actor: Actor, digests: Iterable[str],
                  holders: Iterable[Holders] = ()) -> set[str]:
    """The digests among DIGESTS that ACTOR may NOT refer to (empty: all allowed)."""
    wanted = set(digests)
    if not wanted or actor.admin:
        return set()
    granted = set(session.scalars(select(BlobGrant.digest).where(
        BlobGrant.user == actor.name, BlobGrant.digest.in_(wanted))))
    missing = wanted - granted
    for held in holders:
        if not missing:
            break
        missing -= held(session, actor, missing)
    return missing


def refuse(missing: set[str], where: str) -> NotFound:
    """The error for digests an actor may not use: the same as for a blob that does not
    exist, so a probe learns nothing about other users' data."""
    first = sorted(missing)[0]
    return NotFound(f"{where}: no blob {first} that you uploaded or can read; upload the "
                    "file (POST datasets/uploads) and use the digest it returns",
                    detail={"digests": sorted(missing)[:10]})
