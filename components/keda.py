"""Keda: KEDA (Helm chart ``keda``), the event-driven autoscaler that scales the inference
Deployments on the runtime's queue depth and in-flight requests (see ``autoscaling.py``), to zero
and back. It installs the ``ScaledObject`` CRD and runs the HPAs it derives from each one.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
from inferstack.components._chart import check_chart_args

TYPE = "inferstack:keda:Keda"
CHART = "keda"
REPOSITORY = "https://kedacore.github.io/charts"


@dataclass
class KedaArgs:
    version: str = "2.17.2"
    """Chart version, pinned. Default 2.17.2."""
    namespace: str = "keda"
    """Namespace of the release (created). Default keda."""


class Keda(pulumi.ComponentResource):
    namespace: pulumi.Output[str]
    release_name: pulumi.Output[str]

    def __init__(self, name: str, args: KedaArgs | None = None, opts: pulumi.ResourceOptions | None = None):
        args = args or KedaArgs()
        check_chart_args(args.version, args.namespace, "KedaArgs")
        super().__init__(TYPE, name, None, opts)
        release = k8s.helm.v3.Release(
            f"{name}-release",
            name=CHART,
            chart=CHART,
            version=args.version,
            namespace=args.namespace,
            create_namespace=True,
            repository_opts={"repo": REPOSITORY},
            values={"watchNamespace": ""},  # every namespace: one ScaledObject per model namespace
            timeout=600,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.namespace = release.namespace.apply(lambda ns: ns or args.namespace)
        self.release_name = release.name.apply(lambda n: n or CHART)
        self.register_outputs({"namespace": self.namespace, "release_name": self.release_name})
