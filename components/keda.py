"""Keda: KEDA (Helm chart ``keda``), the event-driven autoscaler that scales the inference
Deployments on the runtime's queue depth and in-flight requests (see ``autoscaling.py``), to zero
and back. It installs the ``ScaledObject`` CRD and runs the HPAs it derives from each one.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from inferstack.components._chart import check_chart_args, helm_release, release_namespace

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
        values = {"watchNamespace": ""}  # every namespace: one ScaledObject per model namespace
        release = helm_release(self, name, CHART, REPOSITORY, args, values)
        self.namespace = release_namespace(release, args.namespace)
        self.release_name = release.name.apply(lambda n: n or CHART)
        self.register_outputs({"namespace": self.namespace, "release_name": self.release_name})
