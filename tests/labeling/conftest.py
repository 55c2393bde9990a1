"""Helpers of the labeling tests: real PNGs and small datasets made through the API (the
in-process API fixture ``api`` lives in tests/conftest.py)."""

from __future__ import annotations

import io

from loophub.client import Client
from tests.inprocess import InProcessApi, TokenIsUser  # noqa: F401 (imported from here)


def png_bytes(width: int = 64, height: int = 48, color=(200, 40, 40)) -> bytes:
    """A real PNG made with Pillow."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def make_dataset(client: Client, name: str, task: str, classes: list[str], records: list[dict],
                 folder, *, multi_label: bool = False, images: dict[str, bytes] | None = None
                 ) -> None:
    """Create a dataset and import ``records`` (loophub format; images by media.path)."""
    import json

    schema = {"task": task, "classes": [{"id": i, "name": c} for i, c in enumerate(classes)]}
    if multi_label:
        schema["multi_label"] = True
    client.datasets.create(name, label_schema=schema)
    folder.mkdir(parents=True, exist_ok=True)
    for rel, data in (images or {}).items():
        (folder / rel).write_bytes(data)
    (folder / "label_schema.json").write_text(json.dumps(schema))
    (folder / "records.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    client.datasets.import_(name, folder, "loophub", progress=False)


def image_dataset(client: Client, name: str, folder, count: int = 6,
                  classes: tuple[str, ...] = ("cat", "dog"), task: str = "image_classification",
                  **options) -> list[str]:
    colors = [(200, 40, 40), (40, 160, 60), (50, 80, 200), (220, 180, 30), (120, 40, 160),
              (30, 170, 170)]
    images = {f"img{i:02d}.png": png_bytes(64 + 8 * i, 48, colors[i % len(colors)])
              for i in range(count)}
    records = [{"id": f"img{i:02d}", "media": {"path": f"img{i:02d}.png"}, "annotations": []}
               for i in range(count)]
    make_dataset(client, name, task, list(classes), records, folder, images=images, **options)
    return [r["id"] for r in records]
