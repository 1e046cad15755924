"""ClusterAutoscaler: the Kubernetes cluster autoscaler (Helm) with an IAM role through Pod Identity.

It discovers the node groups by their ``k8s.io/cluster-autoscaler/enabled`` and
``k8s.io/cluster-autoscaler/<cluster>`` tags, scales a GPU pool up from zero when an inference pod is
pending (reading the node-template tags GpuNodePool sets), and back down when the nodes sit idle.
Its role may change only Auto Scaling Groups tagged as owned by this cluster.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

TYPE = "inferstack:cluster_autoscaler:ClusterAutoscaler"
CHART = "cluster-autoscaler"
REPOSITORY = "https://kubernetes.github.io/autoscaler"
NAMESPACE = "kube-system"
SERVICE_ACCOUNT = "cluster-autoscaler"
# AWS supports no resource-level permissions for these read-only Describe calls: "*" is the only
# Resource they accept (see the Service Authorization Reference for Auto Scaling and EC2).
_DESCRIBE_ANY = [
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:DescribeAutoScalingInstances",
    "autoscaling:DescribeLaunchConfigurations",
    "autoscaling:DescribeScalingActivities",
    "autoscaling:DescribeTags",
    "ec2:DescribeImages",
    "ec2:DescribeInstanceTypes",
    "ec2:DescribeLaunchTemplateVersions",
    "ec2:GetInstanceTypesFromInstanceRequirements",
]
_WRITE_ACTIONS = ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"]
IMAGE_REPOSITORY = "registry.k8s.io/autoscaling/cluster-autoscaler"
#: The newest cluster-autoscaler patch release per Kubernetes minor version (the autoscaler is
#: released per minor and must match the control plane's). Source: the ``cluster-autoscaler-1.NN.P``
#: tags of github.com/kubernetes/autoscaler as of 2026-08-22; bump a patch here when a new one is out.
IMAGE_TAGS = {
    "1.31": "v1.31.5",
    "1.32": "v1.32.7",
    "1.33": "v1.33.6",
    "1.34": "v1.34.5",
    "1.35": "v1.35.2",
}


@dataclass
class ClusterAutoscalerArgs:
    cluster_name: str
    """The EKS cluster (plain name: it is in the discovery tags). Required."""
    cluster_version: str
    """Kubernetes minor version; the image is that minor's newest patch (``IMAGE_TAGS``). Required."""
    region: str = "us-east-1"
    """Region of the Auto Scaling Groups. Default us-east-1."""
    chart_version: str = "9.46.6"
    """Helm chart version, pinned. Default 9.46.6."""
    scale_down_unneeded: str = "10m"
    """How long a node must be unneeded before it is removed. Default 10m."""
    tags: dict[str, str] = field(default_factory=dict)
    """Tags on the IAM role and association. Default none."""


class ClusterAutoscaler(pulumi.ComponentResource):
    role_arn: pulumi.Output[str]
    release_name: pulumi.Output[str | None]

    def __init__(
        self, name: str, args: ClusterAutoscalerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        if not re.match(r"^1\.[0-9]{2}$", args.cluster_version):
            raise ValueError(
                f"ClusterAutoscalerArgs.cluster_version: {args.cluster_version!r}; expected 1.NN"
            )
        if args.cluster_version not in IMAGE_TAGS:
            raise ValueError(
                f"ClusterAutoscalerArgs.cluster_version: {args.cluster_version!r}; expected one of "
                f"{', '.join(IMAGE_TAGS)} (the versions with a known cluster-autoscaler release)"
            )
        if not re.match(r"^[0-9]+\.[0-9]+\.[0-9]+$", args.chart_version):
            raise ValueError(f"ClusterAutoscalerArgs.chart_version: {args.chart_version!r}; expected x.y.z")
        if not re.match(r"^[0-9]+[smh]$", args.scale_down_unneeded):
            raise ValueError(
                f"ClusterAutoscalerArgs.scale_down_unneeded: {args.scale_down_unneeded!r}; expected e.g. 10m"
            )
        super().__init__(TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(
            f"{name}-role",
            description=f"{args.cluster_name}: cluster autoscaler",
            assume_role_policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "pods.eks.amazonaws.com"},
                            "Action": ["sts:AssumeRole", "sts:TagSession"],
                        }
                    ],
                }
            ),
            tags=args.tags,
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-policy",
            role=role.id,
            policy=json.dumps(autoscaler_policy(args.cluster_name, args.region)),
            opts=child,
        )
        association = aws.eks.PodIdentityAssociation(
            f"{name}-pod-identity",
            cluster_name=args.cluster_name,
            namespace=NAMESPACE,
            service_account=SERVICE_ACCOUNT,
            role_arn=role.arn,
            tags=args.tags,
            opts=child,
        )
        values: dict[str, Any] = {
            "cloudProvider": "aws",
            "awsRegion": args.region,
            "autoDiscovery": {"clusterName": args.cluster_name},
            "fullnameOverride": CHART,
            "rbac": {"serviceAccount": {"create": True, "name": SERVICE_ACCOUNT}},
            "image": {"repository": IMAGE_REPOSITORY, "tag": IMAGE_TAGS[args.cluster_version]},
            "extraArgs": {
                "balance-similar-node-groups": True,
                "expander": "least-waste",
                "skip-nodes-with-local-storage": False,
                "scale-down-unneeded-time": args.scale_down_unneeded,
            },
        }
        release = k8s.helm.v3.Release(
            f"{name}-release",
            name=CHART,
            chart=CHART,
            version=args.chart_version,
            namespace=NAMESPACE,
            repository_opts={"repo": REPOSITORY},
            values=values,
            timeout=600,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[association]),
        )
        self.role_arn = role.arn
        self.release_name = release.name
        self.register_outputs({"role_arn": self.role_arn, "release_name": self.release_name})


def autoscaler_policy(cluster_name: str, region: str) -> dict[str, Any]:
    """Describe what it must; read only this cluster's node groups; change only the Auto Scaling
    Groups of managed node groups (``eks-*``) that are tagged as owned by this cluster."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "DescribeScalingState", "Effect": "Allow", "Action": _DESCRIBE_ANY, "Resource": "*"},
            {
                "Sid": "ReadNodeGroups",
                "Effect": "Allow",
                "Action": ["eks:DescribeNodegroup"],
                "Resource": [f"arn:aws:eks:{region}:*:nodegroup/{cluster_name}/*/*"],
            },
            {
                "Sid": "ScaleOwnedGroups",
                "Effect": "Allow",
                "Action": _WRITE_ACTIONS,
                "Resource": [f"arn:aws:autoscaling:{region}:*:autoScalingGroup:*:autoScalingGroupName/eks-*"],
                "Condition": {
                    "StringEquals": {f"aws:ResourceTag/k8s.io/cluster-autoscaler/{cluster_name}": "owned"}
                },
            },
        ],
    }
