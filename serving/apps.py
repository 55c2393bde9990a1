"""The apps service: every release's end-user app, rendered by Voila behind the hub.

    python -m loophub.serving.apps        (the hub starts it as the service "apps")

``/services/apps/<release>`` renders the template notebook of the release's task
(loophub.releases.apps.TEMPLATES, notebooks/apps/) for a visitor who may call the
release. What it adds to a plain Voila server:

- identity: the hub's OAuth (JupyterHub's own identity provider for Jupyter servers), so
  an end user needs only a hub account, no notebook server;
- authorisation per release: the visitor's token reads the release from the loophub API
  (owner, the groups it is shared with, admins; anyone else gets 404, as the gateway);
  each kernel belongs to the visitor whose page opened it, and only the page's own
  kernel messages are allowed (Voila refuses execute requests; the server's contents,
  tree, file and kernel-listing routes are not mounted);
- thin kernels that call the release over HTTP as the visitor: the service hands the
  visitor's token and the release name to the kernel as request headers it sets itself
  (a visitor's own values are dropped), and the kernel never sees the service's token
  (the environment is cleaned before any kernel starts);
- preheated kernels per template (a pool per task type, not per release), idle culling,
  and a cap on kernels in use past which a visitor gets a "busy, retry in N s" page at once.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from jupyter_server.auth.authorizer import Authorizer
from jupyter_server.base.handlers import FileFindHandler, JupyterHandler
from jupyter_server.services.kernels.handlers import KernelHandler
from jupyterhub.services.auth import HubOAuth
from jupyterhub.singleuser.extension import (
    JupyterHubIdentityProvider,
    JupyterHubOAuthCallbackHandler,
)
from jupyterhub.utils import url_path_join
from jupyterlab_server.themes_handler import ThemesHandler
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Dict, Integer, List, Unicode, default
from traitlets.config import Config
from voila.app import Voila
from voila.request_info_handler import RequestInfoSocketHandler
from voila.shutdown_kernel_handler import VoilaShutdownKernelHandler
from voila.static_file_handler import MultiStaticFileHandler, TemplateStaticFileHandler
from voila.tornado.handler import TornadoVoilaHandler
from voila.tornado.kernel_websocket_handler import VoilaKernelWebsocketHandler

from loophub.releases.apps import (
    HEADERS,
    MAX_PREFETCH,
    PREFETCH_HEADER,
    RELEASE_HEADER,
    RELEASE_NAME,
    VISITOR_HEADER,
    Capacity,
    template_for,
)

log = logging.getLogger("loophub.apps")
KERNEL_ID = re.compile(r'"kernelId":\s*"([0-9a-f-]{36})"')  # in the page Voila renders
TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "notebooks" / "apps"
DEFAULT_PREFIX = "/services/apps/"
# what the kernels keep of the service's environment: where the API is, and the basics
# a Python process needs; the hub's token and the platform's paths stay out
# Voila's own routes the apps need (its tree, render, contents, files, request-info and
# shutdown routes are left out or replaced below)
KEPT_HANDLERS = (KernelHandler, VoilaKernelWebsocketHandler, TemplateStaticFileHandler,
                 MultiStaticFileHandler, ThemesHandler, FileFindHandler,
                 JupyterHubOAuthCallbackHandler)
KERNEL_ENV = ("LOOPHUB_API_URL", "PATH", "HOME", "LANG", "LC_ALL", "TZ", "PYTHONPATH",
              "VIRTUAL_ENV", "TMPDIR", "USER", "LOGNAME")


class AppsIdentityProvider(JupyterHubIdentityProvider):
    """JupyterHub's OAuth identity for Jupyter servers, with the service's own HubOAuth
    (resolved before the environment was cleaned) and its routes under the prefix (Voila
    mounts an identity provider's handlers as given)."""

    @default("hub_auth")
    def _default_hub_auth(self) -> HubOAuth:
        return self.parent.hub_auth

    def get_handlers(self) -> list:
        prefix = self.parent.base_url
        return [(url_path_join(prefix, "oauth_callback"), JupyterHubOAuthCallbackHandler,
                 {"hub_auth": self.hub_auth})]


class AppsAuthorizer(Authorizer):
    """A kernel is the visitor's whose page started it (bound while the page renders):
    only that user reaches its channels, its model and its shutdown. Nothing else of a
    Jupyter server is reachable here."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.owners: dict[str, str] = {}

    def is_authorized(self, handler: web.RequestHandler, user: Any, action: str,
                      resource: str) -> bool:
        kernel_id = handler.path_kwargs.get("kernel_id") if handler.path_kwargs else None
        return resource == "kernels" and bool(kernel_id) and self.may_use(kernel_id, user)

    def bind(self, kernel_id: str, user: Any) -> bool:
        """KERNEL_ID is USER's from now on (the app page that started it is theirs)."""
        self._forget_ended()
        self.owners[kernel_id] = user.username
        return True

    def _forget_ended(self) -> None:
        known = set(self.parent.kernel_manager.list_kernel_ids())
        for gone in set(self.owners) - known:
            del self.owners[gone]

    def may_use(self, kernel_id: str, user: Any) -> bool:
        return user is not None and self.owners.get(kernel_id) == user.username

    def held(self) -> dict[str, int]:
        """Kernels each visitor holds now (those still running)."""
        self._forget_ended()
        return dict(Counter(self.owners.values()))


class LocalRequestInfoHandler(RequestInfoSocketHandler):
    """Voila's channel that hands a preheated kernel its visitor's request: for the
    kernels on this machine only (it carries the visitor's token), never through the
    proxy (which always adds X-Forwarded-For)."""

    async def get(self, *args: Any, **kwargs: Any) -> None:
        if self.request.remote_ip not in ("127.0.0.1", "::1") \
                or "X-Forwarded-For" in self.request.headers:
            raise web.HTTPError(403)
        await super().get(*args, **kwargs)


class OwnKernelShutdownHandler(VoilaShutdownKernelHandler):
    """The page's shutdown on leaving, for the kernel's own visitor only."""

    @web.authenticated
    async def post(self, kernel_id: str) -> None:
        if not self.settings["authorizer"].may_use(kernel_id, self.current_user):
            raise web.HTTPError(404)
        await super().post.__wrapped__(self, kernel_id)  # type: ignore[attr-defined]


class AppHandler(TornadoVoilaHandler):
    """``{prefix}<release>``: the release's app, for whoever may call the release."""

    def initialize(self, **kwargs: Any) -> None:
        self.apps: AppsServer = kwargs.pop("apps")
        super().initialize(**kwargs)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = getattr(kwargs.get("exc_info", (None, None))[1], "log_message", None)
        self.finish(page("Something went wrong", reason or self._reason))

    @web.authenticated
    async def get(self, release: str) -> None:  # type: ignore[override]
        token = self.identity_provider.hub_auth.get_token(self)
        view = await self.apps.release_for(token, release) if token else None
        if view is None:
            self.set_status(404)
            self.finish(page("No such app", f"There is no app named {release!r} that you "
                             "can open. Check the name, or ask the release's owner to share "
                             "it with a group of yours."))
            return
        template = template_for(view.get("task"))
        if template is None or not (Path(self.apps.root_dir) / template).is_file():
            self.set_status(404)
            self.finish(page("No app for this task", f"Release {release!r} serves a "
                             f"{view.get('task') or 'task'} model, which has no app template "
                             "here; call its REST endpoint instead."))
            return
        held = self.settings["authorizer"].held().get(self.current_user.username, 0)
        if not self.apps.capacity.admits_visitor(held):
            wait = self.apps.capacity.retry_after
            self.set_status(429)
            self.set_header("Retry-After", str(wait))
            self.finish(page("Too many app pages", f"You have {held} app pages open, the "
                             f"most one person may hold at once. Close one (its session "
                             f"ends with its tab); this page tries again in {wait} s.",
                             refresh=wait))
            return
        in_use = self.apps.kernels_in_use()
        if not self.apps.capacity.admits(in_use):
            wait = self.apps.capacity.wait_seconds(in_use)
            self.set_status(503)
            self.set_header("Retry-After", str(wait))
            self.finish(page("Busy", f"All {self.apps.capacity.max_kernels} app sessions of "
                             f"this hub are in use. This page tries again in {wait} s.",
                             refresh=wait))
            return
        for header in HEADERS:  # set here only: a visitor's own values never pass
            self.request.headers.pop(header, None)
        self.request.headers[RELEASE_HEADER] = view["name"]
        self.request.headers[VISITOR_HEADER] = token
        if prefetched := await self.apps.prefetch(token, view):
            self.request.headers[PREFETCH_HEADER] = prefetched
        self.apps.preheat(template)  # after this visit's choice: this one starts cold
        owner = self.settings["authorizer"]
        bound = False
        async for chunk in self.get_generator(path=template):
            if not bound and (match := KERNEL_ID.search(chunk)):
                # the page's kernel is this visitor's before the page reaches them
                bound = owner.bind(match.group(1), self.current_user)
            self.write(chunk)
            self.flush()


class StatusHandler(JupyterHandler):
    """``{prefix}status``: kernels in use against the cap and the preheated kernels ready
    per template, for hub admins (and the benchmark, which waits for full pools)."""

    @web.authenticated
    def get(self) -> None:
        if not self.current_user.hub_user.get("admin"):
            raise web.HTTPError(403, "the apps service's status is for hub admins")
        apps: AppsServer = self.settings["apps"]
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"kernels_in_use": apps.kernels_in_use(),
                                "max_kernels": apps.capacity.max_kernels,
                                "max_kernels_per_user": apps.capacity.per_user,
                                "held": self.settings["authorizer"].held(),
                                "pools": apps.pools_ready()}))


class IndexHandler(web.RequestHandler):
    """``{prefix}``: the releases page of the loophub API lists the apps one may open."""

    def get(self) -> None:
        hub_prefix = self.settings["apps"].hub_auth.hub_prefix  # the hub's base URL + hub/
        base = hub_prefix.removesuffix("/").removesuffix("hub")
        self.redirect(f"{base}services/loophub/releases")


def page(title: str, message: str, *, refresh: int | None = None) -> str:
    """A small self-contained page (escaped) for what the service itself answers."""
    meta = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh else ""
    return (f'<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1">{meta}<title>{html.escape(title)}'
            '</title></head><body style="font-family: system-ui, sans-serif; margin: 2rem '
            f'auto; max-width: 40rem; padding: 0 1rem"><h1 class="lh-app-page">'
            f'{html.escape(title)}</h1><p id="lh-app-page-message">{html.escape(message)}</p>'
            "</body></html>")


class AppsServer(Voila):
    """Voila as the hub service "apps"; every option below is a traitlet, so a hub admin
    sets them in LOOPHUB_HOME/loophub_apps_config.py (or on the command line)."""

    name = "loophub-apps"
    api_url = Unicode(help="The loophub API the service reads releases from "
                      "(default: $LOOPHUB_API_URL).").tag(config=True)
    templates_dir = Unicode(str(TEMPLATES_DIR),
                            help="The folder of template notebooks, one per task type "
                            "(image_classification.ipynb, ...).").tag(config=True)
    pool_sizes = Dict(value_trait=Integer(), default_value={"image_classification.ipynb": 2},
                      help="Preheated kernels kept per template notebook (templates not "
                      "named: `pool_size`). A template's pool fills after its first visit "
                      "(that visitor gets a fresh kernel), or at start when listed in "
                      "`preheat_on_start`.").tag(config=True)
    pool_size = Integer(1, help="Preheated kernels of a template not in pool_sizes."
                        ).tag(config=True)
    preheat_on_start = List(Unicode(), help="Templates whose pools fill when the service "
                            "starts (e.g. [\"image_classification.ipynb\"]).").tag(config=True)
    max_kernels_per_user = Integer(4, help="Kernels one visitor may hold at once (their "
                                   "open app pages); past it their next page says to close "
                                   "one (429). 0: no cap.").tag(config=True)
    max_kernels = Integer(16, help="Kernels in use by visitors at most (preheated ones "
                          "waiting do not count); past it a visitor gets a busy page at "
                          "once. 0: no cap.").tag(config=True)
    retry_after = Integer(10, help="Seconds a busy page asks a visitor to wait (more "
                          "the further past the cap).").tag(config=True)
    cull_idle_seconds = Integer(600, help="A visitor's kernel idle this long is shut down "
                                "(its page says the session ended). 0: never."
                                ).tag(config=True)

    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        env = os.environ
        if home := env.get("LOOPHUB_HOME"):  # the admin's options, after Voila's own
            self.load_config_file("loophub_apps_config", path=[home])
        url = urlparse(env.get("JUPYTERHUB_SERVICE_URL") or "http://127.0.0.1:10103")
        self.ip, self.port = url.hostname or "127.0.0.1", url.port or 10103
        self.base_url = env.get("JUPYTERHUB_SERVICE_PREFIX") or DEFAULT_PREFIX
        self.root_dir = self.templates_dir
        self.api_url = self.api_url or env.get("LOOPHUB_API_URL", "")
        self.capacity = Capacity(self.max_kernels, self.retry_after,
                                 self.max_kernels_per_user)
        self.hub_auth = resolved(HubOAuth(parent=self, cache_max_age=5))
        self.cookie_secret = service_cookie_secret()
        self.http = AsyncHTTPClient()
        self.metadata_cache: dict[tuple[str, str], tuple[float, dict]] = {}
        self.preheated: set[str] = set()
        self.configure_kernels()
        clean_environment()  # before any kernel starts: kernels copy this environment

    def configure_kernels(self) -> None:
        """Pools empty until a template is first visited (or listed in preheat_on_start),
        and idle kernels culled; read by the kernel manager Voila makes at start."""
        self.config.VoilaKernelManager.kernel_pools_config = {
            "default": {"pool_size": 0},
            **{name: {"pool_size": self.pool_of(name)} for name in self.preheat_on_start}}
        self.preheated.update(self.preheat_on_start)
        culling = self.config.MappingKernelManager
        culling.cull_idle_timeout = self.cull_idle_seconds
        culling.cull_interval = max(10, min(60, self.cull_idle_seconds // 4 or 60))
        culling.cull_connected = True  # a tab left open still frees its kernel

    def pool_of(self, template: str) -> int:
        return max(0, self.pool_sizes.get(template, self.pool_size))

    def preheat(self, template: str) -> None:
        """Fill TEMPLATE's pool from now on (its first visit)."""
        if template in self.preheated:
            return
        self.preheated.add(template)
        self.kernel_manager.kernel_pools_config[template] = {
            "pool_size": self.pool_of(template)}
        self.kernel_manager.fill_if_needed(delay=0, notebook_name=template)

    # -- what Voila builds, made safe ----------------------------------------------------

    def init_settings(self) -> dict:
        settings = super().init_settings()
        settings["apps"] = self
        return settings

    def init_handlers(self) -> list:
        kept = [h for h in super().init_handlers() if h[1] in KEPT_HANDLERS]
        prefix = self.base_url
        voila_kwargs = {"template_paths": self.template_paths, "config": self.config,
                        "voila_configuration": self.voila_configuration}
        return [
            *kept,
            (url_path_join(prefix, r"/voila/query/(?P<kernel_id>\w+-\w+-\w+-\w+-\w+)"),
             LocalRequestInfoHandler),
            (url_path_join(prefix, r"/voila/api/shutdown/(.*)"), OwnKernelShutdownHandler),
            (prefix.rstrip("/") + "/?", IndexHandler),
            (url_path_join(prefix, "status"), StatusHandler),
            (url_path_join(prefix, rf"/({RELEASE_NAME.pattern})/?"), AppHandler,
             {**voila_kwargs, "apps": self}),
        ]

    def pools_ready(self) -> dict[str, int]:
        """Preheated kernels ready now per template whose pool was asked for: started,
        and waiting for a visitor (connected to the request-info channel, which the
        template reaches after its imports)."""
        waiting = RequestInfoSocketHandler._waiters
        return {name: sum(task.done() and not task.cancelled() and task.exception() is None
                          and task.result()["kernel_id"] in waiting for task in pool)
                for name, pool in getattr(self.kernel_manager, "_pools", {}).items()
                if name in self.preheated}

    def kernels_in_use(self) -> int:
        """Kernels visitors hold: every kernel but the preheated ones still waiting (Voila
        0.5 keeps its pools in ``_pools``: tasks that give a started kernel's id)."""
        waiting = set()
        for pool in getattr(self.kernel_manager, "_pools", {}).values():
            for task in pool:
                if task.done() and not task.cancelled() and task.exception() is None:
                    waiting.add(task.result()["kernel_id"])
        return sum(k not in waiting for k in self.kernel_manager.list_kernel_ids())

    async def release_for(self, token: str, release: str) -> dict | None:
        """The release's view as the visitor reads it (None: not theirs to open)."""
        url = f"{self.api_url.rstrip('/')}/releases/{quote(release, safe='')}"
        try:
            return await self._get_json(url, token)
        except HTTPClientError as exc:
            if exc.code in (401, 403, 404):
                return None
            raise web.HTTPError(502, f"the loophub API answered {exc.code} for release "
                                f"{release!r}; try again shortly") from None
        except OSError as exc:
            raise web.HTTPError(502, f"cannot reach the loophub API ({exc}); try again "
                                "shortly") from None

    async def prefetch(self, token: str, view: dict) -> str | None:
        """What the app's kernel would read first, read here as the visitor (JSON), so a
        preheated kernel builds the app at once: the release's metadata (labels,
        preprocessing; kept per version for a minute: the view just read says the visitor
        may call it) and the model card the visitor may read. None when something is
        missing (the kernel then reads for itself and says what went wrong)."""
        version, url = view.get("version") or "", view.get("url") or ""
        if not version or not url:
            return None
        key = (view["name"], version)
        cached = self.metadata_cache.get(key)
        name, _, selector = version.partition("@")
        card_url = (f"{self.api_url.rstrip('/')}/models/{quote(name, safe='')}/versions/"
                    f"{quote(selector or 'latest', safe='')}")
        fetches = [self._get_json(card_url, token)]
        if cached is None or cached[0] < time.monotonic():
            fetches.append(self._get_json(url.rstrip("/") + "/metadata", token))
        found = await asyncio.gather(*fetches, return_exceptions=True)  # failures: values
        if len(found) == 2:
            if isinstance(found[1], BaseException):
                return None
            cached = self.metadata_cache[key] = (time.monotonic() + 60, found[1])
        card = found[0].get("card") if isinstance(found[0], dict) else None
        body = json.dumps({"view": view, "metadata": cached[1], "card": card})
        return body if len(body) <= MAX_PREFETCH else None

    async def _get_json(self, url: str, token: str) -> Any:
        resp = await self.http.fetch(url, headers={"Authorization": f"token {token}"},
                                     request_timeout=10)
        return json.loads(resp.body)


def resolved(hub_auth: HubOAuth) -> HubOAuth:
    """HUB_AUTH with every setting read now: its defaults come from the environment, which
    is cleaned before kernels start (traitlets compute a default on first use)."""
    for name in hub_auth.trait_names():
        try:
            getattr(hub_auth, name)
        except Exception:  # a setting this service does not use
            log.debug("HubOAuth.%s has no value here", name)
    return hub_auth


def clean_environment() -> None:
    """Keep only what a kernel needs: the service's hub token and the platform's own
    paths (LOOPHUB_HOME: its database and secrets) must not reach the app kernels."""
    for key in list(os.environ):
        if key not in KERNEL_ENV:
            del os.environ[key]


def service_cookie_secret() -> bytes:
    from loophub.serving.gateway import cookie_secret
    from loophub.settings import Settings

    return cookie_secret(Settings.from_env().secrets_dir / "apps_cookie_secret")


def service_config(server: type[AppsServer] = AppsServer) -> Config:
    """Voila's settings for the service: preheated kernels rendered ahead, the visitor's
    headers passed to kernels, tracebacks hidden, kernels culled when idle."""
    config = Config()
    config.VoilaConfiguration.preheat_kernel = True
    config.VoilaConfiguration.http_header_envs = list(HEADERS)
    config.VoilaConfiguration.show_tracebacks = False
    config.VoilaConfiguration.strip_sources = True
    # the templates' note to admins (a markdown cell tagged so) is not for visitors
    config.TagRemovePreprocessor.remove_cell_tags = {"lh-admin-note"}
    config.Voila.identity_provider_class = AppsIdentityProvider
    config.Voila.authorizer_class = AppsAuthorizer
    config.Voila.open_browser = False
    return config


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not (os.environ.get("JUPYTERHUB_API_TOKEN") and os.environ.get("JUPYTERHUB_CLIENT_ID")):
        print("loophub apps: JUPYTERHUB_API_TOKEN and JUPYTERHUB_CLIENT_ID are not set; it "
              "runs as the hub's 'apps' service (`loophub up` starts it)", file=sys.stderr)
        return 2
    server = AppsServer(config=service_config())
    server.initialize(argv if argv is not None else sys.argv[1:])
    server.start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
