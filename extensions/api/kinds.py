"""What each kind of request does when the scheduler decides: the handlers the shell
delivers transitions to (shell.py). Servers and kernels today; jobs and services
register theirs the same way.

A request ended by anyone but its holder (an admin's release, a preemption, the
reconciliation) stops its process; the holder (the spawner for servers, the server for
its kernels) stops its own process before it releases.
"""

from __future__ import annotations

import logging

from loophub.scheduler.service import Transition

from .hub import Hub

log = logging.getLogger("loophub.api")


class ServerHandler:
    """Notebook servers: stopped through the hub API when their allocation ends under
    them. The user sees why on the spawn page and options form of their next start
    (FairSpawner reads the ended request's reason)."""

    on_preempt = "end"

    def __init__(self, hub: Hub | None) -> None:
        self.hub = hub

    async def started(self, t: Transition) -> None:
        """Its spawner waits for this (the shell starts it when none does)."""

    async def preempted(self, t: Transition) -> None:
        """Servers do not resume: the shell ends the request, ``ended`` stops it."""

    async def ended(self, t: Transition) -> None:
        if t.by_holder or t.state != "done" or self.hub is None:
            return  # the spawner stopped it, or it never ran (its spawner gives up)
        owner, server = t.spec.owner, t.spec.server or ""
        if await self.hub.stop_server(owner, server):
            log.info("%s: stopped %s's server %r: %s", t.stimulus, owner, server, t.reason)


class KernelHandler:
    """Sized kernels: shut down through their server's REST API when their allocation
    ends under them."""

    on_preempt = "end"

    def __init__(self, hub: Hub | None) -> None:
        self.hub = hub

    async def started(self, t: Transition) -> None:
        """The kernel provisioner waits for this."""

    async def preempted(self, t: Transition) -> None:
        """Kernels do not resume: the shell ends the request, ``ended`` stops it."""

    async def ended(self, t: Transition) -> None:
        if t.by_holder or t.state != "done" or self.hub is None:
            return
        owner, server, kernel = t.spec.owner, t.spec.server or "", t.spec.kernel or ""
        if await self.hub.shutdown_kernel(owner, server, kernel):
            log.info("%s: shut down %s's kernel %s on server %r: %s", t.stimulus, owner,
                     kernel, server, t.reason)
