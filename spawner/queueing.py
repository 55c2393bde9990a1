"""Waiting in the fair queue: the one loop FairSpawner and GPU kernels share.

Both long-poll their scheduler request (``?wait=S&known=<fingerprint>``) until it runs,
report every change to the person waiting, and give up after their queue timeout.
Only how they reach the API and how they report differ; those are passed in.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable


async def wait_until_running(
    view: dict, *,
    poll: Callable[[dict, float], Awaitable[dict]],
    on_wait: Callable[[dict], None],
    give_up: Callable[[str, dict], BaseException],
    queue_timeout: float, long_poll: float,
) -> dict:
    """The running view of a queued request.

    ``poll(view, wait)`` long-polls for the next view; ``on_wait(view)`` shows a queued view;
    ``give_up("timeout" | "ended", view)`` builds the exception raised when the queue
    timeout passes or the request ends without running (cancelled, released).
    """
    deadline = time.monotonic() + queue_timeout
    while view["state"] == "queued":
        on_wait(view)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise give_up("timeout", view)
        view = await poll(view, round(min(long_poll, remaining), 1))
    if view["state"] != "running":
        raise give_up("ended", view)
    return view
