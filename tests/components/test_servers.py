"""Model servers (``inferstack:servers``): several models in one Deployment next to models with a
Deployment of their own, run under Pulumi's mocks from the committed stacks plus a server."""

from __future__ import annotations

import copy
import json
from typing import Any

import kubernetes_validate
import pytest
from inferstack.components.program import main
from pulumi_harness import Program, as_manifest, env_of, load_stack, run_program
from pulumi_harness import expect_config_error as _expect

from inferstack.plan.k8s import is_addon_resource

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
INGRESS = "kubernetes:networking.k8s.io/v1:Ingress"
SCALED_OBJECT = "kubernetes:keda.sh/v1alpha1:ScaledObject"
HTTP_SCALED_OBJECT = "kubernetes:http.keda.sh/v1alpha1:HTTPScaledObject"
GROUPED = [
    {"name": "tiny-relu", "path": "examples/packages/tiny-relu"},
    {"name": "tiny-softmax", "path": "examples/packages/tiny-softmax"},
]


def _dev_with_server(**server: Any) -> dict[str, Any]:
    """dev (aws, one g4dn.xlarge pool, tiny on a Deployment of its own) plus a server ``shared``
    with tiny-relu and tiny-softmax."""
    cfg = copy.deepcopy(load_stack("dev"))
    cfg["inferstack:models"] += copy.deepcopy(GROUPED)
    cfg["inferstack:servers"] = [
        {
            "name": "shared",
            "models": ["tiny-relu", "tiny-softmax"],
            "gpus": 1,
            "cpu": "2",
            "memory": "8Gi",
            "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
            **server,
        }
    ]
    return cfg


def _multi() -> dict[str, Any]:
    cfg = load_stack("multi")
    cfg["inferstack:authToken"] = "multi-token"
    return cfg


def _deployments(p: Program) -> dict[str, dict[str, Any]]:
    return {d.inputs["metadata"]["name"]: d.inputs for d in p.of_type(DEPLOYMENT)}


def _runtime(dep: dict[str, Any]) -> dict[str, Any]:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c


def test_a_server_runs_every_model_in_one_deployment_with_one_gpu_limit() -> None:
    p = run_program(main, _dev_with_server(), stack="dev")
    uris = p.outputs["modelUris"]
    deps = _deployments(p)
    assert sorted(deps) == ["shared", "tiny"], "one Deployment per server, not per model"
    shared = _runtime(deps["shared"])
    assert shared["args"] == [uris["tiny-relu"], uris["tiny-softmax"]], shared["args"]
    # the same PATHs for `inferstack serve` from the environment (split at whitespace)
    assert env_of(shared)["INFERSTACK_MODEL"].split() == shared["args"]
    for part in ("requests", "limits"):
        assert shared["resources"][part]["nvidia.com/gpu"] == "1", shared["resources"]
    assert _runtime(deps["tiny"])["args"] == [uris["tiny"]], "the ungrouped model keeps its own Deployment"
    # each model is uploaded on its own, under its own manifest's prefix
    keys = {o.inputs["key"] for o in p.of_type("aws:s3/bucketObjectv2:BucketObjectv2")}
    for name in ("tiny-relu", "tiny-softmax"):
        prefix = uris[name].split("/", 3)[3]
        assert prefix.startswith(f"models/{name}/") and f"{prefix}model.onnx" in keys, (name, keys)
    # every model of the server answers at the server's endpoint
    endpoints = p.outputs["endpoints"]
    assert endpoints["tiny-relu"] == endpoints["tiny-softmax"] != endpoints["tiny"], endpoints
    assert "shared.shared" in endpoints["tiny-relu"] or "elb" in endpoints["tiny-relu"], endpoints


def test_the_servers_role_reads_its_models_prefixes_and_no_other() -> None:
    p = run_program(main, _dev_with_server(), stack="dev")
    uris = p.outputs["modelUris"]
    policies = {r.name: json.loads(r.inputs["policy"]) for r in p.of_type("aws:iam/rolePolicy:RolePolicy")}
    shared = policies["inferstack-shared-read-model"]
    objects = next(s for s in shared["Statement"] if s["Sid"] == "ReadModelObjects")["Resource"]
    prefixes = [uris[n].split("/", 3)[3] for n in ("tiny-relu", "tiny-softmax")]
    assert sorted(objects) == sorted(f"arn:aws:s3:::{p.outputs['bucketName']}/{x}*" for x in prefixes)
    listed = next(s for s in shared["Statement"] if s["Sid"] == "ListModelPrefix")
    assert sorted(listed["Condition"]["StringLike"]["s3:prefix"]) == sorted(
        v for x in prefixes for v in (x, f"{x}*")
    )
    assert uris["tiny"].split("/", 3)[3] not in json.dumps(shared), "the server may read tiny's package"


def test_keda_scales_each_server_on_its_own_queue() -> None:
    p = run_program(main, _dev_with_server(), stack="dev")
    scaled = {o.inputs["metadata"]["name"]: o.inputs for o in p.of_type(SCALED_OBJECT)}
    assert sorted(scaled) == ["shared", "tiny"], sorted(scaled)
    shared = scaled["shared"]
    assert shared["metadata"]["namespace"] == "shared"
    assert shared["spec"]["scaleTargetRef"]["name"] == "shared"
    assert (shared["spec"]["minReplicaCount"], shared["spec"]["maxReplicaCount"]) == (1, 2)
    queries = {t["name"]: t["metadata"]["query"] for t in shared["spec"]["triggers"]}
    # summed over the server's namespace without `by`: today's unlabeled series and a `model`
    # label alike add up to the server's total
    assert queries == {
        "queue-depth": 'sum(inferstack_queue_depth{namespace="shared"}) or vector(0)',
        "inflight": 'sum(inferstack_inflight_requests{namespace="shared"}) or vector(0)',
    }
    # the Deployment that KEDA owns starts at the server's minimum and is left to KEDA
    dep = p.one(DEPLOYMENT, "shared")
    assert dep.inputs["spec"]["replicas"] == 1 and "spec.replicas" in dep.ignore_changes


def test_a_server_scales_to_zero_through_the_interceptor_on_its_own_service() -> None:
    p = run_program(main, _dev_with_server(autoscaling={"minReplicas": 0, "maxReplicas": 2}), stack="dev")
    http = {o.inputs["metadata"]["name"]: o.inputs for o in p.of_type(HTTP_SCALED_OBJECT)}
    assert sorted(http) == ["shared-http", "tiny-http"], sorted(http)
    spec = http["shared-http"]["spec"]
    target = spec["scaleTargetRef"]
    assert target["name"] == "shared" and target["service"] == "shared-backend", target
    assert "shared.shared.svc.cluster.local" in spec["hosts"], spec["hosts"]
    services = p.of_type("kubernetes:core/v1:Service")
    backend = [s for s in services if s.inputs["metadata"]["name"] == "shared-backend"]
    assert len(backend) == 1 and backend[0].inputs["metadata"]["namespace"] == "shared"


def _routes(p: Program) -> dict[tuple[str, str], str]:
    """(host, path) -> the Service it leads to, over every Ingress of the program."""
    out = {}
    for ing in p.of_type(INGRESS):
        for rule in ing.inputs["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                key = (rule["host"], path["path"])
                assert key not in out, f"{key} routed twice"
                assert path["pathType"] == "Prefix"
                out[key] = f"{ing.inputs['metadata']['namespace']}/{path['backend']['service']['name']}"
    return out


def test_the_ingress_routes_each_models_path_to_its_servers_service() -> None:
    p = run_program(main, _multi(), stack="multi")
    host = "models.localtest.me"
    assert _routes(p) == {
        (host, "/v2/models/tiny-linear"): "tiny/tiny",  # tiny serves its manifest's name
        (host, "/v2/models/tiny-relu"): "tiny-multi/tiny-multi",
        (host, "/v2/models/tiny-softmax"): "tiny-multi/tiny-multi",
    }
    services = {(s.inputs["metadata"]["namespace"], s.inputs["metadata"]["name"]): s.inputs
                for s in p.of_type("kubernetes:core/v1:Service")}
    for ns_name in ("tiny/tiny", "tiny-multi/tiny-multi"):
        ports = {q["name"]: q["port"] for q in services[tuple(ns_name.split("/"))]["spec"]["ports"]}
        assert ports == {"http": 8000, "grpc": 8001}, (ns_name, ports)


def test_a_server_alone_on_its_host_also_routes_health_and_metadata() -> None:
    cfg = _multi()
    cfg["inferstack:servers"][0]["ingress"]["host"] = "multi.localtest.me"
    routes = _routes(run_program(main, cfg, stack="multi"))
    assert routes[("multi.localtest.me", "/")] == "tiny-multi/tiny-multi"
    assert routes[("multi.localtest.me", "/v2/models/tiny-relu")] == "tiny-multi/tiny-multi"
    # a one-model server alone on its host keeps today's single rule
    assert routes[("models.localtest.me", "/")] == "tiny/tiny"
    assert ("models.localtest.me", "/v2/models/tiny-linear") not in routes


@pytest.mark.parametrize("stack", ["dev", "multi"])
def test_kubernetes_objects_of_a_server_validate_against_the_schemas(stack: str) -> None:
    cfg = _dev_with_server(autoscaling={"minReplicas": 0, "maxReplicas": 2}) if stack == "dev" else _multi()
    p = run_program(main, cfg, stack=stack)
    version = cfg["inferstack:clusterVersion"] + ".0"
    checked = 0
    for o in p.kubernetes_objects():
        if is_addon_resource(o.inputs):
            continue
        try:
            kubernetes_validate.validate(as_manifest(o), version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{o.urn}: {e.message} at {'/'.join(map(str, e.path))}")
        checked += o.inputs["metadata"].get("namespace") in ("shared", "tiny-multi")
    assert checked >= 6, "the server's objects were not among those validated"


# -- stack file errors ------------------------------------------------------------------------


def _second_server(cfg: dict[str, Any], **server: Any) -> dict[str, Any]:
    cfg["inferstack:servers"].append({"gpus": 1, **server})
    return cfg


def test_a_model_in_two_servers_is_refused() -> None:
    cfg = _second_server(_dev_with_server(), name="other", models=["tiny-softmax"])
    _expect(cfg, "servers[1].models[0]", "tiny-softmax", "already in servers[0] (shared)")


def test_a_model_listed_twice_is_refused() -> None:
    cfg = _dev_with_server(models=["tiny-relu", "tiny-softmax", "tiny-relu"])
    _expect(cfg, "servers[0].models[2]", "listed twice in servers[0]")


def test_a_server_name_used_twice_is_refused() -> None:
    cfg = _dev_with_server(models=["tiny-relu"])
    _second_server(cfg, name="shared", models=["tiny-softmax"])
    _expect(cfg, "servers[1].name", "'shared'", "one server only")


def test_a_server_named_like_a_model_with_its_own_deployment_is_refused() -> None:
    _expect(_dev_with_server(name="tiny"), "servers[0].name", "'tiny'",
            "models[0] tiny names its own namespace")


@pytest.mark.parametrize("models", [[], None, "tiny-relu"])
def test_a_server_without_models_is_refused(models: Any) -> None:
    _expect(_dev_with_server(models=models), "servers[0].models", "a non-empty list of model names")


def test_an_unknown_model_in_a_server_is_refused_with_the_nearest_name() -> None:
    _expect(_dev_with_server(models=["tiny-relu", "tiny-softmx"]), "servers[0].models[1]",
            "'tiny-softmx'", "did you mean 'tiny-softmax'?")


@pytest.mark.parametrize("name", ["Tiny", "tiny_relu", "tiny-", "x" * 33, "1tiny"])
def test_a_model_name_that_is_no_dns_label_is_refused(name: str) -> None:
    cfg = _dev_with_server()
    cfg["inferstack:models"][1]["name"] = name
    cfg["inferstack:servers"][0]["models"] = [name, "tiny-softmax"]
    _expect(cfg, "models[1].name", "a DNS label")


@pytest.mark.parametrize("name", ["Shared", "shared.gpu", ""])
def test_a_server_name_that_is_no_dns_label_is_refused(name: str) -> None:
    _expect(_dev_with_server(name=name), "servers[0].name", "a DNS label")


def test_a_model_of_a_server_may_not_set_its_own_deployment_keys() -> None:
    cfg = _dev_with_server()
    cfg["inferstack:models"][2]["gpus"] = 1
    _expect(cfg, "models[2].gpus", "servers[0] (shared)", "set once, as servers[0].gpus")


def test_a_model_of_a_server_is_named_as_its_manifest() -> None:
    cfg = _dev_with_server()
    cfg["inferstack:models"][1]["name"] = "relu"
    cfg["inferstack:servers"][0]["models"] = ["relu", "tiny-softmax"]
    _expect(cfg, "models[1].name", "'relu'", "'tiny-relu', the name its package's manifest gives")


def test_a_unknown_key_of_a_server_names_the_nearest() -> None:
    _expect(_dev_with_server(gpu=1), "servers[0].gpu", "did you mean 'gpus'?")


def test_gpus_that_no_node_of_the_pools_carries_are_refused() -> None:
    # dev's pool is g4dn.xlarge: one T4 per node; a replica's GPUs are on one node
    _expect(_dev_with_server(gpus=2), "servers[0].gpus", "at most 1", "gpu: 1")
    cfg = _dev_with_server(gpus=2)
    cfg["inferstack:gpuPools"].append(
        {"name": "big", "instanceTypes": ["g4dn.12xlarge"], "minSize": 0, "maxSize": 2}
    )
    run_program(main, cfg, stack="dev")  # a pool of 4-GPU nodes takes it


def test_a_servers_replicas_must_fit_the_pools() -> None:
    _expect(_dev_with_server(autoscaling={"minReplicas": 1, "maxReplicas": 3}),
            "servers[0].autoscaling.maxReplicas", "at most 2")


def test_the_same_package_for_two_models_is_refused() -> None:
    cfg = _dev_with_server()
    cfg["inferstack:models"].append({"name": "again", "path": "examples/packages/tiny-linear", "gpus": 0})
    _expect(cfg, "models[3].path", "models[0] (tiny) uploads the same one")


def test_scale_to_zero_on_an_ingress_host_shared_with_another_server_is_refused() -> None:
    cfg = _multi()
    cfg["inferstack:servers"][0]["autoscaling"]["minReplicas"] = 0
    _expect(cfg, "servers[0].autoscaling.minReplicas", "models.localtest.me is shared with tiny")
    cfg["inferstack:servers"][0]["ingress"]["host"] = "multi.localtest.me"
    p = run_program(main, cfg, stack="multi")  # a host of its own: scale to zero is supported
    (http,) = [o.inputs for o in p.of_type(HTTP_SCALED_OBJECT)]
    assert "multi.localtest.me" in http["spec"]["hosts"], http["spec"]["hosts"]
    interceptor = [i for i in p.of_type(INGRESS) if i.inputs["metadata"]["namespace"] == "keda"]
    assert len(interceptor) == 1
    paths = [x["path"] for x in interceptor[0].inputs["spec"]["rules"][0]["http"]["paths"]]
    assert paths == ["/v2/models/tiny-relu", "/v2/models/tiny-softmax", "/"], paths
