"""Where a release's request goes: its route (who may call it, its ready replicas per
version, the canary's share of traffic) and the choice of one replica for a request.

Pure: the gateway (gateway.py) holds a ``RouteTable`` that it reloads when the releases'
rows change (releases.py builds it), and calls ``ReleaseRoute.choose`` per request. A
request key (``sticky_header``'s value, e.g. a user id) always lands on the same side of
a canary split, so one user never sees two versions flip back and forth.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from loophub.access import can_read
from loophub.identity import Actor

BUCKETS = 10_000  # a canary percent is honoured to 0.01


@dataclass(frozen=True)
class Backend:
    """One ready replica: its URL (no trailing slash), id, and the version it serves."""

    url: str
    replica: str
    version: str  # NAME@vN


@dataclass(frozen=True)
class ReleaseRoute:
    """A release as the gateway sees it. ``visibility``/``group_name`` follow
    loophub.access (hub: public to hub users; group:NAME: group; public-token: private,
    outsiders come with API keys)."""

    name: str
    owner: str
    visibility: str
    group_name: str | None = None
    stable: tuple[Backend, ...] = ()
    canary: tuple[Backend, ...] = ()
    canary_percent: float = 0.0
    sticky_header: str | None = None
    state: str = "active"

    def may_call(self, actor: Actor) -> bool:
        """Hub users' right to call: the read rule of every owned thing."""
        return can_read(actor, self)

    def choose(self, key: str | None = None, rng: random.Random | None = None
               ) -> Backend | None:
        """The replica for one request (None: nothing ready). The canary's share is
        ``canary_percent``; with KEY the side is fixed by its hash, the replica within a
        side is spread round the ready ones."""
        side = self.stable
        if self.canary and (not self.stable or self._canary_side(key, rng)):
            side = self.canary
        if not side:
            return None
        return side[0] if len(side) == 1 else (rng or random).choice(side)

    def _canary_side(self, key: str | None, rng: random.Random | None) -> bool:
        if key is not None:
            digest = hashlib.blake2b(f"{self.name}\0{key}".encode(), digest_size=8).digest()
            bucket = int.from_bytes(digest, "big") % BUCKETS
        else:
            bucket = (rng or random).randrange(BUCKETS)
        return bucket < self.canary_percent * BUCKETS / 100


@dataclass
class RouteTable:
    """Every served release by name, and the generation it was built at (the gateway
    reloads when the releases' generation moves)."""

    routes: dict[str, ReleaseRoute] = field(default_factory=dict)
    generation: int = 0

    def get(self, name: str) -> ReleaseRoute | None:
        return self.routes.get(name)
