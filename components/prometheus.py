"""Prometheus: a small Prometheus server (Helm chart ``prometheus``), the source of KEDA's scaling
metrics and of the Grafana dashboard.

Only the server runs (no Alertmanager, Pushgateway, node exporter or kube-state-metrics). Its
chart's ``kubernetes-pods`` job scrapes every pod annotated ``prometheus.io/scrape: "true"``, with
``namespace`` and ``pod`` labels: the inference pods (the runtime's ``/metrics``) and NVIDIA's DCGM
exporter. Storage is an emptyDir (``retention`` of scaling and dashboard history, lost on restart).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pulumi
from inferstack.components._chart import check_chart_args, helm_release, release_namespace

TYPE = "inferstack:prometheus:Prometheus"
CHART = "prometheus"
REPOSITORY = "https://prometheus-community.github.io/helm-charts"
#: the chart names the server's Service <release>-server, on port 80
SERVER_SERVICE = f"{CHART}-server"


@dataclass
class PrometheusArgs:
    version: str = "27.19.0"
    """Chart version, pinned. Default 27.19.0."""
    namespace: str = "monitoring"
    """Namespace of the release (created). Default monitoring."""
    retention: str = "7d"
    """How long samples are kept. Default 7d."""
    scrape_interval_s: int = 15
    """Scrape interval, seconds: KEDA sees a queue at most this late. Default 15."""


class Prometheus(pulumi.ComponentResource):
    namespace: pulumi.Output[str]
    address: pulumi.Output[str]
    """The server's in-cluster URL, e.g. ``http://prometheus-server.monitoring.svc.cluster.local:80``."""

    def __init__(
        self, name: str, args: PrometheusArgs | None = None, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        args = args or PrometheusArgs()
        check_chart_args(args.version, args.namespace, "PrometheusArgs")
        if not re.match(r"^[0-9]+[hdwy]$", args.retention):
            raise ValueError(f"PrometheusArgs.retention: {args.retention!r}; expected e.g. 12h, 7d, 2w")
        if not 5 <= args.scrape_interval_s <= 120:
            raise ValueError(f"PrometheusArgs.scrape_interval_s: {args.scrape_interval_s}; expected 5..120")
        super().__init__(TYPE, name, None, opts)
        values = {
            "alertmanager": {"enabled": False},
            "prometheus-pushgateway": {"enabled": False},
            "prometheus-node-exporter": {"enabled": False},
            "kube-state-metrics": {"enabled": False},
            "server": {
                "retention": args.retention,
                "persistentVolume": {"enabled": False},
                "global": {
                    "scrape_interval": f"{args.scrape_interval_s}s",
                    "evaluation_interval": f"{args.scrape_interval_s}s",
                },
                "resources": {
                    "requests": {"cpu": "200m", "memory": "512Mi"},
                    "limits": {"memory": "2Gi"},
                },
            },
        }
        release = helm_release(self, name, CHART, REPOSITORY, args, values)
        self.namespace = release_namespace(release, args.namespace)
        self.address = self.namespace.apply(lambda ns: f"http://{SERVER_SERVICE}.{ns}.svc.cluster.local:80")
        self.register_outputs({"namespace": self.namespace, "address": self.address})
