"""The supervised training loop the recipes share: DDP when there are several ranks,
AdamW with one-cycle learning rates, curves reported every step, validation each epoch,
checkpoints every N steps (and at each epoch's end, and when the job must stop), and
resume that continues the same curves: the model, optimizer, scheduler and RNG states
and the position inside the epoch come back, so at most one checkpoint interval of steps
is done again.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loophub.training.context import TrainContext
from loophub.training.streams import RecordStream

# The recipes' own Python randomness (augmentation, word dropout) draws from this, seeded
# and checkpointed with the rest: the global `random` is shared with every thread of the
# process, and a Dask worker's threads draw from it too, so a seed would not give one run.
recipe_random = random.Random()


@dataclass(frozen=True)
class LoopConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    checkpoint_every: int | None = None  # steps; None: each epoch
    num_workers: int = 0                 # DataLoader worker processes per rank

    @classmethod
    def from_params(cls, params: dict, **defaults: Any) -> LoopConfig:
        values = {**defaults, **{k: v for k, v in params.items()
                                 if k in cls.__dataclass_fields__}}
        return cls(**values)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    recipe_random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    import numpy as np
    import torch

    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "recipe": recipe_random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "recipe" in state:  # checkpoints written before it existed go on without it
        recipe_random.setstate(state["recipe"])
    np.random.set_state(state["numpy"])


def fit(ctx: TrainContext, model, *, train: RecordStream, val: RecordStream | None,
        loss_fn: Callable, evaluate: Callable[[Any, Any], dict[str, Any]],
        config: LoopConfig, monitor: str = "val_accuracy",
        augment: Callable | None = None, collate: Callable | None = None,
        summarize: Callable[[dict], dict[str, float]] | None = None) -> dict[str, float]:
    """Train MODEL on TRAIN; EVALUATE(outputs, targets) gives summable counts whose names
    end in ``_sum`` plus ``n`` (summed over ranks, then divided by n), or any summable
    counts (numbers or tensors) that SUMMARIZE turns into metrics. Returns the best
    validation metrics (MONITOR, higher is better).

    Batches are ``(inputs, targets)`` as COLLATE (the DataLoader's ``collate_fn``; default:
    torch's) makes them; either may be a tensor or a tuple, list or dict of tensors."""
    import torch
    from torch.utils.data import DataLoader

    seed_everything(config.seed + ctx.rank)
    model = model.to(ctx.device)
    net = model
    if ctx.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train) / config.batch_size))
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr,
                                                    total_steps=total)
    step, best = 0, {}
    saved = ctx.restore()
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"][ctx.rank] if ctx.rank < len(saved["rng"]) else
                      saved["rng"][0])
        step, best = int(saved["_step"]), dict(saved.get("best") or {})
        ctx.log(f"resumed at step {step} (epoch {step // steps_per_epoch})")

    def state() -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": gather_rng(ctx), "best": best}
    ctx.keep_state(state)
    every = config.checkpoint_every
    while step < total:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        train.set_epoch(epoch, skip=done_in_epoch * config.batch_size)
        loader = DataLoader(train, batch_size=config.batch_size,
                            num_workers=config.num_workers, collate_fn=collate)
        net.train()
        started, seen = time.perf_counter(), 0
        for inputs, targets in loader:
            inputs, targets = to_device(inputs, ctx.device), to_device(targets, ctx.device)
            if augment is not None:
                inputs = augment(inputs)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(inputs), targets)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            seen += batch_length(inputs) * ctx.world_size
            elapsed = time.perf_counter() - started
            ctx.report(step, epoch=step / steps_per_epoch, loss=loss.item(),
                       lr=scheduler.get_last_lr()[0],
                       samples_per_s=seen / elapsed if elapsed > 0 else 0.0)
            if every and step % every == 0 and step % steps_per_epoch:
                ctx.checkpoint(state(), step=step, epoch=step / steps_per_epoch)
            if step >= total or step % steps_per_epoch == 0:
                break
        if val is not None:
            scores = evaluate_split(ctx, net, val, evaluate, config.batch_size, prefix="val",
                                    collate=collate, summarize=summarize)
            ctx.report(step, epoch=step / steps_per_epoch, **scores)
            if monitor in scores and scores[monitor] >= best.get(monitor, -math.inf):
                best = scores
        ctx.checkpoint(state(), step=step, epoch=step / steps_per_epoch,
                       metric=best.get(monitor))
    ctx.flush()
    return best


def evaluate_split(ctx: TrainContext, net, split: RecordStream, evaluate: Callable,
                   batch_size: int, prefix: str, *, collate: Callable | None = None,
                   summarize: Callable[[dict], dict[str, float]] | None = None
                   ) -> dict[str, float]:
    """Metrics over a split, summed across ranks (each rank evaluates its share).

    EVALUATE's counts may be numbers or tensors (histograms, confusion matrices); they
    are summed over batches and ranks, then SUMMARIZE(sums) gives the metrics (default:
    each ``*_sum`` divided by ``n``). Every key is prefixed with PREFIX."""
    import torch
    from torch.utils.data import DataLoader

    net.eval()
    sums: dict[str, Any] = {}
    with torch.no_grad():
        for inputs, targets in DataLoader(split, batch_size=batch_size, collate_fn=collate):
            counts = evaluate(net(to_device(inputs, ctx.device)), to_device(targets, ctx.device))
            for key, value in counts.items():
                value = torch.as_tensor(value).detach().to("cpu", torch.float64)
                sums[key] = sums[key] + value if key in sums else value
    if ctx.world_size > 1:
        sums = _sum_over_ranks(sums, ctx.device)
    net.train()
    plain = {k: float(v) if v.dim() == 0 else v for k, v in sums.items()}
    if summarize is not None:
        return {f"{prefix}_{k}": float(v) for k, v in summarize(plain).items()}
    n = plain.get("n", 0.0) or 1.0
    return {f"{prefix}_{k.removesuffix('_sum')}": v / n for k, v in plain.items()
            if k.endswith("_sum")}


def _sum_over_ranks(sums: dict[str, Any], device: Any) -> dict[str, Any]:
    """SUMS added up over every rank. The ranks first agree on the keys and shapes (a rank
    whose share was empty has none), then one all_reduce sums them all."""
    import torch
    import torch.distributed as dist

    shapes: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(shapes, {k: list(v.shape) for k, v in sums.items()})
    agreed: dict[str, list[int]] = {}
    for theirs in shapes:
        agreed.update(theirs)
    keys = sorted(agreed)
    if not keys:
        return {}
    flat = torch.cat([sums[k].reshape(-1) if k in sums else
                      torch.zeros(math.prod(agreed[k]), dtype=torch.float64) for k in keys])
    flat = flat.to(device if dist.get_backend() == "nccl" else "cpu")  # NCCL: CUDA only
    dist.all_reduce(flat)
    flat = flat.cpu()
    out, at = {}, 0
    for key in keys:
        size = math.prod(agreed[key])
        out[key] = flat[at:at + size].reshape(agreed[key])
        at += size
    return out


def to_device(batch: Any, device: Any) -> Any:
    """BATCH (a tensor, or a tuple, list or dict of them) on DEVICE."""
    if hasattr(batch, "to"):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def batch_length(batch: Any) -> int:
    """Samples in BATCH (its first tensor's first dimension)."""
    if isinstance(batch, dict):
        return batch_length(next(iter(batch.values())))
    if isinstance(batch, tuple | list):
        return batch_length(batch[0])
    return len(batch)


def gather_rng(ctx: TrainContext) -> list[dict]:
    """Every rank's RNG state (rank order), so each resumes its own stream."""
    if ctx.world_size == 1:
        return [rng_state()]
    import torch.distributed as dist

    states: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(states, rng_state())
    return states
