"""The notebook SDK: ``Client()`` talks to the loophub API as the notebook's user.

Inside a single-user server everything is found in the environment the hub sets
(LOOPHUB_API_URL, JUPYTERHUB_API_TOKEN); from elsewhere pass ``url`` and ``token``
(a token from `loophub token NAME`).
"""

from __future__ import annotations

import os
from typing import Any

import requests

from loophub import errors

_BY_STATUS: dict[int, type[errors.LoophubError]] = {
    400: errors.InvalidInput, 401: errors.Unauthenticated, 403: errors.PermissionDenied,
    404: errors.NotFound, 409: errors.Conflict, 413: errors.TooLarge,
}


def discover_api_url() -> str:
    if url := os.environ.get("LOOPHUB_API_URL"):
        return url
    if public := os.environ.get("JUPYTERHUB_PUBLIC_URL"):
        return public.rstrip("/") + "/services/loophub/api"
    raise errors.InvalidInput(
        "cannot find the loophub API: LOOPHUB_API_URL is not set (the hub sets it in spawned "
        "servers); outside the hub pass Client(url='http://HOST:8000/services/loophub/api')"
    )


def discover_token() -> str:
    token = os.environ.get("LOOPHUB_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN")
    if not token:
        raise errors.Unauthenticated(
            "no API token: JUPYTERHUB_API_TOKEN is not set (the hub sets it in spawned "
            "servers); outside the hub pass Client(token=...) from `loophub token NAME`"
        )
    return token


class Client:
    def __init__(self, url: str | None = None, token: str | None = None, *,
                 timeout: float = 30) -> None:
        self.url = (url or discover_api_url()).rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token or discover_token()}"

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def request(self, method: str, path: str, **kwargs) -> Any:
        """Call ``path`` (relative to the API root); API errors raise LoophubError subclasses."""
        kwargs.setdefault("timeout", self.timeout)
        resp = self.session.request(method, f"{self.url}/{path.lstrip('/')}", **kwargs)
        if resp.status_code >= 400:
            raise self._error(resp)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    @staticmethod
    def _error(resp: requests.Response) -> errors.LoophubError:
        try:
            body = resp.json()
            message, detail = body.get("error") or resp.reason, body.get("detail")
        except ValueError:
            message, detail = f"{resp.status_code} {resp.reason}", None
        cls = _BY_STATUS.get(resp.status_code, errors.LoophubError)
        exc = cls(f"{resp.request.method} {resp.url}: {message}", detail=detail)
        exc.status = resp.status_code
        return exc

    def health(self) -> dict:
        return self.request("GET", "health")

    def me(self) -> dict:
        """Who this client acts as: name, groups, admin."""
        return self.request("GET", "me")

    def pool(self) -> dict:
        """The resource pool: nodes with cpu, mem (bytes), gpu."""
        return self.request("GET", "pool")
