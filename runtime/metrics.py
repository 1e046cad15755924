"""Prometheus metrics of one server, in their own registry (so tests can build several servers).

Per request: ``inferstack_requests_total{outcome}`` (success, client_error, rejected, timeout,
error, disconnected: the client left before its answer), ``inferstack_request_failures_total{reason}``,
``inferstack_request_seconds`` (end to end, whatever the outcome)
and ``inferstack_queue_seconds`` (admitted to picked by the batcher). Per ORT run:
``inferstack_compute_seconds`` and ``inferstack_batch_size`` (requests merged) /
``inferstack_batch_rows`` (rows along the batch axis). Gauges read at scrape time:
``inferstack_queue_depth`` (waiting for the batcher) and ``inferstack_inflight_requests``.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

OUTCOMES = ("success", "client_error", "rejected", "timeout", "error", "disconnected")
_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, model: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        requests = Counter("inferstack_requests", "Inference requests by outcome.", ["outcome"], registry=r)
        self.outcome = {o: requests.labels(o) for o in OUTCOMES}
        self._failures = Counter(
            "inferstack_request_failures", "Failed requests by reason.", ["reason"], registry=r
        )
        self.request_seconds = Histogram(
            "inferstack_request_seconds", "Inference request time from parsed to answered, any outcome.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.queue_seconds = Histogram(
            "inferstack_queue_seconds", "Time a request waited for the batcher.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.compute_seconds = Histogram(
            "inferstack_compute_seconds", "onnxruntime run time per (merged) batch.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "inferstack_batch_size", "Requests merged into one onnxruntime run.",
            buckets=_BATCH_BUCKETS, registry=r,
        )
        self.batch_rows = Histogram(
            "inferstack_batch_rows", "Rows along the batch axis of one onnxruntime run.",
            buckets=_BATCH_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge("inferstack_queue_depth", "Requests waiting for the batcher.", registry=r)
        self.inflight = Gauge(
            "inferstack_inflight_requests", "Requests admitted to the batcher and not yet answered.",
            registry=r,
        )
        self._failure_children: dict[str, Counter] = {}

    def failure(self, reason: str) -> None:
        child = self._failure_children.get(reason)
        if child is None:
            child = self._failure_children[reason] = self._failures.labels(reason)
        child.inc()

    def watch(self, queue_depth: Callable[[], float], inflight: Callable[[], float]) -> None:
        self.queue_depth.set_function(queue_depth)
        self.inflight.set_function(inflight)

    def render(self) -> bytes:
        return generate_latest(self.registry)
