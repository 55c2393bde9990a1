"""Training tests: a real digits dataset (scikit-learn's bundled 8x8 scans, scaled to
PNGs) committed in the in-process API, and a pool the scheduler can split."""

from __future__ import annotations

import json

import numpy as np
import pytest

POOL = '[{"name": "node1", "cpu": 4, "mem": "16G", "gpu": 2, "gpu_type": "t4"}]'


def digits_folder(folder, count: int = 300, size: int = 16, seed: int = 0):
    """COUNT digits as PNGs with records (70% train, 15% val, 15% test by a fixed seed)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.images))[:count]
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for n, i in enumerate(order):
        name = f"d{i:04d}.png"
        pixels = (digits.images[i] * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).resize((size, size), Image.NEAREST).save(folder / name)
        split = "train" if n < 0.7 * count else "val" if n < 0.85 * count else "test"
        records.append({"id": f"d{i:04d}", "split": split, "media": {"path": name},
                        "annotations": [{"type": "image_class",
                                         "label": str(digits.target[i])}]})
    schema = {"task": "image_classification",
              "classes": [{"id": i, "name": str(i)} for i in range(10)]}
    (folder / "label_schema.json").write_text(json.dumps(schema))
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return schema


@pytest.fixture
def pool(monkeypatch):
    monkeypatch.setenv("LOOPHUB_POOL", POOL)


@pytest.fixture
def digits(pool, api, tmp_path):
    """ann's dataset 'digits' with v1 committed (300 images)."""
    client = api.client("ann")
    schema = digits_folder(tmp_path / "digits")
    client.datasets.create("digits", label_schema=schema)
    client.datasets.import_("digits", tmp_path / "digits", "loophub", progress=False)
    client.datasets.commit("digits", "300 digits")
    return client
