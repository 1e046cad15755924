"""The cost estimate counts what keeps nodes up: the workloads' GPU replicas at rest and at max
scale, the control plane at its support tier, NAT gateways, their addresses and load balancers."""

from __future__ import annotations

from typing import Any

import pytest

from inferstack.plan.cost import estimate, price_table

T = price_table()
G4DN = T["instances"]["g4dn.xlarge"]["usd_per_hour"]
G5_12 = "g5.12xlarge"


def _r(type_: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    return {"type": type_, "name": name, "inputs": inputs}


def _cluster(version: str = "1.35", support: str | None = "STANDARD") -> dict[str, Any]:
    inputs: dict[str, Any] = {"version": version}
    if support:
        inputs["upgradePolicy"] = {"supportType": support}
    return _r("aws:eks/cluster:Cluster", "eks", inputs)


def _pool(types: list[str], lo: int, hi: int) -> dict[str, Any]:
    return _r(
        "aws:eks/nodeGroup:NodeGroup",
        "gpu",
        {
            "instanceTypes": types,
            "amiType": "AL2023_x86_64_NVIDIA",
            "scalingConfig": {"minSize": lo, "maxSize": hi},
        },
    )


def _deployment(gpus: int, replicas: int | None = None, name: str = "tiny") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "template": {"spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}}
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return _r(
        "kubernetes:apps/v1:Deployment",
        name,
        {"kind": "Deployment", "metadata": {"name": name, "namespace": name}, "spec": spec},
    )


def _scaler(kind: str, spec: dict[str, Any], target: str = "tiny") -> dict[str, Any]:
    group = {"HorizontalPodAutoscaler": "autoscaling/v2", "ScaledObject": "keda.sh/v1alpha1"}.get(
        kind, "http.keda.sh/v1alpha1"
    )
    return _r(
        f"kubernetes:{group}:{kind}",
        f"{target}-scaler",
        {
            "kind": kind,
            "metadata": {"name": target, "namespace": target},
            "spec": {"scaleTargetRef": {"name": target}, **spec},
        },
    )


def _est(*resources: dict[str, Any]) -> Any:
    return estimate({"resources": list(resources)})


def test_one_gpu_replica_keeps_a_gpu_node_up_at_rest() -> None:
    est = _est(_cluster(), _pool(["g4dn.xlarge"], 0, 3), _deployment(gpus=1, replicas=1))
    assert est.gpus_rest == 1 and est.gpus_max == 1 and est.gpus_ceiling == 3
    cp = T["eks_control_plane_usd_per_hour"]
    assert est.usd_per_hour_rest == pytest.approx(cp + G4DN)
    assert est.usd_per_hour_ceiling == pytest.approx(cp + 3 * G4DN)


@pytest.mark.parametrize(
    ("kind", "spec", "rest", "peak"),
    [
        ("HorizontalPodAutoscaler", {"minReplicas": 2, "maxReplicas": 4}, 2, 4),
        ("ScaledObject", {"minReplicaCount": 0, "maxReplicaCount": 3}, 0, 3),
        ("ScaledObject", {"maxReplicaCount": 2}, 0, 2),  # KEDA's default minimum is 0
        ("HTTPScaledObject", {"replicas": {"min": 0, "max": 2}}, 0, 2),
    ],
)
def test_replicas_come_from_the_scaler(kind: str, spec: dict[str, Any], rest: int, peak: int) -> None:
    est = _est(_cluster(), _pool(["g4dn.xlarge"], 0, 5), _deployment(gpus=1), _scaler(kind, spec))
    assert (est.gpus_rest, est.gpus_max) == (rest, peak), est.workloads
    cp = T["eks_control_plane_usd_per_hour"]
    assert est.usd_per_hour_rest == pytest.approx(cp + rest * G4DN)
    assert est.usd_per_hour_max == pytest.approx(cp + peak * G4DN)


def test_scale_to_zero_still_keeps_the_pools_minimum() -> None:
    est = _est(_cluster(), _pool(["g4dn.xlarge"], 1, 3), _deployment(gpus=1), _scaler("ScaledObject", {}))
    assert est.gpus_rest == 1


def test_replicas_do_not_split_across_nodes() -> None:
    # 3 GPUs per replica on 4-GPU nodes: one replica per node, 4 replicas need 4 nodes (not 3)
    est = _est(_cluster(), _pool([G5_12], 0, 8), _deployment(gpus=3, replicas=4))
    assert est.pools[0].nodes_rest == 4 and est.gpus_rest == 16


def test_a_replica_larger_than_any_node_is_reported_not_priced() -> None:
    est = _est(_cluster(), _pool(["g4dn.xlarge"], 0, 3), _deployment(gpus=2, replicas=1))
    assert est.unplaced == ["tiny/tiny"] and est.gpus_rest == 0


@pytest.mark.parametrize(
    ("version", "support", "extended"),
    [
        ("1.34", "EXTENDED", True),  # leaves standard support 2026-12-02, within 30 days of the table
        ("1.34", None, True),  # no policy: EKS's default is EXTENDED
        ("1.34", "STANDARD", False),  # upgraded by EKS instead, never billed as extended
        ("1.33", "EXTENDED", True),
        ("1.35", "EXTENDED", False),  # standard until 2027-03-27
    ],
)
def test_control_plane_is_priced_at_its_support_tier(
    version: str, support: str | None, extended: bool
) -> None:
    est = _est(_cluster(version, support))
    rate = T["eks_extended_support_usd_per_hour" if extended else "eks_control_plane_usd_per_hour"]
    assert est.control_planes[0].extended is extended
    assert est.usd_per_hour_rest == pytest.approx(rate)
    assert T["eks_extended_support_usd_per_hour"] == 0.60 and T["eks_control_plane_usd_per_hour"] == 0.10


def test_nat_addresses_and_load_balancers_are_counted() -> None:
    lb = _r("kubernetes:core/v1:Service", "svc", {"kind": "Service", "spec": {"type": "LoadBalancer"}})
    cip = _r("kubernetes:core/v1:Service", "svc2", {"kind": "Service", "spec": {"type": "ClusterIP"}})
    nat = _r("aws:ec2/natGateway:NatGateway", "nat", {})
    eip = _r("aws:ec2/eip:Eip", "eip", {})
    est = _est(_cluster(), nat, eip, lb, cip)
    assert (est.nat_gateways, est.public_ips, est.load_balancers) == (1, 1, 1)
    expected = (
        T["eks_control_plane_usd_per_hour"]
        + T["nat_gateway_usd_per_hour"]
        + T["public_ipv4_usd_per_hour"]
        + T["nlb_usd_per_hour"]
    )
    assert est.usd_per_hour_rest == pytest.approx(expected)
    # on an existing cluster (no EKS declared) its load balancers are its provider's to price
    assert _est(lb).load_balancers == 0


def test_every_supported_cluster_version_has_support_dates() -> None:
    from inferstack.components.config import CLUSTER_VERSIONS

    for v in CLUSTER_VERSIONS:
        dates = T["eks_versions"][v]
        assert dates["end_of_standard_support"] < dates["end_of_extended_support"], v


def test_the_summary_says_how_the_ceiling_prices_a_node() -> None:
    # a group of two types: at rest and at max the first one, the ceiling the dearest; the text
    # under the table must say so, with the numbers it states
    from inferstack.plan.summary import render_summary

    cheap, dear = "g4dn.xlarge", G5_12
    assert T["instances"][dear]["usd_per_hour"] > G4DN
    resources = [_cluster(), _pool([cheap, dear], 1, 2), _deployment(1, 1)]
    snapshot = {
        "project": "p",
        "stack": "t",
        "resources": [{**r, "custom": True, "urn": r["name"], "parent": ""} for r in resources],
    }
    cost = estimate(snapshot)
    pool = cost.pools[0]
    assert pool.usd_node == G4DN and pool.usd_max_node == T["instances"][dear]["usd_per_hour"]
    text = " ".join(render_summary(snapshot, cost, [], "1.35", "test", []).split())
    assert "the ceiling prices each group's dearest type" in text, text
    assert "A node is priced as its group's first instance type." not in text
    assert "max size of its dearest instance type" in text
