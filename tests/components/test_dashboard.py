"""The Grafana dashboard in the repository: valid, and every query reads a metric that exists."""

from __future__ import annotations

import json
import re

from inferstack.components.dcgm_exporter import METRICS as DCGM_METRICS
from inferstack.components.grafana import DASHBOARD_DIR, load_dashboards
from inferstack.runtime.metrics import Metrics

_METRIC = re.compile(r"\b(inferstack_[a-z_]+|DCGM_FI_[A-Z_]+)\b")


def _runtime_series() -> set[str]:
    """Every series name the runtime's /metrics exposes (counters' _total, histograms' _bucket,
    _sum and _count)."""
    m = Metrics()
    m.failure("bad_input")
    text = m.render().decode()
    return {line.split("{")[0].split()[0] for line in text.splitlines() if line and not line.startswith("#")}


def _exprs(dashboard: dict) -> list[tuple[str, str]]:
    found = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            found.append((var["name"], var["definition"]))
    return found


def test_the_dashboard_is_valid_json_with_panels_that_query() -> None:
    raw = (DASHBOARD_DIR / "inferstack.json").read_text()
    dashboard = json.loads(raw)
    assert load_dashboards()["inferstack.json"] == dashboard
    assert dashboard["panels"], "no panels"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert panel.get("targets"), f"panel {panel['title']} has no query"


def test_every_query_names_a_metric_the_runtime_or_dcgm_exports() -> None:
    known = _runtime_series() | set(DCGM_METRICS)
    used: set[str] = set()
    for where, expr in _exprs(load_dashboards()["inferstack.json"]):
        names = set(_METRIC.findall(expr))
        assert names, f"{where}: {expr} reads no runtime or DCGM metric"
        unknown = names - known
        assert not unknown, f"{where}: {sorted(unknown)} are not exported"
        used |= names
    # what the dashboard promises: request rate, failures by reason, queue, compute, batches, queue
    # depth, GPU utilization and memory
    for wanted in (
        "inferstack_requests_total",
        "inferstack_request_failures_total",
        "inferstack_queue_seconds_bucket",
        "inferstack_compute_seconds_bucket",
        "inferstack_batch_size_sum",
        "inferstack_queue_depth",
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
    ):
        assert wanted in used, f"the dashboard does not show {wanted}"
