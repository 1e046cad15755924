"""GPU capacity and an hourly cost estimate of what a stack declares, priced from the dated table in
``prices.json`` (estimates only).

Three levels, each from the declared resources:

* **at rest**: every GPU workload at its smallest replica count (its scaler's minimum: an HPA's
  ``minReplicas``, a KEDA ``ScaledObject``'s ``minReplicaCount`` or an ``HTTPScaledObject``'s
  ``replicas.min``; else the Deployment's ``replicas``), each GPU node group at the nodes those
  replicas need (``ceil(replicas / (GPUs per node // GPUs per replica))``), at least its ``minSize``;
  CPU node groups at their ``minSize``.
* **at max scale**: the same with every workload at its scaler's maximum.
* **ceiling**: every node group at its ``maxSize`` (the most the account can be billed for nodes).

Each level adds the EKS control plane at its support tier, the NAT gateways, their public IPv4
addresses and one NLB per LoadBalancer Service. A node is priced as the first of its group's
instance types (on-demand managed node groups launch the types in the order given); the ceiling
prices the most expensive. The control plane costs the extended-support rate when the cluster's
upgrade policy is ``EXTENDED`` (the EKS default when none is set) and its version leaves standard
support within ``eks_extended_support_lead_days`` of the table's ``as_of`` date: the estimate is
dated with its prices, so a plan renders the same on every day.
"""

from __future__ import annotations

import datetime
import json
import math
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

# One list of NVIDIA GPU instance families, shared with the policy pack (which must stay importable
# without the rest of inferstack when the Pulumi CLI runs it).
from inferstack.policy.rules import is_gpu_instance

GPU_RESOURCE = "nvidia.com/gpu"


@cache
def price_table() -> dict[str, Any]:
    return json.loads(resources.files("inferstack.plan").joinpath("prices.json").read_text(encoding="utf-8"))


@dataclass
class NodePool:
    name: str
    instance_types: list[str]
    min_size: int
    max_size: int
    gpu: bool
    gpus_per_node: int | None
    usd_node: float | None
    """Price of the first instance type (what the group launches first)."""
    usd_max_node: float | None
    """Price of the most expensive instance type (the ceiling)."""
    nodes_rest: int = 0
    nodes_max: int = 0


@dataclass
class Workload:
    name: str
    """``namespace/name`` of the Deployment."""
    gpus_per_replica: int
    min_replicas: int
    max_replicas: int
    scaled_by: str
    """What sets the bounds: ``replicas``, ``HorizontalPodAutoscaler``, ``ScaledObject`` ..."""


@dataclass
class ControlPlane:
    name: str
    version: str
    support_type: str
    """``STANDARD`` or ``EXTENDED`` (the EKS default when the cluster sets none)."""
    end_of_standard_support: str | None
    extended: bool
    """Priced at the extended-support rate."""
    usd_per_hour: float


@dataclass
class CostEstimate:
    pools: list[NodePool] = field(default_factory=list)
    workloads: list[Workload] = field(default_factory=list)
    control_planes: list[ControlPlane] = field(default_factory=list)
    nat_gateways: int = 0
    public_ips: int = 0
    load_balancers: int = 0
    unpriced: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)
    """GPU workloads no GPU node group can hold (not counted)."""
    usd_per_hour_rest: float = 0.0
    usd_per_hour_max: float = 0.0
    usd_per_hour_ceiling: float = 0.0
    gpus_rest: int = 0
    gpus_max: int = 0
    gpus_ceiling: int = 0

    @property
    def usd_per_hour_fixed(self) -> float:
        """Control planes, NAT gateways, public IPv4 addresses and load balancers."""
        t = price_table()
        return (
            sum(c.usd_per_hour for c in self.control_planes)
            + self.nat_gateways * t["nat_gateway_usd_per_hour"]
            + self.public_ips * t["public_ipv4_usd_per_hour"]
            + self.load_balancers * t["nlb_usd_per_hour"]
        )


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def control_plane(name: str, version: str, support_type: str | None) -> ControlPlane:
    """The control plane's tier and hourly price on the price table's date (see the module doc)."""
    table = price_table()
    support = (support_type or "EXTENDED").upper()
    end = (table["eks_versions"].get(version) or {}).get("end_of_standard_support")
    extended = False
    if end is not None and support == "EXTENDED":
        as_of = datetime.date.fromisoformat(table["as_of"])
        lead = datetime.timedelta(days=table["eks_extended_support_lead_days"])
        extended = datetime.date.fromisoformat(end) <= as_of + lead
    rate = table["eks_extended_support_usd_per_hour"] if extended else table["eks_control_plane_usd_per_hour"]
    return ControlPlane(name, version, support, end, extended, rate)


def _gpus_of(pod_spec: Any) -> int:
    total = 0
    for c in (pod_spec or {}).get("containers") or []:
        res = (c or {}).get("resources") or {}
        limits, requests = res.get("limits") or {}, res.get("requests") or {}
        total += _int(limits.get(GPU_RESOURCE, requests.get(GPU_RESOURCE)))
    return total


def _scalers(resources_: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[int, int, str]]:
    """(namespace, Deployment name) -> (min, max, kind) of what scales it."""
    found: dict[tuple[str, str], tuple[int, int, str]] = {}
    for r in resources_:
        inputs = r["inputs"]
        kind = inputs.get("kind") or r["type"].rsplit(":", 1)[-1]
        spec = inputs.get("spec") or {}
        target = spec.get("scaleTargetRef") or {}
        if target.get("kind", "Deployment") != "Deployment" or not target.get("name"):
            continue
        if kind == "HorizontalPodAutoscaler":
            bounds = (_int(spec.get("minReplicas"), 1), _int(spec.get("maxReplicas"), 1))
        elif kind == "ScaledObject":  # KEDA defaults: min 0, max 100
            bounds = (_int(spec.get("minReplicaCount"), 0), _int(spec.get("maxReplicaCount"), 100))
        elif kind == "HTTPScaledObject":
            replicas = spec.get("replicas") or {}
            bounds = (_int(replicas.get("min"), 0), _int(replicas.get("max"), 100))
        else:
            continue
        key = ((inputs.get("metadata") or {}).get("namespace") or "default", str(target["name"]))
        if key in found:  # two scalers: the widest bounds
            lo, hi, k = found[key]
            bounds = (min(lo, bounds[0]), max(hi, bounds[1]))
            kind = f"{k}+{kind}"
        found[key] = (bounds[0], bounds[1], kind)
    return found


def _place(pools: list[NodePool], workloads: list[Workload], unplaced: list[str]) -> None:
    """Nodes each GPU pool needs at rest and at max scale; a workload goes to the first GPU pool
    whose nodes hold one of its replicas."""
    gpu_pools = [p for p in pools if p.gpu]
    rest = dict.fromkeys(range(len(gpu_pools)), 0)
    peak = dict.fromkeys(range(len(gpu_pools)), 0)
    for w in workloads:
        if w.gpus_per_replica <= 0:
            continue
        for i, p in enumerate(gpu_pools):
            per_node = (p.gpus_per_node or 1) // w.gpus_per_replica
            if per_node >= 1:
                rest[i] += math.ceil(w.min_replicas / per_node)
                peak[i] += math.ceil(w.max_replicas / per_node)
                break
        else:
            unplaced.append(w.name)
    for p in pools:
        p.nodes_rest = p.nodes_max = p.min_size
    for i, p in enumerate(gpu_pools):
        p.nodes_rest = min(p.max_size, max(p.min_size, rest[i]))
        p.nodes_max = min(p.max_size, max(p.min_size, peak[i]))


def estimate(snapshot: dict[str, Any]) -> CostEstimate:
    table = price_table()
    prices = table["instances"]
    est = CostEstimate()
    live = [r for r in snapshot["resources"] if not r.get("read")]
    deployments = []
    for r in live:
        inputs = r["inputs"]
        if r["type"] == "aws:eks/nodeGroup:NodeGroup":
            types = [str(t) for t in inputs.get("instanceTypes") or []]
            scaling = inputs.get("scalingConfig") or {}
            known = [prices[t] for t in types if t in prices]
            est.unpriced += [t for t in types if t not in prices]
            ami = str(inputs.get("amiType", ""))
            gpu = any(is_gpu_instance(t) for t in types) or "NVIDIA" in ami.upper() or "GPU" in ami.upper()
            gpus = [p["gpus"] for p in known]
            est.pools.append(
                NodePool(
                    name=r["name"],
                    instance_types=types,
                    min_size=_int(scaling.get("minSize")),
                    max_size=_int(scaling.get("maxSize")),
                    gpu=gpu,
                    gpus_per_node=min(gpus) if gpus else None,
                    usd_node=prices[types[0]]["usd_per_hour"] if types and types[0] in prices else None,
                    usd_max_node=max(p["usd_per_hour"] for p in known) if known else None,
                )
            )
        elif r["type"] == "aws:eks/cluster:Cluster":
            policy = inputs.get("upgradePolicy") or {}
            est.control_planes.append(
                control_plane(r["name"], str(inputs.get("version", "")), policy.get("supportType"))
            )
        elif r["type"] == "aws:ec2/natGateway:NatGateway":
            est.nat_gateways += 1
        elif r["type"] == "aws:ec2/eip:Eip":
            est.public_ips += 1
        elif r["type"] == "kubernetes:apps/v1:Deployment":
            deployments.append(r)
    # Load balancers are priced where the stack declares the EKS cluster that makes them NLBs.
    if est.control_planes:
        est.load_balancers = sum(
            1
            for r in live
            if r["type"] == "kubernetes:core/v1:Service"
            and (r["inputs"].get("spec") or {}).get("type") == "LoadBalancer"
        )
    scalers = _scalers(live)
    for r in deployments:
        inputs = r["inputs"]
        meta = inputs.get("metadata") or {}
        spec = inputs.get("spec") or {}
        ns, name = meta.get("namespace") or "default", str(meta.get("name") or r["name"])
        per_replica = _gpus_of((spec.get("template") or {}).get("spec"))
        if (ns, name) in scalers:
            lo, hi, by = scalers[(ns, name)]
        else:
            lo = hi = _int(spec.get("replicas"), 1)
            by = "replicas"
        est.workloads.append(Workload(f"{ns}/{name}", per_replica, lo, hi, by))
    _place(est.pools, est.workloads, est.unplaced)

    fixed = est.usd_per_hour_fixed
    est.usd_per_hour_rest = fixed + sum(p.nodes_rest * (p.usd_node or 0.0) for p in est.pools)
    est.usd_per_hour_max = fixed + sum(p.nodes_max * (p.usd_node or 0.0) for p in est.pools)
    est.usd_per_hour_ceiling = fixed + sum(p.max_size * (p.usd_max_node or 0.0) for p in est.pools)
    for p in est.pools:
        if p.gpu:
            per_node = p.gpus_per_node if p.gpus_per_node is not None else 1
            est.gpus_rest += p.nodes_rest * per_node
            est.gpus_max += p.nodes_max * per_node
            est.gpus_ceiling += p.max_size * per_node
    est.unpriced = sorted(set(est.unpriced))
    return est
