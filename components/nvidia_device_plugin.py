"""NvidiaDevicePlugin: the NVIDIA device plugin daemonset (Helm), which advertises ``nvidia.com/gpu``.

Its pods tolerate the GPU pools' ``nvidia.com/gpu`` taint and run only on nodes labelled for it
(AL2023 NVIDIA pools; Bottlerocket NVIDIA nodes ship their own plugin and are left alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from inferstack.components._chart import check_version, helm_release

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
        check_version(args.version, "NvidiaDevicePluginArgs")
        super().__init__(TYPE, name, None, opts)
        values = {
            "tolerations": [GPU_TOLERATION, {"key": "CriticalAddonsOnly", "operator": "Exists"}],
            "nodeSelector": {NODE_LABEL[0]: NODE_LABEL[1]},
            "priorityClassName": "system-node-critical",
        }
        release = helm_release(self, name, CHART, REPOSITORY, args, values, create_namespace=False)
        self.release_name = release.name
        self.status = release.status.apply(_status)
        self.register_outputs({"release_name": self.release_name, "status": self.status})


def _status(status: object) -> str:
    return str(getattr(status, "status", None) or "")
