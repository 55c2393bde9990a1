"""``Client().scheduler``: ask the fair scheduler for resources, wait in its queue, release.

Everything that takes resources uses these: the hub's FairSpawner (servers), the kernel
provisioner (sized kernels), and next training jobs and model services. One request
contract (loophub.scheduler.spec.RequestSpec), one waiting loop (``wait_until_running``)
and one watcher per process (``QueueWatcher``): N waiting spawns or kernels share one
long-poll of the API instead of holding N.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from loophub import errors
from loophub.scheduler.spec import RequestSpec

if TYPE_CHECKING:
    from loophub.client.core import Client

log = logging.getLogger("loophub.client")
GONE = "the request is gone (released, or not yours)"


class Scheduler:
    def __init__(self, client: Client) -> None:
        self.client = client

    def _req(self, request_id: str, *parts: str) -> str:
        return "/".join(["scheduler/requests", quote(request_id, safe=""), *parts])

    def submit(self, spec: RequestSpec | Mapping[str, Any], **kwargs: Any) -> dict:
        """Queue a request (idempotent per what it belongs to): its view, queued or
        running. A spec names its owner only when a trusted service acts for a user."""
        body = spec.to_json() if isinstance(spec, RequestSpec) else dict(spec)
        return self.client.request("POST", "scheduler/requests", json=body, **kwargs)

    def get(self, request_id: str, *, wait: float = 0, known: str = "", **kwargs: Any) -> dict:
        """A request's view; with WAIT, long-polls until it differs from KNOWN (its
        ``fingerprint``)."""
        params = {"wait": wait, "known": known} if wait else {}
        kwargs.setdefault("timeout", wait + 30)
        return self.client.request("GET", self._req(request_id), params=params, **kwargs)

    def release(self, request_id: str, reason: str | None = None, **kwargs: Any) -> dict:
        """Withdraw a queued request or release a running one. Idempotent."""
        params = {"reason": reason} if reason else {}
        return self.client.request("DELETE", self._req(request_id), params=params, **kwargs)

    def history(self, request_id: str) -> list[dict]:
        """Every transition with its cause: why it waited, started, or stopped."""
        return self.client.request("GET", self._req(request_id, "history"))["transitions"]

    def find(self, *, key: str | None = None, owner: str | None = None,
             state: str | None = None, limit: int = 50) -> list[dict]:
        """Requests newest first, active and ended (yours; admins: anyone's)."""
        params = {k: v for k, v in (("key", key), ("owner", owner), ("state", state)) if v}
        return self.client.request("GET", "scheduler/requests",
                                   params={**params, "limit": limit})["requests"]

    def queue(self) -> dict:
        return self.client.request("GET", "scheduler/queue")

    def usage(self, since: float | None = None, until: float | None = None) -> dict:
        params = {k: v for k, v in (("since", since), ("until", until)) if v is not None}
        return self.client.request("GET", "scheduler/usage", params=params)

    def watch(self, known: Mapping[str, str], wait: float, **kwargs: Any) -> dict:
        """The views among KNOWN ({id: fingerprint}) that changed, waiting up to WAIT s."""
        kwargs.setdefault("timeout", wait + 30)
        return self.client.request("POST", "scheduler/watch",
                                   json={"requests": dict(known), "wait": wait}, **kwargs)

    def wait_running(self, view: dict, *, queue_timeout: float = 24 * 3600,
                     on_wait: Callable[[dict], None] | None = None,
                     long_poll: float = 20) -> dict:
        """Block until the request runs (for scripts and notebooks); raises Conflict when
        it ends without running, Unavailable after QUEUE_TIMEOUT."""
        deadline = time.monotonic() + queue_timeout
        while view["state"] == "queued":
            if on_wait is not None:
                on_wait(view)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.Unavailable(f"still queued after {queue_timeout:g} s: "
                                         f"{view.get('message', '')}")
            view = self.get(view["id"], wait=round(min(long_poll, remaining), 1),
                            known=view.get("fingerprint", ""))
        if view["state"] != "running":
            raise errors.Conflict(f"the request was {view['state']}: {view.get('reason', '')}")
        return view


async def wait_until_running(
    view: dict, *,
    poll: Callable[[dict, float], Awaitable[dict]],
    on_wait: Callable[[dict], None],
    give_up: Callable[[str, dict], BaseException],
    queue_timeout: float, long_poll: float,
) -> dict:
    """The running view of a queued request: the one waiting loop.

    ``poll(view, wait)`` waits for the next view; ``on_wait(view)`` shows a queued view;
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


class _Waiter:
    def __init__(self, view: dict) -> None:
        self.fingerprint = view.get("fingerprint", "")
        self.views: asyncio.Queue[dict] = asyncio.Queue()


class QueueWatcher:
    """One long-poll for every request this process waits on (POST scheduler/watch).

    Waiters register a request and get its next differing view; the loop keeps one
    request to the API in flight for all of them, restarted when a waiter joins, so a
    new waiter never waits for the poll before it to time out. Requests use tornado's
    async HTTP client (the hub and Jupyter servers are tornado processes); the API
    restarting is ridden out (``patience``) before waiters are told.
    """

    _shared: dict[tuple[str, str, int], QueueWatcher] = {}

    def __init__(self, url: str, token: str, *, long_poll: float = 20,
                 patience: float = 120) -> None:
        from tornado.httpclient import AsyncHTTPClient

        self.url, self.token = url.rstrip("/"), token
        self.long_poll, self.patience = long_poll, patience
        self.http = AsyncHTTPClient(force_instance=True, max_clients=32)
        self._waiters: dict[str, _Waiter] = {}
        self._joined = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.polls = 0  # requests made (benchmarks, tests)

    @classmethod
    def shared(cls, url: str, token: str, **kwargs: Any) -> QueueWatcher:
        """The watcher of this process and event loop for URL and TOKEN."""
        key = (url.rstrip("/"), token, id(asyncio.get_running_loop()))
        watcher = cls._shared.get(key)
        if watcher is None:
            watcher = cls._shared[key] = cls(url, token, **kwargs)
        return watcher

    async def next_view(self, view: dict, wait: float) -> dict:
        """The request's next view that differs from VIEW (or VIEW after WAIT s)."""
        waiter = self._waiters.get(view["id"])
        if waiter is None:
            waiter = self._waiters[view["id"]] = _Waiter(view)
            self._joined.set()
        waiter.fingerprint = view.get("fingerprint", waiter.fingerprint)
        self._ensure_running()
        try:
            return await asyncio.wait_for(waiter.views.get(), wait)
        except TimeoutError:
            return view

    def forget(self, request_id: str) -> None:
        self._waiters.pop(request_id, None)

    async def wait_running(self, view: dict, *, on_wait: Callable[[dict], None],
                           give_up: Callable[[str, dict], BaseException],
                           queue_timeout: float) -> dict:
        try:
            return await wait_until_running(view, poll=self.next_view, on_wait=on_wait,
                                            give_up=give_up, queue_timeout=queue_timeout,
                                            long_poll=self.long_poll)
        finally:
            self.forget(view["id"])

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        failing_since: float | None = None
        while self._waiters:
            self._joined.clear()
            known = {rid: w.fingerprint for rid, w in self._waiters.items()}
            poll = asyncio.ensure_future(self._watch(known))
            joined = asyncio.ensure_future(self._joined.wait())
            done, _ = await asyncio.wait({poll, joined}, return_when=asyncio.FIRST_COMPLETED)
            if poll not in done:  # someone joined: poll again for all; apply this one later
                poll.add_done_callback(self._apply_later)
                continue
            joined.cancel()
            try:
                self._apply(poll.result())
                failing_since = None
            except Exception as exc:  # the API restarting: keep the waiters, retry
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > self.patience:
                    self._fail_all(f"the loophub scheduler did not answer for "
                                   f"{self.patience:g} s: {exc}")
                    failing_since = None
                await asyncio.sleep(2)

    async def _watch(self, known: dict[str, str]) -> dict:
        from tornado.httpclient import HTTPRequest

        self.polls += 1
        req = HTTPRequest(f"{self.url}/scheduler/watch", method="POST",
                          request_timeout=self.long_poll + 30,
                          headers={"Authorization": f"token {self.token}",
                                   "Content-Type": "application/json"},
                          body=json.dumps({"requests": known, "wait": self.long_poll}))
        resp = await self.http.fetch(req, raise_error=False)
        if resp.code >= 400 or resp.code == 599:
            raise errors.Unavailable(f"POST scheduler/watch: {resp.code} "
                                     f"{(resp.body or b'')[:200]!r}")
        return json.loads(resp.body)

    def _apply_later(self, poll: asyncio.Future) -> None:
        if not poll.cancelled() and poll.exception() is None:
            self._apply(poll.result())

    def _apply(self, answer: dict) -> None:
        for view in answer.get("requests", []):
            waiter = self._waiters.get(view["id"])
            if waiter is not None and view.get("fingerprint") != waiter.fingerprint:
                waiter.fingerprint = view["fingerprint"]
                waiter.views.put_nowait(view)
        for request_id in answer.get("missing", []):
            waiter = self._waiters.get(request_id)
            if waiter is not None:
                waiter.views.put_nowait({"id": request_id, "state": "cancelled",
                                         "reason": GONE, "fingerprint": "gone"})

    def _fail_all(self, message: str) -> None:
        for request_id, waiter in list(self._waiters.items()):
            waiter.views.put_nowait({"id": request_id, "state": "unreachable",
                                     "reason": message, "fingerprint": "unreachable"})
