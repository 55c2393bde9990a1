"""``Client``: the one connection to the loophub API, as the notebook's user.

Inside a single-user server everything is found in the environment the hub sets
(LOOPHUB_API_URL, JUPYTERHUB_API_TOKEN); from a terminal or script pass ``url`` and
``token`` (or set LOOPHUB_API_URL and LOOPHUB_TOKEN), e.g. a token from
``loophub token NAME``. Each room's methods hang off the client: ``client.datasets``,
``client.labeling``, ``client.scheduler``, ``client.jobs``.

One retry policy for every caller that must ride out a restart of the API service (the
hub's spawner, kernels): ``patience`` seconds of retries on connection failures and on
the proxy's 502/503/504, with the same backoff everywhere.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from loophub import errors

if TYPE_CHECKING:
    from loophub.client.datasets import Datasets
    from loophub.client.jobs import Jobs
    from loophub.client.labeling import Labeling
    from loophub.client.loop import Loop
    from loophub.client.models import Models
    from loophub.client.scheduler import Scheduler
    from loophub.client.serving import Serving
    from loophub.client.training import Training

BY_STATUS: dict[int, type[errors.LoophubError]] = {
    400: errors.InvalidInput, 401: errors.Unauthenticated, 403: errors.PermissionDenied,
    404: errors.NotFound, 409: errors.Conflict, 413: errors.TooLarge, 503: errors.Unavailable,
}
TRANSIENT = (502, 503, 504)  # the proxy answering for an API service that is restarting
BACKOFF = (0.5, 1.0, 2.0)    # seconds between retries, then the last one repeated


def discover_api_url() -> str:
    if url := os.environ.get("LOOPHUB_API_URL"):
        return url
    if public := os.environ.get("JUPYTERHUB_PUBLIC_URL"):
        return public.rstrip("/") + "/services/loophub/api"
    raise errors.InvalidInput(
        "cannot find the loophub API: set LOOPHUB_API_URL (e.g. "
        "http://127.0.0.1:8000/services/loophub/api) or pass --url; inside the hub's "
        "servers it is set for you")


def discover_token() -> str:
    token = os.environ.get("LOOPHUB_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN")
    if not token:
        raise errors.Unauthenticated(
            "no API token: set LOOPHUB_TOKEN (or pass --token) to a token from "
            "`loophub token NAME`; inside the hub's servers it is set for you")
    return token


def retrying(call: Callable[[], requests.Response], patience: float,
             on_retry: Callable[[str], None] | None = None) -> requests.Response:
    """CALL, retried for PATIENCE seconds while the API cannot answer (restarts)."""
    deadline = time.monotonic() + patience
    attempt = 0
    while True:
        try:
            resp = call()
            if resp.status_code not in TRANSIENT or patience <= 0:
                return resp
            problem = f"the API answered {resp.status_code}"
        except (requests.ConnectionError, requests.Timeout) as exc:
            if patience <= 0:
                raise errors.Unavailable(f"cannot reach the loophub API: {exc}") from exc
            problem = f"cannot reach the API ({type(exc).__name__})"
        if time.monotonic() >= deadline:
            raise errors.Unavailable(f"the loophub API did not answer for {patience:g} s: "
                                     f"{problem}")
        if on_retry is not None:
            on_retry(problem)
        time.sleep(BACKOFF[min(attempt, len(BACKOFF) - 1)])
        attempt += 1


class Client:
    def __init__(self, url: str | None = None, token: str | None = None, *,
                 timeout: float = 30, patience: float = 0) -> None:
        """URL and TOKEN are found in the environment when not given. PATIENCE: seconds
        to keep retrying when the API is restarting (0: fail at once)."""
        self.url = (url or discover_api_url()).rstrip("/")
        self.token = token or discover_token()
        self.timeout = timeout
        self.patience = patience
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {self.token}"

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def request(self, method: str, path: str, *, patience: float | None = None,
                on_retry: Callable[[str], None] | None = None, **kwargs: Any) -> Any:
        """Call PATH (relative to the API root); API errors raise LoophubError subclasses
        that carry the API's message."""
        resp = self.raw(method, path, patience=patience, on_retry=on_retry, **kwargs)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def raw(self, method: str, path: str, *, patience: float | None = None,
            on_retry: Callable[[str], None] | None = None, **kwargs: Any) -> requests.Response:
        """The response itself (for streams), after errors are raised."""
        kwargs.setdefault("timeout", self.timeout)
        url = f"{self.url}/{path.lstrip('/')}"
        resp = retrying(lambda: self.session.request(method, url, **kwargs),
                        self.patience if patience is None else patience, on_retry)
        if resp.status_code >= 400:
            raise self.error(resp)
        return resp

    @staticmethod
    def error(resp: requests.Response) -> errors.LoophubError:
        try:
            body = resp.json()
            message, detail = body.get("error") or resp.reason, body.get("detail")
        except ValueError:
            message, detail = f"{resp.status_code} {resp.reason}", None
        cls = BY_STATUS.get(resp.status_code, errors.LoophubError)
        exc = cls(f"{resp.request.method} {resp.url}: {message}", detail=detail)
        exc.status = resp.status_code
        return exc

    _error = error  # the name widgets and tests used

    def download(self, path: str, dest: str | os.PathLike, **kwargs: Any) -> Path:
        """Stream PATH's body to DEST (written beside it, renamed when complete)."""
        resp = self.raw("GET", path, stream=True, timeout=None, **kwargs)
        return stream_to_file(resp, dest)

    # -- the platform --------------------------------------------------------------------

    def health(self) -> dict:
        return self.request("GET", "health")

    def me(self) -> dict:
        """Who this client acts as: name, groups, admin."""
        return self.request("GET", "me")

    def pool(self) -> dict:
        """The resource pool: nodes with cpu, mem (bytes), gpu, and free capacity; each
        ``mem`` has a ``mem_readable`` beside it ("23.5 GiB")."""
        from loophub.pool import readable_bytes

        pool = self.request("GET", "pool")
        sizes = [pool.get("total"), *(pool.get("nodes") or [])]
        sizes += [node.get("free") for node in pool.get("nodes") or []]
        for size in sizes:
            if isinstance(size, dict) and isinstance(size.get("mem"), int | float):
                size["mem_readable"] = readable_bytes(size["mem"])
        return pool

    # -- the rooms ---------------------------------------------------------------------

    @cached_property
    def datasets(self) -> Datasets:
        """Datasets: import, records, annotations, versions, export."""
        from loophub.client.datasets import Datasets

        return Datasets(self)

    @cached_property
    def labeling(self) -> Labeling:
        """Labeling: leases, predictions, agreement, review."""
        from loophub.client.labeling import Labeling

        return Labeling(self)

    @cached_property
    def scheduler(self) -> Scheduler:
        """The fair scheduler: submit, wait in the queue, release; queue and usage."""
        from loophub.client.scheduler import Scheduler

        return Scheduler(self)

    @cached_property
    def training(self) -> Training:
        """Training on the platform's Dask: recipes or your own function, live progress."""
        from loophub.client.training import Training

        return Training(self)

    @cached_property
    def models(self) -> Models:
        """The model registry: register, versions, aliases and their history, lineage."""
        from loophub.client.models import Models

        return Models(self)

    @cached_property
    def serving(self) -> Serving:
        """Releases: models served as REST services; rollouts, canaries, keys, predict."""
        from loophub.client.serving import Serving

        return Serving(self)

    @cached_property
    def loop(self) -> Loop:
        """The feedback loop: a release's production inputs back to labeling."""
        from loophub.client.loop import Loop

        return Loop(self)

    @cached_property
    def jobs(self) -> Jobs:
        """Long operations (imports, exports, commits): list, wait with progress, cancel."""
        from loophub.client.jobs import Jobs

        return Jobs(self)


def api_message(exc: errors.LoophubError) -> str:
    """The API's own words, without the SDK's 'METHOD URL: ' prefix (for messages shown
    on pages that are not about HTTP: the spawn page, a kernel's error dialog)."""
    text = exc.message
    return text.split(": ", 1)[1] if text.startswith(("GET ", "POST ", "DELETE ", "PUT ",
                                                      "PATCH ")) else text


def stream_to_file(resp: requests.Response, dest: str | os.PathLike,
                   chunk_size: int = 1 << 20) -> Path:
    """Write a streamed response to DEST without holding it in memory; a failed download
    leaves no partial DEST behind."""
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with open(tmp, "wb") as out:
            for chunk in resp.iter_content(chunk_size):
                out.write(chunk)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
        resp.close()
    return dest
