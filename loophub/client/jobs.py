"""``Client().jobs``: long operations (imports, exports, commits; training next)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from loophub import errors

if TYPE_CHECKING:
    from loophub.client.core import Client

ACTIVE = ("queued", "running")


class Jobs:
    def __init__(self, client: Client) -> None:
        self.client = client

    def _path(self, job_id: str, *parts: str) -> str:
        return "/".join(["jobs", quote(job_id, safe=""), *parts])

    def list(self, *, kind: str | None = None, state: str | None = None,
             owner: str | None = None, limit: int = 50) -> list[dict]:
        params = {k: v for k, v in (("kind", kind), ("state", state), ("owner", owner)) if v}
        return self.client.request("GET", "jobs", params={**params, "limit": limit})["jobs"]

    def get(self, job_id: str) -> dict:
        return self.client.request("GET", self._path(job_id))

    def cancel(self, job_id: str) -> dict:
        return self.client.request("DELETE", self._path(job_id))

    def log(self, job_id: str) -> str:
        return self.client.raw("GET", self._path(job_id, "log")).text

    def download(self, job_id: str, dest: str | os.PathLike) -> Path:
        """The file a job produced (an export), streamed to DEST."""
        return self.client.download(self._path(job_id, "result"), dest)

    def wait(self, job: dict | str, *, progress: bool = True, poll: float = 0.5,
             desc: str | None = None) -> dict:
        """Wait for a job to end, with a progress bar (tqdm: a widget in notebooks, text in
        a terminal); returns its result, raises its error (the API's message)."""
        view = self.get(job) if isinstance(job, str) else job
        bar = _progress_bar(desc or f"{view['kind']} {view.get('target', '')}".strip(), progress)
        try:
            while True:
                if bar is not None:
                    _show(bar, view)
                if view["state"] not in ACTIVE:
                    break
                time.sleep(poll)
                view = self.get(view["id"])
        except KeyboardInterrupt:
            self.cancel(view["id"])
            raise
        finally:
            if bar is not None:
                bar.close()
        return finished(view)


def finished(view: dict) -> dict:
    """A job's result, or its error raised as the LoophubError it was."""
    if view["state"] == "succeeded":
        return view.get("result") or {}
    error = view.get("error") or {}
    if view["state"] == "cancelled":
        raise errors.Conflict(f"job {view['id']} was cancelled: {view.get('message', '')}")
    if view["state"] == "interrupted":
        raise errors.Unavailable(f"job {view['id']} was interrupted: {view.get('message', '')}")
    cls: Any = errors.LoophubError
    from loophub.client.core import BY_STATUS

    cls = BY_STATUS.get(error.get("status", 400), errors.LoophubError)
    exc = cls(error.get("error") or view.get("message") or "the job failed",
              detail=error.get("detail"))
    exc.status = error.get("status", 400)
    raise exc


def _progress_bar(desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=0, desc=desc, unit="rec")


def _show(bar, view: dict) -> None:
    if view.get("total"):
        bar.total = view["total"]
    bar.n = view.get("done", 0)
    bar.set_postfix_str(view.get("message", ""), refresh=False)
    bar.refresh()
