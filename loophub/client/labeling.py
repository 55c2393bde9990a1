"""``Client().labeling``: the labeling API for notebooks and the labeling widgets.

It wraps the labeling routes and the annotation routes the widgets need, so a widget
talks to one object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from loophub.client.core import Client


class Labeling:
    def __init__(self, client: Client | None = None) -> None:
        if client is None:
            from loophub.client.core import Client

            client = Client()
        self.client = client
        self.datasets = client.datasets

    def _path(self, name: str, *parts: str) -> str:
        return "/".join(["labeling", quote(name, safe=""), *parts])

    def me(self) -> str:
        """The user name this client labels as."""
        if not hasattr(self, "_me"):
            self._me = self.client.me()["name"]
        return self._me

    # -- settings and leases ----------------------------------------------------------

    def settings(self, name: str) -> dict:
        return self.client.request("GET", self._path(name, "settings"))

    def configure(self, name: str, *, overlap: int | None = None,
                  lease_seconds: float | None = None, order: str | None = None) -> dict:
        """ORDER: how new items are leased, "id" or "uncertain" (lowest model confidence
        first: see Client().models.predict_into)."""
        body = {k: v for k, v in (("overlap", overlap), ("lease_seconds", lease_seconds),
                                  ("order", order)) if v is not None}
        return self.client.request("PUT", self._path(name, "settings"), json=body)

    def lease(self, name: str, count: int = 1, split: str | None = None,
              order: str | None = None, origin: str | None = None) -> list[dict]:
        """Lease up to ``count`` items needing your label (the ones you hold come first),
        new ones in ORDER ("id", "uncertain"; None: the dataset's labeling setting);
        ORIGIN "production": only inputs collected from a release."""
        body: dict[str, Any] = {"count": count, "split": split}
        if order is not None:
            body["order"] = order
        if origin is not None:
            body["origin"] = origin
        return self.client.request("POST", self._path(name, "leases"), json=body)["items"]

    def leases(self, name: str) -> list[dict]:
        return self.client.request("GET", self._path(name, "leases"))["leases"]

    def release(self, name: str, record_ids: list[str] | None = None) -> int:
        body: dict[str, Any] = {} if record_ids is None else {"record_ids": record_ids}
        return self.client.request("POST", self._path(name, "leases", "release"),
                                   json=body)["released"]

    def skip(self, name: str, record_id: str) -> dict:
        return self.client.request("POST", self._path(name, "skips"),
                                   json={"record_id": record_id})

    def unskip(self, name: str, record_id: str) -> None:
        self.client.request("DELETE", self._path(name, "skips", quote(record_id, safe="")))

    # -- reading ----------------------------------------------------------------------

    def progress(self, name: str) -> dict:
        return self.client.request("GET", self._path(name, "progress"))

    def media(self, name: str, record_id: str) -> tuple[bytes, str]:
        """The record's media bytes and their type."""
        resp = self.client.raw("GET", self._path(name, "media", quote(record_id, safe="")))
        return resp.content, resp.headers.get("Content-Type", "application/octet-stream")

    def agreement(self, name: str) -> dict:
        return self.client.request("GET", self._path(name, "agreement"))

    def review_queue(self, name: str, *, limit: int = 50,
                     annotator: str | None = None) -> list[dict]:
        params: dict[str, Any] = {"limit": limit}
        if annotator:
            params["annotator"] = annotator
        return self.client.request("GET", self._path(name, "review"), params=params)["items"]

    def put_predictions(self, name: str, predictions: list[dict]) -> dict:
        """Store model predictions as pre-annotations: [{record_id, model, version?,
        annotations}] (what the training room feeds the labelers)."""
        return self.client.request("POST", self._path(name, "predictions"),
                                   json={"predictions": predictions})
