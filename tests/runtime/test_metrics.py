"""The metrics' exposition: what Prometheus' own parser reads back from /metrics' text."""

from __future__ import annotations

from inferstack.runtime.metrics import Metrics
from prometheus_client.parser import text_string_to_metric_families


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


_NONE = (("model", ""), ("version", ""))  # the labels of requests that named no served model


def test_histograms_are_cumulative_with_inclusive_upper_bounds() -> None:
    m = Metrics()
    for v in (0.0001, 0.0003, 0.0005, 0.02, 30.0):  # 0.0001 and 0.0005 lie exactly on bounds
        m.request_seconds.observe(v)
    s = _samples(m)

    def bucket(le: str) -> float:
        return s[("inferstack_request_seconds_bucket", (("le", le), *_NONE))]

    assert bucket("0.0001") == 1
    assert bucket("0.00025") == 1
    assert bucket("0.0005") == 3
    assert bucket("0.01") == 3
    assert bucket("0.025") == 4
    assert bucket("10.0") == 4
    assert bucket("+Inf") == 5
    assert s[("inferstack_request_seconds_count", _NONE)] == 5
    assert abs(s[("inferstack_request_seconds_sum", _NONE)] - 30.0209) < 1e-9


def test_counters_and_gauges_per_model() -> None:
    m = Metrics()
    a, b = m.model("a", "1"), m.model("b", "7")
    a.outcome["success"].inc()
    a.outcome["success"].inc()
    b.outcome["success"].inc()
    a.outcome["rejected"].inc()
    m.outcome["client_error"].inc()  # a request that named no served model
    a.failure("queue_full")
    a.failure("queue_full")
    b.failure("bad_request")
    b.batch_size.observe(3)
    m.watch(lambda: {("a", "1"): 2, ("b", "7"): 0}, lambda: {("a", "1"): 5, ("b", "7"): 1})
    s = _samples(m)
    la, lb = (("model", "a"), ("version", "1")), (("model", "b"), ("version", "7"))

    def labels(base: tuple[tuple[str, str], ...], **more: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((*base, *more.items())))

    assert s[("inferstack_requests_total", labels(la, outcome="success"))] == 2
    assert s[("inferstack_requests_total", labels(lb, outcome="success"))] == 1
    assert s[("inferstack_requests_total", labels(la, outcome="rejected"))] == 1
    assert s[("inferstack_requests_total", labels(lb, outcome="rejected"))] == 0
    assert s[("inferstack_requests_total", labels(_NONE, outcome="client_error"))] == 1
    assert s[("inferstack_request_failures_total", labels(la, reason="queue_full"))] == 2
    assert s[("inferstack_request_failures_total", labels(lb, reason="bad_request"))] == 1
    assert ("inferstack_request_failures_total", labels(la, reason="bad_request")) not in s
    assert s[("inferstack_batch_size_bucket", labels(lb, le="2.0"))] == 0
    assert s[("inferstack_batch_size_bucket", labels(lb, le="4.0"))] == 1
    assert s[("inferstack_batch_size_count", la)] == 0
    assert s[("inferstack_queue_depth", la)] == 2
    assert s[("inferstack_inflight_requests", lb)] == 1


def test_every_series_exists_before_any_model_is_served() -> None:
    # dashboards and autoscaling queries find the series (at 0) on a server with no model yet
    s = _samples(Metrics())
    for name in ("inferstack_requests_total", "inferstack_request_seconds_count", "inferstack_queue_depth",
                 "inferstack_inflight_requests"):
        assert [v for (n, _), v in s.items() if n == name], name
