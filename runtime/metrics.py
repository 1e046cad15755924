"""Prometheus metrics of one server, in their own registry (so tests can build several servers).

Per request: ``inferstack_requests_total{outcome}`` (success, client_error, rejected, timeout,
error, disconnected: the client left before its answer), ``inferstack_request_failures_total{reason}``,
``inferstack_request_seconds`` (end to end, whatever the outcome)
and ``inferstack_queue_seconds`` (admitted to picked by the batcher). Per ORT run:
``inferstack_compute_seconds`` and ``inferstack_batch_size`` (requests merged) /
``inferstack_batch_rows`` (rows along the batch axis). Gauges read at scrape time:
``inferstack_queue_depth`` (waiting for the batcher) and ``inferstack_inflight_requests``.

The counters and histograms are plain numbers updated without locks and turned into Prometheus
families only when scraped: prometheus_client's own ``Histogram.observe`` (a lock and a walk over
the buckets) cost more than answering a rejected request. Each one is written by one thread at a
time (the event loop, or the onnxruntime worker; the batcher's run metrics move to the event loop
only for a lone request, while the worker is idle), which is what makes that safe.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

OUTCOMES = ("success", "client_error", "rejected", "timeout", "error", "disconnected")
_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Count:
    """A counter; ``inc`` from one thread only."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n


class Histogram:
    """A histogram with fixed upper bounds (``le``); ``observe`` from one thread only."""

    __slots__ = ("name", "help", "bounds", "counts", "sum")

    def __init__(self, name: str, help: str, bounds: tuple[float, ...]) -> None:
        self.name = name
        self.help = help
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self) -> HistogramMetricFamily:
        counts = list(self.counts)  # one snapshot, so the buckets agree with each other
        cumulative: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*[repr(float(b)) for b in self.bounds], "+Inf"), counts, strict=True):
            total += n
            cumulative.append((bound, total))
        return HistogramMetricFamily(self.name, self.help, buckets=cumulative, sum_value=self.sum)


class Metrics:
    def __init__(self, model: str = "") -> None:
        self.outcome = {o: Count() for o in OUTCOMES}
        self._failures: dict[str, Count] = {}
        self.request_seconds = Histogram(
            "inferstack_request_seconds", "Inference request time from parsed to answered, any outcome.",
            _LATENCY_BUCKETS,
        )
        self.queue_seconds = Histogram(
            "inferstack_queue_seconds", "Time a request waited for the batcher.", _LATENCY_BUCKETS
        )
        self.compute_seconds = Histogram(
            "inferstack_compute_seconds", "onnxruntime run time per (merged) batch.", _LATENCY_BUCKETS
        )
        self.batch_size = Histogram(
            "inferstack_batch_size", "Requests merged into one onnxruntime run.", _BATCH_BUCKETS
        )
        self.batch_rows = Histogram(
            "inferstack_batch_rows", "Rows along the batch axis of one onnxruntime run.", _BATCH_BUCKETS
        )
        self._queue_depth: Callable[[], float] = lambda: 0
        self._inflight: Callable[[], float] = lambda: 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def failure(self, reason: str) -> None:
        count = self._failures.get(reason)
        if count is None:
            count = self._failures[reason] = Count()
        count.inc()

    def watch(self, queue_depth: Callable[[], float], inflight: Callable[[], float]) -> None:
        self._queue_depth, self._inflight = queue_depth, inflight

    def families(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("inferstack_requests", "Inference requests by outcome.",
                                       labels=["outcome"])
        for outcome, count in self.outcome.items():
            requests.add_metric([outcome], count.value)
        yield requests
        failures = CounterMetricFamily("inferstack_request_failures", "Failed requests by reason.",
                                       labels=["reason"])
        for reason, count in sorted(self._failures.items()):
            failures.add_metric([reason], count.value)
        yield failures
        for histogram in (self.request_seconds, self.queue_seconds, self.compute_seconds,
                          self.batch_size, self.batch_rows):
            yield histogram.family()
        yield GaugeMetricFamily("inferstack_queue_depth", "Requests waiting for the batcher.",
                                value=self._queue_depth())
        yield GaugeMetricFamily("inferstack_inflight_requests",
                                "Requests admitted to the batcher and not yet answered.",
                                value=self._inflight())

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.families()


class Duration:
    """A count and a total time in nanoseconds (Triton's ``StatisticDuration``)."""

    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, seconds: float, n: int = 1) -> None:
        self.count += n
        self.ns += int(seconds * 1e9) * n

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class ModelStats:
    """One model's statistics in the shape of Triton's statistics extension
    (``ModelStatistics``): ``inference_count`` counts rows along the batch axis of successful
    requests, ``execution_count`` onnxruntime runs (several requests merged into one run count once),
    ``inference_stats`` per request (success and fail: end to end; queue: admitted to picked by
    the batcher; compute_input: merging the inputs; compute_infer: the onnxruntime run;
    compute_output: splitting the outputs; a merged run's times count once for each of its
    requests), ``batch_stats`` per run size in rows. ``last_inference`` is milliseconds since the
    epoch (0: none yet).

    Writers: success and fail on the event loop; everything else in the batcher's worker thread
    (one writer each, plain numbers, read at request time like :class:`Metrics`)."""

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference = 0
        #: rows of a run -> (compute_input, compute_infer, compute_output) per run of that size
        self.batches: dict[int, tuple[Duration, Duration, Duration]] = {}

    def executed(self, requests: int, rows: int, input_s: float, infer_s: float, output_s: float,
                 now_s: float) -> None:
        """One successful onnxruntime run of ``requests`` requests with ``rows`` rows in all."""
        self.execution_count += 1
        self.inference_count += rows
        self.last_inference = int(now_s * 1000)
        self.compute_input.add(input_s, requests)
        self.compute_infer.add(infer_s, requests)
        self.compute_output.add(output_s, requests)
        batch = self.batches.get(rows)
        if batch is None:
            batch = self.batches[rows] = (Duration(), Duration(), Duration())
        batch[0].add(input_s)
        batch[1].add(infer_s)
        batch[2].add(output_s)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
            },
            "batch_stats": [
                {"batch_size": rows, "compute_input": b[0].as_dict(), "compute_infer": b[1].as_dict(),
                 "compute_output": b[2].as_dict()}
                for rows, b in sorted(dict(self.batches).items())
            ],
        }
