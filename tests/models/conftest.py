"""Model tests: ann's digits dataset (scikit-learn's 8x8 scans as 16x16 PNGs, v1
committed) in the in-process API, and a small CNN for it."""

from __future__ import annotations

import pytest

from tests.training.conftest import POOL, digits_folder


@pytest.fixture
def pool(monkeypatch):
    monkeypatch.setenv("LOOPHUB_POOL", POOL)


@pytest.fixture
def digits(pool, api, tmp_path):
    client = api.client("ann")
    schema = digits_folder(tmp_path / "digits", count=120)
    client.datasets.create("digits", label_schema=schema)
    client.datasets.import_("digits", tmp_path / "digits", "loophub", progress=False)
    client.datasets.commit("digits", "120 digits")
    return client


def small_cnn():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(), torch.nn.Linear(64, 10), torch.nn.Softmax(dim=1))


DIGITS = [str(i) for i in range(10)]
