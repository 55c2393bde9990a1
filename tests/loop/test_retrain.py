"""Retrain and compare (real Dask training and evaluation jobs): a challenger trained with
the champion's spec on a dataset version that holds labeled production inputs, both
evaluated on the fixed held-out split and on the production slice, side by side."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from loophub import errors
from tests.training.conftest import digits, pool  # noqa: F401 (fixtures)

pytestmark = pytest.mark.training
CNN = {"epochs": 3, "image_size": 16, "batch_size": 32}


def production_digits(client, count: int = 60) -> list[str]:
    """COUNT inverted digits, labeled by a person, as the loop would have collected them
    (ids production-..., metadata.source production): two thirds train, a third test."""
    from sklearn.datasets import load_digits

    sk = load_digits()
    ids = []
    for n in range(count):
        pixels = 255 - (np.kron(sk.images[1000 + n], np.ones((2, 2))) * 255 / 16)
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
        digest = client.datasets.upload(io.BytesIO(buffer.getvalue()))["digest"]
        record_id = "production-" + hashlib.sha256(buffer.getvalue()).hexdigest()[:24]
        client.request("POST", "datasets/digits/records", json={"record": {
            "id": record_id, "media": {"sha256": digest}, "split": "train" if n % 3 else "test",
            "metadata": {"source": "production", "release": "digits"},
            "annotations": [{"type": "image_class", "label": str(sk.target[1000 + n])}]}})
        ids.append(record_id)
    return ids


def champion_then_production(client, count: int) -> None:
    """digits@v1 (model) trained on digits@v1 and aliased champion; then COUNT labeled
    production digits committed as digits@v2."""
    job = client.training.run("image-cnn", dataset="digits@v1", params=CNN,
                              per_worker={"cpu": 1, "mem": "2G"})
    job.wait(progress=False, timeout=300)
    champion = client.models.register("digits", job=job)
    client.models.alias("digits", "champion", champion["version"], force=True,
                        reason="the first model")
    production_digits(client, count)
    client.datasets.commit("digits", f"{count} inverted digits from production, labeled")


def test_a_challenger_trained_on_production_labels_is_compared_with_the_champion(digits):  # noqa: F811
    client = digits
    champion_then_production(client, 60)

    comparison = client.loop.retrain("digits@champion", dataset="digits@v2", progress=False,
                                     timeout=300)
    assert comparison["champion"] == "digits@v1" and comparison["challenger"] == "digits@v2"
    challenger = client.models.get("digits@v2")
    spec = client.training.view(challenger["job"])["spec"]
    assert spec["recipe"] == "image-cnn" and spec["dataset"] == "digits@v2"
    assert {k: spec["params"][k] for k in CNN} == CNN  # the champion's own parameters
    rows = {(r["on"], r["metric"]): r for r in comparison["rows"]}
    fixed, production = ("digits@v1 test", "accuracy"), ("digits@v2 test from production",
                                                         "accuracy")
    assert fixed in rows and production in rows, sorted(rows)
    for key in (fixed, production):
        row = rows[key]
        assert 0 <= row["champion"] <= 1 and 0 <= row["challenger"] <= 1
        assert row["change"] == pytest.approx(row["challenger"] - row["champion"])
    result = comparison["production"]["challenger"]["result"]
    assert "production" in result["slices"]["metadata.source"], result["slices"]
    assert "digits@v1" in comparison._repr_html_() and "from production" in \
        comparison._repr_html_()
    print("retrain:", {k: (round(r["champion"], 4), round(r["challenger"], 4))
                       for k, r in rows.items() if k[1] == "accuracy"})
    with pytest.raises(errors.NotFound):
        client.loop.retrain("nothing@champion", dataset="digits@v2")


def test_a_warm_start_begins_from_the_champion_pinned_and_read_as_its_owner(digits, api, tmp_path):  # noqa: F811
    from tests.training.conftest import digits_folder

    client = digits
    champion_then_production(client, 30)

    comparison = client.loop.retrain("digits@champion", dataset="digits@v2", warm_start=True,
                                     params={"epochs": 2}, progress=False, timeout=300)
    challenger = client.models.get(comparison["challenger"])
    spec = client.training.view(challenger["job"])["spec"]
    assert spec["params"]["init_from"] == "digits@v1"  # pinned: the alias may move later
    lines = [row["line"] for row in client.training.logs(challenger["job"])["lines"]]
    assert any("starting from the weights of digits@v1" in line for line in lines), lines
    # a fine-tune's one-cycle peaks at a third of the recipe's lr (3e-3): init_lr_scale
    def peak_lr(job_id: str) -> float:
        return max(p["value"] for p in client.training.get(job_id).metrics() if p["name"] == "lr")

    assert peak_lr(client.models.get(comparison["champion"])["job"]) > 2e-3
    assert 0.3e-3 < peak_lr(challenger["job"]) <= 1e-3 + 1e-9
    fixed = next(r for r in comparison["rows"]
                 if r["on"] == "digits@v1 test" and r["metric"] == "accuracy")
    assert fixed["challenger"] > 0.5, fixed  # it kept what the champion learnt (chance 0.1)
    # retraining the fine-tuned challenger from scratch does not inherit its start
    again = client.loop.retrain(comparison["challenger"], dataset="digits@v2",
                                params={"epochs": 1}, progress=False, timeout=300)
    again_spec = client.training.view(client.models.get(again["challenger"])["job"])["spec"]
    assert again_spec["params"]["init_from"] == ""

    with pytest.raises(errors.InvalidInput, match=r"init_from.*trained by image-cnn"):
        client.training.run("image-resnet", dataset="digits@v2",
                            params={"init_from": "digits@champion", "image_size": 16})
    for wrong in (5, {"model": "digits"}, ["digits@v1"]):  # a name, never another type
        with pytest.raises(errors.InvalidInput, match=r"params.init_from"):
            client.training.run("image-cnn", dataset="digits@v2",
                                params={**CNN, "init_from": wrong})
    with pytest.raises(errors.InvalidInput, match=r"params.init_lr_scale: 2 is outside"):
        client.training.run("image-cnn", dataset="digits@v2",  # refused before any job
                            params={**CNN, "init_from": "digits@champion", "init_lr_scale": 2})
    with pytest.raises(errors.InvalidInput, match=r"init_from.*no model named 'nothing'"):
        client.training.run("image-cnn", dataset="digits@v2",
                            params={**CNN, "init_from": "nothing@v1"})
    # another user cannot start from ann's private model: it does not exist for them
    bob = api.client("bob")
    bob.datasets.create("bobs", label_schema=digits_folder(tmp_path / "bobs", count=40))
    bob.datasets.import_("bobs", tmp_path / "bobs", "loophub", progress=False)
    bob.datasets.commit("bobs", "40 digits")
    with pytest.raises(errors.InvalidInput, match=r"init_from.*that you can see"):
        bob.training.run("image-cnn", dataset="bobs@v1",
                         params={**CNN, "init_from": "digits@v1"})
    assert bob.training.jobs() == []
