"""One rank's share of a split, as a torch IterableDataset.

Each rank streams its share from the materialized folder, never holding the set in
memory. For training, every rank yields exactly the same number of samples (the last ones
repeat, as torch's DistributedSampler pads), so no rank waits in a collective for one that
ran out; the order is shuffled through a bounded buffer with a seed per epoch, so a resumed
epoch replays the same order and can skip what was done.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from loophub.training.data import MaterializedVersion, share


class RecordStream(IterableDataset):
    """One rank's share of a split, streamed: a torch IterableDataset of records (or of
    ``transform(record, version)``). Works with DataLoader worker processes too (each
    takes every n-th of the rank's samples)."""

    def __init__(self, version: MaterializedVersion, split: str | None, *, rank: int = 0,
                 world_size: int = 1, shuffle: bool = False, seed: int = 0,
                 buffer: int = 1024, transform=None, pad: bool = True) -> None:
        self.version, self.split = version, split
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.buffer = shuffle, seed, buffer
        self.transform = transform
        self.pad = pad  # equal shares for training; evaluation counts each record once
        self.epoch = 0
        self.skip = 0  # samples of this epoch already done (resume mid-epoch)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        total = self.version.count(self.split)
        if not self.pad:
            return len(range(self.rank, total, self.world_size))
        return share(total, self.world_size)

    def _mine(self) -> Iterator[dict]:
        """This rank's records in order: every world_size-th, wrapping to pad."""
        wanted = len(self)
        yielded = 0
        while yielded < wanted:
            for index, record in enumerate(self.version.records(self.split)):
                if index % self.world_size == self.rank:
                    yield record
                    yielded += 1
                    if yielded == wanted:
                        return
            if yielded == 0:
                return

    def _ordered(self) -> Iterator[dict]:
        stream = self._mine()
        if not self.shuffle:
            yield from stream
            return
        rng = random.Random(f"{self.seed}:{self.epoch}:{self.rank}")
        pool: list[dict] = []
        for record in stream:
            pool.append(record)
            if len(pool) >= self.buffer:
                yield pool.pop(rng.randrange(len(pool)))
        rng.shuffle(pool)
        yield from pool

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        for index, record in enumerate(self._ordered()):
            if index < self.skip or index % workers != worker:
                continue
            yield self.transform(record, self.version) if self.transform else record
