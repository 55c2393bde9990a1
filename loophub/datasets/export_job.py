"""An export job's work, run in a child process (``python -m loophub.datasets.export_job``).

Encoding and zipping every record of a version is CPU work in long stretches; on one of
the API's threads it held the GIL and every other request waited behind it (p99 over
100 ms while a COCO export ran). The API keeps the job (row, progress, cancel) and runs
this in a child through ``loophub.jobs.run_in_child``; ``export_spec`` builds its spec.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from loophub.identity import Actor
from loophub.jobs import ChildContext, child_main

MODULE = "loophub.datasets.export_job"


def export_spec(service, actor: Actor, name: str, fmt: str, *, version: str,
                dense_ids: bool, target: Path) -> dict:
    """The child's spec: where the store is, who exports what, and the file to write."""
    return {"db_url": service.db.url, "blob_url": service.blobs.url,
            "actor": dataclasses.asdict(actor), "name": name, "format": fmt,
            "version": version, "dense_ids": dense_ids, "target": str(target)}


def export_to_file(spec: dict, ctx: ChildContext) -> dict:
    """Write the export to the spec's target; returns its size in bytes."""
    from loophub.datasets.service import DatasetService
    from loophub.store import BlobStore, Database

    db = Database(spec["db_url"], migrate=False)
    try:
        service = DatasetService(db, BlobStore(spec["blob_url"]))
        actor = Actor(**{**spec["actor"], "groups": tuple(spec["actor"]["groups"])})
        chunks = service.export(actor, spec["name"], spec["format"], version=spec["version"],
                                progress=ctx.progress, dense_ids=spec["dense_ids"])
        size = 0
        with open(spec["target"], "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                size += len(chunk)
        return {"size": size}
    finally:
        db.dispose()


if __name__ == "__main__":
    child_main(export_to_file)
