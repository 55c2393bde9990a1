"""What a rank's training code gets: ``TrainContext``.

Recipes and the analyst's own functions receive one::

    def train(ctx):
        model = ...
        state = ctx.restore()                       # the last checkpoint, after a preemption
        for step, batch in enumerate(DataLoader(ctx.data("train"), batch_size=64)):
            ...
            ctx.report(step, loss=loss.item())      # curves; also where a stop is noticed
            if step % 100 == 0:
                ctx.checkpoint({"model": model.state_dict(), ...}, step=step)
        ctx.save_model(model, example, preprocess={...})

Every rank calls ``report`` at the same steps; rank 0 sends the metrics. A stop (the
scheduler preempts the job, its owner cancels it) is decided on rank 0 and broadcast, so
every rank stops at the same step: the context saves the state the code keeps current
(``keep_state``), then raises ``Preempted``. Where things go (the platform's API, or a
folder for plain runs and tests) is a ``Channel``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from loophub.training.data import MaterializedVersion
from loophub.training.streams import RecordStream

log = logging.getLogger("loophub.training")
STOP_CHECK_EVERY = 10     # steps between the ranks' agreement on stopping
FLUSH_EVERY = 1.0         # seconds between metric sends from rank 0


class Preempted(Exception):
    """The job must stop now (preempted, or cancelled); its state was checkpointed."""

    def __init__(self, reason: str, step: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.step = reason, step


class Channel(Protocol):
    """Where a rank's reports, checkpoints and model go, and where a stop comes from."""

    def metrics(self, rows: list[dict]) -> None: ...

    def log(self, rank: int, lines: list[str]) -> None: ...

    def put_checkpoint(self, data: bytes, step: int, epoch: float | None,
                       metric: float | None) -> str: ...

    def latest_checkpoint(self) -> bytes | None: ...

    def put_artifact(self, data: bytes, meta: dict) -> str: ...

    def model_artifact(self, ref: str) -> tuple[bytes, dict]: ...

    def stop_requested(self) -> str | None: ...


class FolderChannel:
    """A channel to a local folder: plain runs, benchmarks against plain torch, tests."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stop: str | None = None
        self.rows: list[dict] = []

    def metrics(self, rows: list[dict]) -> None:
        self.rows.extend(rows)

    def log(self, rank: int, lines: list[str]) -> None:
        with open(self.folder / "log.txt", "a") as out:
            out.writelines(f"[{rank}] {line}\n" for line in lines)

    def put_checkpoint(self, data: bytes, step: int, epoch: float | None,
                       metric: float | None) -> str:
        (self.folder / f"checkpoint-{step:012d}.pt").write_bytes(data)
        return f"checkpoint-{step}"

    def latest_checkpoint(self) -> bytes | None:
        found = sorted(self.folder.glob("checkpoint-*.pt"))
        return found[-1].read_bytes() if found else None

    def put_artifact(self, data: bytes, meta: dict) -> str:
        (self.folder / "model.pt").write_bytes(data)
        (self.folder / "model.json").write_text(json.dumps(meta))
        return "model"

    def model_artifact(self, ref: str) -> tuple[bytes, dict]:
        """REF is the folder of an earlier plain run (its model.pt and model.json)."""
        folder = Path(ref)
        if not (folder / "model.pt").is_file():
            raise FileNotFoundError(f"init_from: {folder} holds no model.pt; a plain run "
                                    "starts from the folder of an earlier plain run")
        return ((folder / "model.pt").read_bytes(),
                json.loads((folder / "model.json").read_text()))

    def stop_requested(self) -> str | None:
        return self.stop


class TrainContext:
    def __init__(self, *, version: MaterializedVersion, channel: Channel, rank: int = 0,
                 world_size: int = 1, device: Any = "cpu", params: dict | None = None,
                 seed: int = 0, checkpoint_every: int | None = None,
                 job_id: str = "") -> None:
        self.version, self.channel = version, channel
        self.rank, self.world_size = rank, world_size
        self.device = device
        self.params = dict(params or {})
        self.seed = seed
        self.checkpoint_every = checkpoint_every
        self.job_id = job_id
        self._rows: list[dict] = []
        self._lines: list[str] = []
        self._sent_at = 0.0
        self._keep: Callable[[], dict] | None = None
        self._last_step: int | None = None
        self.artifact: str | None = None
        self.final_metrics: dict[str, float] = {}

    # -- who and what -------------------------------------------------------------------

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def task(self) -> str:
        return self.version.task

    @property
    def label_names(self) -> list[str]:
        return self.version.label_names

    @property
    def label_schema(self) -> dict:
        return self.version.label_schema

    @property
    def splits(self) -> list[str]:
        return self.version.splits()

    def data(self, split: str | None, *, shuffle: bool | None = None, transform=None,
             buffer: int = 1024, pad: bool | None = None) -> RecordStream:
        """This rank's share of SPLIT (None: every record), streamed. The train split is
        shuffled and padded to equal shares (ranks step together); others are not."""
        training = split == "train"
        return RecordStream(self.version, split, rank=self.rank, world_size=self.world_size,
                            shuffle=training if shuffle is None else shuffle,
                            seed=self.seed, buffer=buffer, transform=transform,
                            pad=training if pad is None else pad)

    # -- reporting and stopping -----------------------------------------------------------

    def report(self, step: int, epoch: float | None = None, **metrics: float) -> None:
        """Record metrics at STEP (sent by rank 0). Every rank calls it at the same steps:
        it is where a stop is agreed on, so it may raise Preempted."""
        self._last_step = step
        if self.is_main and metrics:
            self._rows += [{"step": int(step), "epoch": epoch, "name": k, "value": float(v)}
                           for k, v in metrics.items()]
            if time.monotonic() - self._sent_at >= FLUSH_EVERY:
                self.flush()
        if step % STOP_CHECK_EVERY == 0:
            self._check_stop(step)

    def final(self, **metrics: float) -> None:
        """The job's final metrics (test accuracy, ...), kept with its result."""
        self.final_metrics.update({k: float(v) for k, v in metrics.items()})

    def log(self, message: str) -> None:
        self._lines.append(message)
        if len(self._lines) >= 50:
            self.flush()

    def flush(self) -> None:
        self._sent_at = time.monotonic()
        if self._rows:
            rows, self._rows = self._rows, []
            self.channel.metrics(rows)
        if self._lines:
            lines, self._lines = self._lines, []
            self.channel.log(self.rank, lines)

    def keep_state(self, state: Callable[[], dict]) -> None:
        """How to get the state to checkpoint when the job must stop (preemption)."""
        self._keep = state

    def _check_stop(self, step: int) -> None:
        reason = self.channel.stop_requested() if self.is_main else None
        if self.world_size > 1:
            reason = self._agree(reason)
        if reason:
            if self._keep is not None and reason == "preempted":
                self.checkpoint(self._keep(), step=step)
            self.flush()
            raise Preempted(reason, step)

    def _agree(self, reason: str | None) -> str | None:
        """Rank 0's decision, on every rank (a broadcast all ranks take part in)."""
        import torch
        import torch.distributed as dist

        codes = {None: 0, "preempted": 1, "cancelled": 2}
        flag = torch.tensor([codes.get(reason, 2)], dtype=torch.int64)
        dist.broadcast(flag, src=0)
        return {0: None, 1: "preempted", 2: "cancelled"}[int(flag.item())]

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoint(self, state: dict, *, step: int, epoch: float | None = None,
                   metric: float | None = None) -> None:
        """Save STATE (model, optimizer, scheduler, RNG states, step, epoch: anything
        torch.save takes) as the job's checkpoint at STEP; rank 0 writes, all wait."""
        if self.is_main:
            import torch

            self.flush()  # the curve up to here is kept with the state that resumes it
            buffer = io.BytesIO()
            torch.save({**state, "_step": step, "_epoch": epoch}, buffer)
            self.channel.put_checkpoint(buffer.getvalue(), step, epoch, metric)
        self.barrier()

    def restore(self) -> dict | None:
        """The last checkpoint's state (None on a first start)."""
        data = self.channel.latest_checkpoint()
        if data is None:
            return None
        import torch

        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)

    def initial_model(self, ref: str) -> tuple[Any, dict]:
        """The model version REF (pinned to NAME@vN when the job was accepted) to start
        from instead of random weights: its TorchScript module (torch.jit.load, no pickle)
        and its meta (labels, preprocess, recipe). Every rank reads it, so all start alike."""
        import torch

        data, meta = self.channel.model_artifact(ref)
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        self.log(f"starting from the weights of {ref}")
        return module, meta

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    # -- the result --------------------------------------------------------------------------

    def save_model(self, module, example, *, preprocess: dict, labels: list[str] | None = None,
                   extra: dict | None = None) -> str | None:
        """Keep the trained model as a servable artifact: TorchScript (loaded with
        torch.jit.load, no user code, no pickle) plus how to prepare inputs and the label
        names. Rank 0 writes it; returns its id there."""
        if not self.is_main:
            return None
        import torch

        inner = getattr(module, "module", module)  # unwrap DistributedDataParallel
        was_training = inner.training
        inner.eval()
        with torch.no_grad():
            scripted = torch.jit.trace(inner.cpu(), example.cpu())
        inner.train(was_training)
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
        meta = {"format": "torchscript", "task": self.task, "preprocess": preprocess,
                "labels": labels if labels is not None else self.label_names,
                "input_shape": list(example.shape[1:]), "input_dtype": str(example.dtype),
                "torch": torch.__version__, **(extra or {})}
        self.artifact = self.channel.put_artifact(buffer.getvalue(), meta)
        return self.artifact
