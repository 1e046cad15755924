"""GpuNodePool: an EKS managed node group of NVIDIA GPU instances that scales to and from zero.

* AMI ``AL2023_x86_64_NVIDIA`` (driver + container toolkit) by default, Bottlerocket NVIDIA as option.
* Taint ``nvidia.com/gpu=true:NoSchedule`` and label ``nvidia.com/gpu.present=true``: only pods that
  tolerate the taint (the inference pods, the device plugin) land on the expensive nodes.
* Label ``k8s.amazonaws.com/accelerator=<gpu model>`` (e.g. ``nvidia-tesla-t4``), the cluster
  autoscaler's GPU label on AWS: a node that carries it while its device plugin has not yet
  advertised ``nvidia.com/gpu`` counts as a GPU node still starting, so the autoscaler does not add
  more nodes for the same pending pods (cluster autoscaler AWS README, "Special note on GPU
  instances"). One GPU model per pool, so the label is true on every node.
* Follows the cluster's Kubernetes version (``version``) and depends on the node role's policy
  attachments and the networking add-ons (``node_group_depends_on``).
* ``min_size`` may be 0. The desired size is set once and then left to the cluster autoscaler
  (``ignore_changes``), so a later ``pulumi up`` does not scale the pool back.
* cluster-autoscaler node-template tags (label, taint, GPU count) on the node group and on its Auto
  Scaling Group: from zero nodes the autoscaler cannot look at a node, it reads these tags.
* A launch template with an encrypted gp3 root volume sized for multi-GB CUDA images, IMDSv2 only.

With ``gpu=False`` the same component declares the CPU system pool (standard AL2023, no taint), for
CoreDNS, the device plugin's controller-less daemonset, the autoscaler and other cluster add-ons.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

TYPE = "inferstack:gpu_node_pool:GpuNodePool"
AMI_TYPES = ("AL2023_x86_64_NVIDIA", "BOTTLEROCKET_x86_64_NVIDIA")
CPU_AMI_TYPE = "AL2023_x86_64_STANDARD"
CAPACITY_TYPES = ("ON_DEMAND", "SPOT")
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}
GPU_LABEL = ("nvidia.com/gpu.present", "true")
# Where the Helm device plugin runs (Bottlerocket NVIDIA nodes bring their own).
NODE_PLUGIN_LABEL = ("inferstack.dev/nvidia-device-plugin", "helm")
_AUTOSCALER = "k8s.io/cluster-autoscaler"
# GPUs per instance size for the x86_64 NVIDIA families; unknown sizes count as 1.
_GPUS_BY_TYPE = {
    "p3.8xlarge": 4,
    "p3.16xlarge": 8,
    "p4d.24xlarge": 8,
    "p4de.24xlarge": 8,
    "p5.48xlarge": 8,
    "p5e.48xlarge": 8,
    "p5en.48xlarge": 8,
    "g4dn.12xlarge": 4,
    "g4dn.metal": 8,
}
_GPUS_BY_SIZE = {"12xlarge": 4, "24xlarge": 4, "48xlarge": 8}
#: The cluster autoscaler's GPU label on AWS (cloudprovider/aws: ``GPULabel``).
ACCELERATOR_LABEL = "k8s.amazonaws.com/accelerator"
#: GPU model per x86_64 NVIDIA family, as the label's value (lower-case, ``nvidia-`` prefix, the
#: names GKE's ``cloud.google.com/gke-accelerator`` uses and the autoscaler's docs cite, e.g.
#: ``nvidia-tesla-k80`` for P2).
GPU_MODELS = {
    "g4dn": "nvidia-tesla-t4",
    "g5": "nvidia-a10g",
    "g6": "nvidia-l4",
    "gr6": "nvidia-l4",
    "g6e": "nvidia-l40s",
    "p3": "nvidia-tesla-v100",
    "p4d": "nvidia-a100",
    "p4de": "nvidia-a100",
    "p5": "nvidia-h100",
    "p5e": "nvidia-h200",
    "p5en": "nvidia-h200",
}


def gpu_model(instance_types: list[str]) -> str:
    """The one GPU model of these instance types (``nvidia-tesla-t4`` for g4dn); ``ValueError`` for a
    family not in ``GPU_MODELS`` or for types with different GPUs (the node label would be false on
    some nodes)."""
    models = set()
    for t in instance_types:
        family = t.split(".")[0]
        if family not in GPU_MODELS:
            raise ValueError(f"{t}: unknown GPU family {family!r}; expected one of {', '.join(GPU_MODELS)}")
        models.add(GPU_MODELS[family])
    if len(models) != 1:
        raise ValueError(
            f"{', '.join(instance_types)}: {len(models)} GPU models ({', '.join(sorted(models))}); "
            "expected one GPU model per pool (declare another pool for the other)"
        )
    return models.pop()


def gpus_per_node(instance_type: str) -> int:
    if instance_type in _GPUS_BY_TYPE:
        return _GPUS_BY_TYPE[instance_type]
    return _GPUS_BY_SIZE.get(instance_type.split(".")[1], 1)


@dataclass
class GpuNodePoolArgs:
    cluster_name: pulumi.Input[str]
    """The EKS cluster. Required."""
    node_role_arn: pulumi.Input[str]
    """IAM role of the nodes (``Cluster.node_role_arn``). Required."""
    subnet_ids: pulumi.Input[list[str]]
    """Private subnets for the nodes. Required."""
    instance_types: list[str]
    """Instance types, e.g. ``["g5.xlarge"]``; the first is the autoscaler's template. Required."""
    autoscaler_cluster: str
    """Cluster name for the ``k8s.io/cluster-autoscaler/<name>`` ownership tag (a plain string). Required."""
    min_size: int = 0
    """Smallest size; 0 lets an idle GPU pool cost nothing. Default 0."""
    max_size: int = 1
    """Largest size. Default 1."""
    desired_size: int = 1
    """Size at creation; afterwards the autoscaler owns it. Default 1."""
    disk_size_gib: int = 100
    """gp3 volume for the OS and container images (CUDA images are several GB). Default 100."""
    ami_type: str = AMI_TYPES[0]
    """``AL2023_x86_64_NVIDIA`` or ``BOTTLEROCKET_x86_64_NVIDIA``. Default AL2023."""
    capacity_type: str = "ON_DEMAND"
    """``ON_DEMAND`` or ``SPOT``. Default on-demand."""
    version: pulumi.Input[str] | None = None
    """Kubernetes version of the nodes: the cluster's (``Cluster.version``), so an upgrade of the control
    plane rolls the nodes too. Default: the version EKS picks at creation, never changed after."""
    node_group_depends_on: list[pulumi.Resource] = field(default_factory=list)
    """What the node group needs first and must outlive: the node role's policy attachments
    (``Cluster.node_policy_attachments``) and the networking add-ons. Default none."""
    gpu: bool = True
    """False declares a CPU pool (standard AL2023 AMI, no taint, no GPU tags). Default true."""
    tags: dict[str, str] = field(default_factory=dict)
    """Tags on every resource. Default none."""


class GpuNodePool(pulumi.ComponentResource):
    node_group_name: pulumi.Output[str]
    node_group: aws.eks.NodeGroup

    def __init__(self, name: str, args: GpuNodePoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        _validate(args)
        super().__init__(TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ami_type = args.ami_type if args.gpu else CPU_AMI_TYPE
        # Bottlerocket keeps images on its second (data) volume; AL2023 on the root volume.
        device = "/dev/xvdb" if ami_type.startswith("BOTTLEROCKET") else "/dev/xvda"

        template = aws.ec2.LaunchTemplate(
            f"{name}-launch-template",
            description=f"{name}: encrypted gp3 volume sized for large images, IMDSv2 only",
            block_device_mappings=[
                {
                    "device_name": device,
                    "ebs": {
                        "volume_size": args.disk_size_gib,
                        "volume_type": "gp3",
                        "iops": 3000,
                        "throughput": 250,
                        "encrypted": "true",
                        "delete_on_termination": "true",
                    },
                }
            ],
            metadata_options={
                "http_endpoint": "enabled",
                "http_tokens": "required",
                "http_put_response_hop_limit": 2,
            },
            tag_specifications=[
                {"resource_type": "instance", "tags": {**args.tags, "Name": name}},
                {"resource_type": "volume", "tags": args.tags},
            ],
            update_default_version=True,
            tags=args.tags,
            opts=child,
        )
        labels = {"inferstack.dev/pool": name}
        taints: list[Any] = []
        asg_tags = {
            f"{_AUTOSCALER}/enabled": "true",
            f"{_AUTOSCALER}/{args.autoscaler_cluster}": "owned",
            f"{_AUTOSCALER}/node-template/label/inferstack.dev/pool": name,
        }
        if args.gpu:
            labels[GPU_LABEL[0]] = GPU_LABEL[1]
            labels[ACCELERATOR_LABEL] = gpu_model(args.instance_types)
            if not ami_type.startswith("BOTTLEROCKET"):
                labels[NODE_PLUGIN_LABEL[0]] = NODE_PLUGIN_LABEL[1]
            taints.append(GPU_TAINT)
            asg_tags.update(node_template_tags(args.instance_types))

        self.node_group = aws.eks.NodeGroup(
            f"{name}-node-group",
            cluster_name=args.cluster_name,
            node_role_arn=args.node_role_arn,
            subnet_ids=args.subnet_ids,
            ami_type=ami_type,
            version=args.version,
            capacity_type=args.capacity_type,
            instance_types=args.instance_types,
            scaling_config={
                "min_size": args.min_size,
                "max_size": args.max_size,
                "desired_size": args.desired_size,
            },
            update_config={"max_unavailable": 1},
            labels=labels,
            taints=taints,
            launch_template={"id": template.id, "version": template.latest_version.apply(str)},
            tags={**args.tags, **asg_tags},
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=args.node_group_depends_on,
                # The autoscaler changes the desired size; `pulumi up` must not set it back.
                ignore_changes=["scalingConfig.desiredSize"],
                custom_timeouts=pulumi.CustomTimeouts(create="40m", update="60m", delete="40m"),
            ),
        )
        # Node-group tags do not reach the Auto Scaling Group the autoscaler reads; tag it directly.
        asg_name = self.node_group.resources.apply(_asg_name)
        for key, value in sorted(asg_tags.items()):
            aws.autoscaling.Tag(
                f"{name}-asg-{_slug(key)}",
                autoscaling_group_name=asg_name,
                tag={"key": key, "value": value, "propagate_at_launch": False},
                opts=child,
            )

        self.node_group_name = self.node_group.node_group_name
        self.register_outputs(
            {"node_group_name": self.node_group_name, "instance_types": args.instance_types}
        )


def _asg_name(resources: Any) -> str:
    groups = (resources[0].autoscaling_groups if resources else None) or []
    return (groups[0].name or "") if groups else ""


def node_template_tags(instance_types: list[str]) -> dict[str, str]:
    """What the cluster autoscaler needs to simulate a GPU node it has never seen (scale from zero);
    the GPU count is the first instance type's (the autoscaler's template)."""
    instance_type = instance_types[0]
    return {
        f"{_AUTOSCALER}/node-template/label/{GPU_LABEL[0]}": GPU_LABEL[1],
        f"{_AUTOSCALER}/node-template/label/{ACCELERATOR_LABEL}": gpu_model(instance_types),
        f"{_AUTOSCALER}/node-template/taint/{GPU_TAINT['key']}": "true:NoSchedule",
        f"{_AUTOSCALER}/node-template/resources/nvidia.com/gpu": str(gpus_per_node(instance_type)),
    }


def _slug(key: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", key.removeprefix(_AUTOSCALER + "/").lower()).strip("-")


def _validate(args: GpuNodePoolArgs) -> None:
    if not args.instance_types:
        raise ValueError("GpuNodePoolArgs.instance_types: empty; expected at least one instance type")
    if args.ami_type not in AMI_TYPES:
        raise ValueError(
            f"GpuNodePoolArgs.ami_type: {args.ami_type!r}; expected one of {', '.join(AMI_TYPES)}"
        )
    if args.capacity_type not in CAPACITY_TYPES:
        raise ValueError(
            f"GpuNodePoolArgs.capacity_type: {args.capacity_type!r}; expected one of "
            f"{', '.join(CAPACITY_TYPES)}"
        )
    if args.gpu:
        try:
            gpu_model(args.instance_types)
        except ValueError as e:
            raise ValueError(f"GpuNodePoolArgs.instance_types: {e}") from None
    if args.min_size < 0:
        raise ValueError(f"GpuNodePoolArgs.min_size: {args.min_size}; expected >= 0")
    if args.max_size < max(args.min_size, 1):
        raise ValueError(f"GpuNodePoolArgs.max_size: {args.max_size}; expected >= max(min_size, 1)")
    if not args.min_size <= args.desired_size <= args.max_size:
        raise ValueError(f"GpuNodePoolArgs.desired_size: {args.desired_size}; expected min_size..max_size")
    if args.disk_size_gib < 50:
        raise ValueError(f"GpuNodePoolArgs.disk_size_gib: {args.disk_size_gib}; expected >= 50 (CUDA images)")
