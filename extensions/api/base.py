"""The base handler: the hub identity on every request, each operation's contract enforced
before any work, JSON in and out, errors as JSON.

Every route declares its operations as ``Op`` objects (``openapi = {"get": Op(...)}``):
who may call it, the JSON Schema of its query parameters and body, its responses. The
OpenAPI document is built from the same objects (openapi.py), and this handler checks
each request against them before the method runs: unknown or malformed query
parameters, a body that is not JSON (or not declared JSON), too large, too deep, with
NaN/Infinity, out-of-range integers, NUL or unpaired surrogates in strings, or not
matching the schema, all get a 4xx naming the field; the method only ever sees valid
input. Responses are strict JSON.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import partial
from typing import Any, BinaryIO

import fastjsonschema
from jupyterhub.services.auth import HubOAuthenticated, UserNotAllowed
from tornado import iostream, web

from loophub.errors import InvalidInput, LoophubError, TooLarge, Unauthenticated
from loophub.identity import Actor
from loophub.store.models import iso

log = logging.getLogger("loophub.api")

MAX_JSON_BODY = 1024 * 1024      # bytes of a JSON body unless the operation says otherwise
OFF_LOOP_BODY = 64 * 1024        # larger bodies are parsed and checked on a thread
DRAIN_LIMIT = 256 * 1024 * 1024  # bytes of a refused request's body read (and dropped) first
MAX_DEPTH = 32                   # nesting of arrays and objects in a JSON body
MAX_INT = 2**53                  # integers outside +-2^53 are refused (JSON's safe range)
METHODS = ("get", "post", "put", "patch", "delete")
ACCESS = ("public", "user", "admin", "own", "dataset:read", "dataset:write", "dataset:manage",
          "model:read", "model:write", "model:manage", "release:read", "release:write",
          "release:manage")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class Op:
    """One operation of a route: its contract, published in OpenAPI and enforced here.

    ``access`` says who may call it (the authorization-matrix test reads it):
    ``public`` anyone; ``user`` any hub identity (the room decides what they see);
    ``admin`` hub admins; ``own`` the owner of the thing in the path, or an admin;
    ``dataset:read|write|manage`` the ``name`` in the path is a dataset and the caller
    needs that right on it (loophub.access); ``model:read|write|manage`` the same for the
    ``model`` in the path, ``release:read|write|manage`` for the ``release``.
    """

    summary: str
    access: str = "user"
    query: dict[str, dict] = field(default_factory=dict)
    # query parameters the document marks required; the handler says which is missing,
    # after the access check (a caller who may not see the thing learns only that)
    required_query: tuple[str, ...] = ()
    body: dict | None = None
    raw_body: str | None = None  # media type of a streamed raw body (uploads)
    max_body: int = MAX_JSON_BODY
    response: dict | None = None
    status: int = 200
    produces: str | tuple[str, ...] = "application/json"  # media types of the success body
    errors: dict[int, str] = field(default_factory=dict)
    description: str = ""
    body_example: Any = None

    def __post_init__(self) -> None:
        if self.access not in ACCESS:
            raise ValueError(f"Op.access must be one of {ACCESS}, got {self.access!r}")

    @functools.cached_property
    def check_body(self) -> Callable[[Any], Any] | None:
        return fastjsonschema.compile(self.body) if self.body is not None else None

    @functools.cached_property
    def check_query(self) -> dict[str, Callable[[Any], Any]]:
        return {name: fastjsonschema.compile(schema) for name, schema in self.query.items()}


def in_thread(func: Callable, *args: Any, **kwargs: Any) -> asyncio.Future:
    """Run blocking work (database scans, file formats, blob I/O) off the event loop, so
    one request never holds the others."""
    return asyncio.get_running_loop().run_in_executor(None, partial(func, *args, **kwargs))


def actor_from_model(model: dict) -> Actor:
    """The hub's user or service model (from HubAuth) as the domain's Actor."""
    return Actor(name=model["name"], groups=tuple(model.get("groups") or ()),
                 admin=bool(model.get("admin")), kind=model.get("kind", "user"))


# --- JSON in ---------------------------------------------------------------------------


def _no_constants(name: str) -> Any:
    raise InvalidInput(f"body: {name} is not JSON; send null or a finite number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidInput(f"body: number {text[:40]} is out of range")
    return value


def parse_json(raw: bytes, where: str = "body") -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, finite numbers, bounded depth and integers,
    strings without NUL or unpaired surrogates."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{where}: not UTF-8 (byte {exc.start}); send JSON in UTF-8") from exc
    try:
        value = json.loads(text, parse_constant=_no_constants, parse_float=_finite)
    except RecursionError as exc:
        raise InvalidInput(f"{where}: nested too deeply (at most {MAX_DEPTH} levels)") from exc
    except ValueError as exc:  # JSONDecodeError, and ints past Python's digit limit
        raise InvalidInput(f"{where}: not valid JSON: {exc}") from exc
    check_json_value(value, where)
    return value


def check_json_value(value: Any, where: str) -> None:
    """Depth, integer range and string contents of a parsed JSON value (iteratively)."""
    stack = [(value, where, 1)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidInput(f"{path}: nested too deeply (at most {MAX_DEPTH} levels)")
        if isinstance(item, dict):
            for key, sub in item.items():
                _check_string(key, f"{path} (a key)")
                stack.append((sub, f"{path}.{key}", depth + 1))
        elif isinstance(item, list):
            stack.extend((sub, f"{path}[{i}]", depth + 1) for i, sub in enumerate(item))
        elif isinstance(item, str):
            _check_string(item, path)
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_INT:
            raise InvalidInput(f"{path}: integer out of range (at most 2^53 in magnitude)")


def _check_string(text: str, path: str) -> None:
    if "\x00" in text:
        raise InvalidInput(f"{path}: NUL characters are not allowed in strings")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{path}: contains an unpaired surrogate (\\u{ord(text[exc.start]):x}"
                           "); send valid Unicode") from exc


def schema_error(exc: fastjsonschema.JsonSchemaValueException, where: str) -> InvalidInput:
    message = exc.message.replace("data", where, 1) if exc.message.startswith("data") \
        else f"{where}: {exc.message}"
    return InvalidInput(message, detail={"field": (exc.name or "data").replace("data", where, 1)})


# --- query parameters --------------------------------------------------------------------


def _convert(raw: str, schema: dict, name: str) -> Any:
    kind = schema.get("type", "string")
    kinds = kind if isinstance(kind, list) else [kind]
    try:
        if "integer" in kinds:
            return int(raw)
        if "number" in kinds:
            return _finite(raw)
        if "boolean" in kinds:
            if raw.lower() in ("1", "true", "yes"):
                return True
            if raw.lower() in ("0", "false", "no"):
                return False
            raise ValueError(raw)
    except (ValueError, InvalidInput) as exc:
        expected = {"integer": "a whole number", "number": "a number",
                    "boolean": "true or false"}[next(k for k in kinds if k != "null")]
        raise InvalidInput(f"query parameter {name}: expected {expected}, got {raw[:40]!r}",
                           detail={"field": name}) from exc
    return raw


# --- the handler ---------------------------------------------------------------------------


@web.stream_request_body
class ApiHandler(HubOAuthenticated, web.RequestHandler):
    """JSON API handler; subclasses declare ``openapi = {method: Op(...)}``."""

    SUPPORTED_METHODS = (*web.RequestHandler.SUPPORTED_METHODS, "TRACE")
    openapi: dict[str, Op] = {}
    _forbidden: dict | None = None
    _refusal: Exception | None = None  # the answer once the body has arrived (refuse)
    _body_size = 0
    _undecodable: InvalidInput | None = None  # a path or query value that is not UTF-8

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for method in METHODS:
            func = cls.__dict__.get(method)
            if func is not None and not getattr(func, "_checks_body", False):
                setattr(cls, method, _loading_body(func))
        prepare = cls.__dict__.get("prepare")
        if prepare is not None and not getattr(prepare, "_refuses_late", False):
            cls.prepare = _refusing_late(prepare)

    @property
    def ctx(self):
        return self.settings["loophub"]

    @property
    def op(self) -> Op:
        return self.openapi[self.request.method.lower()]

    # -- before the method ------------------------------------------------------------

    def check_hub_user(self, model: dict) -> dict:
        try:
            return super().check_hub_user(model)
        except UserNotAllowed:
            self._forbidden = model
            raise

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        """Path and query values as text; one that is not UTF-8 is refused from prepare
        (tornado's own 400, raised before prepare, closes the connection)."""
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            # path values are decoded before prepare, while path_kwargs is still unset
            where = "query" if getattr(self, "path_kwargs", None) is not None else "path"
            where = f"{where} parameter {name or ''}".strip()
            self._undecodable = InvalidInput(
                f"{where}: not UTF-8 ({value[:40]!r}); percent-encode UTF-8 bytes",
                detail={"field": name})
            return value.decode("utf-8", "replace")

    def initialize(self) -> None:
        # Tornado answers a method it does not know (QUERY, PROPFIND, ...) before prepare
        # and closes the connection (see refuse): such a request goes through as TRACE,
        # which every route refuses with 405 and Allow, and is logged under its own name.
        self.verb = self.request.method
        if self.verb not in self.SUPPORTED_METHODS:
            self.request.method = "TRACE"

    async def prepare(self) -> None:
        self._body_parts: list[bytes] = []
        self._body_size = 0
        self.body: Any = None
        self.query: dict[str, Any] = {}
        if self.request.method.lower() not in self.openapi:
            self.refuse(web.HTTPError(405, f"{self.verb} is not allowed here; allowed: "
                                           + ", ".join(m.upper() for m in self.openapi)))
            return
        op = self.op
        try:
            if op.access != "public":
                await self._require_identity(op)
            self._check_path()
            self.query = self._parse_query(op)
            if self._undecodable is not None:
                raise self._undecodable
            self._check_body_headers(op)
        except (LoophubError, web.HTTPError) as exc:
            self.refuse(exc)

    def refuse(self, exc: Exception) -> None:
        """Answer EXC (an error) once the whole request has been read: its body, if any,
        is read and dropped (up to DRAIN_LIMIT bytes), then the method raises EXC.

        Tornado closes a connection whose answer was finished before its request was
        read (as when prepare raises, body or not). The hub's proxy keeps connections
        open and sends the next request on one that is closing: it gets "socket hang
        up" and answers 503 with an HTML page of its own; and a client still sending a
        large body gets a reset instead of this JSON error."""
        declared = self.request.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > DRAIN_LIMIT:
            raise exc  # too much to read only to refuse it: the connection closes
        self._refusal = exc
        self._body_parts = []

    async def _refused(self, *args: Any, **kwargs: Any) -> None:
        """The method of what the route does not declare: its refusal from prepare."""
        self.check_refusal()
        raise web.HTTPError(405)

    get = post = put = patch = delete = head = options = trace = _refused

    async def _identify(self) -> dict | None:
        """The caller's hub model, fetched without blocking the event loop (HubAuth's
        own ``get_current_user`` asks the hub synchronously when its cache is cold)."""
        if not hasattr(self, "_hub_auth_user_cache"):
            model = await self.hub_auth.get_user(self, sync=False)
            try:
                self._hub_auth_user_cache = self.check_hub_user(model) if model else None
            except UserNotAllowed:
                self._hub_auth_user_cache = None
        return self.current_user

    async def _require_identity(self, op: Op) -> None:
        user = await self._identify()
        if user is None:
            if self._forbidden is not None:
                raise web.HTTPError(
                    403, f"{self._forbidden['name']} may not use the loophub service: "
                    "ask a hub admin for the access:services!service=loophub scope")
            if self._is_browser_navigation():
                self.redirect(self.get_login_url())  # the HubOAuth dance sets the cookie
                raise web.Finish()
            raise Unauthenticated(
                "no hub identity: send 'Authorization: token <hub API token>' (a token from "
                "`loophub token NAME`, or $JUPYTERHUB_API_TOKEN in a notebook) or sign in to "
                "the hub in this browser")
        if op.access == "admin" and not self.actor.admin:
            raise web.HTTPError(403, f"{self.actor.name} is not a hub admin; this route is "
                                     "for admins")

    def _is_browser_navigation(self) -> bool:
        return (self.request.method == "GET" and "Authorization" not in self.request.headers
                and "text/html" in self.request.headers.get("Accept", ""))

    def _check_path(self) -> None:
        for name, value in self.path_kwargs.items():
            if _CONTROL.search(value) or not value or len(value) > 1024:
                raise InvalidInput(f"path parameter {name}: 1 to 1024 characters without "
                                   "control characters", detail={"field": name})

    def _parse_query(self, op: Op) -> dict[str, Any]:
        given = {k for k in self.request.query_arguments if k != "_xsrf"}
        unknown = sorted(given - set(op.query))
        if unknown:
            known = ", ".join(sorted(op.query)) or "none"
            raise InvalidInput(f"unknown query parameter(s) {', '.join(unknown)}; this route "
                               f"takes: {known}", detail={"field": unknown[0]})
        out: dict[str, Any] = {}
        for name, schema in op.query.items():
            raw = self.get_query_argument(name, None)
            if raw is None:
                out[name] = schema.get("default")
                continue
            value = _convert(raw, schema, name)
            try:
                out[name] = op.check_query[name](value)
            except fastjsonschema.JsonSchemaValueException as exc:
                raise schema_error(exc, f"query parameter {name}") from exc
        return out

    def _check_body_headers(self, op: Op) -> None:
        length = self.request.headers.get("Content-Length")
        chunked = "chunked" in self.request.headers.get("Transfer-Encoding", "").lower()
        has_body = chunked or (length not in (None, "", "0"))
        if not has_body:
            return
        if op.body is None and op.raw_body is None:
            raise InvalidInput(f"{self.request.method} here takes no body")
        if length and length.isdigit() and int(length) > op.max_body:
            raise TooLarge(f"the body is {int(length)} bytes; this route takes at most "
                           f"{op.max_body} bytes", detail={"limit": op.max_body})
        if op.body is not None:
            kind = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                raise _UnsupportedMediaType(
                    f"send the body as JSON with 'Content-Type: application/json' (got "
                    f"{kind or 'no Content-Type'})")

    def data_received(self, chunk: bytes) -> None:
        self._body_size += len(chunk)
        if self._refusal is None and self._body_size > self.op.max_body:
            self._refusal = TooLarge(f"the body is larger than {self.op.max_body} bytes, the "
                                     "limit of this route", detail={"limit": self.op.max_body})
            self._body_parts = []
        if self._refusal is None:
            self._body_parts.append(chunk)
        elif self._body_size > DRAIN_LIMIT and not self._finished:
            # too much to read only to refuse it: answer now (the connection then closes)
            self._handle_request_exception(self._refusal)

    def check_refusal(self) -> None:
        """Raise the error ``refuse`` held back while the body arrived."""
        if self._refusal is not None:
            raise self._refusal

    def _load_body(self) -> None:
        """Parse and validate the JSON body (operations with a raw body read their own)."""
        self.check_refusal()
        op = self.op
        if op.body is None:
            return
        raw = b"".join(self._body_parts)
        if not raw:
            value: Any = None
            if op.body.get("type") != "object" or op.body.get("required"):
                raise InvalidInput("the request needs a JSON body")
            value = {}
        else:
            value = parse_json(raw)
        try:
            self.body = op.check_body(value)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise schema_error(exc, "body") from exc

    # -- identity -------------------------------------------------------------------------

    @property
    def actor(self) -> Actor:
        return actor_from_model(self.current_user)

    # -- out ----------------------------------------------------------------------------------

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def write_json(self, data: Any, status: int | None = None) -> None:
        self.set_status(status or self.op.status)
        self.finish(dumps(data))

    async def write_stream(self, stream: BinaryIO) -> None:
        """Send STREAM (a blob, a file) a MiB at a time, read off the event loop; closes
        it. A client that goes away mid-download ends the answer quietly."""
        try:
            while chunk := await in_thread(stream.read, 1 << 20):
                self.write(chunk)
                await self.flush()
        except iostream.StreamClosedError:
            return
        finally:
            stream.close()
        self.finish()

    async def write_json_off_loop(self, data: Any, status: int | None = None) -> None:
        """write_json for large answers (pages of records): serialized on a thread."""
        text = await in_thread(dumps, data)
        self.set_status(status or self.op.status)
        self.finish(text)

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, LoophubError | web.HTTPError):
            log.info("%s %s -> %s", self.request.method, self.request.path, value)
        else:
            super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, LoophubError):
            self.set_status(exc.status)
            body = exc.to_dict()
        elif isinstance(exc, web.HTTPError):
            body = {"error": exc.log_message or self._reason, "detail": None}
        else:
            body = {"error": "internal error; the service log has the details", "detail": None}
        if self.get_status() == 405:
            self.set_header("Allow", ", ".join(m.upper() for m in self.openapi))
            self.request.method = self.verb  # the access log names the method sent
        self.clear_header("Content-Disposition")
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(dumps(body))

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, LoophubError):
            self.log_exception(type(e), e, e.__traceback__)
            if not self._finished:
                self.send_error(e.status, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)


class _UnsupportedMediaType(LoophubError):
    status = 415


def _refusing_late(prepare: Callable) -> Callable:
    """Wrap a route's own prepare so the errors it raises are answered after the request
    was read, like the base prepare's (ApiHandler.refuse)."""
    @functools.wraps(prepare)
    async def wrapper(self: ApiHandler) -> None:
        try:
            result = prepare(self)
            if inspect.isawaitable(result):
                await result
        except (LoophubError, web.HTTPError) as exc:
            self.refuse(exc)

    wrapper._refuses_late = True  # type: ignore[attr-defined]
    return wrapper


def _loading_body(func: Callable) -> Callable:
    """Wrap a handler method so the body is parsed and validated before it runs."""
    if inspect.iscoroutinefunction(func):
        @functools.wraps(func)
        async def wrapper(self: ApiHandler, *args: Any, **kwargs: Any) -> Any:
            if self._body_size > OFF_LOOP_BODY:  # parse and check big bodies off the loop
                await in_thread(self._load_body)
            else:
                self._load_body()
            return await func(self, *args, **kwargs)
    else:
        @functools.wraps(func)
        def wrapper(self: ApiHandler, *args: Any, **kwargs: Any) -> Any:
            self._load_body()
            return func(self, *args, **kwargs)
    wrapper._checks_body = True  # type: ignore[attr-defined]
    return wrapper


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)  # with its zone: SQLite gives back naive UTC datetimes
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def _finite_only(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_only(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_only(v) for v in value]
    return value


def dumps(data: Any) -> str:
    """Strict JSON (RFC 8259): a non-finite number, which JSON cannot carry, becomes null."""
    try:
        return json.dumps(data, default=_json_default, allow_nan=False)
    except ValueError:
        log.warning("a response carried NaN or Infinity; sent as null")
        return json.dumps(_finite_only(data), default=_json_default, allow_nan=False)
