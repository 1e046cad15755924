"""NvidiaDevicePlugin: the NVIDIA device plugin daemonset (Helm), which advertises ``nvidia.com/gpu``.

Its pods tolerate the GPU pools' ``nvidia.com/gpu`` taint and run only on nodes labelled for it
(AL2023 NVIDIA pools; Bottlerocket NVIDIA nodes ship their own plugin and are left alone).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

TYPE = "inferstack:nvidia_device_plugin:NvidiaDevicePlugin"
CHART = "nvidia-device-plugin"
REPOSITORY = "https://nvidia.github.io/k8s-device-plugin"
NODE_LABEL = ("inferstack.dev/nvidia-device-plugin", "helm")
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@dataclass
class NvidiaDevicePluginArgs:
    version: str = "0.17.1"
    """Chart version, pinned. Default 0.17.1."""
    namespace: str = "kube-system"
    """Namespace of the release. Default kube-system."""


class NvidiaDevicePlugin(pulumi.ComponentResource):
    release_name: pulumi.Output[str | None]
    status: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        args: NvidiaDevicePluginArgs | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        args = args or NvidiaDevicePluginArgs()
        if not re.match(r"^[0-9]+\.[0-9]+\.[0-9]+$", args.version):
            raise ValueError(f"NvidiaDevicePluginArgs.version: {args.version!r}; expected a pinned x.y.z")
        super().__init__(TYPE, name, None, opts)
        release = k8s.helm.v3.Release(
            f"{name}-release",
            name=CHART,
            chart=CHART,
            version=args.version,
            namespace=args.namespace,
            repository_opts={"repo": REPOSITORY},
            values={
                "tolerations": [GPU_TOLERATION, {"key": "CriticalAddonsOnly", "operator": "Exists"}],
                "nodeSelector": {NODE_LABEL[0]: NODE_LABEL[1]},
                "priorityClassName": "system-node-critical",
            },
            timeout=600,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.release_name = release.name
        self.status = release.status.apply(_status)
        self.register_outputs({"release_name": self.release_name, "status": self.status})


def _status(status: object) -> str:
    return str(getattr(status, "status", None) or "")
