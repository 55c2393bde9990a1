"""Request keys: the one place that builds and parses them.

A key names what a request belongs to, so a spawner, kernel, job or release finds its
request again after a restart (requests are idempotent per key)::

    server:OWNER/SERVER            a notebook server ("" is the default server)
    kernel:OWNER/SERVER/KERNEL     a sized kernel inside one of OWNER's servers
    job:OWNER/JOB                  a training or evaluation job
    service:OWNER/RELEASE/REPLICA  one replica of a model release

The owner is part of every key and is always the request's owner: a key can never
name, and so never hold the place of, someone else's server. Parts are
percent-encoded, so any name round-trips.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from loophub.errors import InvalidInput

PARTS: dict[str, tuple[str, ...]] = {
    "server": ("server",),
    "kernel": ("server", "kernel"),
    "job": ("job",),
    "service": ("release", "replica"),
}


@dataclass(frozen=True)
class RequestKey:
    kind: str
    owner: str
    parts: tuple[str, ...]

    def __post_init__(self) -> None:
        names = PARTS.get(self.kind)
        if names is None:
            raise InvalidInput(f"request key: unknown kind {self.kind!r}; one of "
                               f"{', '.join(PARTS)}")
        if not self.owner:
            raise InvalidInput("request key: the owner is missing")
        if len(self.parts) != len(names):
            raise InvalidInput(f"request key: a {self.kind} key has {len(names)} part(s) "
                               f"({', '.join(names)}) after the owner")

    def __str__(self) -> str:
        return f"{self.kind}:{quote(self.owner, safe='')}/" + "/".join(
            quote(p, safe="") for p in self.parts)

    def part(self, name: str) -> str:
        return self.parts[PARTS[self.kind].index(name)]


def parse_key(key: str) -> RequestKey:
    """The typed form of a key string; InvalidInput says what is wrong with it."""
    kind, sep, rest = key.partition(":")
    if not sep or "/" not in rest:
        raise InvalidInput(f"request key {key!r}: expected KIND:OWNER/..., e.g. server:alice/")
    owner, *parts = rest.split("/")
    return RequestKey(kind, unquote(owner), tuple(unquote(p) for p in parts))


def server_key(owner: str, server: str = "") -> str:
    return str(RequestKey("server", owner, (server,)))


def kernel_key(owner: str, server: str, kernel_id: str) -> str:
    return str(RequestKey("kernel", owner, (server, kernel_id)))


def job_key(owner: str, job_id: str) -> str:
    return str(RequestKey("job", owner, (job_id,)))


def service_key(owner: str, release: str, replica: str) -> str:
    return str(RequestKey("service", owner, (release, replica)))
