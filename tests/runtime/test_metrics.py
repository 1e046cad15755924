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


def test_histograms_are_cumulative_with_inclusive_upper_bounds() -> None:
    m = Metrics()
    for v in (0.0001, 0.0003, 0.0005, 0.02, 30.0):  # 0.0001 and 0.0005 lie exactly on bounds
        m.request_seconds.observe(v)
    s = _samples(m)

    def bucket(le: str) -> float:
        return s[("inferstack_request_seconds_bucket", (("le", le),))]

    assert bucket("0.0001") == 1
    assert bucket("0.00025") == 1
    assert bucket("0.0005") == 3
    assert bucket("0.01") == 3
    assert bucket("0.025") == 4
    assert bucket("10.0") == 4
    assert bucket("+Inf") == 5
    assert s[("inferstack_request_seconds_count", ())] == 5
    assert abs(s[("inferstack_request_seconds_sum", ())] - 30.0209) < 1e-9


def test_counters_and_gauges() -> None:
    m = Metrics()
    m.outcome["success"].inc()
    m.outcome["success"].inc()
    m.outcome["rejected"].inc()
    m.failure("queue_full")
    m.failure("queue_full")
    m.failure("bad_request")
    m.batch_size.observe(3)
    m.watch(lambda: 2, lambda: 5)
    s = _samples(m)
    assert s[("inferstack_requests_total", (("outcome", "success"),))] == 2
    assert s[("inferstack_requests_total", (("outcome", "rejected"),))] == 1
    assert s[("inferstack_requests_total", (("outcome", "timeout"),))] == 0
    assert s[("inferstack_request_failures_total", (("reason", "queue_full"),))] == 2
    assert s[("inferstack_request_failures_total", (("reason", "bad_request"),))] == 1
    assert s[("inferstack_batch_size_bucket", (("le", "2.0"),))] == 0
    assert s[("inferstack_batch_size_bucket", (("le", "4.0"),))] == 1
    assert s[("inferstack_queue_depth", ())] == 2
    assert s[("inferstack_inflight_requests", ())] == 5
