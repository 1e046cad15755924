"""InferenceService alone, under Pulumi's mocks: what the pods may do, how they start, how they roll."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pytest
from inferstack.components.inference_service import (
    InferenceService,
    InferenceServiceArgs,
    S3Credentials,
    credentials_file,
)
from pulumi_harness import container, env_of, resolve, run_program

URI = "s3://models-bucket/models/tiny-linear/abc123/"
PREFIX = "models/tiny-linear/abc123/"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"


def _svc(**kw: Any) -> InferenceService:
    base: dict[str, Any] = dict(
        model_name="tiny",
        image="registry/runtime:1",
        model_uri=URI,
        bucket="models-bucket",
        model_prefix=PREFIX,
        cluster_name="inferstack-dev",
        kms_key_arn="arn:aws:kms:us-east-1:123456789012:key/k",
    )
    base.update(kw)
    return InferenceService("tiny", InferenceServiceArgs(**base))


def test_gpu_pods_tolerate_the_taint_request_the_gpu_and_select_gpu_nodes() -> None:
    p = run_program(lambda: _svc(gpus=1))
    dep = p.one(DEPLOYMENT)
    pod = dep.inputs["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"} in pod[
        "tolerations"
    ], dep.urn
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, dep.urn
    res = container(p)["resources"]
    assert res["requests"]["nvidia.com/gpu"] == "1" and res["limits"]["nvidia.com/gpu"] == "1", dep.urn
    assert env_of(container(p))["INFERSTACK_REQUIRE_GPU"] == "true", dep.urn


def test_cpu_pods_have_no_gpu_request_toleration_or_selector() -> None:
    p = run_program(lambda: _svc(gpus=0))
    pod = p.one(DEPLOYMENT).inputs["spec"]["template"]["spec"]
    assert "tolerations" not in pod and "nodeSelector" not in pod
    assert "nvidia.com/gpu" not in container(p)["resources"]["limits"]
    assert env_of(container(p))["INFERSTACK_REQUIRE_GPU"] == "false"


def test_probes_use_the_v2_health_endpoints_and_the_startup_probe_covers_a_gpu_cold_start() -> None:
    p = run_program(lambda: _svc(startup_timeout_s=900))
    c, urn = container(p), p.one(DEPLOYMENT).urn
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready", urn
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live", urn
    startup = c["startupProbe"]
    # live answers once the port is open; only ready waits for download, checksum and warm-up
    assert startup["httpGet"]["path"] == "/v2/health/ready", urn
    window = startup["periodSeconds"] * startup["failureThreshold"]
    assert window >= 900, f"{urn}: startup probe gives up after {window}s"


def test_container_is_hardened_and_sized() -> None:
    p = run_program(lambda: _svc(cpu="3", memory="12Gi"))
    dep = p.one(DEPLOYMENT)
    pod = dep.inputs["spec"]["template"]["spec"]
    c = container(p)
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True, dep.urn
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], dep.urn
    assert sc["seccompProfile"]["type"] == "RuntimeDefault", dep.urn
    assert pod["securityContext"]["runAsNonRoot"] is True, dep.urn
    assert pod["automountServiceAccountToken"] is False, dep.urn
    # read-only root: the model cache is an emptyDir, and INFERSTACK_CACHE_DIR points into it
    cache = next(m for m in c["volumeMounts"] if m["name"] == "model-cache")
    assert env_of(c)["INFERSTACK_CACHE_DIR"] == cache["mountPath"], dep.urn
    assert any(v["name"] == "model-cache" and "emptyDir" in v for v in pod["volumes"]), dep.urn
    for part in ("requests", "limits"):
        assert c["resources"][part]["cpu"] == "3" and c["resources"][part]["memory"] == "12Gi", dep.urn


def test_runtime_is_pointed_at_the_model_uri_with_the_digest() -> None:
    p = run_program(lambda: _svc())
    c = container(p)
    assert "command" not in c and c["args"] == [URI], "the image's entrypoint runs the runtime"
    assert env_of(c)["INFERSTACK_MODEL"] == URI
    assert env_of(c)["INFERSTACK_PORT"] == "8000"


def test_rollout_never_drops_below_capacity_and_waits_long_enough() -> None:
    p = run_program(lambda: _svc(await_timeout="30m"))
    dep = p.one(DEPLOYMENT)
    strategy = dep.inputs["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0, dep.urn
    assert dep.custom_timeouts["create"] == "30m" and dep.custom_timeouts["update"] == "30m", dep.urn
    ann = dep.inputs["metadata"].get("annotations") or {}
    assert "pulumi.com/skipAwait" not in ann, f"{dep.urn}: the await must not be skipped"
    pod_ann = dep.inputs["spec"]["template"]["metadata"]["annotations"]
    assert pod_ann["prometheus.io/scrape"] == "true" and pod_ann["prometheus.io/port"] == "8000", dep.urn


def test_an_autoscaled_deployment_starts_at_its_minimum_and_keeps_the_live_count() -> None:
    p = run_program(
        lambda: _svc(replicas=0, autoscaled=True, backend_service="tiny-backend", external_name="proxy.keda")
    )
    dep = p.one(DEPLOYMENT)
    assert dep.inputs["spec"]["replicas"] == 0, f"{dep.urn}: a model that scales to zero starts at zero"
    assert "spec.replicas" in dep.ignore_changes, f"{dep.urn}: pulumi up would reset KEDA's count"
    services = {s.inputs["metadata"]["name"]: s for s in p.of_type("kubernetes:core/v1:Service")}
    pods = dep.inputs["spec"]["selector"]["matchLabels"]
    assert services["tiny-backend"].inputs["spec"]["selector"] == pods
    skip = services["tiny-backend"].inputs["metadata"]["annotations"]["pulumi.com/skipAwait"]
    assert skip == "true", "no ready endpoint at zero: an await would hold `pulumi up`"
    assert services["tiny"].inputs["spec"]["externalName"] == "proxy.keda"
    assert not p.of_type("kubernetes:autoscaling/v2:HorizontalPodAutoscaler"), "no CPU HPA"
    fixed = run_program(lambda: _svc(replicas=2)).one(DEPLOYMENT)
    assert fixed.inputs["spec"]["replicas"] == 2 and not fixed.ignore_changes, fixed.urn


def test_pdb_and_network_policy() -> None:
    p = run_program(lambda: _svc())

    pdb = p.one("kubernetes:policy/v1:PodDisruptionBudget")
    assert pdb.inputs["spec"]["maxUnavailable"] == 1, pdb.urn
    labels = p.one(DEPLOYMENT).inputs["spec"]["selector"]["matchLabels"]
    assert pdb.inputs["spec"]["selector"]["matchLabels"] == labels, pdb.urn

    np = p.one("kubernetes:networking.k8s.io/v1:NetworkPolicy")
    assert np.inputs["spec"]["podSelector"]["matchLabels"] == labels, np.urn
    assert np.inputs["spec"]["policyTypes"] == ["Ingress", "Egress"], np.urn
    assert np.inputs["spec"]["ingress"] == [
        {"ports": [{"protocol": "TCP", "port": 8000}, {"protocol": "TCP", "port": 8001}]}], np.urn


def test_both_protocols_have_a_container_and_service_port_and_probes_stay_on_http() -> None:
    p = run_program(lambda: _svc(grpc_port=9001))
    c = container(p)
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"},
                          {"name": "grpc", "containerPort": 9001, "protocol": "TCP"}], c
    assert {"name": "INFERSTACK_GRPC_PORT", "value": "9001"} in c["env"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == "http", probe
    svc = p.one("kubernetes:core/v1:Service")
    assert svc.inputs["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"},
        {"name": "grpc", "port": 9001, "targetPort": "grpc", "protocol": "TCP",
         "appProtocol": "kubernetes.io/h2c"},
    ], svc.urn


@pytest.mark.parametrize(
    ("exposure", "scheme", "svc_type", "awaited"),
    [
        ("clusterIP", None, "ClusterIP", False),
        ("nodePort", None, "NodePort", False),
        ("loadBalancer", None, "LoadBalancer", True),
        ("loadBalancer", "internal", "LoadBalancer", True),
        ("loadBalancer", "internet-facing", "LoadBalancer", True),
    ],
)
def test_service_type_per_exposure_and_only_a_load_balancer_is_awaited(
    exposure: str, scheme: str | None, svc_type: str, awaited: bool
) -> None:
    p = run_program(lambda: _svc(exposure=exposure, load_balancer_scheme=scheme))
    svc = p.one("kubernetes:core/v1:Service")
    assert svc.inputs["spec"]["type"] == svc_type, svc.urn
    ann = svc.inputs["metadata"].get("annotations") or {}
    assert ann.get("service.beta.kubernetes.io/aws-load-balancer-scheme") == scheme, svc.urn
    assert (ann.get("pulumi.com/skipAwait") != "true") == awaited, f"{svc.urn}: {ann}"
    if scheme == "internal":
        assert ann["service.beta.kubernetes.io/aws-load-balancer-internal"] == "true", svc.urn
    assert not p.of_type("kubernetes:networking.k8s.io/v1:Ingress")
    url = resolve(p.result.endpoint_url)
    assert url.endswith(":8000") and url.startswith("http://")


def test_pod_identity_role_reads_only_the_model_prefix() -> None:
    p = run_program(lambda: _svc())
    role = p.one("aws:iam/role:Role")
    trust = json.loads(role.inputs["assumeRolePolicy"])
    assert trust["Statement"][0]["Principal"] == {"Service": "pods.eks.amazonaws.com"}, role.urn

    policy = p.one("aws:iam/rolePolicy:RolePolicy")
    doc = json.loads(policy.inputs["policy"])
    actions = {a for s in doc["Statement"] for a in s["Action"]}
    assert actions == {"s3:GetObject", "s3:ListBucket", "kms:Decrypt"}, f"{policy.urn}: {actions}"
    for s in doc["Statement"]:
        assert s["Effect"] == "Allow" and "*" not in s["Resource"], policy.urn
        assert all(not a.endswith("*") for a in s["Action"]), policy.urn
    get = next(s for s in doc["Statement"] if s["Action"] == ["s3:GetObject"])
    assert get["Resource"] == [f"arn:aws:s3:::models-bucket/{PREFIX}*"], policy.urn
    lst = next(s for s in doc["Statement"] if s["Action"] == ["s3:ListBucket"])
    assert lst["Resource"] == ["arn:aws:s3:::models-bucket"], policy.urn
    assert lst["Condition"]["StringLike"]["s3:prefix"] == [PREFIX, f"{PREFIX}*"], policy.urn

    assoc = p.one("aws:eks/podIdentityAssociation:PodIdentityAssociation")
    assert (assoc.inputs["namespace"], assoc.inputs["serviceAccount"]) == ("tiny", "tiny"), assoc.urn
    assert assoc.inputs["roleArn"].endswith(f"role/{role.name}"), assoc.urn
    assert p.one("kubernetes:core/v1:ServiceAccount").inputs["metadata"]["name"] == "tiny"
    assert p.one(DEPLOYMENT).inputs["spec"]["template"]["spec"]["serviceAccountName"] == "tiny"
    assert assoc.urn in p.one(DEPLOYMENT).dependencies, "pods start after their identity exists"


def _on_s3_compatible_store() -> InferenceService:
    return _svc(
        cluster_name=None,
        kms_key_arn=None,
        s3_credentials=S3Credentials("minio", pulumi.Output.secret("minio-secret")),
        s3_endpoint="http://minio.minio.svc.cluster.local:9000",
    )


def test_s3_compatible_store_gets_a_mounted_credentials_file_and_the_endpoint() -> None:
    p = run_program(_on_s3_compatible_store)
    assert not p.of_type("aws:iam/role:Role")
    secret = p.one("kubernetes:core/v1:Secret", "s3")
    assert secret.inputs["stringData"] == {
        "credentials": "[default]\naws_access_key_id = minio\naws_secret_access_key = minio-secret\n"
    }, secret.urn
    c = container(p)
    env = env_of(c)
    assert env["AWS_ENDPOINT_URL_S3"] == "http://minio.minio.svc.cluster.local:9000"
    # the keys never enter the environment: no key variables, no secretKeyRef at all
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env)
    assert not [e for e in c["env"] if "valueFrom" in e], c["env"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "s3-credentials")
    assert mount["readOnly"] is True
    assert env["AWS_SHARED_CREDENTIALS_FILE"] == f"{mount['mountPath']}/credentials"
    volumes = p.one(DEPLOYMENT).inputs["spec"]["template"]["spec"]["volumes"]
    volume = next(v for v in volumes if v["name"] == "s3-credentials")
    assert volume["secret"] == {"secretName": secret.inputs["metadata"]["name"], "defaultMode": 0o440}
    np = p.one("kubernetes:networking.k8s.io/v1:NetworkPolicy")
    ports = [pt["port"] for rule in np.inputs["spec"]["egress"] for pt in rule["ports"]]
    assert 9000 in ports, f"{np.urn}: the store's port must be reachable"


def test_aws_pods_get_no_credentials_file() -> None:
    p = run_program(lambda: _svc())
    c = container(p)
    assert "AWS_SHARED_CREDENTIALS_FILE" not in env_of(c)
    assert not [m for m in c["volumeMounts"] if m["name"] == "s3-credentials"]
    assert not p.of_type("kubernetes:core/v1:Secret")


@pytest.mark.parametrize("bad", ["", "key\n[other]", "a]b"])
def test_credentials_that_would_break_the_file_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="S3Credentials.access_key_id"):
        credentials_file(bad, "secret")


@pytest.mark.parametrize(
    ("image", "requested", "policy", "skipped"),
    [
        ("registry/runtime:1", None, "Always", ["CKV_K8S_43"]),
        ("registry/runtime:1@sha256:" + "a" * 64, None, "IfNotPresent", []),
        ("registry/runtime@sha256:" + "b" * 64, "Always", "Always", []),
        ("inferstack-runtime:cpu", "IfNotPresent", "IfNotPresent", ["CKV_K8S_43", "CKV_K8S_15"]),
        ("inferstack-runtime:cpu", "Never", "Never", ["CKV_K8S_43", "CKV_K8S_15"]),
    ],
)
def test_pull_policy_and_the_scan_skips_it_explains(
    image: str, requested: str | None, policy: str, skipped: list[str]
) -> None:
    p = run_program(lambda: _svc(image=image, image_pull_policy=requested))
    c = container(p)
    assert c["image"] == image and c["imagePullPolicy"] == policy
    annotations = p.one(DEPLOYMENT).inputs["metadata"].get("annotations") or {}
    skips = dict(v.split("=", 1) for k, v in annotations.items() if k.startswith("checkov.io/skip"))
    assert sorted(skips) == sorted(skipped)
    for check, reason in skips.items():
        # checkov splits an annotation at '=': exactly one, and a reason that names the image
        assert "=" not in reason and image in reason, (check, reason)
    if "CKV_K8S_15" in skips:
        assert f"imagePullPolicy {policy}" in skips["CKV_K8S_15"]
    elif skipped:
        assert "pin it by digest" in skips["CKV_K8S_43"]


def test_auth_token_is_a_mounted_secret_file() -> None:
    p = run_program(lambda: _svc(auth_token=pulumi.Output.secret("tok")))
    secret = p.one("kubernetes:core/v1:Secret", "auth")
    c = container(p)
    path = env_of(c)["INFERSTACK_AUTH_TOKEN_FILE"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "auth")
    assert path == f"{mount['mountPath']}/token" and mount["readOnly"] is True, secret.urn
    assert "INFERSTACK_AUTH_TOKEN" not in env_of(c), "the token must not sit in the pod spec"
    no_auth = run_program(lambda: _svc())
    assert "INFERSTACK_AUTH_TOKEN_FILE" not in env_of(container(no_auth))


def test_service_outlives_the_resources_it_is_told_to() -> None:
    def prog() -> InferenceService:
        gate = pulumi.CustomResource("test:index:Gateway", "gateway", {})
        return _svc(
            exposure="loadBalancer", load_balancer_scheme="internet-facing", service_depends_on=[gate]
        )

    p = run_program(prog)
    gate = p.one("test:index:Gateway")
    svc = p.one("kubernetes:core/v1:Service")
    assert gate.urn in svc.dependencies, f"{svc.urn}: destroy would not wait for the load balancer"


def test_every_child_is_parented_and_named_after_the_component() -> None:
    p = run_program(lambda: _svc(auth_token="t"))
    comp = p.one("inferstack:inference_service:InferenceService")
    children = [r for r in p.resources if r.parent == comp.urn]
    assert len(children) >= 10
    for r in children:
        assert r.name.startswith("tiny-"), r.urn


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"model_name": "Tiny_Model"}, "model_name"),
        ({"exposure": "world"}, "exposure"),
        ({"model_prefix": "models/*"}, "model_prefix"),
        ({"gpus": 9}, "gpus"),
        ({"replicas": 0}, "replicas"),
        ({"backend_service": "Backend_1", "external_name": "x"}, "backend_service"),
        ({"backend_service": "tiny-backend"}, "backend_service/external_name"),
        ({"port": 80}, "port"),
        ({"grpc_port": 8000}, "grpc_port"),
        ({"grpc_port": 443}, "grpc_port"),
        ({"s3_credentials": S3Credentials("a", "b")}, "s3_credentials"),
        ({"image_pull_policy": "Sometimes"}, "image_pull_policy"),
    ],
)
def test_bad_args_name_the_field(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"InferenceServiceArgs.{field}"):
        run_program(lambda: _svc(**kw))


def test_outputs_checked_through_apply_carry_the_urn() -> None:
    def prog() -> pulumi.Output[None]:
        svc = _svc(exposure="clusterIP")

        def check(args: list[Any]) -> None:
            urn, url, namespace, role_arn = args
            assert url == "http://tiny.tiny.svc.cluster.local:8000", f"{urn}: endpoint {url}"
            assert namespace == "tiny", f"{urn}: namespace {namespace}"
            assert role_arn.startswith("arn:aws:iam::"), f"{urn}: role {role_arn}"

        return pulumi.Output.all(svc.urn, svc.endpoint_url, svc.namespace, svc.role_arn).apply(check)

    run_program(prog)

    def failing() -> pulumi.Output[None]:
        svc = _svc()

        def check(args: list[Any]) -> None:
            assert args[1] == "elsewhere", f"{args[0]}: endpoint {args[1]}"

        return pulumi.Output.all(svc.urn, svc.endpoint_url).apply(check)

    with pytest.raises(AssertionError, match="InferenceService::tiny: endpoint"):
        run_program(failing)


def test_pods_drain_after_a_delay_within_the_grace_period() -> None:
    """On SIGTERM the runtime keeps serving (readiness 503) while the endpoint removal spreads, then
    drains: the grace period covers the delay plus the longest request."""
    p = run_program(lambda: _svc())
    dep = p.one(DEPLOYMENT)
    delay = float(env_of(container(p))["INFERSTACK_DRAIN_DELAY_S"])
    assert delay >= 5, dep.urn
    grace = dep.inputs["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= delay + 30 + 10, dep.urn


def test_ingress_exposure_routes_to_a_cluster_ip_service_without_waiting() -> None:
    p = run_program(
        lambda: _svc(exposure="ingress", ingress_class="nginx", ingress_host="tiny.models.example.com")
    )
    svc = p.one("kubernetes:core/v1:Service")
    assert svc.inputs["spec"]["type"] == "ClusterIP", svc.urn
    assert svc.inputs["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true", svc.urn
    ing = p.one("kubernetes:networking.k8s.io/v1:Ingress")
    assert ing.inputs["spec"]["ingressClassName"] == "nginx", ing.urn
    rule = ing.inputs["spec"]["rules"][0]
    assert rule["host"] == "tiny.models.example.com", ing.urn
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "tiny", "port": {"name": "http"}}, ing.urn
    assert ing.inputs["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true", ing.urn
    assert resolve(p.result.endpoint_url) == "http://tiny.models.example.com"
    with pytest.raises(ValueError, match="InferenceServiceArgs.ingress_class"):
        run_program(lambda: _svc(exposure="ingress", ingress_host="a.example.com"))
    with pytest.raises(ValueError, match="InferenceServiceArgs.load_balancer_scheme"):
        run_program(lambda: _svc(exposure="clusterIP", load_balancer_scheme="internal"))


@pytest.mark.parametrize(("cache", "mib"), [("10Gi", 10 * 1024 + 1024 + 512), ("40Gi", 40 * 1024 + 1536)])
def test_ephemeral_storage_matches_the_model_cache(cache: str, mib: int) -> None:
    p = run_program(lambda: _svc(cache_size=cache))
    c, urn = container(p), p.one(DEPLOYMENT).urn
    volumes = {v["name"]: v for v in p.one(DEPLOYMENT).inputs["spec"]["template"]["spec"]["volumes"]}
    assert volumes["model-cache"]["emptyDir"]["sizeLimit"] == cache, urn
    for part in ("requests", "limits"):
        assert c["resources"][part]["ephemeral-storage"] == f"{mib}Mi", f"{urn}: {part}"
    with pytest.raises(ValueError, match="InferenceServiceArgs.cache_size"):
        run_program(lambda: _svc(cache_size="10m"))
