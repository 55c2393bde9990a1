"""Deterministic train/val/test splits: by record-id hash, stratified by label."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable

DEFAULT_RATIOS = {"train": 0.8, "val": 0.1, "test": 0.1}


def _rank(record_id: str, seed: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{record_id}".encode()).digest()


def check_ratios(ratios: dict[str, float]) -> None:
    if not ratios or any(r < 0 for r in ratios.values()) or abs(sum(ratios.values()) - 1) > 1e-6:
        raise ValueError(f"split ratios {ratios} must be non-negative and sum to 1")


def assign_splits(items: Iterable[tuple[str, str | None]], ratios: dict[str, float] | None = None,
                  seed: str = "0", stratify: bool = True) -> dict[str, str]:
    """{record id: split} for (record id, stratum label) pairs.

    Within each stratum, records are ordered by sha256(seed, id) and cut at the
    cumulative ratios (largest remainders), so every label is spread like the whole
    and the same ids with the same seed always land in the same split.
    """
    ratios = ratios or DEFAULT_RATIOS
    check_ratios(ratios)
    groups: dict[str | None, list[str]] = defaultdict(list)
    for record_id, label in items:
        groups[label if stratify else None].append(record_id)
    result: dict[str, str] = {}
    for ids in groups.values():
        ids.sort(key=lambda rid: _rank(rid, seed))
        start = 0
        for split, size in zip(ratios, _sizes(len(ids), list(ratios.values())), strict=True):
            for rid in ids[start:start + size]:
                result[rid] = split
            start += size
    return result


def _sizes(total: int, ratios: list[float]) -> list[int]:
    exact = [total * r for r in ratios]
    sizes = [int(x) for x in exact]
    by_remainder = sorted(range(len(ratios)), key=lambda i: exact[i] - sizes[i], reverse=True)
    for i in by_remainder[: total - sum(sizes)]:
        sizes[i] += 1
    return sizes
