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


class ProcessHandler:
    """A kind whose requests hold a process that does not resume after a preemption: the
    shell ends a preempted request in the same stimulus, and ``ended`` stops the process
    when someone other than its holder ended it."""

    on_preempt = "end"
    what = "process"

    def __init__(self, hub: Hub | None) -> None:
        self.hub = hub

    async def started(self, t: Transition) -> None:
        """Its holder waits for this (the shell starts an unclaimed server itself)."""

    async def preempted(self, t: Transition) -> None:
        """Not resumed: the shell ends the request and ``ended`` stops the process."""

    async def ended(self, t: Transition) -> None:
        if t.by_holder or t.state != "done" or self.hub is None:
            return  # its holder stopped it, or it never ran (its waiter gives up)
        if await self.stop(t):
            log.info("%s: stopped %s's %s: %s", t.stimulus, t.spec.owner, self.describe(t),
                     t.reason)

    async def stop(self, t: Transition) -> bool:
        raise NotImplementedError

    def describe(self, t: Transition) -> str:
        return self.what


class ServerHandler(ProcessHandler):
    """Notebook servers, stopped through the hub API. The user sees why on the spawn page
    and options form of their next start (FairSpawner reads the ended request's reason)."""

    def describe(self, t: Transition) -> str:
        return f"server {t.spec.server or ''!r}"

    async def stop(self, t: Transition) -> bool:
        return await self.hub.stop_server(t.spec.owner, t.spec.server or "")


class KernelHandler(ProcessHandler):
    """Sized kernels, shut down through their server's REST API."""

    def describe(self, t: Transition) -> str:
        return f"kernel {t.spec.kernel} on server {t.spec.server or ''!r}"

    async def stop(self, t: Transition) -> bool:
        return await self.hub.shutdown_kernel(t.spec.owner, t.spec.server or "",
                                              t.spec.kernel or "")
