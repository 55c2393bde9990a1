"""``Client().datasets``: the dataset API, as a notebook user wants it."""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote

from loophub import errors

if TYPE_CHECKING:
    from loophub.client.core import Client

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
        """Import a file, folder or zip in ``format`` into the draft: all records or none.
        Runs as a job on the platform (``client.jobs``); a progress bar follows it."""
        digest = self.upload(source)["digest"]
        filename = Path(source).name if isinstance(source, str | os.PathLike) else None
        body = {"format": format, "upload": digest}
        if filename:
            body["filename"] = filename
        job = self.client.request("POST", self._ds(name, "imports"), json=body)
        return self.client.jobs.wait(job, progress=progress, poll=poll,
                                     desc=f"import {name}")

    # -- records and annotations -------------------------------------------------------

    def records(self, name: str, *, label: str | None = None, split: str | None = None,
                annotated: bool | None = None, annotator: str | None = None,
                origin: str | None = None, page_size: int = 500) -> Iterator[dict]:
        """Every matching draft record ({"record", "revision"}), fetched page by page
        (ORIGIN "production": only inputs collected from a release)."""
        params: dict[str, Any] = {"limit": page_size}
        for key, value in (("label", label), ("split", split), ("annotator", annotator),
                           ("origin", origin)):
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

    def commit(self, name: str, message: str, *, progress: bool = False) -> dict:
        """Commit the draft as a new version (a job on the platform; with ``progress`` a
        bar follows it)."""
        if not progress:
            return self.client.request("POST", self._ds(name, "commits"),
                                       json={"message": message}, timeout=None)
        job = self.client.request("POST", self._ds(name, "commits"), json={"message": message},
                                  params={"wait": "false"})
        return self.client.jobs.wait(job, desc=f"commit {name}")

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
               version: str | int = "head", progress: bool = False,
               dense_ids: bool = False) -> Path:
        """Write an export to ``dest`` (JSONL for loophub, a zip for the other formats),
        streamed. With ``progress`` it runs as a job with a progress bar, then downloads.
        ``dense_ids`` (yolo): class indices 0..n-1, the class ids kept in data.yaml."""
        options = {"dense_ids": True} if dense_ids else {}
        if not progress:
            return self.client.download(self._ds(name, "export"), dest, params={
                "format": format, "version": str(version), **options})
        job = self.client.request("POST", self._ds(name, "exports"),
                                  json={"format": format, "version": str(version), **options})
        self.client.jobs.wait(job, desc=f"export {name}")
        return self.client.jobs.download(job["id"], dest)

    # -- lineage -----------------------------------------------------------------------

    def record_lineage(self, name: str, version: str | int, model_name: str,
                       model_version: str | int, relation: str = "trained_on") -> dict:
        return self.client.request("POST", self._ds(name, "lineage"), json={
            "version": str(version), "model_name": model_name,
            "model_version": str(model_version), "relation": relation})

    def models(self, name: str, version: str | int = "head") -> list[dict]:
        return self.client.request("GET", self._ds(name, "lineage"),
                                   params={"version": str(version)})["models"]
