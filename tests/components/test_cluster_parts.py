"""Network, Cluster, GpuNodePool and NvidiaDevicePlugin alone, under Pulumi's mocks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from inferstack.components.cluster import Cluster, ClusterArgs
from inferstack.components.gpu_node_pool import GpuNodePool, GpuNodePoolArgs, gpus_per_node
from inferstack.components.network import Network, NetworkArgs
from inferstack.components.nvidia_device_plugin import NODE_LABEL, NvidiaDevicePlugin
from pulumi_harness import resolve, run_program

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
CA = "k8s.io/cluster-autoscaler"


def _pool(**kw: Any) -> GpuNodePool:
    base: dict[str, Any] = dict(
        cluster_name="inferstack-dev",
        node_role_arn="arn:aws:iam::1:role/node",
        subnet_ids=["subnet-a", "subnet-b"],
        instance_types=["g4dn.xlarge"],
        autoscaler_cluster="inferstack-dev",
        min_size=0,
        max_size=2,
        desired_size=1,
    )
    base.update(kw)
    return GpuNodePool("gpu", GpuNodePoolArgs(**base))


def test_gpu_pool_taint_label_ami_and_scale_to_zero() -> None:
    p = run_program(lambda: _pool())
    ng = p.one(NODE_GROUP)
    assert ng.inputs["amiType"] == "AL2023_x86_64_NVIDIA", ng.urn
    assert ng.inputs["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}], (
        ng.urn
    )
    assert ng.inputs["labels"]["nvidia.com/gpu.present"] == "true", ng.urn
    assert ng.inputs["scalingConfig"]["minSize"] == 0, ng.urn
    assert ng.inputs["scalingConfig"]["desiredSize"] == 1 and ng.inputs["scalingConfig"]["maxSize"] == 2, (
        ng.urn
    )
    assert "scalingConfig.desiredSize" in ng.ignore_changes, f"{ng.urn}: desired size would be fought over"
    assert ng.custom_timeouts.get("create"), ng.urn


def test_gpu_pool_carries_autoscaler_node_template_tags_on_group_and_asg() -> None:
    p = run_program(lambda: _pool(instance_types=["g5.12xlarge"]))
    ng = p.one(NODE_GROUP)
    tags = ng.inputs["tags"]
    expected = {
        f"{CA}/enabled": "true",
        f"{CA}/inferstack-dev": "owned",
        f"{CA}/node-template/label/nvidia.com/gpu.present": "true",
        f"{CA}/node-template/taint/nvidia.com/gpu": "true:NoSchedule",
        f"{CA}/node-template/resources/nvidia.com/gpu": "4",
        f"{CA}/node-template/label/k8s.amazonaws.com/accelerator": "nvidia-a10g",
    }
    for k, v in expected.items():
        assert tags.get(k) == v, f"{ng.urn}: tag {k}={tags.get(k)!r}, expected {v!r}"
    asg = {r.inputs["tag"]["key"]: r for r in p.of_type("aws:autoscaling/tag:Tag")}
    for k, v in expected.items():
        assert k in asg and asg[k].inputs["tag"]["value"] == v, f"ASG tag {k} missing"
        assert asg[k].inputs["autoscalingGroupName"] == f"eks-{ng.name}-asg", asg[k].urn


def test_gpu_pool_launch_template_has_a_large_encrypted_gp3_volume() -> None:
    p = run_program(lambda: _pool(disk_size_gib=200))
    lt = p.one("aws:ec2/launchTemplate:LaunchTemplate")
    bdm = lt.inputs["blockDeviceMappings"][0]
    assert bdm["deviceName"] == "/dev/xvda", lt.urn
    assert bdm["ebs"]["volumeType"] == "gp3" and bdm["ebs"]["volumeSize"] == 200, lt.urn
    assert bdm["ebs"]["encrypted"] == "true", lt.urn
    assert lt.inputs["metadataOptions"]["httpTokens"] == "required", lt.urn
    ng = p.one(NODE_GROUP)
    assert ng.inputs["launchTemplate"]["id"] == f"{lt.name}_id", ng.urn
    assert "diskSize" not in ng.inputs, ng.urn


def test_bottlerocket_option_uses_its_data_volume_and_its_own_device_plugin() -> None:
    p = run_program(lambda: _pool(ami_type="BOTTLEROCKET_x86_64_NVIDIA"))
    ng = p.one(NODE_GROUP)
    assert ng.inputs["amiType"] == "BOTTLEROCKET_x86_64_NVIDIA", ng.urn
    assert NODE_LABEL[0] not in ng.inputs["labels"], ng.urn
    lt = p.one("aws:ec2/launchTemplate:LaunchTemplate")
    assert lt.inputs["blockDeviceMappings"][0]["deviceName"] == "/dev/xvdb", lt.urn


def test_cpu_system_pool_has_no_taint_and_standard_ami() -> None:
    p = run_program(lambda: _pool(gpu=False, instance_types=["t3.medium"], min_size=1, desired_size=1))
    ng = p.one(NODE_GROUP)
    assert ng.inputs["amiType"] == "AL2023_x86_64_STANDARD" and not ng.inputs.get("taints"), ng.urn
    assert "nvidia.com/gpu.present" not in ng.inputs["labels"], ng.urn


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"min_size": -1}, "min_size"),
        ({"ami_type": "AL2_x86_64_GPU"}, "ami_type"),
        ({"max_size": 0}, "max_size"),
        ({"desired_size": 5}, "desired_size"),
        ({"instance_types": []}, "instance_types"),
        ({"disk_size_gib": 20}, "disk_size_gib"),
        ({"capacity_type": "RESERVED"}, "capacity_type"),
    ],
)
def test_bad_pool_args_name_the_field(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"GpuNodePoolArgs.{field}"):
        run_program(lambda: _pool(**kw))


def test_gpus_per_node_table() -> None:
    assert [gpus_per_node(t) for t in ("g4dn.xlarge", "g6.xlarge", "g5.12xlarge", "p4d.24xlarge")] == [
        1,
        1,
        4,
        8,
    ]


def test_device_plugin_tolerates_the_gpu_taint_and_targets_the_pool_label() -> None:
    def prog() -> NvidiaDevicePlugin:
        _pool()
        return NvidiaDevicePlugin("plugin")

    p = run_program(prog)
    rel = p.one("kubernetes:helm.sh/v3:Release")
    assert rel.inputs["chart"] == "nvidia-device-plugin", rel.urn
    assert rel.inputs["repositoryOpts"]["repo"] == "https://nvidia.github.io/k8s-device-plugin", rel.urn
    assert rel.inputs["version"], f"{rel.urn}: chart version must be pinned"
    values = rel.inputs["values"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in values["tolerations"], (
        rel.urn
    )
    selector = values["nodeSelector"]
    labels = p.one(NODE_GROUP).inputs["labels"]
    assert all(labels.get(k) == v for k, v in selector.items()), f"{rel.urn}: {selector} matches no GPU node"


def _network(nat: str, az: int = 3) -> Network:
    return Network(
        "net", NetworkArgs(cluster_name="inferstack-prod", cidr="10.50.0.0/16", az_count=az, nat=nat)
    )


@pytest.mark.parametrize(("nat", "count"), [("single", 1), ("perAz", 3)])
def test_network_nat_per_mode(nat: str, count: int) -> None:
    p = run_program(lambda: _network(nat))
    assert len(p.of_type("aws:ec2/natGateway:NatGateway")) == count
    subnets = p.of_type("aws:ec2/subnet:Subnet")
    assert len(subnets) == 6
    private = [s for s in subnets if "private" in s.name]
    public = [s for s in subnets if "public" in s.name]
    for s in private:
        assert s.inputs["tags"]["kubernetes.io/role/internal-elb"] == "1", s.urn
        assert s.inputs["tags"]["kubernetes.io/cluster/inferstack-prod"] == "shared", s.urn
    for s in public:
        assert s.inputs["tags"]["kubernetes.io/role/elb"] == "1", s.urn
    routes = [r for r in p.of_type("aws:ec2/route:Route") if "private" in r.name]
    assert len(routes) == 3 and all(r.inputs.get("natGatewayId") for r in routes)
    assert len(p.result.gateways) >= 1 + count + 3


def test_network_rejects_bad_args() -> None:
    with pytest.raises(ValueError, match="NetworkArgs.nat"):
        run_program(lambda: _network("none"))
    with pytest.raises(ValueError, match="NetworkArgs.az_count"):
        run_program(lambda: _network("single", az=1))


def test_cluster_is_pinned_uses_access_entries_and_pod_identity() -> None:
    arn = "arn:aws:iam::123456789012:role/platform-admin"
    p = run_program(
        lambda: Cluster(
            "c",
            ClusterArgs(
                cluster_name="inferstack-dev",
                version="1.34",
                subnet_ids=["a", "b"],
                admin_principal_arns=[arn],
            ),
        )
    )
    eks = p.one("aws:eks/cluster:Cluster")
    assert eks.inputs["version"] == "1.34" and eks.inputs["name"] == "inferstack-dev", eks.urn
    assert eks.inputs["accessConfig"]["authenticationMode"] == "API", eks.urn
    assert eks.inputs["encryptionConfig"]["resources"] == ["secrets"], eks.urn
    addon = p.one("aws:eks/addon:Addon")
    assert addon.inputs["addonName"] == "eks-pod-identity-agent", addon.urn
    assert p.one("aws:eks/accessEntry:AccessEntry").inputs["principalArn"] == arn
    policies = {
        r.inputs["policyArn"].rsplit("/", 1)[1]
        for r in p.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    }
    assert {
        "AmazonEKSClusterPolicy",
        "AmazonEKSWorkerNodePolicy",
        "AmazonEKS_CNI_Policy",
        "AmazonEC2ContainerRegistryReadOnly",
    } <= policies
    kubeconfig = json.loads(resolve(p.result.kubeconfig))
    assert kubeconfig["clusters"][0]["cluster"]["server"].startswith("https://")
    assert kubeconfig["users"][0]["user"]["exec"]["args"][:2] == ["eks", "get-token"]
    with pytest.raises(ValueError, match="ClusterArgs.version"):
        run_program(lambda: Cluster("c", ClusterArgs(cluster_name="x", version="latest", subnet_ids=[])))


def test_cluster_autoscaler_discovers_the_pools_and_may_scale_only_owned_groups() -> None:
    from inferstack.components.cluster_autoscaler import ClusterAutoscaler, ClusterAutoscalerArgs

    p = run_program(
        lambda: ClusterAutoscaler(
            "ca", ClusterAutoscalerArgs(cluster_name="inferstack-dev", cluster_version="1.34")
        )
    )
    rel = p.one("kubernetes:helm.sh/v3:Release")
    values = rel.inputs["values"]
    assert values["autoDiscovery"]["clusterName"] == "inferstack-dev", rel.urn
    # the newest patch of the cluster's minor (v1.34.0 had fixes that 1.34.5 carries)
    assert values["image"]["tag"] == "v1.34.5", rel.urn
    assert values["image"]["repository"] == "registry.k8s.io/autoscaling/cluster-autoscaler", rel.urn
    assoc = p.one("aws:eks/podIdentityAssociation:PodIdentityAssociation")
    assert assoc.inputs["serviceAccount"] == values["rbac"]["serviceAccount"]["name"], assoc.urn
    assert assoc.urn in rel.dependencies, rel.urn
    policy = json.loads(p.one("aws:iam/rolePolicy:RolePolicy").inputs["policy"])
    writes = [s for s in policy["Statement"] if "autoscaling:SetDesiredCapacity" in s["Action"]]
    assert len(writes) == 1, policy
    assert writes[0]["Resource"] != "*" and all(
        r.startswith("arn:aws:autoscaling:") for r in writes[0]["Resource"]
    )
    star = [s for s in policy["Statement"] if s["Resource"] == "*"]
    assert all(
        a.split(":")[1].startswith(("Describe", "GetInstanceTypes")) for s in star for a in s["Action"]
    )
    assert writes[0]["Condition"] == {
        "StringEquals": {"aws:ResourceTag/k8s.io/cluster-autoscaler/inferstack-dev": "owned"}
    }
    # the pools carry exactly the tag the condition asks for
    pool = run_program(lambda: _pool())
    assert pool.one(NODE_GROUP).inputs["tags"][f"{CA}/inferstack-dev"] == "owned"


@pytest.mark.parametrize(
    ("types", "model"),
    [
        (["g4dn.xlarge"], "nvidia-tesla-t4"),
        (["g5.xlarge"], "nvidia-a10g"),
        (["g6.xlarge", "g6.2xlarge"], "nvidia-l4"),
    ],
)
def test_gpu_nodes_carry_the_autoscalers_accelerator_label(types: list[str], model: str) -> None:
    p = run_program(lambda: _pool(instance_types=types))
    ng = p.one(NODE_GROUP)
    assert ng.inputs["labels"]["k8s.amazonaws.com/accelerator"] == model, ng.urn
    key = f"{CA}/node-template/label/k8s.amazonaws.com/accelerator"
    assert ng.inputs["tags"][key] == model, ng.urn
    asg = [r for r in p.of_type("aws:autoscaling/tag:Tag") if r.inputs["tag"]["key"] == key]
    assert len(asg) == 1 and asg[0].inputs["tag"]["value"] == model, "ASG lacks the accelerator template tag"


def test_cpu_pool_has_no_accelerator_label() -> None:
    p = run_program(lambda: _pool(gpu=False, instance_types=["t3.medium"], min_size=1, desired_size=1))
    ng = p.one(NODE_GROUP)
    assert "k8s.amazonaws.com/accelerator" not in ng.inputs["labels"], ng.urn
    assert not any("accelerator" in k for k in ng.inputs["tags"]), ng.urn


def test_a_pool_mixing_gpu_models_is_refused() -> None:
    with pytest.raises(ValueError, match="GpuNodePoolArgs.instance_types: .*one GPU model per pool"):
        run_program(lambda: _pool(instance_types=["g6.xlarge", "g5.xlarge"]))


def test_node_group_follows_the_cluster_version_and_depends_on_the_node_policies() -> None:
    from inferstack.components.eks_addons import EksAddons, EksAddonsArgs

    def prog() -> None:
        c = Cluster("c", ClusterArgs(cluster_name="inferstack-dev", version="1.35", subnet_ids=["a", "b"]))
        net = EksAddons(
            "net",
            EksAddonsArgs(cluster_name=c.name, cluster_version="1.35", addons=["vpc-cni", "kube-proxy"]),
        )
        _pool(
            cluster_name=c.name,
            node_role_arn=c.node_role_arn,
            version=c.version,
            node_group_depends_on=[*c.node_policy_attachments, *net.addons.values()],
        )

    p = run_program(prog)
    ng = p.one(NODE_GROUP)
    assert ng.inputs["version"] == "1.35", f"{ng.urn}: nodes do not follow the control plane"
    node_policies = [
        r for r in p.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment") if "-node-" in r.name
    ]
    assert len(node_policies) == 3
    for attachment in node_policies:
        assert attachment.urn in ng.dependencies, (
            f"{ng.urn}: created before / destroyed after {attachment.name}"
        )
    cni = p.one("aws:eks/addon:Addon", "vpc-cni")
    assert cni.urn in ng.dependencies, f"{ng.urn}: nodes join before the managed CNI"


def test_managed_addons_with_network_policy_enforcement() -> None:
    from inferstack.components.eks_addons import EksAddons, EksAddonsArgs

    p = run_program(
        lambda: EksAddons(
            "a",
            EksAddonsArgs(
                cluster_name="inferstack-dev",
                cluster_version="1.35",
                addons=["vpc-cni", "kube-proxy", "coredns"],
            ),
        )
    )
    addons = {r.inputs["addonName"]: r for r in p.of_type("aws:eks/addon:Addon")}
    assert set(addons) == {"vpc-cni", "kube-proxy", "coredns"}
    cni = addons["vpc-cni"]
    assert json.loads(cni.inputs["configurationValues"]) == {"enableNetworkPolicy": "true"}, cni.urn
    for name, a in addons.items():
        assert a.inputs["addonVersion"] == f"v-{name}-for-1.35", f"{a.urn}: not the version for the cluster's"
        assert a.inputs["resolveConflictsOnCreate"] == "OVERWRITE", a.urn
    assert "configurationValues" not in addons["coredns"].inputs
    with pytest.raises(ValueError, match="EksAddonsArgs.addons"):
        run_program(
            lambda: EksAddons("a", EksAddonsArgs(cluster_name="c", cluster_version="1.35", addons=["dns"]))
        )


@pytest.mark.parametrize("support", ["STANDARD", "EXTENDED"])
def test_cluster_support_type_is_set(support: str) -> None:
    p = run_program(
        lambda: Cluster(
            "c",
            ClusterArgs(
                cluster_name="inferstack-dev", version="1.35", subnet_ids=["a"], support_type=support
            ),
        )
    )
    eks = p.one("aws:eks/cluster:Cluster")
    assert eks.inputs["upgradePolicy"] == {"supportType": support}, eks.urn
    with pytest.raises(ValueError, match="ClusterArgs.support_type"):
        run_program(
            lambda: Cluster(
                "c", ClusterArgs(cluster_name="x", version="1.35", subnet_ids=[], support_type="LTS")
            )
        )


def test_autoscaler_image_table_covers_every_supported_cluster_version() -> None:
    from inferstack.components.cluster_autoscaler import IMAGE_TAGS
    from inferstack.components.config import CLUSTER_VERSIONS

    for version in CLUSTER_VERSIONS:
        assert IMAGE_TAGS[version].startswith(f"v{version}."), version


def test_network_has_an_s3_gateway_endpoint_on_the_private_route_tables() -> None:
    p = run_program(lambda: _network("single"))
    ep = p.one("aws:ec2/vpcEndpoint:VpcEndpoint")
    assert ep.inputs["vpcEndpointType"] == "Gateway", ep.urn
    assert ep.inputs["serviceName"] == "com.amazonaws.us-east-1.s3", ep.urn
    private_rts = {f"{r.name}_id" for r in p.of_type("aws:ec2/routeTable:RouteTable") if "private" in r.name}
    assert len(private_rts) == 3 and set(ep.inputs["routeTableIds"]) == private_rts, ep.urn


def test_zones_are_chosen_among_those_offering_the_gpu_types() -> None:
    from pulumi_harness import Mocks

    def net(az: int) -> Network:
        return Network(
            "net",
            NetworkArgs(cluster_name="c", az_count=az, gpu_instance_types=["g6.xlarge", "g6.2xlarge"]),
        )

    mocks = Mocks(unoffered={"us-east-1a": {"g6.2xlarge"}})
    p = run_program(lambda: net(2), mocks=mocks)
    zones = sorted(s.inputs["availabilityZone"] for s in p.of_type("aws:ec2/subnet:Subnet"))
    assert zones == ["us-east-1b", "us-east-1b", "us-east-1c", "us-east-1c"], zones
    with pytest.raises(
        ValueError,
        match=r"NetworkArgs.az_count: 3; only 2 zone\(s\) of us-east-1 offer g6.2xlarge, g6.xlarge",
    ):
        run_program(lambda: net(3), mocks=Mocks(unoffered={"us-east-1a": {"g6.2xlarge"}}))
