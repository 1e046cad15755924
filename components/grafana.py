"""Grafana: Grafana (Helm chart ``grafana``) reading the stack's Prometheus, with the inferstack
dashboard (``dashboards/inferstack.json``: request rate, failures by reason, request, queue and
compute time, batch sizes, queue depth and in-flight requests, GPU utilization and memory from DCGM)
provisioned from a ConfigMap that the chart's dashboard sidecar picks up by its label.

Grafana stays inside the cluster (ClusterIP); ``kubectl port-forward`` reaches it, with the admin
password the chart generates into the Secret ``grafana`` (key ``admin-password``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
from inferstack.components._chart import check_chart_args, helm_release, release_namespace

TYPE = "inferstack:grafana:Grafana"
CHART = "grafana"
REPOSITORY = "https://grafana.github.io/helm-charts"
DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"
#: the label the chart's sidecar watches for dashboards
DASHBOARD_LABEL = ("grafana_dashboard", "1")
DATASOURCE_UID = "prometheus"


@dataclass
class GrafanaArgs:
    prometheus_address: pulumi.Input[str]
    """URL of the Prometheus server the dashboards read. Required."""
    version: str = "8.8.2"
    """Chart version, pinned. Default 8.8.2."""
    namespace: str = "monitoring"
    """Namespace of the release (created) and of the dashboard ConfigMap. Default monitoring."""


class Grafana(pulumi.ComponentResource):
    namespace: pulumi.Output[str]
    dashboards: list[str]
    """File names of the provisioned dashboards."""

    def __init__(self, name: str, args: GrafanaArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        check_chart_args(args.version, args.namespace, "GrafanaArgs")
        dashboards = load_dashboards()
        super().__init__(TYPE, name, None, opts)
        values = {
            "persistence": {"enabled": False},
            "datasources": {
                "datasources.yaml": {
                    "apiVersion": 1,
                    "datasources": [
                        {
                            "name": "Prometheus",
                            "type": "prometheus",
                            "uid": DATASOURCE_UID,
                            "url": args.prometheus_address,
                            "access": "proxy",
                            "isDefault": True,
                        }
                    ],
                }
            },
            "sidecar": {
                "dashboards": {
                    "enabled": True,
                    "label": DASHBOARD_LABEL[0],
                    "labelValue": DASHBOARD_LABEL[1],
                }
            },
        }
        release = helm_release(self, name, CHART, REPOSITORY, args, values)
        k8s.core.v1.ConfigMap(
            f"{name}-dashboards",
            metadata={
                "name": "inferstack-dashboards",
                "namespace": release.namespace,
                "labels": {DASHBOARD_LABEL[0]: DASHBOARD_LABEL[1], "app.kubernetes.io/managed-by": "pulumi"},
            },
            data={file: json.dumps(body, indent=1, sort_keys=True) for file, body in dashboards.items()},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[release]),
        )
        self.namespace = release_namespace(release, args.namespace)
        self.dashboards = sorted(dashboards)
        self.register_outputs({"namespace": self.namespace, "dashboards": self.dashboards})


def load_dashboards(folder: Path = DASHBOARD_DIR) -> dict[str, Any]:
    """Every ``*.json`` dashboard in ``folder`` by file name; ``ValueError`` naming a file that is not
    a JSON object with panels."""
    found: dict[str, Any] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"dashboard {path.name}: not valid JSON ({e})") from None
        if not isinstance(body, dict) or not isinstance(body.get("panels"), list):
            raise ValueError(f"dashboard {path.name}: expected a Grafana dashboard object with panels")
        found[path.name] = body
    if not found:
        raise ValueError(f"no dashboards (*.json) in {folder.name}/")
    return found
