"""DcgmExporter: NVIDIA's DCGM exporter (Helm chart ``dcgm-exporter``), GPU metrics for Prometheus.

A DaemonSet on the GPU nodes only (node selector ``nvidia.com/gpu.present=true``, toleration of the
``nvidia.com/gpu`` taint): GPU utilization (``DCGM_FI_DEV_GPU_UTIL``), framebuffer memory used and
free (``DCGM_FI_DEV_FB_USED``/``_FREE``) and more, per GPU, on port 9400. Prometheus finds its pods
by their ``prometheus.io/*`` annotations (the chart's ServiceMonitor needs the Prometheus operator,
which this stack does not run, and is off).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from inferstack.components._chart import check_chart_args, helm_release, release_namespace
from inferstack.components.gpu_node_pool import GPU_LABEL, GPU_TAINT

TYPE = "inferstack:dcgm_exporter:DcgmExporter"
CHART = "dcgm-exporter"
REPOSITORY = "https://nvidia.github.io/dcgm-exporter/helm-charts"
PORT = 9400
#: the exporter's default counters (etc/default-counters.csv) that the dashboard reads, per GPU with
#: labels ``gpu`` and ``Hostname``: utilization in %, framebuffer memory used and free in MiB
METRICS = ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE")
GPU_TOLERATION = {"key": GPU_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}


@dataclass
class DcgmExporterArgs:
    version: str = "4.1.1"
    """Chart version, pinned. Default 4.1.1."""
    namespace: str = "monitoring"
    """Namespace of the release. Default monitoring."""


class DcgmExporter(pulumi.ComponentResource):
    namespace: pulumi.Output[str]
    release_name: pulumi.Output[str]

    def __init__(
        self, name: str, args: DcgmExporterArgs | None = None, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        args = args or DcgmExporterArgs()
        check_chart_args(args.version, args.namespace, "DcgmExporterArgs")
        super().__init__(TYPE, name, None, opts)
        values = {
            "tolerations": [GPU_TOLERATION],
            "nodeSelector": {GPU_LABEL[0]: GPU_LABEL[1]},
            "serviceMonitor": {"enabled": False},
            "podAnnotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(PORT),
                "prometheus.io/path": "/metrics",
            },
        }
        release = helm_release(self, name, CHART, REPOSITORY, args, values)
        self.namespace = release_namespace(release, args.namespace)
        self.release_name = release.name.apply(lambda n: n or CHART)
        self.register_outputs({"namespace": self.namespace, "release_name": self.release_name})
