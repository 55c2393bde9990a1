"""Picking TCP ports for the processes loophub starts (proxy, hub, API, servers).

A port picked by binding port 0 comes from the kernel's ephemeral range, the same range
the kernel hands to every other port-0 bind (kernels' ZMQ sockets, Dask, Chromium) and
to every outgoing connection's source port. Between the pick and the bind of the
process it is meant for, any of those can take it, and a managed service that cannot
bind is restarted by JupyterHub forever. Ports below the ephemeral range are only ever
taken by an explicit choice, so that is where loophub picks.
"""

from __future__ import annotations

import random
import socket
from collections import deque
from collections.abc import Collection
from functools import cache
from pathlib import Path

LOWEST = 10_000  # below: well-known and registered services (PostgreSQL, Redis, ...)
# A process's recent picks stay distinct until they are bound (a hub that spawns servers
# for months must not run out, so only the last few are remembered).
_recent: deque[int] = deque(maxlen=256)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@cache  # read once per process: every pick needs it
def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for port-0 binds and source ports (Linux; IANA's range elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


def free_port(host: str = "127.0.0.1", avoid: Collection[int] = ()) -> int:
    """A port free on HOST, below the ephemeral range when there is room there, and not in
    AVOID: ports already promised to processes that have not bound them yet (another
    process's picks are not in this one's recent list)."""
    start, _ = ephemeral_range()
    if start - LOWEST >= 1000:
        for _ in range(100):
            port = random.randrange(LOWEST, start)
            if port not in _recent and port not in avoid and port_is_free(port, host):
                _recent.append(port)
                return port
    for _ in range(100):  # the range below is full or tiny: let the kernel pick
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in avoid:
            return port
    raise OSError(f"no free port on {host} outside {sorted(avoid)}")
