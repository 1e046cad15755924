"""GPU capacity and an hourly cost estimate from the node groups, clusters and NAT gateways a
stack declares, priced from the table in ``prices.json`` (dated; estimates only)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

# One list of NVIDIA GPU instance families, shared with the policy pack (which must stay importable
# without the rest of inferstack when the Pulumi CLI runs it).
from inferstack.policy.rules import is_gpu_instance


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
    usd_min_node: float | None
    usd_max_node: float | None


@dataclass
class CostEstimate:
    pools: list[NodePool] = field(default_factory=list)
    clusters: int = 0
    nat_gateways: int = 0
    unpriced: list[str] = field(default_factory=list)
    usd_per_hour_min: float = 0.0
    usd_per_hour_max: float = 0.0
    gpus_min: int = 0
    gpus_max: int = 0


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def estimate(snapshot: dict[str, Any]) -> CostEstimate:
    table = price_table()
    prices = table["instances"]
    est = CostEstimate()
    for r in snapshot["resources"]:
        if r.get("read"):
            continue
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
                    usd_min_node=min(p["usd_per_hour"] for p in known) if known else None,
                    usd_max_node=max(p["usd_per_hour"] for p in known) if known else None,
                )
            )
        elif r["type"] == "aws:eks/cluster:Cluster":
            est.clusters += 1
        elif r["type"] == "aws:ec2/natGateway:NatGateway":
            est.nat_gateways += 1
    fixed = (
        est.clusters * table["eks_control_plane_usd_per_hour"]
        + est.nat_gateways * table["nat_gateway_usd_per_hour"]
    )
    est.usd_per_hour_min = est.usd_per_hour_max = fixed
    for p in est.pools:
        est.usd_per_hour_min += p.min_size * (p.usd_min_node or 0.0)
        est.usd_per_hour_max += p.max_size * (p.usd_max_node or 0.0)
        if p.gpu:
            per_node = p.gpus_per_node if p.gpus_per_node is not None else 1
            est.gpus_min += p.min_size * per_node
            est.gpus_max += p.max_size * per_node
    est.unpriced = sorted(set(est.unpriced))
    return est
