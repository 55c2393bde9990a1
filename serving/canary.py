"""The canary guard: is a canary worse than the stable version it runs beside?

Pure. The manager scrapes the replicas' Prometheus metrics (serving/metrics.py) every few
seconds, sums them per side (``side_stats``: predict requests, server errors, the
latency histogram), subtracts what each side had when the canary started, and asks
``verdict``: roll back when the canary's error rate exceeds the stable side's by more
than ``error_margin``, or its p99 latency is more than ``latency_ratio`` times the
stable side's and more than ``latency_floor_ms`` above it, once each side has answered
``min_requests`` predict requests (before that there is nothing to judge). The floor is
there because the p99 of 50 requests is the slowest of them: one stall of a few
milliseconds on a busy host must not roll back a model that answers in 3 ms. KServe's
canary has no such guard: a bad canary serves its share until someone looks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

GUARD_DEFAULTS = {"error_margin": 0.05, "latency_ratio": 3.0, "latency_floor_ms": 50.0,
                  "min_requests": 50}
PREDICT = "predict"


@dataclass
class Stats:
    """Predict requests of one side: how many, how many failed (5xx), their latency
    histogram (upper bound -> cumulative count)."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    def __add__(self, other: Stats) -> Stats:
        keys = set(self.buckets) | set(other.buckets)
        return Stats(self.requests + other.requests, self.errors + other.errors,
                     {k: self.buckets.get(k, 0) + other.buckets.get(k, 0) for k in keys})

    def __sub__(self, other: Stats) -> Stats:
        return Stats(max(0.0, self.requests - other.requests),
                     max(0.0, self.errors - other.errors),
                     {k: max(0.0, v - other.buckets.get(k, 0)) for k, v in self.buckets.items()})

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float:
        """The upper bound of the bucket holding the Q-th request (Prometheus'
        histogram_quantile without its interpolation: an upper estimate)."""
        total = self.buckets.get(math.inf, 0.0)
        if not total:
            return 0.0
        for bound in sorted(self.buckets):
            if self.buckets[bound] >= q * total:
                return bound
        return math.inf


def replica_stats(text: str) -> Stats:
    """One replica's predict figures from its /metrics text."""
    out = Stats()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("route") != PREDICT:
                continue
            if sample.name == "loophub_model_requests_total":
                out.requests += sample.value
                if sample.labels.get("status", "").startswith("5"):
                    out.errors += sample.value
            elif sample.name == "loophub_model_request_duration_seconds_bucket":
                bound = float(sample.labels["le"])
                out.buckets[bound] = out.buckets.get(bound, 0.0) + sample.value
    return out


def side_stats(texts: Iterable[str]) -> Stats:
    total = Stats()
    for text in texts:
        total = total + replica_stats(text)
    return total


def guard_options(raw: dict | None) -> dict[str, float]:
    """The guard's thresholds, defaults filled in."""
    return {**GUARD_DEFAULTS, **(raw or {})}


def verdict(stable: Stats, canary: Stats, guard: dict) -> str | None:
    """Why the canary must be rolled back, or None (fine, or too few requests yet)."""
    least = guard["min_requests"]
    if canary.requests < least or stable.requests < least:
        return None
    if canary.error_rate > stable.error_rate + guard["error_margin"]:
        return (f"the canary's error rate {canary.error_rate:.1%} exceeds the stable "
                f"version's {stable.error_rate:.1%} by more than {guard['error_margin']:.1%}")
    canary_p99, stable_p99 = canary.quantile(0.99), stable.quantile(0.99)
    slower = canary_p99 - stable_p99 > guard["latency_floor_ms"] / 1000
    if stable_p99 and canary_p99 > stable_p99 * guard["latency_ratio"] and slower:
        return (f"the canary's p99 latency {canary_p99 * 1000:.1f} ms is over "
                f"{guard['latency_ratio']:g}x the stable version's {stable_p99 * 1000:.1f} ms "
                f"and {guard['latency_floor_ms']:g} ms above it")
    return None
