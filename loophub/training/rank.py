"""What runs in each Dask worker: one DDP rank of a training job.

The worker was started for this job on one allocated unit, confined to it, with the job
owner's API token and the API's address in its environment (the runner did that): the
rank talks to the platform only through the SDK, as the job's owner. It joins the job's
process group, builds the TrainContext on the materialized dataset version, runs the
recipe or the owner's function, and returns what happened: done (with the final metrics
and the artifact) or stopped (preempted or cancelled, after a checkpoint).
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

log = logging.getLogger("loophub.training")


def device_for_rank():
    """The rank's device: its first visible GPU when the allocation gave it GPUs."""
    import torch

    if os.environ.get("CUDA_VISIBLE_DEVICES") and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def run_rank(task: dict[str, Any]) -> dict[str, Any]:
    import torch

    from loophub.client import Client
    from loophub.client.training import ApiChannel
    from loophub.training.context import Preempted, TrainContext
    from loophub.training.data import MaterializedVersion
    from loophub.training.ddp import process_group

    client = Client(patience=60)
    job_id, rank, world = task["job_id"], task["rank"], task["world_size"]
    channel = ApiChannel(client.training, job_id)
    cores = float(os.environ.get("LOOPHUB_ALLOC_CPU") or 1)
    torch.set_num_threads(max(1, int(cores)))
    device = device_for_rank()
    params = dict(task["params"])
    with process_group(rank, world, task["master_addr"], task["master_port"],
                       gpus=device.type == "cuda", timeout=task.get("init_timeout", 120)
                       ) as backend:
        ctx = TrainContext(version=MaterializedVersion(task["folder"]), channel=channel,
                           rank=rank, world_size=world, device=device, params=params,
                           seed=int(params.get("seed", 0) or 0),
                           checkpoint_every=task.get("checkpoint_every"), job_id=job_id)
        ctx.log(f"rank {rank} of {world} on {device} ({backend}), "
                f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}, "
                f"{torch.get_num_threads()} threads, attempt {task.get('attempt', 0)}")
        try:
            result = train(ctx, task, client)
        except Preempted as stop:
            ctx.flush()
            return {"status": "stopped", "reason": stop.reason, "step": stop.step,
                    "rank": rank}
        ctx.flush()
        final = ctx.final_metrics or (
            {k: float(v) for k, v in result.items() if isinstance(v, int | float)}
            if isinstance(result, dict) else {})
        return {"status": "done", "final": final, "artifact": ctx.artifact, "rank": rank,
                "backend": backend}


def train(ctx, task: dict, client) -> Any:
    recipe_name = task.get("recipe")
    if recipe_name:
        from loophub.training.recipes import recipe

        found = recipe(recipe_name, internal=True)
        ctx.params["_recipe"] = recipe_name
        return found.train(ctx)
    function = task["function"]
    payload = client.training.blob(ctx.job_id, function["blob"])
    if hashlib.sha256(payload).hexdigest() != function["sha256"]:
        raise RuntimeError("the function's bytes do not match its digest; submit it again")
    import cloudpickle

    return cloudpickle.loads(payload)(ctx)  # the owner's own function, in their rank
