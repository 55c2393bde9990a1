"""The hub, as the API service reaches it: its REST API and users' servers, called with
the service's own token (role ``loophub-service``: admin:servers, access:servers, ...).

The identity the service acts on always comes from an authorised source (a request's
owner and the typed fields of its spec), never from free-form data a user sent.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

log = logging.getLogger("loophub.api")


class HubError(RuntimeError):
    def __init__(self, method: str, url: str, code: int, body: bytes) -> None:
        super().__init__(f"{method} {url}: {code} {body[:200]!r}")
        self.code = code


class Hub:
    def __init__(self, api_url: str, token: str, public_url: str = "") -> None:
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.public_url = public_url.rstrip("/")
        # one client with room for the hub calls of many concurrent events (tornado's
        # default of 10 would queue them behind each other)
        self.http = AsyncHTTPClient(force_instance=True, max_clients=64)

    async def _fetch(self, method: str, url: str, body: Any = None,
                     ok: tuple[int, ...] = ()) -> Any:
        req = HTTPRequest(url, method=method, request_timeout=30,
                          headers={"Authorization": f"token {self.token}"},
                          body=None if body is None and method in ("GET", "DELETE")
                          else json.dumps(body or {}), allow_nonstandard_methods=True)
        resp = await self.http.fetch(req, raise_error=False)
        if resp.code >= 400 and resp.code not in ok:
            raise HubError(method, url, resp.code, resp.body or b"")
        return json.loads(resp.body) if resp.body and resp.code < 300 else None

    async def api(self, method: str, path: str, body: Any = None,
                  ok: tuple[int, ...] = ()) -> Any:
        return await self._fetch(method, self.api_url + path, body, ok)

    # -- reading ---------------------------------------------------------------------

    async def groups(self) -> list[dict]:
        groups = await self.api("GET", "/groups?limit=1000")
        return groups.get("items", []) if isinstance(groups, dict) else groups

    async def active_users(self) -> list[dict]:
        users = await self.api("GET", "/users?state=active&limit=10000")
        return users.get("items", []) if isinstance(users, dict) else users

    async def server(self, user: str, server: str) -> dict | None:
        """The hub's model of USER's server (None when the hub has none)."""
        model = await self.api("GET", f"/users/{quote(user, safe='')}", ok=(404,))
        return ((model or {}).get("servers") or {}).get(server)

    # -- acting --------------------------------------------------------------------------

    def _server_path(self, user: str, server: str) -> str:
        path = f"/users/{quote(user, safe='')}/server"
        return path + (f"s/{quote(server, safe='')}" if server else "")

    async def start_server(self, user: str, server: str) -> None:
        await self.api("POST", self._server_path(user, server), {})

    async def stop_server(self, user: str, server: str) -> bool:
        """Stop USER's server; False when it was not running (nothing to do)."""
        model = await self.server(user, server)
        if not model or model.get("stopped") or not (model.get("ready") or model.get("pending")
                                                     or model.get("started")):
            return False
        if model.get("pending") == "stop":
            return True
        # 400: it is still starting; the spawner sees its request end and gives up
        await self.api("DELETE", self._server_path(user, server), ok=(400,))
        return True

    async def create_token(self, user: str, note: str, expires_in: int,
                           scopes: list[str]) -> tuple[str, str]:
        """A new API token for USER limited to SCOPES: (token, its id to revoke it)."""
        model = await self.api("POST", f"/users/{quote(user, safe='')}/tokens", {
            "note": note, "expires_in": expires_in, "scopes": scopes})
        return model["token"], model["id"]

    async def revoke_token(self, user: str, token_id: str) -> None:
        await self.api("DELETE", f"/users/{quote(user, safe='')}/tokens/{quote(token_id)}",
                       ok=(404,))

    async def shutdown_kernel(self, user: str, server: str, kernel_id: str) -> bool:
        """Shut a kernel down through its server's REST API (behind the proxy)."""
        model = await self.server(user, server)
        if not model or not model.get("ready") or not self.public_url:
            return False
        url = f"{self.public_url}{model['url'].rstrip('/')}/api/kernels/{quote(kernel_id)}"
        await self._fetch("DELETE", url, ok=(404,))
        return True
