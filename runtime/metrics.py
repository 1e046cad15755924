"""Prometheus metrics of one server, in their own registry (so tests can build several servers).
Every inference metric carries the labels ``model`` and ``version`` (the model's name and version;
both empty for requests that named no served model), so several models in one server are told
apart; the names do not change with them (dashboards sum over the labels they do not show).

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

    def add_to(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        """Add this histogram's buckets, sum and count to ``family`` under ``labels``."""
        counts = list(self.counts)  # one snapshot, so the buckets agree with each other
        cumulative: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*[repr(float(b)) for b in self.bounds], "+Inf"), counts, strict=True):
            total += n
            cumulative.append((bound, total))
        family.add_metric(labels, cumulative, self.sum)


#: the labels of every inference metric: the model's name and version ("" for requests that named
#: no served model)
LABELS = ["model", "version"]


class ModelMetrics:
    """One model's inference metrics (labels ``model``, ``version``): the counters and histograms
    of :class:`Metrics` for the requests of that model."""

    def __init__(self, name: str, version: str) -> None:
        self.labels = [name, version]
        self.outcome = {o: Count() for o in OUTCOMES}
        self.failures: dict[str, Count] = {}
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

    def failure(self, reason: str) -> None:
        count = self.failures.get(reason)
        if count is None:
            count = self.failures[reason] = Count()
        count.inc()

    def histograms(self) -> tuple[Histogram, ...]:
        return (self.request_seconds, self.queue_seconds, self.compute_seconds, self.batch_size,
                self.batch_rows)


class Metrics:
    """The server's metrics: one :class:`ModelMetrics` per model (:meth:`model`), exposed together
    with ``model`` and ``version`` labels; the gauges per model too. ``outcome``,
    ``request_seconds``, ..., ``failure`` are those of requests that named no served model."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], ModelMetrics] = {}
        self.none = self.model("", "")
        self._queue_depth: Callable[[], dict[tuple[str, str], float]] = dict
        self._inflight: Callable[[], dict[tuple[str, str], float]] = dict
        #: called before each scrape (the data plane counts what other threads queued)
        self.before_scrape: Callable[[], None] | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def model(self, name: str, version: str) -> ModelMetrics:
        """Model ``name`` ``version``'s metrics (made on first use; kept while the process lives,
        so a model reloaded or unloaded keeps its counts)."""
        key = (name, version)
        found = self._models.get(key)
        if found is None:
            found = self._models[key] = ModelMetrics(name, version)
        return found

    # those of requests that named no served model
    @property
    def outcome(self) -> dict[str, Count]:
        return self.none.outcome

    @property
    def request_seconds(self) -> Histogram:
        return self.none.request_seconds

    @property
    def queue_seconds(self) -> Histogram:
        return self.none.queue_seconds

    @property
    def compute_seconds(self) -> Histogram:
        return self.none.compute_seconds

    @property
    def batch_size(self) -> Histogram:
        return self.none.batch_size

    @property
    def batch_rows(self) -> Histogram:
        return self.none.batch_rows

    def failure(self, reason: str) -> None:
        self.none.failure(reason)

    def watch(self, queue_depth: Callable[[], dict[tuple[str, str], float]],
              inflight: Callable[[], dict[tuple[str, str], float]]) -> None:
        """The gauges, read at scrape time: (model, version) -> requests waiting for the batcher /
        admitted and not yet answered."""
        self._queue_depth, self._inflight = queue_depth, inflight

    def families(self) -> Iterator[Metric]:
        if self.before_scrape is not None:
            self.before_scrape()
        models = list(self._models.values())
        requests = CounterMetricFamily("inferstack_requests", "Inference requests by outcome.",
                                       labels=[*LABELS, "outcome"])
        failures = CounterMetricFamily("inferstack_request_failures", "Failed requests by reason.",
                                       labels=[*LABELS, "reason"])
        for m in models:
            for outcome, count in m.outcome.items():
                requests.add_metric([*m.labels, outcome], count.value)
            for reason, count in sorted(m.failures.items()):
                failures.add_metric([*m.labels, reason], count.value)
        yield requests
        yield failures
        for i, first in enumerate(self.none.histograms()):
            family = HistogramMetricFamily(first.name, first.help, labels=LABELS)
            for m in models:
                m.histograms()[i].add_to(family, m.labels)
            yield family
        for name, help, read in (
            ("inferstack_queue_depth", "Requests waiting for the batcher.", self._queue_depth),
            ("inferstack_inflight_requests", "Requests admitted to the batcher and not yet answered.",
             self._inflight),
        ):
            gauge = GaugeMetricFamily(name, help, labels=LABELS)
            values = read() or {("", ""): 0.0}  # (the series exists before any model is served)
            for (model, version), value in sorted(values.items()):
                gauge.add_metric([model, version], value)
            yield gauge

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
