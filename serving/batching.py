"""Inference off the event loop, one forward pass at a time, with optional adaptive
batching.

The server's event loop only parses, checks and answers; the model runs on a single
inference thread (torch releases the GIL in its kernels, so the loop keeps answering
/health and reading the next requests meanwhile). ``Direct`` hands each request to that
thread on its own. ``Batcher`` queues requests and one worker drains the queue: whatever
arrived while the previous pass ran goes into the next pass together (up to
``max_batch_size`` instances), and each request gets exactly its own predictions back.

Adaptive waiting: a batch smaller than the recent typical batch (a moving average of
batch sizes) waits up to ``max_wait_ms`` after its first request arrived for the others
it expects. A lone client (typical batch 1) never waits; under load the batches fill.
That is what BentoML's adaptive batching and Ray Serve's ``batch_wait_timeout_s`` trade
off, without making a single caller pay the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from loophub.errors import LoophubError

# run(jobs) -> one result per job: its predictions, or the LoophubError that is its alone
RunBatch = Callable[[Sequence[Any]], Sequence[Any]]
EWMA_WEIGHT = 0.2  # weight of the newest batch in the typical batch size


@dataclass
class Job:
    instances: Any
    count: int
    arrived: float
    future: asyncio.Future = field(repr=False)


def _settle(job: Job, result: Any) -> None:
    if job.future.done():
        return
    if isinstance(result, BaseException):
        job.future.set_exception(result)
    else:
        job.future.set_result(result)


class Direct:
    """No batching: each request is its own pass on the inference thread."""

    def __init__(self, run: RunBatch, executor: Executor,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.run = run
        self.executor = executor
        self.on_batch = on_batch

    def start(self) -> None:
        """Nothing to start: kept so the server treats both modes alike."""

    async def stop(self) -> None:
        """Nothing to stop."""

    async def submit(self, instances: Sequence[Any]) -> Any:
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self.executor, self.run, [instances])
        if self.on_batch is not None and not isinstance(results[0], LoophubError):
            self.on_batch(len(instances))
        if isinstance(results[0], LoophubError):
            raise results[0]
        return results[0]


class Batcher:
    """Adaptive batching: concurrent requests' instances grouped into one pass."""

    def __init__(self, run: RunBatch, executor: Executor, *, max_batch_size: int = 32,
                 max_wait_ms: float = 5.0,
                 on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be at least 0, got {max_wait_ms}")
        self.run = run
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.on_batch = on_batch
        self.typical = 1.0  # moving average of instances per pass
        self._queue: deque[Job] = deque()
        self._arrival = asyncio.Event()
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        """End the worker (after the server has drained: nothing is queued then)."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def submit(self, instances: Sequence[Any]) -> Any:
        """INSTANCES' predictions, from the next pass that has room for them."""
        loop = asyncio.get_running_loop()
        job = Job(instances, len(instances), loop.time(), loop.create_future())
        self._queue.append(job)
        self._arrival.set()
        return await job.future

    # -- the worker ---------------------------------------------------------------------

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._arrival.clear()
                await self._arrival.wait()
            batch, total = self._take([], 0)
            batch, total = await self._fill(batch, total)
            self.typical += EWMA_WEIGHT * (total - self.typical)
            try:
                results = await loop.run_in_executor(
                    self.executor, self.run, [job.instances for job in batch])
            except Exception as exc:  # the model failed: every request of the pass hears
                for job in batch:
                    _settle(job, exc)
                continue
            # the instances that went through the model (a request whose input could
            # not be read never reached it)
            passed = sum(job.count for job, result in zip(batch, results, strict=True)
                         if not isinstance(result, BaseException))
            if self.on_batch is not None and passed:
                self.on_batch(passed)
            for job, result in zip(batch, results, strict=True):
                _settle(job, result)

    def _take(self, batch: list[Job], total: int) -> tuple[list[Job], int]:
        """Queued jobs moved into BATCH while they fit (the first always does: a request
        larger than max_batch_size is a pass of its own)."""
        while self._queue and (not batch or total + self._queue[0].count
                               <= self.max_batch_size):
            job = self._queue.popleft()
            batch.append(job)
            total += job.count
        return batch, total

    async def _fill(self, batch: list[Job], total: int) -> tuple[list[Job], int]:
        """Wait (up to max_wait after the first request arrived) for the requests a
        batch this small expects, as long as they fit."""
        loop = asyncio.get_running_loop()
        deadline = batch[0].arrived + self.max_wait
        while (total < self.max_batch_size and total < self.typical - 0.5
               and not self._queue):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), remaining)
            except TimeoutError:
                break
            before = total
            batch, total = self._take(batch, total)
            if total == before:  # the next request does not fit: go with what we have
                break
        return batch, total
