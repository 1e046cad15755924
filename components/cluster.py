"""Cluster: an EKS control plane with a pinned version and support type, API access entries and the
Pod Identity agent. The node role's policy attachments are exposed so that node groups can list them
in ``depends_on``: created before the nodes, destroyed after them (a node that loses its policies
mid-destroy cannot drain)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

TYPE = "inferstack:cluster:Cluster"
_MANAGED = "arn:aws:iam::aws:policy/"
NODE_POLICIES = ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly")
#: EKS upgrade policy: STANDARD upgrades the cluster automatically when its version leaves standard
#: support; EXTENDED keeps it for 12 more months at the extended-support price per cluster hour.
SUPPORT_TYPES = ("STANDARD", "EXTENDED")


@dataclass
class ClusterArgs:
    cluster_name: str
    """Name of the EKS cluster (also tagged on the subnets). Required."""
    version: str
    """Kubernetes minor version, pinned, e.g. ``1.34``. Required."""
    subnet_ids: pulumi.Input[list[str]]
    """Subnets for the control plane's network interfaces (the private ones). Required."""
    region: str = "us-east-1"
    """Region, written into the kubeconfig's token command. Default us-east-1."""
    admin_principal_arns: list[str] = field(default_factory=list)
    """IAM principals given cluster-admin through access entries (besides the creator). Default none."""
    support_type: str = "EXTENDED"
    """``STANDARD`` or ``EXTENDED`` (the EKS default): what happens when the version leaves standard
    support. Default EXTENDED."""
    public_access_cidrs: list[str] = field(default_factory=list)
    """IPv4 CIDR blocks that may reach the API server's public endpoint (EKS allows 40). Default
    none: the public endpoint is off and the API is reached from the VPC (and networks joined to it)
    only, through the private endpoint, which is always on."""
    tags: dict[str, str] = field(default_factory=dict)
    """Tags on every resource. Default none."""


class Cluster(pulumi.ComponentResource):
    name: pulumi.Output[str]
    endpoint: pulumi.Output[str]
    node_role_arn: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    """A kubeconfig (secret) that gets its token from ``aws eks get-token``."""
    security_group_id: pulumi.Output[str]
    version: pulumi.Output[str]
    """The control plane's Kubernetes version; node groups follow it."""
    addons: list[pulumi.Resource]
    node_policy_attachments: list[pulumi.Resource]
    """The node role's policy attachments: node groups depend on them."""

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if not re.match(r"^1\.[0-9]{2}$", args.version):
            raise ValueError(
                f"ClusterArgs.version: {args.version!r}; expected a pinned minor version like 1.34"
            )
        if not re.match(r"^[a-zA-Z][a-zA-Z0-9-]{0,99}$", args.cluster_name):
            raise ValueError(
                f"ClusterArgs.cluster_name: {args.cluster_name!r}; expected letters, digits, '-'"
            )
        if args.support_type not in SUPPORT_TYPES:
            raise ValueError(
                f"ClusterArgs.support_type: {args.support_type!r}; expected one of {', '.join(SUPPORT_TYPES)}"
            )
        for arn in args.admin_principal_arns:
            if not arn.startswith("arn:aws"):
                raise ValueError(f"ClusterArgs.admin_principal_arns: {arn!r}; expected IAM role or user ARNs")
        super().__init__(TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        role = aws.iam.Role(
            f"{name}-role",
            assume_role_policy=json.dumps(_trust("eks.amazonaws.com", tag_session=True)),
            tags=args.tags,
            opts=child,
        )
        attach = aws.iam.RolePolicyAttachment(
            f"{name}-cluster-policy",
            role=role.name,
            policy_arn=_MANAGED + "AmazonEKSClusterPolicy",
            opts=child,
        )
        secrets_key = aws.kms.Key(
            f"{name}-secrets-key",
            description=f"{args.cluster_name}: Kubernetes secrets encryption",
            enable_key_rotation=True,
            deletion_window_in_days=7,
            tags=args.tags,
            opts=child,
        )
        cluster = aws.eks.Cluster(
            f"{name}-eks",
            name=args.cluster_name,
            version=args.version,
            role_arn=role.arn,
            vpc_config={
                "subnet_ids": args.subnet_ids,
                "endpoint_private_access": True,
                "endpoint_public_access": bool(args.public_access_cidrs),
                "public_access_cidrs": args.public_access_cidrs or None,
            },
            access_config={
                "authentication_mode": "API",
                "bootstrap_cluster_creator_admin_permissions": True,
            },
            encryption_config={"resources": ["secrets"], "provider": {"key_arn": secrets_key.arn}},
            enabled_cluster_log_types=["api", "audit", "authenticator"],
            upgrade_policy={"support_type": args.support_type},
            tags=args.tags,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[attach],
                custom_timeouts=pulumi.CustomTimeouts(create="30m", delete="30m"),
            ),
        )
        for i, arn in enumerate(args.admin_principal_arns):
            entry = aws.eks.AccessEntry(
                f"{name}-admin-{i}",
                cluster_name=cluster.name,
                principal_arn=arn,
                type="STANDARD",
                tags=args.tags,
                opts=child,
            )
            aws.eks.AccessPolicyAssociation(
                f"{name}-admin-{i}",
                cluster_name=cluster.name,
                principal_arn=arn,
                policy_arn="arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy",
                access_scope={"type": "cluster"},
                opts=pulumi.ResourceOptions(parent=self, depends_on=[entry]),
            )

        node_role = aws.iam.Role(
            f"{name}-node-role",
            assume_role_policy=json.dumps(_trust("ec2.amazonaws.com")),
            tags=args.tags,
            opts=child,
        )
        self.node_policy_attachments = [
            aws.iam.RolePolicyAttachment(
                f"{name}-node-{policy}", role=node_role.name, policy_arn=_MANAGED + policy, opts=child
            )
            for policy in NODE_POLICIES
        ]
        # Pods get AWS credentials through EKS Pod Identity (InferenceService's association).
        pod_identity = aws.eks.Addon(
            f"{name}-pod-identity-agent",
            cluster_name=cluster.name,
            addon_name="eks-pod-identity-agent",
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="OVERWRITE",
            tags=args.tags,
            opts=child,
        )
        self.addons = [pod_identity]

        self.name = cluster.name
        self.endpoint = cluster.endpoint
        self.version = cluster.version
        self.node_role_arn = node_role.arn
        self.security_group_id = cluster.vpc_config.cluster_security_group_id
        self.kubeconfig = pulumi.Output.secret(
            pulumi.Output.all(cluster.name, cluster.endpoint, cluster.certificate_authority.data).apply(
                lambda v: kubeconfig(v[0], v[1], v[2], args.region)
            )
        )
        self.register_outputs(
            {
                "name": self.name,
                "endpoint": self.endpoint,
                "node_role_arn": self.node_role_arn,
                "kubeconfig": self.kubeconfig,
                "security_group_id": self.security_group_id,
                "version": self.version,
            }
        )


def _trust(service: str, tag_session: bool = False) -> dict[str, object]:
    actions = ["sts:AssumeRole", "sts:TagSession"] if tag_session else ["sts:AssumeRole"]
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": actions}],
    }


def kubeconfig(name: str, endpoint: str, ca_data: str, region: str) -> str:
    """A kubeconfig for the cluster; credentials come from the caller's AWS identity at use time."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": name, "cluster": {"server": endpoint, "certificate-authority-data": ca_data}}
            ],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
            "current-context": name,
            "users": [
                {
                    "name": name,
                    "user": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1beta1",
                            "command": "aws",
                            "args": [
                                "eks",
                                "get-token",
                                "--cluster-name",
                                name,
                                "--region",
                                region,
                                "--output",
                                "json",
                            ],
                            "interactiveMode": "Never",
                        }
                    },
                }
            ],
        }
    )
