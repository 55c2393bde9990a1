"""The release gateway: the hub service "models" in front of every release's replicas.

    python -m loophub.serving.gateway

JupyterHub's proxy forwards ``/services/models/<release>/<route>`` here unchanged. Each
request is

1. authenticated: an API key (``Authorization: Bearer lhk_...`` or ``X-Loophub-Key``),
   which opens exactly one release, else a hub token (``Authorization: token ...``) or
   the hub's login cookie (HubOAuth);
2. authorised: a hub identity calls a release it may read (loophub.access); a release
   it may not call does not exist for it (404, so names do not leak);
3. routed: ``ReleaseRoute.choose`` picks a ready replica (canary split, sticky keys);
4. forwarded over a keep-alive connection pool, and the replica's status, body and
   content type come back with ``X-Loophub-Version`` and ``X-Loophub-Replica``.

The route table lives in memory: a background task asks the route source (the
releases' database rows, releases.py) for its generation every 0.25 s on a thread and
swaps in a new table when it moved, so a promotion or a canary change reaches the next
request without any request waiting on the database. Credentials are cached briefly
(an API key's answer at most 2 s, so a revoked key stops within 2 s; a hub token's a
few seconds, like the loophub API's).

A replica that refuses the connection (it went away during a switch) is retried once
on another replica of the current table; only then the caller gets a 502.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlparse

import aiohttp
from jupyterhub.services.auth import (
    HubOAuth,
    HubOAuthCallbackHandler,
    HubOAuthenticated,
    check_scopes,
)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from tornado import httpserver, iostream, web
from yarl import URL

from loophub.errors import LoophubError, NotFound, PermissionDenied, Unauthenticated, Unavailable
from loophub.identity import Actor
from loophub.serving.metrics import CONTENT_TYPE, LATENCY_BUCKETS
from loophub.serving.routing import Backend, ReleaseRoute, RouteTable

log = logging.getLogger("loophub.serving.gateway")

DEFAULT_PREFIX = "/services/models/"
DEFAULT_PORT = 10102
SERVICE_SCOPE = "access:services!service=models"  # what the hub grants every user
METRICS_SCOPE = "read:metrics"  # JupyterHub's own scope for reading metrics
REPLICA_ROUTES = frozenset({"predict", "health", "ready", "metadata", "metrics", "openapi.json"})
KEY_PREFIX = "lhk_"
MAX_BODY = 32 * 1024 * 1024  # the replica's own default limit: larger bodies it refuses anyway
QUIET_S = 0.05  # draining: no request for this long, then the idle connections close
DOWN_S = 1.0  # a replica that refused a connection is skipped this long (or to the next table)
JSON = "application/json"

Authenticate = Callable[[str], Awaitable[dict | None]]
T = TypeVar("T")


class RouteSource(Protocol):
    """Where the routes come from (``loophub.serving.releases.ReleaseStore`` in production).
    Synchronous and database-backed: the gateway calls it on threads only."""

    def generation(self) -> int:
        """A number that moves whenever any release's routing changes."""
        ...

    def route_table(self) -> RouteTable:
        """Every served release's route."""
        ...

    def key_release(self, digest: str) -> str | None:
        """The release an API key opens, by the key's sha256 hex digest (None: unknown
        or revoked)."""
        ...


@dataclass
class GatewayConfig:
    """The gateway's knobs; the defaults are what the hub service runs with."""

    prefix: str = DEFAULT_PREFIX
    reload_interval: float = 0.25   # seconds between generation checks
    key_cache_seconds: float = 2.0  # a revoked API key works at most this long after
    auth_cache_seconds: float = 5.0  # a hub token's identity and groups, like the API's
    connect_timeout: float = 5.0
    request_timeout: float = 300.0  # a whole forwarded request (large batches take time)
    max_body: int = MAX_BODY
    max_connections: int = 512      # the keep-alive pool to all replicas together
    drain_timeout: float = 30.0

    def __post_init__(self) -> None:
        self.prefix = "/" + self.prefix.strip("/") + "/" if self.prefix.strip("/") else "/"


# --- who is calling ------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """A hub identity (``actor``, with its token's scopes and whether they include the
    service's access scope) or the holder of an API key (``key_release``)."""

    actor: Actor | None = None
    scopes: frozenset[str] = frozenset()
    allowed: bool = True
    key_release: str | None = None


def credentials(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(API key, hub token) of a request's headers; at most one of them is set, the key
    first. A bearer value that starts with lhk_ is a key, any other a hub token."""
    key = headers.get("X-Loophub-Key")
    if key:
        return key.strip(), None
    scheme, _, value = headers.get("Authorization", "").strip().partition(" ")
    value = value.strip()
    if not value or scheme.lower() not in ("bearer", "token"):
        return None, None
    return (value, None) if value.startswith(KEY_PREFIX) else (None, value)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def actor_from_model(model: dict) -> Actor:
    """The hub's user or service model as the domain's Actor."""
    return Actor(name=model["name"], groups=tuple(model.get("groups") or ()),
                 admin=bool(model.get("admin")), kind=model.get("kind") or "user")


def caller_from_model(model: dict, access_scopes: set[str] | frozenset[str]) -> Caller:
    """A hub model as a Caller; ``allowed`` is HubAuthenticated.check_hub_user's rule (the
    token holds one of the service's access scopes), checked once per cached lookup."""
    scopes = frozenset(model.get("scopes") or ())
    allowed = not access_scopes or bool(check_scopes(set(access_scopes), scopes))
    return Caller(actor=actor_from_model(model), scopes=scopes, allowed=allowed)


class Lookups:
    """Answers of a slow lookup (the database, the hub) by key, each kept at most TTL
    seconds counted from when its lookup began: a key revoked at time t is refused from
    t + TTL at the latest. Concurrent misses of one key share one lookup; failures are
    not kept. A flood of distinct keys is forgotten rather than kept (MAX_ENTRIES)."""

    def __init__(self, ttl: float, *, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._answers: dict[str, tuple[float, Any]] = {}
        self._pending: dict[str, asyncio.Future] = {}

    async def get(self, key: str, load: Callable[[], Awaitable[T]]) -> T:
        entry = self._answers.get(key)
        if entry is not None and entry[0] > self._clock():
            return entry[1]
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = asyncio.ensure_future(self._load(key, load))
        # shielded: a caller that goes away does not cancel the others' lookup
        return await asyncio.shield(pending)

    async def _load(self, key: str, load: Callable[[], Awaitable[T]]) -> T:
        began = self._clock()
        try:
            value = await load()
        finally:
            self._pending.pop(key, None)
        if len(self._answers) >= self.max_entries:
            self._purge()
        self._answers[key] = (began + self.ttl, value)
        return value

    def _purge(self) -> None:
        now = self._clock()
        self._answers = {k: v for k, v in self._answers.items() if v[0] > now}
        if len(self._answers) >= self.max_entries:
            self._answers.clear()


class Identities:
    """Who a credential belongs to, cached: API keys through the route source (on a
    thread), hub tokens through AUTHENTICATE (token -> hub model or None)."""

    def __init__(self, source: RouteSource, authenticate: Authenticate, *,
                 access_scopes: set[str] | frozenset[str], key_ttl: float,
                 token_ttl: float) -> None:
        self.source = source
        self.authenticate = authenticate
        self.access_scopes = frozenset(access_scopes)
        self.keys = Lookups(key_ttl)
        self.tokens = Lookups(token_ttl)

    async def for_key(self, key: str) -> Caller | None:
        if not key.startswith(KEY_PREFIX):
            return None  # not a key at all: no database lookup for it
        hashed = digest(key)
        release = await self.keys.get(
            hashed, lambda: asyncio.to_thread(self.source.key_release, hashed))
        return Caller(key_release=release) if release else None

    async def for_token(self, token: str) -> Caller | None:
        return await self.tokens.get(digest(token), lambda: self._hub_lookup(token))

    async def _hub_lookup(self, token: str) -> Caller | None:
        model = await self.authenticate(token)
        return self.for_model(model) if model else None

    def for_model(self, model: dict) -> Caller:
        return caller_from_model(model, self.access_scopes)


def hub_authenticate(hub_auth: HubOAuth) -> Authenticate:
    """Tokens checked with the hub. Identities caches the answers (for a known time), so
    HubOAuth's own cache is skipped: two caches would double how long a revoked token
    or a changed group lasts."""
    async def authenticate(token: str) -> dict | None:
        return await hub_auth.user_for_token(token, use_cache=False, sync=False)
    return authenticate


# --- metrics --------------------------------------------------------------------------------


class GatewayMetrics:
    """The gateway's Prometheus metrics, in a registry of its own. Label children are
    bound once and cached, so a request costs two dict lookups and two observations.
    Requests that match no release the caller may call are counted under release "",
    so unknown names neither leak nor grow the series without bound."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("loophub_gateway_requests", "Requests by release, version "
                                "and status", ["release", "version", "status"],
                                registry=self.registry)
        self.latency = Histogram("loophub_gateway_request_duration_seconds",
                                 "Time from request to response (the replica's included)",
                                 ["release", "version"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.retries = Counter("loophub_gateway_retries", "Requests sent again to another "
                               "replica after a connection error", ["release"],
                               registry=self.registry)
        self.generation = Gauge("loophub_gateway_route_generation",
                                "Generation of the route table in use", registry=self.registry)
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}

    def request(self, release: str, version: str, status: int, seconds: float) -> None:
        key = (release, version, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.requests.labels(release, version, str(status))
        counter.inc()
        histogram = self._histograms.get(key[:2])
        if histogram is None:
            histogram = self._histograms[key[:2]] = self.latency.labels(release, version)
        histogram.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# --- the gateway's state and I/O --------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """What goes to the replica: the route with its query, the body and its type only
    (never the caller's credentials)."""

    method: str
    target: str  # e.g. "predict?x=1"
    body: bytes | None
    content_type: str | None


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str | None
    backend: Backend


class BadGateway(LoophubError):
    status = 502


class GatewayTimeout(LoophubError):
    status = 504


class Gateway:
    """The route table (reloaded when the source's generation moves), the replica
    choice, the connection pool, the metrics, and the requests in flight (what a drain
    waits for). Handlers only ever read ``table``: a reload swaps it in one assignment,
    so a request sees the old table or the new one, never a mix."""

    def __init__(self, source: RouteSource, config: GatewayConfig | None = None, *,
                 rng: random.Random | None = None) -> None:
        self.source = source
        self.config = config or GatewayConfig()
        self.table = RouteTable()
        self.metrics = GatewayMetrics()
        self.rng = rng or random.Random()
        self.session: aiohttp.ClientSession | None = None
        self.in_flight = 0
        self.last_request = 0.0
        self.draining = False
        self._generation: int | None = None
        self._watcher: asyncio.Task | None = None
        self._reload_failing = False
        self._down: dict[str, float] = {}  # replica url -> until when it is skipped
        self._servers: list[httpserver.HTTPServer] = []

    # -- the route table ------------------------------------------------------------------

    async def start(self) -> None:
        """Load the table (before anything listens), open the pool, start watching."""
        await self.reload(force=True)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.config.max_connections,
                                           keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=self.config.request_timeout,
                                          connect=self.config.connect_timeout),
            auto_decompress=False, skip_auto_headers=("User-Agent",))
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def reload(self, force: bool = False) -> bool:
        """Swap in the source's table if its generation moved (FORCE: in any case)."""
        generation = await asyncio.to_thread(self.source.generation)
        if generation == self._generation and not force:
            return False
        table = await asyncio.to_thread(self.source.route_table)
        self.table = table
        # the generation read before the table: a change in between is loaded next time
        self._generation = generation
        self._down.clear()  # the new table's replicas are what the releases see now
        self.metrics.generation.set(table.generation)
        log.info("route table generation %d: %d releases", table.generation, len(table.routes))
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_interval)
            try:
                await self.reload()
            except Exception:  # the database restarting: keep serving the table we have
                if not self._reload_failing:
                    log.warning("cannot read the route table; serving the last one",
                                exc_info=True)
                self._reload_failing = True
            else:
                if self._reload_failing:
                    log.info("route table readable again")
                self._reload_failing = False

    # -- choosing and forwarding ----------------------------------------------------------

    def pick(self, route: ReleaseRoute, key: str | None,
             avoid: Backend | None = None) -> Backend | None:
        """ROUTE's replica for a request with sticky KEY, skipping AVOID and replicas
        that just refused a connection while the route has others."""
        backend = route.choose(key, self.rng)
        if backend is None or (backend != avoid and not (self._down and self._is_down(backend))):
            return backend
        others = _without(route, lambda b: b == avoid or self._is_down(b))
        return others.choose(key, self.rng) or backend

    def _is_down(self, backend: Backend) -> bool:
        until = self._down.get(backend.url)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self._down[backend.url]
        return False

    async def forward(self, route: ReleaseRoute, key: str | None, backend: Backend,
                      out: Outgoing) -> Reply:
        """Send OUT to BACKEND; on a connection error, once more to a replica chosen
        afresh from the current table (the replica may have gone away in a switch).
        Predictions are pure, so sending one twice is safe."""
        try:
            return await self._send(backend, out)
        except aiohttp.ClientError as exc:
            if not _retryable(exc):
                raise _as_error(route.name, exc) from exc
            if isinstance(exc, aiohttp.ClientConnectorError):
                self._down[backend.url] = time.monotonic() + DOWN_S  # nothing listens there
            log.info("%s: %s failed (%s); trying another replica", route.name,
                     backend.replica, exc)
        except TimeoutError as exc:
            raise _as_error(route.name, exc) from exc
        self.metrics.retries.labels(route.name).inc()
        current = self.table.get(route.name) or route
        again = self.pick(current, key, avoid=backend)
        if again is None:
            raise BadGateway(f"release {route.name!r}: its replica went away and no other "
                             "is ready; try again shortly", detail={"release": route.name})
        try:
            return await self._send(again, out)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _as_error(route.name, exc) from exc

    async def _send(self, backend: Backend, out: Outgoing) -> Reply:
        assert self.session is not None, "Gateway.start() opens the connection pool"
        headers = {"Content-Type": out.content_type} if out.content_type else None
        url = URL(f"{backend.url}/{out.target}", encoded=True)  # already encoded: no re-quoting
        async with self.session.request(out.method, url, data=out.body,
                                        headers=headers) as resp:
            body = await resp.read()
            return Reply(resp.status, body, resp.headers.get("Content-Type"), backend)

    # -- serving and draining -------------------------------------------------------------

    def listen(self, app: web.Application, port: int, host: str = "127.0.0.1"
               ) -> httpserver.HTTPServer:
        """Serve APP on HOST:PORT (OSError when the port is taken)."""
        http = httpserver.HTTPServer(app, max_body_size=self.config.max_body,
                                     idle_connection_timeout=75, decompress_request=False)
        http.listen(port, host)
        self._servers.append(http)
        return http

    async def drain(self) -> None:
        """Stop accepting, answer every request already received, close the rest."""
        if self.draining:
            return
        self.draining = True
        log.info("draining: %d requests in flight", self.in_flight)
        for http in self._servers:
            http.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout
        while loop.time() < deadline and (
                self.in_flight or time.monotonic() - self.last_request < QUIET_S):
            await asyncio.sleep(0.005)
        if self.in_flight:
            log.warning("drain timeout: %d requests still in flight", self.in_flight)
        for http in self._servers:
            with contextlib.suppress(TimeoutError):  # a client that never reads: let it go
                await asyncio.wait_for(http.close_all_connections(), 5)
        await self.close()

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if self.session is not None:
            await self.session.close()
            self.session = None


def _without(route: ReleaseRoute, drop: Callable[[Backend], bool]) -> ReleaseRoute:
    return dataclasses.replace(route, stable=tuple(b for b in route.stable if not drop(b)),
                               canary=tuple(b for b in route.canary if not drop(b)))


def _retryable(exc: aiohttp.ClientError) -> bool:
    """Connection refused, reset or closed: retry. A read timeout is not (the replica may
    still be working on it; sending it again doubles the load that made it slow)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return True
    return isinstance(exc, aiohttp.ClientConnectionError) and not isinstance(exc, TimeoutError)


def _as_error(release: str, exc: BaseException) -> LoophubError:
    if isinstance(exc, TimeoutError):
        return GatewayTimeout(f"release {release!r}: the replica did not answer in time; "
                              "send fewer instances per request or try again",
                              detail={"release": release})
    return BadGateway(f"release {release!r}: the replica failed ({type(exc).__name__}); try "
                      "again shortly", detail={"release": release})


# --- HTTP ---------------------------------------------------------------------------------------


class GatewayHandler(HubOAuthenticated, web.RequestHandler):
    """Counts the request in flight, identifies the caller, answers JSON errors, records
    release, version, status and latency."""

    release_label = ""  # set once the caller may call the release (names must not leak)
    version_label = ""

    def initialize(self) -> None:
        self.gateway: Gateway = self.settings["gateway"]
        self.identities: Identities = self.settings["identities"]
        self.hub_auth = self.settings["hub_auth"]

    def prepare(self) -> None:
        self.gateway.in_flight += 1
        self._counted = True

    def on_finish(self) -> None:
        gateway = self.gateway
        if getattr(self, "_counted", False):
            gateway.in_flight -= 1
            gateway.last_request = time.monotonic()
        gateway.metrics.request(self.release_label, self.version_label, self.get_status(),
                                self.request.request_time())

    def compute_etag(self) -> str | None:
        return None  # no hashing of every response body

    def set_default_headers(self) -> None:
        self.clear_header("Server")

    async def identify(self) -> Caller:
        """The caller, or 401 (anonymous, or a credential not accepted) / 403 (a hub
        identity without the service's access scope). Browsers are sent to log in."""
        key, token = credentials(self.request.headers)
        if key is not None:
            caller = await self.identities.for_key(key)
            if caller is None:
                raise Refused("API key not accepted: it is unknown or was revoked; ask the "
                              "release's owner for a new one", error="invalid_token")
            return caller
        caller = await self._hub_caller(token)
        if caller is None:
            raise self._unauthenticated(token)
        if not caller.allowed:
            name = caller.actor.name if caller.actor else "this identity"
            raise PermissionDenied(f"{name} may not use the models service: ask a hub admin "
                                   f"for the {SERVICE_SCOPE} scope")
        return caller

    async def _hub_caller(self, token: str | None) -> Caller | None:
        try:
            if token is not None:
                return await self.identities.for_token(token)
            if "Cookie" not in self.request.headers:
                return None
            model = await self.hub_auth.get_user(self, sync=False)  # the login cookie
            return self.identities.for_model(model) if model else None
        except web.HTTPError as exc:  # HubOAuth: the hub did not answer
            raise Unavailable("the hub did not answer the identity check; try again "
                              "shortly") from exc

    def _unauthenticated(self, token: str | None) -> Exception:
        if token is None and self._is_browser_navigation():
            self.redirect(self.get_login_url())  # the OAuth dance sets the login cookie
            return web.Finish()
        if token is not None:
            return Refused("hub token not accepted: it is unknown, expired or revoked; get "
                           "a new one (`loophub token NAME`, or $JUPYTERHUB_API_TOKEN in a "
                           "notebook)", error="invalid_token")
        if "Cookie" in self.request.headers:
            return Refused("the hub login cookie was not accepted (expired, or a POST "
                           "without its _xsrf token); sign in again or send a token")
        return Refused("no credentials: send 'Authorization: Bearer lhk_...' (an API key of "
                       "the release), 'Authorization: token <hub token>', or sign in to the "
                       "hub in this browser")

    def _is_browser_navigation(self) -> bool:
        return (self.request.method == "GET"
                and "text/html" in self.request.headers.get("Accept", ""))

    async def send(self, status: int, body: bytes, content_type: str | None = JSON) -> None:
        self.set_status(status)
        if content_type:
            self.set_header("Content-Type", content_type)
        if self.gateway.draining:
            _close_after(self)
        try:
            await self.finish(body)  # flushed before a drain may close the connection
        except iostream.StreamClosedError:
            pass  # the caller went away before the answer: nobody to tell

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Every error as the project's JSON: {"error": ..., "detail": ...}."""
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, LoophubError):
            self.set_status(exc.status)
            body = exc.to_dict()
        elif isinstance(exc, web.HTTPError) and exc.log_message:
            body = {"error": exc.log_message % exc.args if exc.args else exc.log_message,
                    "detail": None}
        else:
            body = {"error": self._reason, "detail": None}
        if isinstance(exc, Refused):
            self.set_header("WWW-Authenticate", exc.challenge)
        self.set_header("Content-Type", JSON)
        self.set_header("Cache-Control", "no-store")
        if self.gateway.draining:
            _close_after(self)
        self.finish(json.dumps(body))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, LoophubError | web.HTTPError):
            if getattr(value, "status", 0) >= 500:
                log.warning("%s %s -> %s", self.request.method, self.request.path, value)
            return
        log.error("%s %s failed", self.request.method, self.request.path,
                  exc_info=(typ, value, tb))


class Refused(Unauthenticated):
    """401 with its WWW-Authenticate challenge (RFC 6750's error for a bad credential)."""

    def __init__(self, message: str, *, error: str | None = None) -> None:
        super().__init__(message)
        self.challenge = 'Bearer realm="loophub models"' + (f', error="{error}"' if error else "")


def _close_after(handler: web.RequestHandler) -> None:
    """Close this connection once the response is sent (server.py's reason: a draining
    process must not leave keep-alive connections for the proxy's next request)."""
    connection = handler.request.connection
    if hasattr(connection, "_disconnect_on_finish"):
        connection._disconnect_on_finish = True  # type: ignore[union-attr]


class ReleaseHandler(GatewayHandler):
    """``{prefix}<release>/<route>``: the replica's route, for whoever may call it."""

    async def _authorised(self, caller: Caller, release: str) -> ReleaseRoute:
        """The release if CALLER may call it; one fresh look at the route table before a
        404 (a release created since the last reload)."""
        try:
            return self.authorise(caller, release)
        except NotFound:
            if not await self.gateway.reload():
                raise
            return self.authorise(caller, release)

    async def get(self, release: str, route: str) -> None:
        if route not in REPLICA_ROUTES:
            raise NotFound(f"no route {route!r} on a release; a release answers "
                           f"{', '.join(sorted(REPLICA_ROUTES))}")
        caller = await self.identify()
        target = await self._authorised(caller, release)
        self.release_label = target.name
        sticky = self.request.headers.get(target.sticky_header) if target.sticky_header \
            else None
        backend = self.gateway.pick(target, sticky)
        if backend is None and await self.gateway.reload():
            # a replica ready since the last reload (the API already says "serving" to
            # whoever waited for it): look again in the fresh table
            target = self.authorise(caller, release)
            backend = self.gateway.pick(target, sticky)
        if backend is None:
            raise Unavailable(f"release {target.name!r} has no ready replica (state: "
                              f"{target.state}); try again shortly, or ask its owner to "
                              "start it", detail={"release": target.name, "state": target.state})
        reply = await self.gateway.forward(target, sticky, backend, self._outgoing(route))
        self.version_label = reply.backend.version
        self.set_header("X-Loophub-Version", reply.backend.version)
        self.set_header("X-Loophub-Replica", reply.backend.replica)
        await self.send(reply.status, reply.body, reply.content_type)

    post = head = get

    def authorise(self, caller: Caller, release: str) -> ReleaseRoute:
        """RELEASE's route if CALLER may call it: a key its own release only (403
        otherwise), a hub identity what it may read (404 otherwise: names do not leak)."""
        table = self.gateway.table
        if caller.key_release is not None:
            if release != caller.key_release:
                raise PermissionDenied(f"this API key opens release {caller.key_release!r} "
                                       f"only; use a key made for {release!r}")
            route = table.get(release)
            if route is None:
                raise NotFound(f"release {release!r} is not being served; ask its owner to "
                               "start it")
            return route
        route = table.get(release)
        if route is None or caller.actor is None or not route.may_call(caller.actor):
            raise NotFound(f"no release named {release!r} that you can call; check the name, "
                           "ask its owner to share it with your group, or use an API key "
                           "made for it")
        return route

    def _outgoing(self, route: str) -> Outgoing:
        query = self.request.query
        method = "GET" if self.request.method == "HEAD" else self.request.method
        return Outgoing(method=method, target=f"{route}?{query}" if query else route,
                        body=self.request.body if method == "POST" else None,
                        content_type=self.request.headers.get("Content-Type"))


class IndexHandler(GatewayHandler):
    """``{prefix}``: the releases the caller may call, and how."""

    async def get(self) -> None:
        caller = await self.identify()
        prefix = self.gateway.config.prefix
        mine = sorted((r for r in self.gateway.table.routes.values() if _callable(caller, r)),
                      key=lambda r: r.name)
        body = {"releases": [_summary(r, prefix) for r in mine],
                "usage": f"POST {prefix}<release>/predict with the release's JSON body; "
                         "GET .../metadata and .../openapi.json describe it"}
        await self.send(200, json.dumps(body).encode())


def _callable(caller: Caller, route: ReleaseRoute) -> bool:
    if caller.key_release is not None:
        return route.name == caller.key_release
    return caller.actor is not None and route.may_call(caller.actor)


def _summary(route: ReleaseRoute, prefix: str) -> dict[str, Any]:
    return {"name": route.name, "state": route.state,
            "versions": sorted({b.version for b in (*route.stable, *route.canary)}),
            "canary_percent": route.canary_percent if route.canary else 0.0,
            "url": f"{prefix}{route.name}/predict"}


class HealthHandler(GatewayHandler):
    """``{prefix}health``: the gateway's own liveness (no credentials)."""

    async def get(self) -> None:
        table = self.gateway.table
        await self.send(200, json.dumps({"status": "draining" if self.gateway.draining else "ok",
                                         "generation": table.generation,
                                         "releases": len(table.routes)}).encode())


class MetricsHandler(GatewayHandler):
    """``{prefix}metrics``: the gateway's Prometheus metrics, for hub admins and tokens
    with read:metrics (the series name releases)."""

    async def get(self) -> None:
        caller = await self.identify()
        if caller.actor is None or not (caller.actor.admin or METRICS_SCOPE in caller.scopes):
            raise PermissionDenied("the gateway's metrics are for hub admins and tokens with "
                                   f"the {METRICS_SCOPE} scope")
        await self.send(200, self.gateway.metrics.exposition(), CONTENT_TYPE)


class OAuthCallbackHandler(HubOAuthCallbackHandler):
    """HubOAuth's callback, with the application's HubOAuth (not the process singleton)."""

    def initialize(self) -> None:
        self.hub_auth = self.settings["hub_auth"]


class NotFoundHandler(GatewayHandler):
    async def prepare(self) -> None:  # type: ignore[override]
        super().prepare()
        prefix = self.gateway.config.prefix
        raise NotFound(f"no route {self.request.method} {self.request.path}; releases are at "
                       f"{prefix}<release>/predict (and health, ready, metadata, metrics, "
                       "openapi.json)")


def make_app(gateway: Gateway, hub_auth: HubOAuth, *, cookie_secret: bytes,
             authenticate: Authenticate | None = None) -> web.Application:
    """The gateway's tornado application. AUTHENTICATE (token -> hub model or None)
    identifies hub tokens, HubOAuth's by default; the login cookie always goes through
    HUB_AUTH."""
    prefix = gateway.config.prefix
    identities = Identities(
        gateway.source, authenticate or hub_authenticate(hub_auth),
        access_scopes=hub_auth.access_scopes, key_ttl=gateway.config.key_cache_seconds,
        token_ttl=gateway.config.auth_cache_seconds)
    handlers: list[Any] = [
        (prefix, IndexHandler),
        (f"{prefix}health", HealthHandler),
        (f"{prefix}metrics", MetricsHandler),
        (f"{prefix}oauth_callback", OAuthCallbackHandler),
        (rf"{prefix}([^/]+)/([^/]*)", ReleaseHandler),
    ]
    return web.Application(
        handlers, default_handler_class=NotFoundHandler, gateway=gateway,
        identities=identities, hub_auth=hub_auth, cookie_secret=cookie_secret,
        xsrf_cookies=False, login_url=hub_auth.login_url, compress_response=False,
        log_function=_log_request)


def _log_request(handler: web.RequestHandler) -> None:
    """Server errors only: an access line per request would cost more than the request."""
    if handler.get_status() >= 500:
        log.warning("%d %s %s %.1f ms", handler.get_status(), handler.request.method,
                    handler.request.path, handler.request.request_time() * 1000)


# --- the process ----------------------------------------------------------------------------


def listen_port(env: Mapping[str, str]) -> int:
    """LOOPHUB_GATEWAY_PORT, else the port of JUPYTERHUB_SERVICE_URL (what the hub sets
    for a managed service), else 10102."""
    if env.get("LOOPHUB_GATEWAY_PORT"):
        return int(env["LOOPHUB_GATEWAY_PORT"])
    url = env.get("JUPYTERHUB_SERVICE_URL")
    if url and urlparse(url).port:
        return int(urlparse(url).port)  # type: ignore[arg-type]
    return DEFAULT_PORT


def cookie_secret(path: Path) -> bytes:
    """The secret signing the login cookie, made once and kept (restarts keep logins)."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_bytes(secrets.token_bytes(32))
        path.chmod(0o600)
    return path.read_bytes()


async def run(gateway: Gateway, app: web.Application, port: int,
              host: str = "127.0.0.1") -> int:
    """Load the routes, listen, serve until SIGTERM/SIGINT, drain; the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if not await _started(gateway, stop):
        return 0
    try:
        gateway.listen(app, port, host)
    except OSError as exc:
        log.error("cannot listen on %s:%d (%s); free the port or set LOOPHUB_GATEWAY_PORT",
                  host, port, exc.strerror)
        await gateway.close()
        return 2
    log.info("loophub model gateway listening on http://%s:%d%s", host, port,
             gateway.config.prefix)
    await stop.wait()
    await gateway.drain()
    log.info("stopped")
    return 0


async def _started(gateway: Gateway, stop: asyncio.Event) -> bool:
    """Start GATEWAY, retrying while the database cannot be read (it may still be
    migrating at the platform's first start); a crash would leave the service down until
    the hub's next poll of it. False: stopped before it could start."""
    while not stop.is_set():
        try:
            await gateway.start()
            return True
        except Exception as exc:
            log.warning("cannot load the route table (%s: %s); trying again in 1 s",
                        type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    return False


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not (os.environ.get("JUPYTERHUB_API_TOKEN") and os.environ.get("JUPYTERHUB_CLIENT_ID")):
        print("loophub model gateway: JUPYTERHUB_API_TOKEN and JUPYTERHUB_CLIENT_ID are not "
              "set; it runs as the hub's 'models' service (`loophub up` starts it)",
              file=sys.stderr)
        return 2
    from loophub.serving.releases import ReleaseStore
    from loophub.settings import Settings
    from loophub.store import Database

    settings = Settings.from_env()
    config = GatewayConfig(prefix=os.environ.get("JUPYTERHUB_SERVICE_PREFIX", DEFAULT_PREFIX))
    # configured from the environment JupyterHub gives its services (token, client id,
    # access scopes, OAuth URLs), like the loophub API's
    hub_auth = HubOAuth.instance(cache_max_age=int(config.auth_cache_seconds))
    gateway = Gateway(ReleaseStore(Database(settings.db_url, migrate=False)), config)
    app = make_app(gateway, hub_auth,
                   cookie_secret=cookie_secret(settings.secrets_dir / "gateway_cookie_secret"))
    return asyncio.run(run(gateway, app, listen_port(os.environ)))


if __name__ == "__main__":
    sys.exit(main())
