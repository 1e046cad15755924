"""EksAddons: EKS managed add-ons (``aws.eks.Addon``) at the newest version EKS offers for the
cluster's Kubernetes version.

* ``vpc-cni`` with network policy enforcement on (``{"enableNetworkPolicy": "true"}``): without it
  the NetworkPolicy objects a stack declares are accepted by the API server and enforced by nothing
  (Amazon VPC CNI docs, "Limit pod traffic with Kubernetes policies").
* ``kube-proxy`` and ``coredns``: managed, so an EKS version upgrade comes with add-on versions
  that match it instead of the ones the cluster was created with.

``vpc-cni`` and ``kube-proxy`` come before the nodes (a node joins with the CNI it will run);
``coredns`` needs nodes to run on (its add-on stays ``DEGRADED`` until they exist), so a stack
declares two ``EksAddons``: one before the node groups and one that depends on them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

TYPE = "inferstack:eks_addons:EksAddons"
ADDONS = ("vpc-cni", "kube-proxy", "coredns")
#: vpc-cni's configuration schema: the network policy agent enforces NetworkPolicy objects.
NETWORK_POLICY_CONFIG = {"enableNetworkPolicy": "true"}


@dataclass
class EksAddonsArgs:
    cluster_name: pulumi.Input[str]
    """The EKS cluster. Required."""
    cluster_version: str
    """Its Kubernetes minor version (e.g. ``1.34``): each add-on gets the newest version EKS offers
    for it. Required."""
    addons: list[str]
    """Which of ``vpc-cni``, ``kube-proxy``, ``coredns``. Required."""
    network_policy: bool = True
    """vpc-cni enforces NetworkPolicy (``enableNetworkPolicy``). Default true."""
    depends_on: list[pulumi.Resource] = field(default_factory=list)
    """What the add-ons must wait for (coredns: the node groups). Default none."""
    tags: dict[str, str] = field(default_factory=dict)
    """Tags on every add-on. Default none."""


class EksAddons(pulumi.ComponentResource):
    addons: dict[str, aws.eks.Addon]
    """Add-on name -> the ``aws.eks.Addon`` (node groups list the early ones in ``depends_on``)."""
    versions: pulumi.Output[dict[str, str]]

    def __init__(self, name: str, args: EksAddonsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if (
            not args.addons
            or any(a not in ADDONS for a in args.addons)
            or len(set(args.addons)) < len(args.addons)
        ):
            raise ValueError(
                f"EksAddonsArgs.addons: {args.addons!r}; expected distinct names from {', '.join(ADDONS)}"
            )
        if not re.match(r"^1\.[0-9]{2}$", args.cluster_version):
            raise ValueError(f"EksAddonsArgs.cluster_version: {args.cluster_version!r}; expected 1.NN")
        super().__init__(TYPE, name, None, opts)
        self.addons = {}
        for addon in args.addons:
            version = aws.eks.get_addon_version_output(
                addon_name=addon,
                kubernetes_version=args.cluster_version,
                most_recent=True,
                opts=pulumi.InvokeOutputOptions(parent=self),
            ).version
            config = json.dumps(NETWORK_POLICY_CONFIG) if addon == "vpc-cni" and args.network_policy else None
            self.addons[addon] = aws.eks.Addon(
                f"{name}-{addon}",
                cluster_name=args.cluster_name,
                addon_name=addon,
                addon_version=version,
                configuration_values=config,
                # EKS installs self-managed vpc-cni, kube-proxy and coredns with a new cluster: the
                # managed add-on takes them over (and an upgrade applies its own defaults).
                resolve_conflicts_on_create="OVERWRITE",
                resolve_conflicts_on_update="OVERWRITE",
                tags=args.tags,
                opts=pulumi.ResourceOptions(
                    parent=self,
                    depends_on=args.depends_on,
                    custom_timeouts=pulumi.CustomTimeouts(create="30m", update="30m", delete="20m"),
                ),
            )
        self.versions = pulumi.Output.all(**{k: a.addon_version for k, a in self.addons.items()})
        self.register_outputs({"versions": self.versions})
