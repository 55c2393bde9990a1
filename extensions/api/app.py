"""Builds the API service's tornado application and runs it under the hub."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from sqlalchemy import text
from tornado import ioloop, web

import loophub
from loophub.pool import NodeSpec, load_pool
from loophub.scheduler.model import SchedulerConfig
from loophub.settings import Settings
from loophub.store import BlobStore, Database

from .base import ApiHandler
from .datasets import ROUTES as DATASET_ROUTES
from .datasets import ImportJobs
from .labeling import ROUTES as LABELING_ROUTES
from .openapi import build_openapi
from .routes import ROUTES
from .scheduler import ROUTES as SCHEDULER_ROUTES
from .scheduler import SchedulerShell, scheduler_config_from_env

log = logging.getLogger("loophub.api")


@dataclass
class ServiceContext:
    """What the handlers share: settings, the database, the blob store, the pool."""

    settings: Settings
    prefix: str = "/services/loophub/"
    version: str = loophub.__version__
    routes: list[tuple[str, type]] = field(
        default_factory=lambda: [*ROUTES, *SCHEDULER_ROUTES, *DATASET_ROUTES, *LABELING_ROUTES])
    import_jobs: ImportJobs = field(default_factory=ImportJobs)

    @cached_property
    def db(self) -> Database:
        return Database(self.settings.db_url)

    @cached_property
    def blobs(self) -> BlobStore:
        return BlobStore(self.settings.blob_url)

    @cached_property
    def pool(self) -> list[NodeSpec]:
        return load_pool(self.settings.pool)

    @cached_property
    def datasets(self):
        from loophub.datasets.service import DatasetService

        return DatasetService(self.db, self.blobs)

    @cached_property
    def scheduler(self) -> SchedulerShell:
        from loophub.scheduler.service import SchedulerService

        policy, config = scheduler_config_from_env()
        service = SchedulerService(self.db, self.pool, policy=policy, config=config)
        return SchedulerShell(service, SchedulerConfig.from_dict(config.to_dict()))

    @cached_property
    def openapi(self) -> dict:
        return build_openapi(self.routes, self.prefix)

    def health(self) -> dict[str, bool]:
        checks = {}
        try:
            with self.db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = True
        except Exception:  # health reports, it does not raise
            log.exception("database check failed")
            checks["database"] = False
        try:
            checks["blobs"] = bool(self.blobs.fs.isdir(self.blobs.root))
        except Exception:  # an unreachable object store is a failed check, not a 500
            log.exception("blob store check failed")
            checks["blobs"] = False
        return checks


class IndexHandler(HubOAuthenticated, web.RequestHandler):
    """A landing page for people who open the service in a browser."""

    @web.authenticated
    def get(self) -> None:
        user = self.current_user
        prefix = self.settings["loophub"].prefix
        self.finish(
            "<!doctype html><title>loophub</title><h1>loophub</h1>"
            f"<p>Signed in as <b>{web.escape.xhtml_escape(user['name'])}</b>.</p><ul>"
            f"<li><a href='{prefix}api/openapi.json'>API (OpenAPI)</a></li>"
            f"<li><a href='{prefix}api/me'>who am I</a></li>"
            f"<li><a href='{prefix}api/pool'>resource pool</a></li></ul>"
        )


class FairnessHandler(HubOAuthenticated, web.RequestHandler):
    """The admins' fairness view: pool, queue with reasons, dominant shares, usage."""

    @web.authenticated
    def get(self) -> None:
        if not self.current_user.get("admin"):
            raise web.HTTPError(403, "the fairness view is for hub admins")
        self.finish((Path(__file__).parent / "fairness.html").read_text()
                    .replace("{{prefix}}", self.settings["loophub"].prefix))


class NotFoundHandler(ApiHandler):
    auth = "none"

    def prepare(self) -> None:
        raise web.HTTPError(404, f"no route {self.request.method} {self.request.path}; "
                                 f"see {self.ctx.prefix}api/openapi.json")


def _cookie_secret(settings: Settings) -> bytes:
    path = settings.secrets_dir / "api_cookie_secret"
    if not path.exists():
        settings.ensure_dirs()
        path.write_bytes(secrets.token_bytes(32))
        path.chmod(0o600)
    return path.read_bytes()


def make_app(ctx: ServiceContext, hub_auth: HubOAuth | None = None) -> web.Application:
    prefix = ctx.prefix
    handlers: list = [
        (prefix, IndexHandler),
        (url_path_join(prefix, "fairness"), FairnessHandler),
        (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
    ]
    handlers += [(url_path_join(prefix, "api", path), h) for path, h in ctx.routes]
    handlers.append((r".*", NotFoundHandler))
    hub_auth = hub_auth or HubOAuth.instance()
    return web.Application(
        handlers,
        loophub=ctx,
        hub_auth=hub_auth,
        cookie_secret=_cookie_secret(ctx.settings),
        xsrf_cookies=False,
        login_url=hub_auth.login_url,
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[loophub-api %(levelname)s] %(message)s")
    settings = Settings.from_env()
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/loophub/")
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101"))
    ctx = ServiceContext(settings=settings, prefix=prefix)
    ctx.db, ctx.blobs  # migrate, connect and create the store before serving  # noqa: B018
    app = make_app(ctx)
    try:
        app.listen(url.port, url.hostname)
    except OSError as exc:
        log.error("cannot listen on %s:%s (%s); the port is taken by another process: free "
                  "it, or pin a free one with LOOPHUB_API_PORT", url.hostname, url.port, exc)
        sys.exit(2)
    ctx.scheduler.start_background()
    log.info("loophub API %s listening on %s%s", loophub.__version__, url.geturl(), prefix)
    loop = ioloop.IOLoop.current()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: loop.add_callback_from_signal(loop.stop))
    loop.start()
    log.info("loophub API stopped")
