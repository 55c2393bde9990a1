"""Training jobs end to end on real Dask: fair admission, DDP ranks, checkpoints, results."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.training


def test_a_recipe_trains_on_dask_and_records_its_result(digits):
    job = digits.training.run("image-cnn", dataset="digits@v1", workers=1,
                              per_worker={"cpu": 1, "mem": "2G"},
                              params={"epochs": 2, "image_size": 16, "batch_size": 32})
    assert job.state == "queued"
    result = job.wait(progress=False, timeout=300)
    assert job.state == "succeeded", job.logs()
    assert result["metrics"]["test_accuracy"] > 0.3
    assert result["artifact"]["format"] == "torchscript"
    assert result["version_number"] == 1
    names = {p["name"] for p in job.metrics()}
    assert {"loss", "lr", "samples_per_s", "val_accuracy"} <= names
    models = digits.datasets.models("digits", "v1")
    assert [m["model_version"] for m in models] == [f"job:{job.id}"]
