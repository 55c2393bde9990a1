"""Who may read, write and manage an owned thing: datasets today, jobs, models and
releases next. One set of rules, so every room answers the same way.

An owned thing has an ``owner``, a ``visibility`` (private, group, public), an optional
``group_name`` it is shared with, and optionally a lifecycle ``state``:

- read: admins, the owner, members of its group, and everyone when it is public
  (a deleted thing only for its owner and admins);
- write: admins, the owner, members of its group (public gives read, never write);
- manage (visibility, state, sharing, deletion): admins and the owner.

A service acting for a user (``Actor.via``) has exactly that user's rights. Checks take a
loaded row: they never query, so a permission check never scans a table.
"""

from __future__ import annotations

from typing import Literal, Protocol

from sqlalchemy import ColumnElement, and_, or_, true

from loophub.errors import NotFound, PermissionDenied
from loophub.identity import Actor

Need = Literal["read", "write", "manage"]
VISIBILITIES = ("private", "group", "public")


class Owned(Protocol):
    owner: str
    visibility: str
    group_name: str | None


def _member(actor: Actor, thing: Owned) -> bool:
    return thing.group_name is not None and thing.group_name in actor.groups


def can_read(actor: Actor, thing: Owned) -> bool:
    if actor.admin or thing.owner == actor.name:
        return True
    if getattr(thing, "state", None) == "deleted":
        return False
    return thing.visibility == "public" or _member(actor, thing)


def can_write(actor: Actor, thing: Owned) -> bool:
    return actor.admin or thing.owner == actor.name or _member(actor, thing)


def can_manage(actor: Actor, thing: Owned) -> bool:
    return actor.admin or thing.owner == actor.name


def require(actor: Actor, thing: Owned, need: Need, *, noun: str, name: str) -> None:
    """Raise unless ACTOR has NEED on THING. What the actor may not read does not exist
    for them (404, so names do not leak); what they read but may not change is a 403
    that says whom to ask."""
    if not can_read(actor, thing):
        raise NotFound(f"no {noun} named {name!r} that you can see; ask its owner to share "
                       "it with your group or make it public")
    if need == "write" and not can_write(actor, thing):
        raise PermissionDenied(f"you can read {noun} {name!r} but not change it; ask its "
                               f"owner {thing.owner} to share it with one of your groups")
    if need == "manage" and not can_manage(actor, thing):
        raise PermissionDenied(f"only the owner ({thing.owner}) or an admin can do this to "
                               f"{noun} {name!r}")


def readable_filter(actor: Actor, model: type) -> ColumnElement[bool]:
    """The SQL condition for the rows of MODEL (a table of owned things) ACTOR can read,
    the same rule as ``can_read``: listings filter in the query, not in Python."""
    if actor.admin:
        return true()
    shared = or_(model.visibility == "public", model.group_name.in_(actor.groups))
    if hasattr(model, "state"):
        shared = and_(model.state != "deleted", shared)
    return or_(model.owner == actor.name, shared)
