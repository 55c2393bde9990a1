"""Who is asking: the one identity type every room's permission checks take."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    """A hub user (or hub service), the groups they belong to, and whether they are admin."""

    name: str
    groups: tuple[str, ...] = ()
    admin: bool = False
    kind: str = "user"  # "user" or "service"

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(sorted(set(self.groups))))
