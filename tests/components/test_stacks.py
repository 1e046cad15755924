"""Each committed stack file as a whole: load the YAML, set its config, run the program under mocks."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from inferstack.components.keda_http_addon import INTERCEPTOR_LABELS
from inferstack.components.program import main
from pulumi_harness import ROOT, Program, as_manifest, container, env_of, load_stack, run_program

from inferstack.manifest import load_manifest
from inferstack.plan.k8s import is_addon_resource

STACKS = ("local", "dev", "prod")
# the object prefix of the committed package: the sha256 of its manifest.json
REVISION = hashlib.sha256(
    (ROOT / "examples" / "packages" / "tiny-linear" / "manifest.json").read_bytes()
).hexdigest()


def _config(stack: str) -> dict[str, Any]:
    cfg = load_stack(stack)
    if stack == "prod":
        cfg["inferstack:authToken"] = "prod-token"
    return cfg


@functools.cache
def _run(stack: str) -> Program:
    return run_program(main, _config(stack), stack=stack)


@pytest.mark.parametrize("stack", STACKS)
def test_outputs(stack: str) -> None:
    p = _run(stack)
    out = p.outputs
    for key in ("endpointUrl", "modelUri", "bucketName", "clusterName", "kubeconfig"):
        assert key in out, f"stack output {key} missing: {sorted(out)}"
    assert out["modelUri"] == f"s3://{out['bucketName']}/models/tiny-linear/{REVISION}/"
    assert out["endpointUrl"].startswith("http://") and out["endpointUrl"].endswith(":8000")
    assert "kubeconfig" in p.secret_outputs, "the kubeconfig must be a secret output"
    if stack != "local":
        assert out["clusterName"] == f"inferstack-{stack}"
        assert json.loads(out["kubeconfig"])["current-context"] == f"inferstack-{stack}"


@pytest.mark.parametrize("stack", STACKS)
def test_runtime_points_at_the_uploaded_prefix(stack: str) -> None:
    p = _run(stack)
    uri = p.outputs["modelUri"]
    c = container(p)
    assert c["args"] == [uri] and env_of(c)["INFERSTACK_MODEL"] == uri
    keys = {o.inputs["key"] for o in p.of_type("aws:s3/bucketObjectv2:BucketObjectv2")}
    prefix = uri.split("/", 3)[3]
    assert f"{prefix}manifest.json" in keys and f"{prefix}model.onnx" in keys, keys


@pytest.mark.parametrize("stack", STACKS)
def test_every_child_has_a_parent_and_a_derived_name(stack: str) -> None:
    p = _run(stack)
    by_urn = {r.urn: r for r in p.resources}
    for r in p.resources:
        if r.type == "pulumi:pulumi:Stack":
            continue
        parent = by_urn.get(r.parent)
        assert parent is not None, f"{r.urn} has no parent"
        if parent.type != "pulumi:pulumi:Stack":
            assert r.name.startswith(parent.name + "-"), f"{r.urn}: name not derived from {parent.name}"


@pytest.mark.parametrize("stack", STACKS)
def test_kubernetes_objects_validate_against_the_schemas(stack: str) -> None:
    p = _run(stack)
    version = _config(stack)["inferstack:clusterVersion"] + ".0"
    objects = p.kubernetes_objects()
    kinds = {o.inputs["kind"] for o in objects}
    assert {
        "Namespace",
        "ServiceAccount",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    } <= kinds, kinds
    for o in objects:
        if is_addon_resource(o.inputs):
            continue  # KEDA's custom resources: their fields are checked in test_autoscaling.py
        try:
            kubernetes_validate.validate(as_manifest(o), version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{o.urn}: {e.message} at {'/'.join(map(str, e.path))}")


def test_schema_validation_catches_a_broken_object() -> None:
    dep = as_manifest(_run("dev").one("kubernetes:apps/v1:Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = {"bad": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, "1.34.0", strict=True)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_load_balancer_service_is_destroyed_before_the_network(stack: str) -> None:
    p = _run(stack)
    services = p.of_type("kubernetes:core/v1:Service")
    (svc,) = [s for s in services if s.inputs["spec"].get("type") == "LoadBalancer"]
    deps = set(svc.dependencies)
    for typ in ("aws:ec2/internetGateway:InternetGateway", "aws:ec2/natGateway:NatGateway"):
        for r in p.of_type(typ):
            assert r.urn in deps, f"{svc.urn} does not depend on {r.urn}: destroy could remove it first"
    for r in p.of_type("aws:ec2/subnet:Subnet"):
        if "public" in r.name:
            assert r.urn in deps, f"{svc.urn} does not depend on {r.urn}"


def test_dev_stack_specifics() -> None:
    p = _run("dev")
    bucket = p.one("aws:s3/bucket:Bucket")
    assert bucket.inputs["forceDestroy"] is True and not bucket.protect, bucket.urn
    assert len(p.of_type("aws:ec2/natGateway:NatGateway")) == 1
    gpu = p.one("aws:eks/nodeGroup:NodeGroup", "gpu")
    assert gpu.inputs["instanceTypes"] == ["g4dn.xlarge"] and gpu.inputs["scalingConfig"]["minSize"] == 0, (
        gpu.urn
    )
    eks = p.one("aws:eks/cluster:Cluster")
    assert eks.inputs["version"] == "1.35" and eks.inputs["upgradePolicy"] == {"supportType": "STANDARD"}
    assert p.one("kubernetes:helm.sh/v3:Release", "device-plugin").inputs["chart"] == "nvidia-device-plugin"
    res = container(p)["resources"]
    assert res["limits"]["nvidia.com/gpu"] == "1"
    assert container(p)["imagePullPolicy"] == "IfNotPresent", "a digest cannot change"


def test_prod_stack_specifics() -> None:
    p = _run("prod")
    for typ in ("aws:s3/bucket:Bucket", "aws:kms/key:Key"):
        for r in p.of_type(typ):
            if "store" in r.name:
                assert r.protect and r.retain_on_delete and not r.inputs.get("forceDestroy"), r.urn
    assert len(p.of_type("aws:ec2/natGateway:NatGateway")) == 3
    gpu = p.one("aws:eks/nodeGroup:NodeGroup", "gpu")
    assert gpu.inputs["instanceTypes"] == ["g6.xlarge", "g6.2xlarge"], gpu.urn
    assert gpu.inputs["labels"]["k8s.amazonaws.com/accelerator"] == "nvidia-l4", gpu.urn
    assert p.one("aws:eks/cluster:Cluster").inputs["upgradePolicy"] == {"supportType": "EXTENDED"}
    assert "scalingConfig.desiredSize" in gpu.ignore_changes, gpu.urn
    assert p.one("kubernetes:core/v1:Secret", "auth").inputs["stringData"]["token"] == "prod-token"
    scaled = p.one("kubernetes:keda.sh/v1alpha1:ScaledObject")
    assert scaled.inputs["spec"]["minReplicaCount"] == 2


def test_local_stack_uses_the_s3_compatible_store_and_no_aws_infrastructure() -> None:
    p = _run("local")
    assert not [r for r in p.resources if r.type.startswith(("aws:ec2", "aws:eks", "aws:iam", "aws:kms"))]
    provider = p.one("pulumi:providers:aws")
    assert provider.inputs["s3UsePathStyle"] in (True, "true"), provider.urn
    endpoints = provider.inputs["endpoints"]
    endpoints = json.loads(endpoints) if isinstance(endpoints, str) else endpoints
    assert endpoints[0]["s3"] == "http://localhost:9000", provider.urn
    kube = p.one("pulumi:providers:kubernetes")
    assert kube.inputs["context"] == "kind-inferstack", kube.urn
    c = container(p)
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert env_of(c)["AWS_ENDPOINT_URL_S3"] == "http://minio.minio.svc.cluster.local:9000"
    # built into kind's local registry and run by digest: nothing to skip in the scan
    assert c["image"].startswith("localhost:5001/inferstack-runtime@sha256:")
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert not p.one("kubernetes:apps/v1:Deployment").inputs["metadata"].get("annotations")
    assert not [e for e in c["env"] if "valueFrom" in e], "store keys come from a mounted file"
    assert p.one("kubernetes:core/v1:Service").inputs["spec"]["type"] == "ClusterIP"


def test_rendering_is_deterministic_and_only_a_changed_model_changes_the_deployment(tmp_path: Path) -> None:
    first = run_program(main, _config("dev"), stack="dev")
    second = run_program(main, _config("dev"), stack="dev")
    assert sorted(
        (r.urn, json.dumps(r.inputs, sort_keys=True, default=_plain)) for r in first.resources
    ) == sorted((r.urn, json.dumps(r.inputs, sort_keys=True, default=_plain)) for r in second.resources)

    # The same program in a copy of the project whose model file changed.
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "Pulumi.yaml", project / "Pulumi.yaml")
    pkg = project / "examples" / "packages" / "tiny-linear"
    shutil.copytree(ROOT / "examples" / "packages" / "tiny-linear", pkg)
    from inferstack.manifest import Manifest, file_entries, write_manifest

    old = load_manifest(pkg)
    (pkg / "model.onnx").write_bytes((pkg / "model.onnx").read_bytes() + b"\x00")
    write_manifest(
        pkg, Manifest(**{**old.__dict__, "files": file_entries(pkg, ["model.onnx"]), "digest": ""})
    )
    changed = run_program(lambda: main(project), _config("dev"), stack="dev")
    dep_a = first.one("kubernetes:apps/v1:Deployment").inputs
    dep_b = changed.one("kubernetes:apps/v1:Deployment").inputs
    assert dep_a != dep_b
    new_revision = hashlib.sha256((pkg / "manifest.json").read_bytes()).hexdigest()
    assert REVISION not in json.dumps(dep_b) and new_revision in json.dumps(dep_b)


@pytest.mark.parametrize("package", ["tiny-linear", "tiny-relu", "tiny-softmax"])
def test_make_package_regenerates_the_committed_package_byte_for_byte(tmp_path: Path, package: str) -> None:
    from inferstack.examples.make_package import make_package

    make_package(tmp_path / "pkg", package)
    committed = ROOT / "examples" / "packages" / package
    for name in ("model.onnx", "manifest.json"):
        assert (tmp_path / "pkg" / name).read_bytes() == (committed / name).read_bytes(), name


@pytest.mark.skipif(
    shutil.which("pulumi") is None, reason="the Pulumi CLI is not on PATH (needed for preview)"
)
def test_automation_api_preview_of_the_local_stack(tmp_path: Path) -> None:
    """A real `pulumi preview` through the Automation API, on a copy of the project with a file
    backend (no cloud; the committed stack files are never touched)."""
    from pulumi import automation as auto

    project = tmp_path / "project"
    project.mkdir()
    for name in ("Pulumi.yaml", "__main__.py"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "stacks", project / "stacks")
    shutil.copytree(ROOT / "examples" / "packages", project / "examples" / "packages")
    (project / ".venv").symlink_to(ROOT / ".venv")
    state = tmp_path / "state"
    state.mkdir()
    env = {"PULUMI_BACKEND_URL": f"file://{state}", "PULUMI_CONFIG_PASSPHRASE": "test"}
    stack = auto.create_or_select_stack(
        stack_name="local", work_dir=str(project), opts=auto.LocalWorkspaceOptions(env_vars=env)
    )
    stack.set_config(  # as docs/infrastructure.md says: the stack file holds no secret
        "inferstack:objectStore.secretAccessKey", auto.ConfigValue("minioadmin", secret=True), path=True
    )
    result = stack.preview(on_output=lambda _: None)
    assert result.change_summary.get("create", 0) > 10, result.change_summary


def _plain(value: object) -> str:
    return str(getattr(value, "path", value))


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_aws_stacks_install_the_autoscaler_and_device_plugin_before_the_model(stack: str) -> None:
    p = _run(stack)
    charts = {r.inputs["chart"]: r for r in p.of_type("kubernetes:helm.sh/v3:Release")}
    charts = {c: charts[c] for c in ("cluster-autoscaler", "nvidia-device-plugin")}
    assert (
        charts["cluster-autoscaler"].inputs["values"]["autoDiscovery"]["clusterName"] == f"inferstack-{stack}"
    )
    svc = p.one("inferstack:inference_service:InferenceService")
    deps = set(svc.dependencies)  # the engine expands a component into its children
    for release in charts.values():
        assert release.urn in deps, f"{svc.urn} does not wait for {release.urn}"


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_aws_stacks_order_nodes_between_their_policies_cni_and_coredns(stack: str) -> None:
    p = _run(stack)
    eks = p.one("aws:eks/cluster:Cluster")
    policies = [
        r.urn for r in p.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment") if "-node-" in r.name
    ]
    addons = {r.inputs["addonName"]: r for r in p.of_type("aws:eks/addon:Addon")}
    assert {"vpc-cni", "kube-proxy", "coredns", "eks-pod-identity-agent"} <= set(addons)
    assert json.loads(addons["vpc-cni"].inputs["configurationValues"]) == {"enableNetworkPolicy": "true"}
    groups = p.of_type("aws:eks/nodeGroup:NodeGroup")
    assert len(groups) == 2
    for ng in groups:
        assert ng.inputs["version"] == eks.inputs["version"], ng.urn
        missing = [
            u
            for u in [*policies, addons["vpc-cni"].urn, addons["kube-proxy"].urn]
            if u not in ng.dependencies
        ]
        assert not missing, f"{ng.urn} does not wait for {missing}"
        assert ng.urn in addons["coredns"].dependencies, f"coredns would wait DEGRADED without {ng.urn}"
    svc = p.one("inferstack:inference_service:InferenceService")
    assert addons["vpc-cni"].urn in svc.dependencies, "the NetworkPolicy is declared before its enforcer"
    assert p.one("aws:ec2/vpcEndpoint:VpcEndpoint").inputs["vpcEndpointType"] == "Gateway"


@pytest.mark.parametrize(
    ("stack", "exposure", "svc_type", "scheme"),
    [
        ("local", "internal", "ClusterIP", None),
        ("local", "clusterIP", "ClusterIP", None),
        ("local", "nodePort", "NodePort", None),
        ("local", "public", "LoadBalancer", None),
        ("local", "loadBalancer", "LoadBalancer", None),
        ("dev", "internal", "LoadBalancer", "internal"),
        ("dev", "loadBalancer", "LoadBalancer", "internal"),
        ("dev", "public", "LoadBalancer", "internet-facing"),
        ("dev", "clusterIP", "ClusterIP", None),
    ],
)
def test_exposure_per_target(stack: str, exposure: str, svc_type: str, scheme: str | None) -> None:
    cfg = _config(stack)
    # the model's own Service (at minReplicas 0 the interceptor's front takes the exposure: below)
    cfg["inferstack:models"][0].pop("autoscaling", None)
    cfg["inferstack:models"][0]["exposure"] = exposure
    if exposure == "public":
        cfg["inferstack:models"][0]["auth"] = True
        cfg["inferstack:authToken"] = "t"
    p = run_program(main, cfg, stack=stack)
    svc = p.one("kubernetes:core/v1:Service")
    ann = svc.inputs["metadata"].get("annotations") or {}
    assert svc.inputs["spec"]["type"] == svc_type, svc.urn
    assert ann.get("service.beta.kubernetes.io/aws-load-balancer-scheme") == scheme, svc.urn
    # no wait for an address that only a LoadBalancer Service gets
    assert (ann.get("pulumi.com/skipAwait") == "true") == (svc_type != "LoadBalancer"), svc.urn


@pytest.mark.parametrize(
    ("exposure", "front_type", "scheme"),
    [
        ("internal", "LoadBalancer", "internal"),
        ("loadBalancer", "LoadBalancer", "internal"),
        ("public", "LoadBalancer", "internet-facing"),
        ("clusterIP", "ExternalName", None),
        ("ingress", "ExternalName", None),
    ],
)
def test_exposure_at_zero_fronts_the_interceptor(exposure: str, front_type: str, scheme: str | None) -> None:
    cfg = _config("dev")
    model = cfg["inferstack:models"][0]
    assert model["autoscaling"]["minReplicas"] == 0, "dev scales to zero"
    model.update(exposure=exposure, auth=True)
    cfg["inferstack:authToken"] = "t"
    if exposure == "ingress":
        model["ingress"] = {"className": "nginx", "host": "tiny.models.example.com"}
    p = run_program(main, cfg, stack="dev")
    services = {s.inputs["metadata"]["name"]: s for s in p.of_type("kubernetes:core/v1:Service")}
    hso = p.one("kubernetes:http.keda.sh/v1alpha1:HTTPScaledObject")
    backend = services.pop(hso.inputs["spec"]["scaleTargetRef"]["service"])
    # the pods' own Service: ClusterIP, not awaited (no pod to be ready at zero), no load balancer
    assert backend.inputs["spec"]["type"] == "ClusterIP", backend.urn
    assert backend.inputs["metadata"]["annotations"] == {"pulumi.com/skipAwait": "true"}, backend.urn
    # the model's own Service leads to the interceptor at any exposure (the same resource as at min 1)
    own = services.pop("tiny")
    assert own.inputs["spec"]["externalName"].startswith("keda-add-ons-http-interceptor-proxy.keda"), own.urn
    (front,) = services.values() if services else (own,)
    ann = front.inputs["metadata"].get("annotations") or {}
    assert front.inputs["spec"]["type"] == front_type, front.urn
    assert ann.get("service.beta.kubernetes.io/aws-load-balancer-scheme") == scheme, front.urn
    hosts = hso.inputs["spec"]["hosts"]
    if front_type == "LoadBalancer":
        assert front.inputs["spec"]["selector"] == INTERCEPTOR_LABELS, front.urn
        host = p.outputs_of(front.urn)["status"]["loadBalancer"]["ingress"][0]["hostname"]
        assert host in hosts and p.outputs["endpointUrl"] == f"http://{host}:8000", hosts
    else:
        assert front.inputs["spec"]["externalName"].startswith("keda-add-ons-http-interceptor-proxy.keda")
        assert "tiny.tiny.svc.cluster.local" in hosts, hosts
    ingresses = p.of_type("kubernetes:networking.k8s.io/v1:Ingress")
    if exposure == "ingress":
        (ing,) = ingresses
        # in the interceptor's namespace, to its proxy Service; the interceptor routes the host
        assert ing.inputs["metadata"]["namespace"] == "keda", ing.urn
        (rule,) = ing.inputs["spec"]["rules"]
        backend_ref = rule["http"]["paths"][0]["backend"]["service"]
        assert backend_ref == {"name": "keda-add-ons-http-interceptor-proxy", "port": {"number": 8000}}
        assert rule["host"] == "tiny.models.example.com" and rule["host"] in hosts, hosts
        assert ing.inputs["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true", ing.urn
        assert p.outputs["endpointUrl"] == "http://tiny.models.example.com"
        kubernetes_validate.validate(as_manifest(ing), "1.35.0", strict=True)
    else:
        assert not ingresses, [i.urn for i in ingresses]


def test_node_port_at_zero_is_a_config_error() -> None:
    from inferstack.components.config import ConfigError

    cfg = _config("dev")
    cfg["inferstack:models"][0]["exposure"] = "nodePort"
    with pytest.raises(ConfigError, match=r"models\[0\]\.exposure: 'nodePort' .*minReplicas 0"):
        run_program(main, cfg, stack="dev")
    cfg["inferstack:models"][0]["autoscaling"]["minReplicas"] = 1
    p = run_program(main, cfg, stack="dev")
    assert p.one("kubernetes:core/v1:Service").inputs["spec"]["type"] == "NodePort"


def test_ingress_exposure_on_any_cluster() -> None:
    cfg = _config("local")
    cfg["inferstack:models"][0].update(
        exposure="ingress", ingress={"className": "traefik", "host": "tiny.example.com"}
    )
    p = run_program(main, cfg, stack="local")
    assert p.one("kubernetes:core/v1:Service").inputs["spec"]["type"] == "ClusterIP"
    ing = p.one("kubernetes:networking.k8s.io/v1:Ingress")
    assert ing.inputs["spec"]["ingressClassName"] == "traefik", ing.urn
    assert p.outputs["endpointUrl"] == "http://tiny.example.com"
    kubernetes_validate.validate(as_manifest(ing), "1.34.0", strict=True)


def test_model_cache_size_from_the_stack() -> None:
    cfg = _config("dev")
    cfg["inferstack:models"][0]["cacheSize"] = "30Gi"
    p = run_program(main, cfg, stack="dev")
    c = container(p)
    assert c["resources"]["limits"]["ephemeral-storage"] == f"{30 * 1024 + 1536}Mi"
    volumes = p.one("kubernetes:apps/v1:Deployment").inputs["spec"]["template"]["spec"]["volumes"]
    assert {v["name"]: v for v in volumes}["model-cache"]["emptyDir"]["sizeLimit"] == "30Gi"


@pytest.mark.parametrize("style", ["path", "virtual"])
def test_addressing_style_reaches_the_provider_and_the_runtime(style: str) -> None:
    cfg = _config("local")
    cfg["inferstack:objectStore"]["addressingStyle"] = style
    p = run_program(main, cfg, stack="local")
    provider = p.one("pulumi:providers:aws")
    assert provider.inputs["s3UsePathStyle"] in ((style == "path"), str(style == "path").lower()), (
        provider.urn
    )
    assert env_of(container(p))["INFERSTACK_S3_ADDRESSING_STYLE"] == style


def test_an_exact_bucket_name_gets_no_suffix() -> None:
    cfg = _config("local")
    cfg["inferstack:modelStore"] = {"bucketName": "models-1250000000", "forceDestroy": True}
    p = run_program(main, cfg, stack="local")
    bucket = p.one("aws:s3/bucket:Bucket")
    assert bucket.inputs["bucket"] == "models-1250000000" and "bucketPrefix" not in bucket.inputs, bucket.urn
    assert p.outputs["bucketName"] == "models-1250000000"
    assert p.outputs["modelUri"].startswith("s3://models-1250000000/models/")


def test_too_few_zones_offering_the_gpu_type_is_a_config_error() -> None:
    from inferstack.components.config import ConfigError
    from pulumi_harness import Mocks

    mocks = Mocks(unoffered={"us-east-1a": {"g6.xlarge"}})
    with pytest.raises(ConfigError) as info:
        run_program(main, _config("prod"), stack="prod", mocks=mocks)
    msg = str(info.value)
    assert msg.startswith("inferstack:network.azCount: 3 is not allowed; expected at most 2:"), msg
    assert "us-east-1b, us-east-1c" in msg, msg
