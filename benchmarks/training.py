"""Training on the platform against plain torch: digits accuracy and time, the overhead from
submit to the first step, samples/s of a 1-worker job against the same loop in plain torch
(one process), of 2 workers against 1, and the steps repeated after a preemption.

A real platform (`loophub up`, hub, proxy, API, its Dask) on a declared pool of this
machine's 2 cores; the data is scikit-learn's bundled digits (1,797 8x8 scans) as 32x32
PNGs, 70/10/20 train/val/test by a fixed seed. Prints a table and one JSON line.

    python benchmarks/training.py [--epochs 20] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._hub import code_version, start_hub
from loophub.client import Client
from tests.training.conftest import digits_folder

POOL = '[{"name": "node1", "cpu": 2, "mem": "8G", "gpu": 0}]'
API_CONFIG = """
c.LoophubAPI.scheduler_policy = "drf"
c.LoophubAPI.scheduler_config = {"preemption": True, "preemption_grace": 0}
"""
CHECKPOINT_EVERY = 10


def plain_torch(folder: Path, epochs: int, batch_size: int) -> dict:
    """The same model, data, preprocessing and augmentation in one process, no platform."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from loophub.training.recipes.image import augmenter, small_cnn

    torch.set_num_threads(1)  # as a 1-CPU worker
    torch.manual_seed(0)
    records = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]

    class Digits(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(train)

        def __getitem__(self, i):
            record = train[i]
            with Image.open(folder / record["media"]["path"]) as image:
                pixels = np.asarray(image.convert("L").resize((32, 32), Image.BILINEAR),
                                    dtype=np.float32) / 255.0
            return (torch.from_numpy(pixels)[None] - 0.3) / 0.3, int(
                record["annotations"][0]["label"])

    model = small_cnn(1, 10, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    augment = augmenter(32)
    loader = torch.utils.data.DataLoader(Digits(), batch_size=batch_size, shuffle=True)
    rates = []
    for _ in range(epochs):
        started, seen = time.perf_counter(), 0
        for x, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(augment(x)), y, label_smoothing=0.05)
            loss.backward()
            optimizer.step()
            seen += len(y)
        rates.append(seen / (time.perf_counter() - started))
    return {"samples_per_s": statistics.median(rates), "rates": rates}


def epoch_rates(points: list[dict]) -> list[float]:
    """samples/s at the end of each epoch (the metric is cumulative within an epoch)."""
    last: dict[int, tuple[int, float]] = {}
    for p in points:
        if p["name"] == "samples_per_s" and p["epoch"]:
            epoch = math.ceil(p["epoch"] - 1e-9) - 1
            if p["step"] >= last.get(epoch, (-1, 0.0))[0]:
                last[epoch] = (p["step"], p["value"])
    return [value for _, (_, value) in sorted(last.items())]


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def run_job(client: Client, **kwargs) -> tuple[object, dict, float]:
    started = time.time()
    job = client.training.run("image-cnn", dataset="digits@v1", **kwargs)
    result = job.wait(progress=False, timeout=3600)
    return job, result, time.time() - started


def first_step_after_submit(client: Client, job) -> float:
    submitted = at(client.training.events(job.id)[0]["at"])
    first = min(at(p["at"]) for p in job.metrics() if p["name"] == "loss")
    return first - submitted


def preemption_repeats(platform, client: Client, epochs: int) -> int:
    """Two preemptible 1-CPU jobs fill the pool; another user's job preempts one; steps of
    the preempted job's first attempt done again by its second."""
    spec = dict(per_worker={"cpu": 1, "mem": "1G"}, preemptible=True,
                params={"epochs": epochs, "checkpoint_every": CHECKPOINT_EVERY})
    jobs = [client.training.run("image-cnn", dataset="digits@v1", **spec) for _ in range(2)]
    deadline = time.monotonic() + 600
    while not all((j.refresh().view.get("checkpoint_step") or 0) >= CHECKPOINT_EVERY
                  for j in jobs):
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.5)
    other = Client(platform.api, platform.token("other"))
    fair = other.training.run("image-cnn", dataset="digits@v1",
                              per_worker={"cpu": 1, "mem": "1G"}, params={"epochs": 1})
    fair.wait(progress=False, timeout=3600)
    for job in jobs:
        job.wait(progress=False, timeout=3600)
    [preempted] = [j for j in jobs if j.view["preemptions"]]
    steps: dict[int, list[int]] = {}
    for p in preempted.metrics():
        if p["name"] == "loss":
            steps.setdefault(p["attempt"], []).append(p["step"])
    attempts = sorted(steps)
    return max(0, max(steps[attempts[0]]) - min(steps[attempts[1]]) + 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="few epochs, a smoke run")
    args = parser.parse_args()
    epochs = 2 if args.quick else args.epochs
    work = Path(tempfile.mkdtemp(prefix="loophub-bench-training-"))
    schema = digits_folder(work / "digits", count=1797, size=32)
    plain = plain_torch(work / "digits", epochs=2 if args.quick else 3, batch_size=64)
    home = work / "home"
    home.mkdir()
    (home / "loophub_api_config.py").write_text(API_CONFIG)
    platform = start_hub(home, env={"LOOPHUB_POOL": POOL})
    try:
        client = Client(platform.api, platform.token("bench"))
        client.datasets.create("digits", label_schema=schema, visibility="public")
        client.datasets.import_("digits", work / "digits", "loophub", progress=False)
        client.datasets.commit("digits", "1,797 digits")
        one, result, wall = run_job(client, per_worker={"cpu": 1, "mem": "2G"},
                                    params={"epochs": epochs})
        rates_1w = epoch_rates(one.metrics())
        overhead = first_step_after_submit(client, one)
        two, _, _ = run_job(client, workers=2, per_worker={"cpu": 1, "mem": "2G"},
                            params={"epochs": 2 if args.quick else 3})
        rates_2w = epoch_rates(two.metrics())
        repeated = preemption_repeats(platform, client, 2 if args.quick else 4)
    finally:
        platform.stop()
    figures = {
        "digits_accuracy": round(result["metrics"]["test_accuracy"], 4),
        "digits_train_s": round(wall, 1), "epochs": epochs,
        "submit_to_first_step_s": round(overhead, 2),
        "samples_per_s_plain": round(plain["samples_per_s"], 1),
        "samples_per_s_1w": round(statistics.median(rates_1w), 1),
        "samples_per_s_2w": round(statistics.median(rates_2w), 1),
        "ratio_1w_vs_plain": round(statistics.median(rates_1w) / plain["samples_per_s"], 3),
        "ratio_2w_vs_1w": round(statistics.median(rates_2w) / statistics.median(rates_1w), 3),
        "steps_repeated_after_preemption": repeated,
        "checkpoint_interval_steps": CHECKPOINT_EVERY,
        "spread": {"plain": [round(min(plain["rates"]), 1), round(max(plain["rates"]), 1)],
                   "1w": [round(min(rates_1w), 1), round(max(rates_1w), 1)],
                   "2w": [round(min(rates_2w), 1), round(max(rates_2w), 1)]},
        "code": code_version(),
    }
    print(f"{'figure':<34}{'value':>12}")
    for key, value in figures.items():
        if not isinstance(value, dict):
            print(f"{key:<34}{value!s:>12}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
