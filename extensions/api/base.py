"""The base handler: hub identity on every request, JSON in and out, errors as JSON."""

from __future__ import annotations

import json
import logging
from typing import Any

from jupyterhub.services.auth import HubOAuthenticated, UserNotAllowed
from tornado import web

from loophub.errors import LoophubError
from loophub.identity import Actor

log = logging.getLogger("loophub.api")


def actor_from_model(model: dict) -> Actor:
    """The hub's user or service model (from HubAuth) as the domain's Actor."""
    return Actor(name=model["name"], groups=tuple(model.get("groups") or ()),
                 admin=bool(model.get("admin")), kind=model.get("kind", "user"))


class ApiHandler(HubOAuthenticated, web.RequestHandler):
    """JSON API handler. ``auth`` is "none", "user" or "admin"."""

    auth = "user"
    _forbidden: dict | None = None

    @property
    def ctx(self):
        return self.settings["loophub"]

    def check_hub_user(self, model: dict) -> dict:
        try:
            return super().check_hub_user(model)
        except UserNotAllowed:
            self._forbidden = model
            raise

    def prepare(self) -> None:
        if self.auth == "none":
            return
        if self.current_user is None:
            if self._forbidden is not None:
                raise web.HTTPError(
                    403, f"{self._forbidden['name']} may not use the loophub service: "
                    "ask a hub admin for the access:services!service=loophub scope",
                )
            if self._is_browser_navigation():
                self.redirect(self.get_login_url())  # the HubOAuth dance sets the cookie
                raise web.Finish()
            raise web.HTTPError(
                401, "no hub identity: send 'Authorization: token <hub API token>' "
                "(see `loophub token`) or log in to the hub in this browser",
            )
        if self.auth == "admin" and not self.actor.admin:
            raise web.HTTPError(403, f"{self.actor.name} is not a hub admin; this route is "
                                     "for admins")

    def _is_browser_navigation(self) -> bool:
        return (self.request.method == "GET" and "Authorization" not in self.request.headers
                and "text/html" in self.request.headers.get("Accept", ""))

    @property
    def actor(self) -> Actor:
        return actor_from_model(self.current_user)

    def check_xsrf_cookie(self) -> None:
        # Token-authenticated API calls carry no cookie, so XSRF does not apply to them;
        # cookie-authenticated writes are checked by HubOAuth's own xsrf handling.
        if self.request.headers.get("Authorization"):
            return
        super().check_xsrf_cookie()

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")

    def json_body(self) -> Any:
        if not self.request.body:
            raise web.HTTPError(400, "the request needs a JSON body")
        try:
            return json.loads(self.request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise web.HTTPError(400, f"the request body is not valid JSON: {exc}") from exc

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data, default=str))

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
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(body, default=str))

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, LoophubError):
            self.log_exception(type(e), e, e.__traceback__)
            if not self._finished:
                self.send_error(e.status, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)
