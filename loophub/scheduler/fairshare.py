"""Weighted fair shares over the tenants present: shared by the simulator's metrics and by
balanced-drf (which serves first the tenants below their share, see docs/scheduler.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from loophub.scheduler.state import SchedulerState


def water_fill(weights: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Weight-proportional shares of 1, none above its cap, excess given to the others."""
    fair = np.zeros_like(weights)
    open_ = np.ones(len(weights), dtype=bool)
    left = 1.0
    while open_.any() and left > 1e-12:
        level = left / weights[open_].sum()
        want = weights * level
        capped = open_ & (caps - fair <= want + 1e-15)
        if not capped.any():
            fair[open_] += want[open_]
            break
        left -= float((caps[capped] - fair[capped]).sum())
        fair[capped] = caps[capped]
        open_ &= ~capped
    return fair


def dominant_and_fair_shares(st: SchedulerState, tenants: Sequence[str]
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Per tenant: its dominant share now, and its weighted fair share (water-filled over
    ``tenants``, none above what it holds plus what it has queued)."""
    cap = np.where(st.total_cap > 0, st.total_cap, np.inf)
    zero = np.zeros(len(st.keys))
    held = np.array([st.held.get(t, zero) for t in tenants])
    queued = np.array([st.queued_demand.get(t, zero) for t in tenants])
    dom = (held / cap).max(axis=1)
    demand = np.minimum(1.0, ((held + queued) / cap).max(axis=1))
    weights = np.array([st.tenant_weight(t) for t in tenants])
    return dom, water_fill(weights, demand)


def under_share_tenants(st: SchedulerState) -> list[str]:
    """Waiting tenants whose dominant share is below their weighted fair share."""
    waiting = st.tenants_waiting()
    if not waiting:
        return []
    tenants = sorted(st.active_tenants())
    dom, fair = dominant_and_fair_shares(st, tenants)
    below = {t for t, d, f in zip(tenants, dom.tolist(), fair.tolist(), strict=True)
             if d < f - 1e-9}
    return [t for t in waiting if t in below]
