"""The notebook SDK: ``Client()`` talks to the loophub API as the notebook's user.

Inside a single-user server everything is found in the environment the hub sets
(LOOPHUB_API_URL, JUPYTERHUB_API_TOKEN); from elsewhere pass ``url`` and ``token``
(a token from `loophub token NAME`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

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

    @property
    def datasets(self) -> Datasets:
        """Datasets: import, records, annotations, versions, export (see Datasets)."""
        return Datasets(self)

    @property
    def labeling(self):
        """Labeling: leases, predictions, agreement, review (loophub.labeling.client)."""
        from loophub.labeling.client import Labeling

        return Labeling(self)


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="rec")


def _zip_folder(folder: Path) -> Path:
    """A folder import goes up as one zip (streamed from a temporary file)."""
    fd, name = tempfile.mkstemp(suffix=".zip")
    os.close(fd)
    with zipfile.ZipFile(name, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return Path(name)


class Datasets:
    """``Client().datasets``: the dataset API, as a notebook user wants it."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def _ds(self, name: str, *parts: str) -> str:
        return "/".join(["datasets", quote(name, safe=""), *parts])

    def schemas(self) -> dict:
        return self.client.request("GET", "datasets/schemas")

    def list(self, state: str | None = None) -> list[dict]:
        params = {"state": state} if state else {}
        return self.client.request("GET", "datasets", params=params)["datasets"]

    def create(self, name: str, *, label_schema: dict | None = None,
               visibility: str = "private", group: str | None = None,
               description: str = "") -> dict:
        body = {"name": name, "visibility": visibility, "description": description}
        if label_schema is not None:
            body["label_schema"] = label_schema
        if group is not None:
            body["group"] = group
        return self.client.request("POST", "datasets", json=body)

    def get(self, name: str) -> dict:
        return self.client.request("GET", self._ds(name))

    def update(self, name: str, **fields: Any) -> dict:
        return self.client.request("PATCH", self._ds(name), json=fields)

    def set_state(self, name: str, state: str) -> dict:
        return self.client.request("PUT", self._ds(name, "state"), json={"state": state})

    def history(self, name: str) -> list[dict]:
        return self.client.request("GET", self._ds(name, "state"))["history"]

    # -- import ----------------------------------------------------------------------

    def upload(self, source: str | os.PathLike | BinaryIO) -> dict:
        """Stream a file (or a folder, zipped on the fly) to the platform; returns its digest."""
        if hasattr(source, "read"):
            return self.client.request("POST", "datasets/uploads", data=source, timeout=None)
        path = Path(source)
        if not path.exists():
            raise errors.InvalidInput(f"{path}: no such file or folder")
        archive = _zip_folder(path) if path.is_dir() else None
        try:
            with open(archive or path, "rb") as stream:
                return self.client.request("POST", "datasets/uploads", data=stream, timeout=None)
        finally:
            if archive:
                archive.unlink()

    def import_(self, name: str, source: str | os.PathLike | BinaryIO, format: str, *,
                progress: bool = True, poll: float = 0.5) -> dict:
        """Import a file, folder or zip in ``format`` into the draft: all records or none."""
        digest = self.upload(source)["digest"]
        job = self.client.request("POST", self._ds(name, "imports"),
                                  json={"format": format, "upload": digest})
        bar = _progress_bar(0, f"import {name}", progress)
        try:
            while job["state"] == "running":
                time.sleep(poll)
                job = self.client.request("GET", f"datasets/imports/{job['id']}")
                if bar is not None and job["total"]:
                    bar.total = job["total"]
                    bar.n = job["done"]
                    bar.refresh()
        finally:
            if bar is not None:
                bar.close()
        if job["state"] == "failed":
            error = job["error"] or {}
            raise errors.InvalidInput(error.get("error", "import failed"),
                                      detail=error.get("detail"))
        return job["report"]

    # -- records and annotations -------------------------------------------------------

    def records(self, name: str, *, label: str | None = None, split: str | None = None,
                annotated: bool | None = None, annotator: str | None = None,
                page_size: int = 500) -> Iterator[dict]:
        """Every matching draft record ({"record", "revision"}), fetched page by page."""
        params: dict[str, Any] = {"limit": page_size}
        for key, value in (("label", label), ("split", split), ("annotator", annotator)):
            if value is not None:
                params[key] = value
        if annotated is not None:
            params["annotated"] = "true" if annotated else "false"
        while True:
            page = self.client.request("GET", self._ds(name, "records"), params=params)
            yield from page["records"]
            if not page["next_cursor"]:
                return
            params["after"] = page["next_cursor"]

    def record(self, name: str, record_id: str) -> dict:
        return self.client.request("GET", self._ds(name, "records", quote(record_id, safe="")))

    def add_record(self, name: str, record: dict) -> dict:
        return self.client.request("POST", self._ds(name, "records"), json={"record": record})

    def put_record(self, name: str, record: dict, revision: int) -> dict:
        return self.client.request("PUT", self._ds(name, "records", quote(record["id"], safe="")),
                                   json={"record": record, "revision": revision})

    def delete_record(self, name: str, record_id: str, revision: int) -> None:
        self.client.request("DELETE", self._ds(name, "records", quote(record_id, safe="")),
                            params={"revision": revision})

    def next_unlabeled(self, name: str, *, after: str | None = None,
                       split: str | None = None) -> dict | None:
        params = {k: v for k, v in (("after", after), ("split", split)) if v}
        return self.client.request("GET", self._ds(name, "next"), params=params)["item"]

    def annotate(self, name: str, record_id: str, annotation: dict, revision: int) -> dict:
        """Add an annotation; ``revision`` is the record's (Conflict if someone else wrote)."""
        path = self._ds(name, "records", quote(record_id, safe=""), "annotations")
        return self.client.request("POST", path,
                                   json={"annotation": annotation, "revision": revision})

    def update_annotation(self, name: str, record_id: str, annotation_id: str,
                          annotation: dict, revision: int) -> dict:
        path = self._ds(name, "records", quote(record_id, safe=""), "annotations",
                        quote(annotation_id, safe=""))
        return self.client.request("PUT", path,
                                   json={"annotation": annotation, "revision": revision})

    def delete_annotation(self, name: str, record_id: str, annotation_id: str,
                          revision: int) -> dict:
        path = self._ds(name, "records", quote(record_id, safe=""), "annotations",
                        quote(annotation_id, safe=""))
        return self.client.request("DELETE", path, params={"revision": revision})

    def review(self, name: str, record_id: str, annotation_id: str, state: str,
               revision: int, comment: str = "") -> dict:
        path = self._ds(name, "records", quote(record_id, safe=""), "annotations",
                        quote(annotation_id, safe=""), "review")
        return self.client.request("POST", path, json={"state": state, "revision": revision,
                                                       "comment": comment})

    def assign_splits(self, name: str, **options: Any) -> dict:
        return self.client.request("POST", self._ds(name, "splits"), json=options)["splits"]

    # -- versions ----------------------------------------------------------------------

    def commit(self, name: str, message: str) -> dict:
        return self.client.request("POST", self._ds(name, "commits"), json={"message": message},
                                   timeout=None)

    def log(self, name: str, limit: int = 50) -> list[dict]:
        return self.client.request("GET", self._ds(name, "commits"),
                                   params={"limit": limit})["versions"]

    def diff(self, name: str, base: str | int, target: str | int = "head") -> dict:
        return self.client.request("GET", self._ds(name, "diff"),
                                   params={"base": base, "target": target}, timeout=None)

    def tag(self, name: str, tag: str, version: str | int = "head") -> dict:
        return self.client.request("POST", self._ds(name, "tags"),
                                   json={"tag": tag, "version": str(version)})

    def delete_tag(self, name: str, tag: str) -> None:
        self.client.request("DELETE", self._ds(name, "tags", quote(tag, safe="")))

    def checkout(self, name: str, version: str | int) -> dict:
        return self.client.request("POST", self._ds(name, "checkout"),
                                   json={"version": str(version)}, timeout=None)

    def revert(self, name: str, version: str | int, message: str | None = None) -> dict:
        return self.client.request("POST", self._ds(name, "checkout"), timeout=None,
                                   json={"version": str(version), "revert": True,
                                         "message": message})

    def export(self, name: str, dest: str | os.PathLike, format: str = "loophub", *,
               version: str | int = "head") -> Path:
        """Stream an export to ``dest`` (JSONL for loophub, a zip for the other formats)."""
        resp = self.client.session.get(
            f"{self.client.url}/{self._ds(name, 'export')}", stream=True, timeout=None,
            params={"format": format, "version": str(version)})
        if resp.status_code >= 400:
            raise self.client._error(resp)
        dest = Path(dest)
        tmp = dest.with_name(dest.name + ".part")
        with open(tmp, "wb") as out:
            shutil.copyfileobj(resp.raw, out)
        tmp.replace(dest)
        return dest

    # -- lineage -----------------------------------------------------------------------

    def record_lineage(self, name: str, version: str | int, model_name: str,
                       model_version: str | int, relation: str = "trained_on") -> dict:
        return self.client.request("POST", self._ds(name, "lineage"), json={
            "version": str(version), "model_name": model_name,
            "model_version": str(model_version), "relation": relation})

    def models(self, name: str, version: str | int = "head") -> list[dict]:
        return self.client.request("GET", self._ds(name, "lineage"),
                                   params={"version": str(version)})["models"]
