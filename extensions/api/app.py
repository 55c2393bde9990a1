"""The API service: a configurable application (traitlets, like JupyterHub itself) that
builds the tornado app and runs it under the hub.

Every option is a documented trait, set in a ``jupyterhub_config``-style file
(``LOOPHUB_HOME/loophub_api_config.py``, or the file named by ``$LOOPHUB_API_CONFIG``)::

    c.LoophubAPI.trusted_services = {"loophub-spawner", "my-batch-service"}
    c.LoophubAPI.scheduler_policy = "drf"
    c.LoophubAPI.scheduler_config = {"aging_bound": 7200}

The environment variables the platform has always read (LOOPHUB_DB_URL, LOOPHUB_POOL,
LOOPHUB_SCHEDULER, ...) keep working and override the file, so `loophub up` and
existing deployments behave as before. `python -m loophub.extensions.api --help-all`
lists every option.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import secrets
import signal
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler
from jupyterhub.utils import url_path_join
from sqlalchemy import text
from tornado import ioloop, web
from traitlets import Dict, Float, Integer, Set, Unicode, default
from traitlets.config import Application

import loophub
from loophub.errors import InvalidInput
from loophub.jobs import JobStore
from loophub.pool import NodeSpec, load_pool
from loophub.scheduler.model import SchedulerConfig
from loophub.settings import Settings
from loophub.store import BlobStore, Database

from .base import ApiHandler, Op, in_thread
from .datasets import ROUTES as DATASET_ROUTES
from .hub import Hub
from .jobs import ROUTES as JOB_ROUTES
from .jobs import JobRunner
from .labeling import ROUTES as LABELING_ROUTES
from .loop import ROUTES as LOOP_ROUTES
from .models import ROUTES as MODEL_ROUTES
from .openapi import build_openapi
from .pages import page_routes
from .routes import ROUTES
from .scheduler import ROUTES as SCHEDULER_ROUTES
from .serving import ROUTES as SERVING_ROUTES
from .shell import SchedulerShell
from .training import ROUTES as TRAINING_ROUTES

log = logging.getLogger("loophub.api")
ALL_ROUTES = [*ROUTES, *SCHEDULER_ROUTES, *JOB_ROUTES, *DATASET_ROUTES, *LABELING_ROUTES,
              *TRAINING_ROUTES, *MODEL_ROUTES, *SERVING_ROUTES,
              *LOOP_ROUTES]


@dataclass
class ServiceContext:
    """What the handlers share: settings, the database, the blob store, the pool, the
    scheduler shell and the job runner (built from LoophubAPI's options)."""

    settings: Settings
    prefix: str = "/services/loophub/"
    version: str = loophub.__version__
    routes: list[tuple[str, type]] = field(default_factory=lambda: list(ALL_ROUTES))
    trusted_services: frozenset[str] = frozenset({"loophub-spawner"})
    scheduler_policy: str = "balanced-drf"
    scheduler_config: dict = field(default_factory=dict)
    max_upload_bytes: int = 20 * 1024**3
    max_prediction_items: int = 1000
    job_workers: int = 2
    reconcile_interval: float = 30.0
    reconcile_grace: float = 60.0
    unclaimed_spawn_after: float = 15.0
    hub: Hub | None = None
    api_url: str = ""                  # this service's API, as the workers it starts reach it
    dask_scheduler_address: str = ""   # training on an existing Dask cluster ("": our own)
    preempt_grace: float = 60.0
    training_token_ttl: int = 7 * 86400
    # (owner, job id) -> an API token the job's workers act with (tests without a hub)
    token_for: Any = None
    # pool backend ("slurm") -> how training workers are started there (local: processes)
    worker_launchers: dict = field(default_factory=dict)
    replica_launchers: dict = field(default_factory=dict)  # the same, for model replicas

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

        return DatasetService(self.db, self.blobs, max_upload_bytes=self.max_upload_bytes)

    @cached_property
    def labeling(self):
        from loophub.labeling.service import LabelingService

        return LabelingService(self.db, self.datasets)

    @property
    def job_files(self) -> Path:
        """Where jobs leave files for download (exports), kept ``JOB_FILES_KEPT`` s."""
        return self.settings.home / "jobs"

    @cached_property
    def jobs(self) -> JobRunner:
        return JobRunner(JobStore(self.db, self.blobs), workers=self.job_workers)

    @cached_property
    def training(self):
        from loophub.training.service import TrainingService

        return TrainingService(self.db, self.blobs, self.datasets, self.jobs.store,
                               self.settings.home / "cache")

    @cached_property
    def models(self):
        from loophub.models.registry import ModelRegistry

        return ModelRegistry(self.db, self.blobs, self.datasets)

    @cached_property
    def releases(self):
        from loophub.serving.releases import ReleaseStore

        return ReleaseStore(self.db)

    @cached_property
    def release_manager(self):
        from loophub.serving.manager import ReleaseManager

        from .serving import SERVING

        backends = {node.name: node.backend for node in self.pool}
        launchers = dict(self.replica_launchers)
        if "slurm" in backends.values() and "slurm" not in launchers:
            from loophub.spawner.backends.replicas import SlurmReplicaLauncher

            launchers["slurm"] = SlurmReplicaLauncher()
        return ReleaseManager(
            self.releases, self.blobs, files=self.settings.home / "serving",
            end=lambda request_id, reason: self.scheduler.release(
                request_id, reason=reason, actor=SERVING),
            backend_of=lambda node: backends.get(node, "local"),
            launchers=launchers)

    @cached_property
    def lineage(self):
        from loophub.loop.lineage import Lineage

        return Lineage(self.releases, self.models, self.training, self.datasets)

    @cached_property
    def loop(self):
        from loophub.serving.collect import LoopService

        return LoopService(self.db, self.blobs, self.datasets, self.releases, self.monitor)

    @cached_property
    def monitor(self):
        from loophub.serving.observe import Monitor

        return Monitor(self.db, self.blobs, self.datasets, self.models,
                       self.settings.home / "serving" / "logs")

    @property
    def public_url(self) -> str:
        """The hub's public URL (releases are served under it); '' without a hub."""
        return self.hub.public_url if self.hub is not None else ""

    def start_collect_schedules(self, every: float = 10.0) -> ioloop.PeriodicCallback:
        """The feedback loop's schedules, run when due (on a thread, one round at a time)."""
        async def run_due() -> None:
            try:
                await in_thread(self.loop.run_due)
            except Exception:  # the next round tries again
                log.exception("collection schedules")

        callback = ioloop.PeriodicCallback(run_due, every * 1000)
        callback.start()
        return callback

    async def start_serving(self) -> None:
        """Replicas that outlived a restart are adopted (or started again on their
        allocation), then watched."""
        running = {v["id"]: v["allocation"] for v in self.scheduler.service.queue()
                   if v["kind"] == "service" and v["state"] == "running"}
        await self.release_manager.recover(running)
        ioloop.IOLoop.current().add_callback(self.release_manager.watch)

    @cached_property
    def evaluations(self):
        from loophub.models.evaluations import Evaluations

        return Evaluations(self.models)

    @cached_property
    def runner(self):
        from loophub.training.runner import LocalLauncher, TrainingRunner

        backends = {node.name: node.backend for node in self.pool}
        launchers = dict(self.worker_launchers)
        if "slurm" in backends.values() and "slurm" not in launchers:
            from loophub.spawner.backends.dask_workers import SlurmWorkerLauncher

            launchers["slurm"] = SlurmWorkerLauncher()
        return TrainingRunner(
            self.training, api_url=self.api_url, token_for=self._training_token,
            release=self._release_training, revoke=self._revoke_training_token,
            launcher=LocalLauncher(self.settings.home / "logs" / "training"),
            launchers=launchers, backend_of=lambda node: backends.get(node, "local"),
            scheduler_address=self.dask_scheduler_address, preempt_grace=self.preempt_grace)

    async def _training_token(self, owner: str, job_id: str) -> str:
        """A token for the job's workers: the owner's rights, only for this API, expiring."""
        if self.token_for is not None:
            return self.token_for(owner, job_id)
        if self.hub is None:
            raise RuntimeError("training needs the hub to issue tokens (no hub here)")
        token, token_id = await self.hub.create_token(
            owner, f"training job {job_id}", self.training_token_ttl,
            ["access:services!service=loophub"])
        self._tokens[job_id] = (owner, token_id)
        return token

    async def _revoke_training_token(self, job_id: str) -> None:
        owner, token_id = self._tokens.pop(job_id, (None, None))
        if owner and self.hub is not None:
            try:
                await self.hub.revoke_token(owner, token_id)
            except Exception as exc:  # it expires by itself
                log.warning("could not revoke the token of job %s: %s", job_id, exc)

    @cached_property
    def _tokens(self) -> dict[str, tuple[str, str]]:
        return {}

    async def _release_training(self, job_id: str, reason: str) -> None:
        from loophub.training.service import RUNNER

        request_id = self.training.state_of(job_id)[1].request_id
        if request_id:
            self.scheduler.release(request_id, reason=reason, actor=RUNNER)
            self.training.record_resources(
                job_id, self.scheduler.service.resource_hours(request_id))

    async def cancel_training(self, actor, job_id: str) -> dict:
        """Cancel a training job whatever its state: it leaves the queue, or its ranks stop;
        its allocation is given back."""
        from loophub.errors import Conflict
        from loophub.jobs import ENDED

        view = self.training.get(actor, job_id)
        if view["state"] in ENDED:
            raise Conflict(f"training job {job_id} already ended ({view['state']})")
        reason = f"cancelled by {actor.name}"
        await self.runner.stop(job_id, reason, state="cancelled")
        await self._release_training(job_id, reason)
        return self.training.get(actor, job_id)

    @cached_property
    def scheduler(self) -> SchedulerShell:
        from loophub.scheduler.service import SchedulerService

        from .kinds import KernelHandler, ServerHandler

        config = SchedulerConfig.from_dict(self.scheduler_config)
        service = SchedulerService(self.db, self.pool, policy=self.scheduler_policy,
                                   config=config)
        shell = SchedulerShell(service, SchedulerConfig.from_dict(config.to_dict()), self.hub,
                               reconcile_every=self.reconcile_interval,
                               reconcile_grace=self.reconcile_grace,
                               unclaimed_after=self.unclaimed_spawn_after)
        shell.register("server", ServerHandler(self.hub))
        shell.register("kernel", KernelHandler(self.hub))
        from .training import JobHandler

        shell.register("job", JobHandler(self.runner))
        from .serving import ServiceHandler

        shell.register("service", ServiceHandler(self.release_manager))
        return shell

    async def recover_training(self) -> None:
        """Jobs whose request still runs after a restart start again from their checkpoint."""
        running = {v["job"]: v["allocation"] for v in self.scheduler.service.queue()
                   if v["kind"] == "job" and v["state"] == "running" and v.get("job")}
        await self.runner.recover(running)

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


class NotFoundHandler(ApiHandler):
    openapi = {m: Op("no such route", access="public") for m in
               ("get", "post", "put", "patch", "delete")}

    async def prepare(self) -> None:
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
        *page_routes(prefix),
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


# --- the configurable application ------------------------------------------------------


class LoophubAPI(Application):
    """The loophub API service (run by JupyterHub as the service ``loophub``)."""

    name = "loophub-api"
    description = __doc__.splitlines()[0]
    # trait -> the environment variable that overrides it (what deployments already set)
    env_overrides = {
        "db_url": "LOOPHUB_DB_URL", "blob_url": "LOOPHUB_BLOB_URL", "pool": "LOOPHUB_POOL",
        "trusted_services": "LOOPHUB_TRUSTED_SERVICES",
        "max_upload_bytes": "LOOPHUB_MAX_UPLOAD_BYTES", "public_url": "LOOPHUB_PUBLIC_URL",
        "dask_scheduler_address": "LOOPHUB_DASK_SCHEDULER",
    }

    home = Unicode(help="Where the platform keeps its state (default $LOOPHUB_HOME or "
                        "./.loophub).").tag(config=True)
    config_file = Unicode(help="The options file (default $LOOPHUB_API_CONFIG or "
                               "HOME/loophub_api_config.py); loaded when it exists.",
                          ).tag(config=True)
    db_url = Unicode("", help="The loophub database, e.g. postgresql://user@host/loophub "
                              "(default SQLite in the home; $LOOPHUB_DB_URL).").tag(config=True)
    blob_url = Unicode("", help="The blob store, any fsspec URL (default HOME/blobs; "
                                "$LOOPHUB_BLOB_URL).").tag(config=True)
    pool = Unicode("", help="A declared pool (JSON or a JSON file; default: this machine "
                            "detected; $LOOPHUB_POOL).").tag(config=True)
    scheduler_policy = Unicode("balanced-drf", help="fifo, drf, balanced-drf, slurm-fairshare "
                                                    "or tetris.").tag(config=True)
    scheduler_config = Dict(help="SchedulerConfig fields (weights, quotas, aging_bound, ...); "
                                 "$LOOPHUB_SCHEDULER (JSON, may name the policy) overrides."
                            ).tag(config=True)
    trusted_services = Set({"loophub-spawner"}, help="Hub services allowed to submit "
                           "scheduler requests for other users and to see every request "
                           "($LOOPHUB_TRUSTED_SERVICES, comma-separated).").tag(config=True)
    max_upload_bytes = Integer(20 * 1024**3, help="Largest upload, in bytes "
                               "($LOOPHUB_MAX_UPLOAD_BYTES).").tag(config=True)
    max_prediction_items = Integer(1000, help="Predictions one request may store.").tag(
        config=True)
    job_workers = Integer(2, help="Threads running long operations (imports, exports, "
                                  "commits) at once; more wait as queued jobs.").tag(config=True)
    auth_cache_seconds = Integer(5, help="How long a token's identity and groups are "
                                         "cached; a user removed from a group loses its "
                                         "rights within this time.").tag(config=True)
    reconcile_interval = Float(30.0, help="Seconds between checks that the servers the hub "
                                          "runs and the scheduler's allocations agree."
                               ).tag(config=True)
    reconcile_grace = Float(60.0, help="Seconds a server may run before the hub must know it "
                                       "(younger allocations are never taken for dead)."
                            ).tag(config=True)
    unclaimed_spawn_after = Float(15.0, help="Seconds an allocated server may go unclaimed "
                                             "by a waiting spawner before the service starts "
                                             "it through the hub.").tag(config=True)
    dask_scheduler_address = Unicode("", help="Train on an existing Dask cluster (its "
                                     "scheduler's address, e.g. a dask-gateway or "
                                     "dask-jobqueue cluster's); empty: the platform runs its "
                                     "own Dask scheduler ($LOOPHUB_DASK_SCHEDULER)."
                                     ).tag(config=True)
    preempt_grace = Float(60.0, help="Seconds a preempted training job's ranks have to "
                                     "checkpoint and stop before their workers are stopped."
                          ).tag(config=True)
    public_url = Unicode("", help="The hub's public URL (to reach users' servers through "
                                  "the proxy; $LOOPHUB_PUBLIC_URL).").tag(config=True)

    @default("home")
    def _default_home(self) -> str:
        return os.environ.get("LOOPHUB_HOME") or ".loophub"

    @default("config_file")
    def _default_config_file(self) -> str:
        return os.environ.get("LOOPHUB_API_CONFIG") or str(
            Path(self.home).expanduser() / "loophub_api_config.py")

    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        path = Path(self.config_file).expanduser()
        if path.exists():
            self.load_config_file(str(path))
        self._apply_env()

    def _apply_env(self) -> None:
        env = os.environ
        for trait, var in self.env_overrides.items():
            raw = env.get(var)
            if not raw:
                continue
            if trait == "trusted_services":
                self.trusted_services = {s.strip() for s in raw.split(",") if s.strip()}
            elif trait == "max_upload_bytes":
                self.max_upload_bytes = int(raw)
            else:
                setattr(self, trait, raw)
        if raw := env.get("LOOPHUB_SCHEDULER"):
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"LOOPHUB_SCHEDULER: invalid JSON: {exc.msg}") from exc
            self.scheduler_policy = data.pop("policy", self.scheduler_policy)
            self.scheduler_config = {**self.scheduler_config, **data}
        unknown = set(self.scheduler_config) - set(SchedulerConfig.__dataclass_fields__)
        if unknown:
            raise InvalidInput(f"scheduler_config: unknown settings {sorted(unknown)}")

    def platform_settings(self) -> Settings:
        base = Settings.from_env(self.home)
        return Settings(home=base.home, db_url=self.db_url or base.db_url,
                        blob_url=self.blob_url or base.blob_url, hub_db_url=base.hub_db_url,
                        pool=self.pool or base.pool)

    def worker_launchers(self, settings: Settings) -> dict:
        """Launchers of training workers for the pool's batch backends, configured from
        this application's options (c.SlurmWorkerLauncher.partition = ...)."""
        if not any(node.backend == "slurm" for node in load_pool(settings.pool)):
            return {}
        from loophub.spawner.backends.dask_workers import SlurmWorkerLauncher

        return {"slurm": SlurmWorkerLauncher(parent=self)}

    def replica_launchers(self, settings: Settings) -> dict:
        """Launchers of model replicas for the pool's batch backends
        (c.SlurmReplicaLauncher.partition = ...; c.SlurmUnitLauncher sets both kinds)."""
        if not any(node.backend == "slurm" for node in load_pool(settings.pool)):
            return {}
        from loophub.spawner.backends.replicas import SlurmReplicaLauncher

        return {"slurm": SlurmReplicaLauncher(parent=self)}

    def context(self, prefix: str, api_url: str = "") -> ServiceContext:
        hub = None
        if os.environ.get("JUPYTERHUB_API_TOKEN"):
            hub = Hub(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"],
                      self.public_url)
        settings = self.platform_settings()
        return ServiceContext(
            settings=settings, prefix=prefix, worker_launchers=self.worker_launchers(settings),
            replica_launchers=self.replica_launchers(settings),
            trusted_services=frozenset(self.trusted_services),
            scheduler_policy=self.scheduler_policy, scheduler_config=dict(self.scheduler_config),
            max_upload_bytes=self.max_upload_bytes,
            max_prediction_items=self.max_prediction_items, job_workers=self.job_workers,
            reconcile_interval=self.reconcile_interval, reconcile_grace=self.reconcile_grace,
            unclaimed_spawn_after=self.unclaimed_spawn_after, hub=hub, api_url=api_url,
            dask_scheduler_address=self.dask_scheduler_address,
            preempt_grace=self.preempt_grace)

    def start(self) -> None:
        prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/loophub/")
        url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101"))
        ctx = self.context(prefix, api_url=f"{url.scheme}://{url.netloc}{prefix}api")
        ctx.db, ctx.blobs  # migrate, connect and create the store before serving  # noqa: B018
        ctx.jobs.store.interrupt_active("the loophub API service stopped while this job ran; "
                                        "nothing it did was kept: run it again",
                                        resumable=("train",))
        auth = HubOAuth.instance(cache_max_age=self.auth_cache_seconds)
        app = make_app(ctx, hub_auth=auth)
        try:
            app.listen(url.port, url.hostname, max_body_size=max(ctx.max_upload_bytes,
                                                                 64 * 1024**2))
        except OSError as exc:
            log.error("cannot listen on %s:%s (%s); the port is taken by another process: "
                      "free it, or pin a free one with LOOPHUB_API_PORT", url.hostname,
                      url.port, exc)
            sys.exit(2)
        ctx.scheduler.start_background()
        ioloop.IOLoop.current().add_callback(ctx.recover_training)
        ioloop.IOLoop.current().add_callback(ctx.start_serving)
        ctx.start_collect_schedules()
        keep_the_loop_responsive()
        log.info("loophub API %s listening on %s%s", loophub.__version__, url.geturl(), prefix)
        loop = ioloop.IOLoop.current()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: loop.add_callback_from_signal(loop.stop))
        loop.start()
        ctx.jobs.shutdown()
        if "runner" in ctx.__dict__:
            ioloop.IOLoop.current().run_sync(ctx.runner.close, timeout=60)
        if "release_manager" in ctx.__dict__:  # replicas stop with the platform
            keep = os.environ.get("LOOPHUB_KEEP_SERVERS", "") == "1"
            ioloop.IOLoop.current().run_sync(
                lambda: ctx.release_manager.close(keep=keep), timeout=60)
        log.info("loophub API stopped")


def keep_the_loop_responsive() -> None:
    """Heavy work runs on threads (imports, exports, scans); two settings keep the event
    loop answering /health and small reads within milliseconds meanwhile (measured in
    benchmarks/api_isolation.py): the loop gets the GIL back every 0.5 ms instead of 5 ms,
    and the objects of start-up leave the collector's view, so a full collection takes
    milliseconds, not 100-230 ms."""
    sys.setswitchinterval(0.0005)
    gc.collect()
    gc.freeze()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="[loophub-api %(levelname)s] %(message)s")
    app = LoophubAPI.instance()
    try:
        app.initialize(argv)
    except InvalidInput as exc:
        log.error("%s", exc.message)
        sys.exit(2)
    app.start()
