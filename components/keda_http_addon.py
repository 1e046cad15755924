"""KedaHttpAddon: KEDA's HTTP add-on (Helm chart ``keda-add-ons-http``), the scale-from-zero path.

Its interceptor sits in the request path of a model that scales to zero: a request that arrives
while the Deployment has no replica is held until a pod is ready (up to ``wait_timeout_s``), and
the add-on's external scaler tells KEDA there are requests pending, which activates the
Deployment. An ``HTTPScaledObject`` per model (``autoscaling.py``) routes by ``Host`` header.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from inferstack.components._chart import check_chart_args, helm_release, release_namespace
from inferstack.components.inference_service import STARTUP_TIMEOUT_S

TYPE = "inferstack:keda_http_addon:KedaHttpAddon"
CHART = "keda-add-ons-http"
REPOSITORY = "https://kedacore.github.io/charts"
#: the chart's Service names: <chart>-interceptor-proxy and <chart>-external-scaler
INTERCEPTOR_SERVICE = f"{CHART}-interceptor-proxy"
SCALER_SERVICE = f"{CHART}-external-scaler"
SCALER_PORT = 9090
#: labels of the interceptor pods (the chart's proxy Service selects them)
INTERCEPTOR_LABELS = {"app.kubernetes.io/component": "interceptor", "app.kubernetes.io/name": "http-add-on"}
#: A GPU cold start at zero, in seconds, as the interceptor must wait for it (estimates, not measured
#: here): the cluster autoscaler's scale-up and a GPU instance's launch, boot, join and NVIDIA device
#: plugin registration (a few minutes on EKS), the pull of the multi-GB CUDA runtime image, then the
#: startup probe's budget for the model's download and load.
NODE_LAUNCH_S = 300
IMAGE_PULL_S = 300
COLD_START_S = NODE_LAUNCH_S + IMAGE_PULL_S + STARTUP_TIMEOUT_S


@dataclass
class KedaHttpAddonArgs:
    version: str = "0.10.0"
    """Chart version, pinned. Default 0.10.0."""
    namespace: str = "keda"
    """Namespace of the release (KEDA's). Default keda."""
    proxy_port: int = 8000
    """Port of the interceptor's proxy Service: the runtime's, so that a model's endpoint keeps its
    port when it scales to zero. Default 8000."""
    wait_timeout_s: int = COLD_START_S
    """How long the interceptor holds a request for a Deployment at zero: a GPU cold start, node
    launch (300 s) + image pull (300 s) + the startup probe's budget (900 s). Default 1500. Behind
    an AWS NLB the connection also needs an idle timeout at least this long (default 350 s; see
    docs/infrastructure.md)."""
    response_header_timeout_s: int = 60
    """How long it waits for a pod's response headers: the runtime's 30 s request timeout, with room
    (the chart's default, 500 ms, would cut ordinary inference requests). Default 60."""
    interceptor_replicas: int = 2
    """Minimum interceptor replicas: it is in the request path. Default 2."""


class KedaHttpAddon(pulumi.ComponentResource):
    namespace: pulumi.Output[str]
    interceptor_host: pulumi.Output[str]
    """In-cluster DNS name of the interceptor's proxy Service."""
    interceptor_port: int
    scaler_address: pulumi.Output[str]
    """``host:port`` of the external scaler, for a ScaledObject's ``external-push`` trigger."""

    def __init__(
        self, name: str, args: KedaHttpAddonArgs | None = None, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        args = args or KedaHttpAddonArgs()
        check_chart_args(args.version, args.namespace, "KedaHttpAddonArgs")
        if not 1024 <= args.proxy_port <= 65535:
            raise ValueError(f"KedaHttpAddonArgs.proxy_port: {args.proxy_port}; expected 1024..65535")
        if not 30 <= args.wait_timeout_s <= 3600:
            raise ValueError(f"KedaHttpAddonArgs.wait_timeout_s: {args.wait_timeout_s}; expected 30..3600")
        if not 1 <= args.response_header_timeout_s <= 3600:
            raise ValueError(
                "KedaHttpAddonArgs.response_header_timeout_s: "
                f"{args.response_header_timeout_s}; expected 1..3600"
            )
        if not 1 <= args.interceptor_replicas <= 50:
            raise ValueError(
                f"KedaHttpAddonArgs.interceptor_replicas: {args.interceptor_replicas}; expected 1..50"
            )
        super().__init__(TYPE, name, None, opts)
        values = {
            "interceptor": {
                "proxy": {"port": args.proxy_port},
                "replicas": {
                    "min": args.interceptor_replicas,
                    "waitTimeout": f"{args.wait_timeout_s}s",
                },
                "responseHeaderTimeout": f"{args.response_header_timeout_s}s",
            },
            "scaler": {"replicas": 2},
        }
        release = helm_release(self, name, CHART, REPOSITORY, args, values)
        self.namespace = release_namespace(release, args.namespace)
        self.interceptor_host = self.namespace.apply(
            lambda ns: f"{INTERCEPTOR_SERVICE}.{ns}.svc.cluster.local"
        )
        self.interceptor_port = args.proxy_port
        self.scaler_address = self.namespace.apply(lambda ns: f"{SCALER_SERVICE}.{ns}:{SCALER_PORT}")
        self.register_outputs(
            {
                "namespace": self.namespace,
                "interceptor_host": self.interceptor_host,
                "interceptor_port": self.interceptor_port,
                "scaler_address": self.scaler_address,
            }
        )
