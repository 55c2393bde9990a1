"""Defaults the shipped jupyterhub_config.py derives from the pool and the home."""

from __future__ import annotations

import secrets
from pathlib import Path

from loophub.pool import GIB, NodeSpec


def secret_token(path: Path) -> str:
    """A token kept in the home's secrets folder, created once (mode 600)."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def default_profiles(nodes: list[NodeSpec]) -> list[dict]:
    """Small and medium CPU servers, and a 1-GPU server when the pool has GPUs."""
    biggest = max(nodes, key=lambda n: (n.gpu, n.cpu, n.mem))
    profiles = [
        {"slug": "small", "display_name": "Small", "cpu": min(0.5, biggest.cpu),
         "mem": min(2 * GIB, biggest.mem // 2), "default": True,
         "description": "exploring data, light notebooks"},
        {"slug": "medium", "display_name": "Medium", "cpu": min(2.0, biggest.cpu),
         "mem": min(8 * GIB, biggest.mem // 2), "description": "training small models on CPU"},
    ]
    if biggest.gpu:
        profiles.append({"slug": "gpu1", "display_name": "1 GPU", "gpu": 1,
                         "cpu": min(4.0, biggest.cpu), "mem": min(16 * GIB, biggest.mem // 2),
                         "gpu_type": biggest.gpu_type, "description": "deep learning"})
    return profiles


def default_custom_limits(nodes: list[NodeSpec]) -> dict:
    """Custom sizes up to the largest node (the scheduler still queues them fairly)."""
    return {"cpu": max(n.cpu for n in nodes), "mem": max(n.mem for n in nodes),
            "gpu": max(n.gpu for n in nodes)}
