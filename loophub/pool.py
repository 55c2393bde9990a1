"""The resource pool: which nodes exist and what each can give.

The local machine is detected (cores the process may use, memory under any cgroup
limit, NVIDIA GPUs through nvidia-smi); an admin can declare the pool instead
(``LOOPHUB_POOL``: JSON, inline or a file path), which is also how tests exercise
GPU allocation on a machine without GPUs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

GIB = 1024**3


class PoolConfigError(ValueError):
    """The declared pool is malformed; the message says where and how to fix it."""


@dataclass(frozen=True)
class NodeSpec:
    """One node's capacity. cpu in cores, mem in bytes, gpu in devices."""

    name: str
    cpu: float
    mem: int
    gpu: int = 0
    gpu_type: str | None = None
    backend: str = "local"

    def to_dict(self) -> dict:
        return asdict(self)


def _cgroup_cpu_limit() -> float | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def detect_cpus() -> float:
    cores = float(len(os.sched_getaffinity(0)))
    limit = _cgroup_cpu_limit()
    return min(cores, limit) if limit else cores


def detect_memory() -> int:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return total if limit == "max" else min(total, int(limit))


def detect_gpus() -> tuple[int, str | None]:
    """Count NVIDIA GPUs without importing torch (slow, and not needed to count)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0, None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0, None
    names = [line.strip() for line in out.splitlines() if line.strip()]
    return len(names), (names[0] if names else None)


def detect_local_node() -> NodeSpec:
    gpus, gpu_type = detect_gpus()
    return NodeSpec(
        name=socket.gethostname(), cpu=detect_cpus(), mem=detect_memory(),
        gpu=gpus, gpu_type=gpu_type,
    )


def readable_bytes(value: int | float) -> str:
    """A byte count as a person reads it: 1024-based units, one decimal at most
    ("23.5 GiB", "16 GiB", "512 B")."""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            break
        size /= 1024
    text = f"{size:.1f}".removesuffix(".0")
    return f"{text} {unit}"


def parse_mem(value: object, where: str) -> int:
    """Memory as bytes (int) or a string with a unit: '16G', '512M', '2GiB'."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        text = value.strip().upper().removesuffix("IB").removesuffix("B")
        units = {"K": 1024, "M": 1024**2, "G": GIB, "T": 1024**4}
        try:
            if text and text[-1] in units:
                return int(float(text[:-1]) * units[text[-1]])
            return int(float(text))
        except ValueError:
            pass
    raise PoolConfigError(f"{where}.mem: {value!r} is not a memory size; use bytes or e.g. '16G'")


_GPU_TYPE = re.compile(r"^[A-Za-z0-9_.-]{1,40}(\|[A-Za-z0-9_.-]{1,40})*$")


def check_gpu_type(gpu_type: object, where: str) -> str | None:
    """None, or a GPU type name; 'a100|h100' accepts either."""
    if gpu_type is None:
        return None
    if not isinstance(gpu_type, str) or not _GPU_TYPE.match(gpu_type):
        raise PoolConfigError(f"{where}.gpu_type: {gpu_type!r} is not a GPU type name "
                              "(letters, digits, '.', '_', '-'; alternatives with '|')")
    return gpu_type


def check_cpu_gpu(cpu: object, gpu: object, where: str) -> tuple[float, int]:
    """A positive number of cores and a whole number of GPUs, or a message saying where."""
    if not isinstance(cpu, int | float) or isinstance(cpu, bool) or cpu <= 0:
        raise PoolConfigError(f"{where}.cpu: must be a positive number of cores, got {cpu!r}")
    if not isinstance(gpu, int) or isinstance(gpu, bool) or gpu < 0:
        raise PoolConfigError(f"{where}.gpu: must be a whole number >= 0, got {gpu!r}")
    return float(cpu), gpu


def parse_pool(declared: object, source: str = "LOOPHUB_POOL") -> list[NodeSpec]:
    """Validate a declared pool: a list of {name, cpu, mem, gpu?, gpu_type?, backend?}."""
    if isinstance(declared, dict):
        declared = declared.get("nodes", [declared])
    if not isinstance(declared, list) or not declared:
        raise PoolConfigError(f"{source}: expected a non-empty list of nodes")
    nodes, seen = [], set()
    for i, raw in enumerate(declared):
        where = f"{source}[{i}]"
        if not isinstance(raw, dict):
            raise PoolConfigError(f"{where}: expected an object with name, cpu, mem")
        unknown = set(raw) - {"name", "cpu", "mem", "gpu", "gpu_type", "backend"}
        if unknown:
            raise PoolConfigError(f"{where}: unknown keys {sorted(unknown)}")
        name = raw.get("name") or f"node{i}"
        if name in seen:
            raise PoolConfigError(f"{where}.name: duplicate node name {name!r}")
        seen.add(name)
        cpu, gpu = check_cpu_gpu(raw.get("cpu"), raw.get("gpu", 0), where)
        mem = parse_mem(raw.get("mem"), where)
        if mem <= 0:
            raise PoolConfigError(f"{where}.mem: must be positive")
        nodes.append(NodeSpec(name=name, cpu=cpu, mem=mem, gpu=gpu,
                              gpu_type=raw.get("gpu_type"), backend=raw.get("backend", "local")))
    return nodes


def load_pool(declared: str | None = None) -> list[NodeSpec]:
    """The pool from ``declared`` (JSON text or a path to a JSON file), else the local node."""
    declared = declared if declared is not None else os.environ.get("LOOPHUB_POOL")
    if not declared:
        return [detect_local_node()]
    text, source = declared, "LOOPHUB_POOL"
    if not declared.lstrip().startswith(("[", "{")):
        path = Path(declared).expanduser()
        try:
            text, source = path.read_text(), str(path)
        except OSError as exc:
            raise PoolConfigError(f"LOOPHUB_POOL: cannot read pool file {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PoolConfigError(f"{source}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    return parse_pool(data, source)
