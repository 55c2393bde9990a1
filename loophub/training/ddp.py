"""The DDP bootstrap (dask-pytorch-ddp is dead since 2021): one process group per job.

Rank 0's host gives a free port; every rank joins with a timeout (a rank that never comes
fails the job instead of hanging it); gloo on CPU, nccl when the ranks have GPUs; the
group is destroyed whatever happens.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

INIT_TIMEOUT = 120.0  # seconds every rank has to join


def free_port(host: str = "") -> int:
    """A port free on this host now (asked on rank 0's host, for the job's rendezvous)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def host_address() -> str:
    """The address other ranks reach this host by."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("10.255.255.255", 1))  # no packet is sent
            return sock.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def choose_backend(gpus: bool) -> str:
    """nccl when this rank has GPUs (and torch was built with it), gloo otherwise."""
    import torch.distributed as dist

    return "nccl" if gpus and dist.is_nccl_available() else "gloo"


@contextmanager
def process_group(rank: int, world_size: int, master_addr: str, master_port: int, *,
                  gpus: bool = False, timeout: float = INIT_TIMEOUT) -> Iterator[str]:
    """Join the job's process group; yields the backend. Always destroyed on exit."""
    import torch.distributed as dist

    backend = choose_backend(gpus)
    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port),
                      RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group(backend, init_method=f"tcp://{master_addr}:{master_port}",
                            rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout))
    try:
        yield backend
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
