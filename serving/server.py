"""The model server: one process per replica, serving one model version's TorchScript
artifact over HTTP.

    python -m loophub.serving.server --artifact model.pt --meta model.json --port 9000 \\
        [--model-ref digits@v3] [--alias champion] [--base-path /services/model-digits/] \\
        [--max-batch-size 32 --max-wait-ms 5 | --no-batching] [--no-metrics] \\
        [--request-log FILE --log-sample-rate 0.1]

Routes under the base path (default $JUPYTERHUB_SERVICE_PREFIX, else "/"):
``POST predict``, ``GET health`` (live), ``GET ready`` (loaded and warmed up),
``GET metadata``, ``GET metrics`` (Prometheus), ``GET openapi.json``.

The process listens first and loads the model after, on its inference thread: /health
answers at once, /ready says 503 until a dummy input has gone through the model (so a
release manager waits on /ready), and a model that cannot be loaded ends the process
with exit code 2 and the reason on stderr. SIGTERM (or SIGINT) drains: the listening
socket closes, /ready says 503, every request already received is answered (with
``Connection: close``), then the process exits 0.

The request path is kept lean because it has to be: one JSON decode, one compiled
validator (serving.validation), no torch objects built per request (serving.model),
metric children bound once (serving.metrics), and the model off the event loop on one
thread (serving.batching) sized by LOOPHUB_ALLOC_CPU (the cores the scheduler gave the
replica).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tornado import httpserver, netutil, web

from loophub.errors import LoophubError, NotFound, TooLarge
from loophub.releases.logformat import REQUEST_ID
from loophub.serving import openapi, statefile
from loophub.serving.batching import Batcher, Direct
from loophub.serving.metrics import CONTENT_TYPE, ServerMetrics
from loophub.serving.model import ServedModel, load_artifact, run_batch
from loophub.serving.monitoring import vocabulary_of
from loophub.serving.requestlog import RequestLog
from loophub.serving.validation import RequestChecker
from loophub.store.blobs import BlobStore

log = logging.getLogger("loophub.serving")

MAX_BODY = 32 * 1024 * 1024      # bytes of a predict body (a few large base64 images)
DRAIN_LIMIT = 256 * 1024 * 1024  # an oversized body up to this is read (and dropped) before
                                 # the 413, so the client reads the answer, not a reset
QUIET_S = 0.05                   # no request for this long after draining: close the rest
JSON = "application/json"


@dataclass
class ServerConfig:
    """What a release manager gives a replica (every field a command-line option)."""

    artifact: Path
    meta: Path | dict
    port: int
    host: str = "127.0.0.1"
    base_path: str = "/"
    model_ref: str | None = None   # NAME@vN, as the registry names the version
    alias: str | None = None       # the alias the release follows, if any
    batching: bool = True
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_body: int = MAX_BODY
    metrics: bool = True
    threads: int = 1               # torch intra-op threads: the replica's cores
    drain_timeout_s: float = 30.0
    request_log: Path | None = None
    blob_url: str | None = None    # where the request log keeps sampled images
    log_sample_rate: float = 1.0
    state_file: Path | None = None  # where it says its address, then its exit code
    advertise_host: str | None = None  # the name others reach it by (default: hostname)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"--max-batch-size must be at least 1, got {self.max_batch_size}")
        if self.max_wait_ms < 0:
            raise ValueError(f"--max-wait-ms must be at least 0, got {self.max_wait_ms}")
        self.base_path = "/" + self.base_path.strip("/") + "/" if self.base_path.strip("/") \
            else "/"


def parse_ref(ref: str | None) -> tuple[str | None, int | None]:
    """(name, version) of NAME@vN or NAME@N; (NAME, None) without a number."""
    if not ref:
        return None, None
    name, _, selector = ref.partition("@")
    number = selector[1:] if selector[:1] in ("v", "V") else selector
    return name, int(number) if number.isdigit() else None


class ModelServer:
    """One replica's state: the model once loaded, its checker, metrics and inference
    engine, readiness, and the requests in progress (what a drain waits for)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.name, self.version = parse_ref(config.model_ref)
        self.model: ServedModel | None = None
        self.checker: RequestChecker | None = None
        self.metrics: ServerMetrics | None = None
        self.engine: Batcher | Direct | None = None
        self.request_log = RequestLog(
            config.request_log, config.log_sample_rate, version=config.model_ref,
            blobs=BlobStore(config.blob_url) if config.blob_url else None,
        ) if config.request_log else None
        # one thread: passes never overlap, and torch's own threads do the parallel work
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.ready = False
        self.draining = False
        self.in_flight = 0
        self.last_request = 0.0
        self.metadata_body = b"{}"
        self.openapi_body = b"{}"
        self.http: httpserver.HTTPServer | None = None
        self.warm_up: dict[str, Any] = {}

    # -- loading ------------------------------------------------------------------------

    async def load(self) -> None:
        """Load and warm the model on the inference thread, then build what requests
        use; the event loop answers /health meanwhile."""
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(self.executor, self._load_and_warm)
        if self.name is None:
            self.name = str(model.meta.get("name") or Path(self.config.artifact).stem)
        self.checker = RequestChecker(model.signature["request"], model.predictor.preprocess)
        self.metrics = ServerMetrics(labels=model.labels, enabled=self.config.metrics, info={
            "model": self.name, "version": str(self.version or ""),
            "alias": self.config.alias or "", "task": model.task})
        run = partial(run_batch, model)
        self.engine = Batcher(run, self.executor, max_batch_size=self.config.max_batch_size,
                              max_wait_ms=self.config.max_wait_ms,
                              on_batch=self.metrics.batch) if self.config.batching \
            else Direct(run, self.executor, on_batch=self.metrics.batch)
        self.engine.start()
        self.metadata_body = json.dumps(self._metadata(model)).encode()
        self.openapi_body = json.dumps(openapi.document(
            title=f"{self.name} model", version=str(self.version or "0"), task=model.task,
            signature=model.signature, base_path=self.config.base_path,
            max_body=self.config.max_body)).encode()
        self.model = model
        if self.request_log is not None:  # a text model's out-of-vocabulary share
            self.request_log.vocabulary = vocabulary_of(model.meta)
        self.ready = True
        log.info("model %s ready (%s, %d labels)", self.ref or self.name, model.task,
                 len(model.labels))

    def _load_and_warm(self) -> ServedModel:
        set_torch_threads(self.config.threads)
        predictor = load_artifact(self.config.artifact, self.config.meta)
        model = ServedModel(predictor, forward_chunk=max(self.config.max_batch_size, 64))
        start = time.perf_counter()
        passes = model.warm_up()
        self.warm_up = {"passes": passes, "seconds": round(time.perf_counter() - start, 4)}
        return model

    @property
    def ref(self) -> str | None:
        return f"{self.name}@v{self.version}" if self.name and self.version else None

    def _metadata(self, model: ServedModel) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "alias": self.config.alias,
                "ref": self.ref, "task": model.task, "labels": model.labels,
                "signature": model.signature, "preprocess": model.meta.get("preprocess"),
                "batching": {"enabled": self.config.batching,
                             "max_batch_size": self.config.max_batch_size,
                             "max_wait_ms": self.config.max_wait_ms},
                "max_body_bytes": self.config.max_body, "threads": self.config.threads,
                "warm_up": self.warm_up}

    # -- predicting ---------------------------------------------------------------------

    async def predict(self, raw: bytes, request_id: str = ""
                      ) -> tuple[bytes, list | None, list[dict]]:
        """The response body for the predict body RAW (and what the log samples);
        LoophubError (4xx) for what the client must fix. REQUEST_ID goes in the answer:
        the id a caller flags a wrong answer by (releases/NAME/feedback)."""
        if not self.ready or self.engine is None or self.checker is None:
            raise NotReady("the model is still loading; wait for /ready")
        instances = self.checker.check(raw)
        predictions = await self.engine.submit(instances)
        if self.metrics is not None:
            self.metrics.predicted(predictions)
        body: dict[str, Any] = {"predictions": predictions}
        if self.ref:
            body["model"] = self.ref
        if request_id:
            body["request_id"] = request_id
        return json.dumps(body).encode(), instances, predictions

    # -- draining ------------------------------------------------------------------------

    async def drain(self) -> None:
        """Stop accepting, answer every request already received, close the rest."""
        if self.draining:
            return
        self.draining = True
        log.info("draining: %d requests in flight", self.in_flight)
        if self.http is not None:
            self.http.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout_s
        while loop.time() < deadline and (
                self.in_flight or time.monotonic() - self.last_request < QUIET_S):
            await asyncio.sleep(0.005)
        if self.in_flight:
            log.warning("drain timeout: %d requests still in flight", self.in_flight)
        if self.engine is not None:
            await self.engine.stop()
        if self.http is not None:
            await asyncio.wait_for(self.http.close_all_connections(), 5)
        if self.request_log is not None:
            self.request_log.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


class NotReady(LoophubError):
    status = 503


def set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (or used) in this process: keep it
        pass


# -- HTTP ---------------------------------------------------------------------------------


class BaseHandler(web.RequestHandler):
    """Counts the request in flight, answers JSON, records route, status and latency."""

    route = "other"

    def initialize(self, server: ModelServer) -> None:
        self.server = server

    def prepare(self) -> None:
        self.server.in_flight += 1
        self._counted = True

    def compute_etag(self) -> str | None:
        return None  # no hashing of every response body

    def set_default_headers(self) -> None:
        self.clear_header("Server")

    async def send(self, status: int, body: bytes, content_type: str = JSON) -> None:
        """Write the response and wait until it is flushed: a drain that sees no request
        in flight must not close a connection that still has bytes to send."""
        self.set_status(status)
        self.set_header("Content-Type", content_type)
        if self.server.draining:
            _close_after(self)
        await self.finish(body)

    async def send_error_json(self, exc: LoophubError) -> None:
        await self.send(exc.status, json.dumps(exc.to_dict()).encode())

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado's own errors (404, 405, 500) as JSON too."""
        exc = kwargs.get("exc_info", (None, None))[1]
        message = str(exc) if isinstance(exc, LoophubError) else self._reason
        self.set_header("Content-Type", JSON)
        self.finish(json.dumps({"error": message, "detail": None}))

    def on_finish(self) -> None:
        server = self.server
        if getattr(self, "_counted", False):
            server.in_flight -= 1
            server.last_request = time.monotonic()
        if server.metrics is not None:
            server.metrics.request(self.route, self.get_status(), self.request.request_time())

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if not isinstance(value, web.HTTPError):
            log.error("%s %s failed", self.request.method, self.request.path,
                      exc_info=(typ, value, tb))


def _close_after(handler: web.RequestHandler) -> None:
    """Close this connection once the response is sent (and say so in a Connection:
    close header): a draining replica must not keep idle keep-alive connections that a
    client would send its next request on. Tornado decides this per request from the
    request's headers; setting its flag before the headers go out is the only hook."""
    connection = handler.request.connection
    if hasattr(connection, "_disconnect_on_finish"):
        connection._disconnect_on_finish = True  # type: ignore[union-attr]


@web.stream_request_body
class PredictHandler(BaseHandler):
    route = "predict"

    def prepare(self) -> None:
        super().prepare()
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False
        declared = self.request.headers.get("Content-Length")
        limit = self.server.config.max_body
        if declared is None or not declared.isdigit() or int(declared) > limit:
            # read (and drop) an oversized body up to DRAIN_LIMIT, then answer 413
            self.request.connection.set_max_body_size(DRAIN_LIMIT)  # type: ignore[union-attr]
            if declared is not None and declared.isdigit() and int(declared) > DRAIN_LIMIT:
                self._too_large = True
                return self._refuse_now()
        self._start = time.perf_counter()

    def _refuse_now(self) -> None:
        error = self._too_large_error()
        self.set_status(413)
        self.set_header("Content-Type", JSON)
        self.finish(json.dumps(error.to_dict()))

    def _too_large_error(self) -> TooLarge:
        limit = self.server.config.max_body
        return TooLarge(f"body: larger than {limit} bytes; send fewer or smaller "
                        "instances per request", detail={"field": "body"})

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self.server.config.max_body:
            self._too_large = True
            self._chunks = []
        elif not self._too_large:
            self._chunks.append(chunk)

    async def post(self) -> None:
        if self._too_large:
            return await self.send_error_json(self._too_large_error())
        raw = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        server = self.server
        if server.metrics is not None:
            server.metrics.enter()
        instances = predictions = None
        request_id = request_id_of(self.request.headers.get("X-Request-Id"))
        self.set_header("X-Request-Id", request_id)
        try:
            body, instances, predictions = await server.predict(raw, request_id)
            status = 200
        except LoophubError as exc:
            status, body = exc.status, json.dumps(exc.to_dict()).encode()
        except Exception as exc:  # the model failed on a valid input
            log.exception("predict failed")
            status = 500
            body = json.dumps({"error": f"the model failed: {type(exc).__name__}: {exc}",
                               "detail": None}).encode()
        finally:
            if server.metrics is not None:
                server.metrics.leave()
        log_ = server.request_log
        if log_ is not None and log_.sampled():
            log_.write(status=status, seconds=time.perf_counter() - self._start,
                       instances=instances, predictions=predictions, request_id=request_id)
        await self.send(status, body)


def request_id_of(given: str | None) -> str:
    """The caller's (the gateway's) request id when it is a sane one, else a new one."""
    if given and REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


class HealthHandler(BaseHandler):
    route = "health"

    async def get(self) -> None:
        await self.send(200, b'{"status": "ok"}')


class ReadyHandler(BaseHandler):
    route = "ready"

    async def get(self) -> None:
        server = self.server
        if server.draining:
            await self.send(503, b'{"status": "draining", "error": "the replica is stopping"}')
        elif not server.ready:
            await self.send(503, b'{"status": "loading", "error": "the model is loading"}')
        else:
            await self.send(200, b'{"status": "ready"}')


class MetadataHandler(BaseHandler):
    route = "metadata"

    async def get(self) -> None:
        if not self.server.ready:
            return await self.send_error_json(NotReady("the model is still loading"))
        await self.send(200, self.server.metadata_body)


class MetricsHandler(BaseHandler):
    route = "metrics"

    async def get(self) -> None:
        metrics = self.server.metrics
        await self.send(200, metrics.exposition() if metrics else b"", CONTENT_TYPE)


class OpenAPIHandler(BaseHandler):
    route = "openapi"

    async def get(self) -> None:
        if not self.server.ready:
            return await self.send_error_json(NotReady("the model is still loading"))
        await self.send(200, self.server.openapi_body)


class NotFoundHandler(BaseHandler):
    async def prepare(self) -> None:  # type: ignore[override]
        super().prepare()
        base = self.server.config.base_path
        await self.send_error_json(NotFound(
            f"no route {self.request.method} {self.request.path}; this replica answers "
            f"{base}predict, health, ready, metadata, metrics and openapi.json"))


def make_app(server: ModelServer) -> web.Application:
    base = server.config.base_path
    routes = [("predict", PredictHandler), ("health", HealthHandler),
              ("ready", ReadyHandler), ("metadata", MetadataHandler),
              ("metrics", MetricsHandler), (r"openapi\.json", OpenAPIHandler)]
    return web.Application(
        [(f"{base}{path}", handler, {"server": server}) for path, handler in routes],
        default_handler_class=NotFoundHandler, default_handler_args={"server": server},
        log_function=_log_request, compress_response=False)


def _log_request(handler: web.RequestHandler) -> None:
    """Server errors only: an access line per request would cost more than the request."""
    if handler.get_status() >= 500:
        log.warning("%d %s %s %.1f ms", handler.get_status(), handler.request.method,
                    handler.request.path, handler.request.request_time() * 1000)


# -- the process --------------------------------------------------------------------------


async def serve(config: ServerConfig, *, started: asyncio.Event | None = None) -> int:
    """Run a replica until SIGTERM/SIGINT (or a failed load); the exit code."""
    server = ModelServer(config)
    http = httpserver.HTTPServer(make_app(server), max_body_size=config.max_body,
                                 idle_connection_timeout=75)
    try:
        sockets = netutil.bind_sockets(config.port, config.host)
    except OSError as exc:
        print(f"loophub model server: cannot listen on {config.host}:{config.port} "
              f"({exc.strerror}); choose another --port", file=sys.stderr)
        return 1
    http.add_sockets(sockets)
    config.port = sockets[0].getsockname()[1]  # --port 0: the one the system chose
    server.http = http
    code = await _serve_until_stopped(server, http, config, started)
    write_state(config, exit_code=code)
    return code


async def _serve_until_stopped(server: ModelServer, http: httpserver.HTTPServer,
                               config: ServerConfig, started: asyncio.Event | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("listening on http://%s:%d%s", config.host, config.port, config.base_path)
    write_state(config)
    if started is not None:
        started.set()
    loading = loop.create_task(server.load())
    stopping = loop.create_task(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done() and loading.exception() is not None:
        exc = loading.exception()
        message = exc.message if isinstance(exc, LoophubError) else f"{type(exc).__name__}: {exc}"
        print(f"loophub model server: cannot serve the model: {message}", file=sys.stderr)
        http.stop()
        return 2
    flusher = loop.create_task(_flush_log(server))
    await stopping
    loading.cancel()
    await server.drain()
    flusher.cancel()
    log.info("stopped")
    return 0


def write_state(config: ServerConfig, **more: Any) -> None:
    """Where it listens (and, at the end, its exit code) in ``--state-file``, if given."""
    if config.state_file is None:
        return
    host = config.advertise_host or (socket.gethostname() if config.host in ("0.0.0.0", "::")
                                     else config.host)
    statefile.write_state(config.state_file,
                          {"host": host, "port": config.port, "pid": os.getpid(), **more})


FLUSH_EVERY = 1.0  # seconds between request-log flushes
FAILING_REMINDER = 60.0  # seconds between warnings while flushing keeps failing


async def _flush_log(server: ModelServer) -> None:
    """Flush the request log every second. A failure (a full disk, the blob store down)
    must not end the logging for the replica's life, nor fill its log with a traceback a
    second: the first failure is logged in full, then a line a minute until it recovers."""
    failing_since: float | None = None  # the start of the current run of failures
    warned = 0.0
    while (request_log := server.request_log) is not None:
        await asyncio.sleep(FLUSH_EVERY)
        try:
            await asyncio.to_thread(request_log.flush)  # blob writes: off the loop
        except Exception as exc:
            now = time.monotonic()
            if failing_since is None:
                failing_since = warned = now
                log.exception("writing the request log %s (tried again each second)",
                              request_log.path)
            elif now - warned >= FAILING_REMINDER:
                warned = now
                log.warning("writing the request log %s still fails after %.0f s: %s",
                            request_log.path, now - failing_since, exc)
            continue
        if failing_since is not None:
            log.warning("the request log %s is written again after %.0f s of failures",
                        request_log.path, time.monotonic() - failing_since)
            failing_since = None


def alloc_cpu() -> int:
    """The replica's cores as the scheduler's placement gave them (LOOPHUB_ALLOC_CPU,
    possibly fractional), at least 1."""
    try:
        return max(1, int(float(os.environ.get("LOOPHUB_ALLOC_CPU", "1"))))
    except ValueError:
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loophub.serving.server",
                                     description="Serve one model version over HTTP.")
    parser.add_argument("--artifact", required=True, type=Path,
                        help="the version's TorchScript file (model.pt)")
    parser.add_argument("--meta", required=True, type=Path,
                        help="its metadata JSON (task, labels, preprocess)")
    parser.add_argument("--port", required=True, type=int,
                        help="0: any free port (say which in --state-file)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--state-file", type=Path,
                        help="JSON file with the address it listens on, then its exit code")
    parser.add_argument("--advertise-host",
                        help="host name written to --state-file (default: this host's "
                             "name when --host is 0.0.0.0, else --host)")
    parser.add_argument("--base-path", default=os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/"),
                        help="prefix of every route (default $JUPYTERHUB_SERVICE_PREFIX or /)")
    parser.add_argument("--model-ref", help="NAME@vN: the registry's name for the version")
    parser.add_argument("--alias", help="the alias the release follows, shown in /metadata")
    parser.add_argument("--max-batch-size", type=int, default=32,
                        help="instances in one forward pass at most")
    parser.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="longest wait for a batch to fill (adaptive: a lone client "
                             "never waits)")
    parser.add_argument("--no-batching", action="store_true",
                        help="one forward pass per request")
    parser.add_argument("--max-body-bytes", type=int, default=MAX_BODY)
    parser.add_argument("--no-metrics", action="store_true",
                        help="record no metrics (to measure their cost)")
    parser.add_argument("--drain-timeout", type=float, default=30.0,
                        help="seconds a SIGTERM waits for requests in flight")
    parser.add_argument("--request-log", type=Path,
                        help="JSON-lines file for a sample of requests")
    parser.add_argument("--log-sample-rate", type=float, default=1.0,
                        help="share of requests written to --request-log (0-1)")
    parser.add_argument("--blob-url",
                        help="a blob store (the platform's) where sampled images are kept")
    return parser


def config_from_args(argv: list[str] | None = None) -> ServerConfig:
    args = build_parser().parse_args(argv)
    try:
        return ServerConfig(
            artifact=args.artifact, meta=args.meta, port=args.port, host=args.host,
            base_path=args.base_path, model_ref=args.model_ref, alias=args.alias,
            batching=not args.no_batching, max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms, max_body=args.max_body_bytes,
            metrics=not args.no_metrics, threads=alloc_cpu(),
            drain_timeout_s=args.drain_timeout, request_log=args.request_log,
            blob_url=args.blob_url,
            log_sample_rate=args.log_sample_rate, state_file=args.state_file,
            advertise_host=args.advertise_host)
    except ValueError as exc:
        build_parser().error(str(exc))
        raise


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = config_from_args(argv)
    if config.request_log and not 0 <= config.log_sample_rate <= 1:
        build_parser().error("--log-sample-rate must be within 0 and 1")
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
