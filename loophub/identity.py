"""Who is asking: the one identity type every room's permission checks take."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Actor:
    """A hub user (or hub service), the groups they belong to, and whether they are admin.

    ``via`` names the service acting for this user (the spawner queueing a user's server,
    the training runner reading a user's dataset): checks use the user's rights, the
    audit trail shows both.
    """

    name: str
    groups: tuple[str, ...] = ()
    admin: bool = False
    kind: str = "user"  # "user" or "service"
    via: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(sorted(set(self.groups))))

    def acting_for(self, user: str, groups: tuple[str, ...] | list[str] = (),
                   admin: bool = False) -> Actor:
        """The user this service acts for, with the user's rights (not the service's)."""
        return Actor(name=user, groups=tuple(groups), admin=admin, kind="user",
                     via=self.via or self.name)

    def with_groups(self, groups: tuple[str, ...] | list[str]) -> Actor:
        return replace(self, groups=tuple(groups))
