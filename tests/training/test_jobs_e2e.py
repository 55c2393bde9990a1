"""Training jobs end to end on real Dask: fair admission, DDP ranks, checkpoints, results."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.training


def test_a_recipe_trains_on_dask_and_records_its_result(digits):
    job = digits.training.run("image-cnn", dataset="digits@v1", workers=1,
                              per_worker={"cpu": 1, "mem": "2G"},
                              params={"epochs": 4, "image_size": 16, "batch_size": 32})
    assert job.state in ("queued", "starting")  # admission may place it before the answer
    result = job.wait(progress=False, timeout=300)
    assert job.state == "succeeded", job.logs()
    assert result["metrics"]["test_accuracy"] > 0.3
    assert result["artifact"]["format"] == "torchscript"
    assert result["version_number"] == 1
    names = {p["name"] for p in job.metrics()}
    assert {"loss", "lr", "samples_per_s", "val_accuracy"} <= names
    models = digits.datasets.models("digits", "v1")
    assert [m["model_version"] for m in models] == [f"job:{job.id}"]
    held = job.refresh().view["result"]["resources"]
    assert held["cpu_hours"] > 0 and held["gpu_hours"] == 0


def linear_steps(ctx):
    """The analyst's own function: a softmax regression trained with plain SGD on the
    global batch (20 samples, split over the ranks), no shuffling, 10 steps."""
    import torch
    import torch.nn.functional as F

    from loophub.training.recipes.image import load_image

    def sample(record, version):
        pixels = load_image(version.media_path(record), "L", 16).flatten()
        return pixels, int(record["annotations"][0]["label"])

    torch.manual_seed(0)
    model = torch.nn.Linear(256, 10)
    net = model
    if ctx.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    loader = torch.utils.data.DataLoader(ctx.data("train", shuffle=False, transform=sample),
                                         batch_size=20 // ctx.world_size)
    for step, (x, y) in enumerate(loader, 1):
        optimizer.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        ctx.report(step, loss=loss.item())
        if step == 10:
            break
    ctx.final(weight_sum=float(model.weight.sum()), weight_norm=float(model.weight.norm()),
              bias_sum=float(model.bias.sum()))
    return {}


def test_two_ranks_on_the_same_global_batch_equal_one(digits):
    """DDP over two Dask workers computes what one rank computes on the whole batch."""
    results = {}
    for workers in (1, 2):
        job = digits.training.run(linear_steps, dataset="digits@v1", workers=workers,
                                  per_worker={"cpu": 1, "mem": "1G"})
        results[workers] = job.wait(progress=False, timeout=300)["metrics"]
        assert job.view["spec"]["function"]["name"] == "linear_steps"
        assert "def linear_steps" in job.view["spec"]["function"]["source"]
    for name in ("weight_sum", "weight_norm", "bias_sum"):
        assert results[2][name] == pytest.approx(results[1][name], rel=1e-4, abs=1e-5), name


def training_pids(job_id: str, command: str = "") -> list[int]:
    """Processes started for a job (its Dask workers, and what they start, carry its id in
    their environment), those whose command line has COMMAND."""
    import os

    found = []
    for entry in sorted(os.listdir("/proc")):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if f"LOOPHUB_TRAINING_JOB={job_id}\0".encode() not in f.read():
                    continue
            with open(f"/proc/{entry}/stat") as stat:
                if stat.read().split(") ", 1)[1].startswith("Z"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if command.encode() in f.read().replace(b"\0", b" "):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def wait_for(check, what: str, timeout: float = 180.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.3)
    raise TimeoutError(what)


def attempts_of(points: list[dict]) -> dict[int, list[int]]:
    steps: dict[int, list[int]] = {}
    for point in points:
        if point["name"] == "loss":
            steps.setdefault(point["attempt"], []).append(point["step"])
    return steps


SLOW = {"epochs": 4, "image_size": 16, "batch_size": 16, "checkpoint_every": 3}


def test_a_killed_worker_resumes_from_its_checkpoint(digits):
    import os
    import signal

    job = digits.training.run("image-cnn", dataset="digits@v1", workers=2,
                              per_worker={"cpu": 1, "mem": "2G"}, params=SLOW, max_retries=2)
    wait_for(lambda: (job.refresh().view.get("checkpoint_step") or 0) >= 6,
             "a checkpoint at step 6")
    [victim] = wait_for(lambda: training_pids(job.id, f"--name train-{job.id[:12]}-1-1 "),
                        "rank 1's worker")
    os.kill(victim, signal.SIGKILL)
    result = job.wait(progress=False, timeout=600)
    assert job.view["retries"] == 1 and job.view["attempt"] == 2
    steps = attempts_of(job.metrics())
    done_before, resumed_at = max(steps[1]), min(steps[2])
    assert resumed_at > done_before - SLOW["checkpoint_every"], steps
    assert sorted(set(steps[1]) | set(steps[2])) == list(range(1, max(steps[2]) + 1))
    states = [e["state"] for e in digits.training.events(job.id)]
    assert "retrying" in states and states[-1] == "succeeded"
    assert result["metrics"]["test_accuracy"] > 0.2
    assert training_pids(job.id) == []


def test_bad_input_is_refused_before_anything_is_written(digits, api, tmp_path):
    from loophub import errors

    cases = [
        (dict(what="no-such-recipe", dataset="digits@v1"), errors.InvalidInput,
         "no recipe 'no-such-recipe'; one of .*image-cnn"),
        (dict(what="image-cnn", dataset="digits@v9"), errors.NotFound, "v9"),
        (dict(what="image-cnn", dataset="nope@v1"), errors.NotFound, "no dataset"),
        (dict(what="image-cnn", dataset="digits@v1", params={"epoch": 3}),
         errors.InvalidInput, "epoch is not a parameter of the image-cnn recipe"),
        (dict(what="image-cnn", dataset="digits@v1", per_worker={"gpu": 8}),
         errors.LoophubError, "refused"),
        (dict(what="image-cnn", dataset="digits@draft"), errors.InvalidInput, "commit it"),
    ]
    for kwargs, error, words in cases:
        what = kwargs.pop("what")
        with pytest.raises(error, match=words):
            digits.training.run(what, **kwargs)
    import threading

    lock = threading.Lock()

    def holds_a_lock(ctx):
        with lock:
            return {}
    with pytest.raises(errors.InvalidInput, match="cannot be pickled"):
        digits.training.run(holds_a_lock, dataset="digits@v1")
    # a dataset of another task: the recipe says what it trains
    api.client("ann").datasets.create("reviews", label_schema={
        "task": "text_classification", "classes": [{"id": 0, "name": "pos"}]})
    api.client("ann").datasets.add_record("reviews", {"id": "r1", "text": "good",
                                                       "annotations": []})
    api.client("ann").datasets.commit("reviews", "one")
    with pytest.raises(errors.InvalidInput, match="image-cnn trains image_classification"):
        digits.training.run("image-cnn", dataset="reviews@v1")
    assert digits.training.jobs() == []
    assert [q for q in digits.scheduler.queue()["requests"] if q["kind"] == "job"] == []


def explodes(ctx):
    ctx.log("about to fail")
    raise RuntimeError("the analyst's bug on purpose")


def test_a_function_that_raises_fails_the_job_with_its_error(digits):
    from loophub import errors

    job = digits.training.run(explodes, dataset="digits@v1", workers=2,
                              per_worker={"cpu": 1, "mem": "1G"})
    with pytest.raises(errors.LoophubError, match="the analyst's bug on purpose"):
        job.wait(progress=False, timeout=300)
    assert job.state == "failed"
    logs = job.logs()
    assert ("about to fail" in logs and "RuntimeError" in logs and "Traceback" not in logs) \
        or "explodes" in logs
    assert training_pids(job.id) == []
    assert digits.scheduler.queue()["requests"] == []


def test_preempted_by_a_fairer_request_it_checkpoints_requeues_resumes_and_finishes(digits,
                                                                                     api):
    """ann's two preemptible 1-GPU jobs hold both GPUs; bob (share 0) asks for one: one of
    ann's jobs checkpoints and waits again, bob's runs, then ann's resumes and finishes."""
    api.ctx.scheduler_policy = "drf"
    api.ctx.scheduler_config = {"preemption": True, "preemption_grace": 0}
    gpu = {"cpu": 1, "mem": "1G", "gpu": 1}
    params = {**SLOW, "epochs": 12}  # with 6, one had ended 10 s after bob asked
    first = digits.training.run("image-cnn", dataset="digits@v1", per_worker=gpu,
                                params=params, preemptible=True)
    second = digits.training.run("image-cnn", dataset="digits@v1", per_worker=gpu,
                                 params=params, preemptible=True)
    for job in (first, second):
        wait_for(lambda job=job: (job.refresh().view.get("checkpoint_step") or 0) >= 3,
                 "both of ann's jobs checkpointed")
    bob = api.client("bob")
    digits.datasets.update("digits", visibility="public")
    bobs = bob.training.run("image-cnn", dataset="digits@v1", per_worker=gpu,
                            params={**SLOW, "epochs": 1})
    preempted = wait_for(lambda: next((j for j in (first, second)
                                       if j.refresh().view["preemptions"]), None),
                         "one of ann's jobs preempted")
    events = [e["state"] for e in digits.training.events(preempted.id)]
    assert events[:4] == ["queued", "starting", "running", "preempted"]
    assert "queued" in events[4:]
    bobs.wait(progress=False, timeout=600)
    result = preempted.wait(progress=False, timeout=900)
    other = second if preempted is first else first
    other.wait(progress=False, timeout=900)
    assert preempted.view["preemptions"] == 1 and preempted.view["attempt"] == 2
    steps = attempts_of(preempted.metrics())
    assert min(steps[2]) > max(steps[1]) - SLOW["checkpoint_every"], steps
    assert result["metrics"]["test_accuracy"] > 0.2
    assert api.ctx.scheduler.service.queue() == []


def test_cancel_while_queued_and_while_running_leaves_nothing_running(digits):
    whole = {"cpu": 1, "mem": "1G", "gpu": 2}
    running = digits.training.run("image-cnn", dataset="digits@v1", per_worker=whole,
                                  params={**SLOW, "epochs": 50})
    queued = digits.training.run("image-cnn", dataset="digits@v1", per_worker=whole,
                                 params=SLOW)
    wait_for(lambda: running.refresh().state == "running" and training_pids(running.id),
             "the first job runs")
    assert queued.refresh().state == "queued"
    assert "position 1" in queued.view["queue"]["message"]
    assert digits.training.cancel(queued.id)["state"] == "cancelled"
    view = digits.jobs.cancel(running.id)  # the generic jobs route cancels training too
    assert view["state"] == "cancelled"
    wait_for(lambda: not training_pids(running.id), "no process of the job left", 30)
    assert digits.scheduler.queue()["requests"] == []
    assert [e["state"] for e in digits.training.events(running.id)][-1] == "cancelled"


def test_two_users_are_admitted_in_fair_order(digits, api):
    """ann's three 1-GPU jobs: two run (both GPUs), one waits; bob's job, submitted after,
    goes before ann's third, since ann is above her fair share and bob holds nothing.
    ann's first two run until cancelled, so none ends before bob has asked (a 1-epoch job
    could, on a slow start)."""
    digits.datasets.update("digits", visibility="public")
    one = {"cpu": 1, "mem": "1G", "gpu": 1}
    short = {**SLOW, "epochs": 1}
    anns = [digits.training.run("image-cnn", dataset="digits@v1", per_worker=one,
                                params=params) for params in
            ({**SLOW, "epochs": 50}, {**SLOW, "epochs": 50}, short)]
    wait_for(lambda: anns[1].refresh().state == "running", "ann's first two jobs run")
    assert anns[2].refresh().state == "queued"
    bobs = api.client("bob").training.run("image-cnn", dataset="digits@v1", per_worker=one,
                                          params=short)
    assert bobs.refresh().view["queue"]["position"] == 1
    assert "your share 0%" in bobs.view["queue"]["message"]
    digits.training.cancel(anns[0].id)  # a GPU frees: bob's job takes it
    wait_for(lambda: bobs.refresh().state != "queued", "bob's job leaves the queue")
    assert anns[2].refresh().state == "queued"
    digits.training.cancel(anns[1].id)
    for job in (anns[2], bobs):
        job.wait(progress=False, timeout=900)

    def started(client, job):
        return next(e["at"] for e in client.training.events(job.id) if e["state"] == "starting")
    assert started(api.client("bob"), bobs) < started(digits, anns[2])


def reports_its_devices(ctx):
    import os

    ctx.log(f"devices {os.environ.get('CUDA_VISIBLE_DEVICES')!r} "
            f"gpus {os.environ.get('LOOPHUB_ALLOC_GPUS')!r}")
    ctx.final(rank_seen=float(ctx.rank))
    return {}


def test_each_rank_sees_only_its_allocated_gpu(digits):
    """The GPU code path with the pool's declared devices: each rank's worker gets the GPU
    index of its own unit in CUDA_VISIBLE_DEVICES (nccl is chosen where torch has it)."""
    job = digits.training.run(reports_its_devices, dataset="digits@v1", workers=2,
                              per_worker={"cpu": 1, "mem": "1G", "gpu": 1})
    job.wait(progress=False, timeout=300)
    [request] = digits.scheduler.find(key=f"job:ann/{job.id}")
    units = request["allocation"]["units"]
    assert sorted(g for u in units for g in u["gpus"]) == [0, 1]
    logs = job.logs()
    for rank, unit in enumerate(units):
        assert f"[{rank}] devices '{unit['gpus'][0]}' gpus '{unit['gpus'][0]}'" in logs, logs


def test_nccl_is_chosen_for_ranks_with_gpus(monkeypatch):
    import torch.distributed as dist

    from loophub.training.ddp import choose_backend

    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    assert choose_backend(gpus=True) == "nccl" and choose_backend(gpus=False) == "gloo"
    monkeypatch.setattr(dist, "is_nccl_available", lambda: False)
    assert choose_backend(gpus=True) == "gloo"  # a CPU build of torch: gloo still works


def test_a_job_request_naming_no_training_job_only_holds_resources(api, pool):
    """An admin's plain hold (kind job, through the scheduler's route) starts no runner."""
    admin = api.client("root")
    view = admin.scheduler.submit({"kind": "job", "job": "hold-1", "owner": "root",
                                   "demand": {"cpu": 1}})
    assert view["state"] == "running"
    assert api.ctx.runner.attempts == {}
    assert admin.scheduler.release(view["id"])["state"] == "done"
