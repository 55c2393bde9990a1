"""The replica's Prometheus metrics, in a CollectorRegistry of its own (nothing global,
so two servers in one process, e.g. in tests, never mix).

Names (BentoML's defaults, with the model's labels on an info metric rather than on
every series, so a scrape stays small):

- ``loophub_model_requests_total{route, status}``      counter
- ``loophub_model_request_duration_seconds{route}``    histogram, sub-millisecond buckets
- ``loophub_model_requests_in_flight``                 gauge (predict requests)
- ``loophub_model_batch_size``                         histogram (instances per pass)
- ``loophub_model_predictions_total{label}``           counter (classes predicted; every
  box of a detector and every span of a tagger counts)
- ``loophub_model_info{model, version, alias, task}``  gauge, always 1

Label children are bound once and cached: a request costs a dict lookup and an
observation (about a microsecond each), not prometheus_client's label resolution.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.0075,
                   0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """The counters of one replica. ENABLED False: every method is a no-op (the
    benchmark's "metrics off")."""

    def __init__(self, *, labels: list[str], info: dict[str, str],
                 enabled: bool = True) -> None:
        self.enabled = enabled
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("loophub_model_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("loophub_model_request_duration_seconds",
                                 "Time from request to response, by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("loophub_model_requests_in_flight",
                               "Predict requests received and not yet answered",
                               registry=self.registry)
        self.batch_size = Histogram("loophub_model_batch_size",
                                    "Instances in one forward pass", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.predictions = Counter("loophub_model_predictions",
                                   "Predicted classes (each box or span counts)", ["label"],
                                   registry=self.registry)
        Gauge("loophub_model_info", "The model version this replica serves",
              list(info), registry=self.registry).labels(**info).set(1)
        self._labels = {label: self.predictions.labels(label) for label in labels}
        self._requests: dict[tuple[str, int], Any] = {}
        self._latency: dict[str, Any] = {}

    def request(self, route: str, status: int, seconds: float) -> None:
        if not self.enabled:
            return
        key = (route, status)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.requests.labels(route, str(status))
        counter.inc()
        histogram = self._latency.get(route)
        if histogram is None:
            histogram = self._latency[route] = self.latency.labels(route)
        histogram.observe(seconds)

    def enter(self) -> None:
        if self.enabled:
            self.in_flight.inc()

    def leave(self) -> None:
        if self.enabled:
            self.in_flight.dec()

    def batch(self, instances: int) -> None:
        if self.enabled:
            self.batch_size.observe(instances)

    def predicted(self, predictions: list[dict]) -> None:
        """Count the classes in PREDICTIONS (the Predictor's dicts)."""
        if not self.enabled:
            return
        for prediction in predictions:
            if "label" in prediction:
                self._count(prediction["label"])
            for found in prediction.get("boxes") or prediction.get("spans") or ():
                self._count(found["label"])

    def _count(self, label: str) -> None:
        counter = self._labels.get(label)
        if counter is not None:  # the model's own labels only: the set stays bounded
            counter.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
