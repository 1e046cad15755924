"""Autoscaling on the runtime's queue with KEDA, down to zero through KEDA's HTTP add-on, and the
add-ons that make it work (KEDA, the HTTP add-on, Prometheus, the DCGM exporter, Grafana)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from inferstack.components import config
from inferstack.components.autoscaling import Autoscaling, AutoscalingArgs
from inferstack.components.grafana import load_dashboards
from inferstack.components.keda_http_addon import INTERCEPTOR_LABELS
from inferstack.components.program import main
from inferstack.runtime.metrics import Metrics
from pulumi_harness import Program, load_stack, run_program

SCALED_OBJECT = "kubernetes:keda.sh/v1alpha1:ScaledObject"
HTTP_SCALED_OBJECT = "kubernetes:http.keda.sh/v1alpha1:HTTPScaledObject"
RELEASE = "kubernetes:helm.sh/v3:Release"
SERVICE = "kubernetes:core/v1:Service"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"


def _run(stack: str, model: dict[str, Any] | None = None) -> Program:
    cfg = copy.deepcopy(load_stack(stack))
    if stack == "prod":
        cfg["inferstack:authToken"] = "prod-token"
    if model:
        cfg["inferstack:models"][0].update(model)
    return run_program(main, cfg, stack=stack)


def _exported_metric_names() -> set[str]:
    """The metric families the runtime's /metrics exposes (its own registry, rendered)."""
    m = Metrics()
    return {line.split()[2] for line in m.render().decode().splitlines() if line.startswith("# TYPE ")}


def _release(p: Program, chart: str) -> Any:
    (r,) = [r for r in p.of_type(RELEASE) if r.inputs["chart"] == chart]
    return r


def test_scaled_object_scales_the_deployment_on_the_runtimes_queue_from_the_stacks_prometheus() -> None:
    p = _run("prod")
    so = p.one(SCALED_OBJECT)
    spec = so.inputs["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tiny"}, so.urn
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 4), so.urn
    prom = [t for t in spec["triggers"] if t["type"] == "prometheus"]
    queries = {t["name"]: t["metadata"]["query"] for t in prom}
    assert "inferstack_queue_depth" in queries["queue-depth"], so.urn
    assert "inferstack_inflight_requests" in queries["inflight"], so.urn
    exported = _exported_metric_names()
    for q in queries.values():
        assert q.split("(")[1].split("{")[0] in exported, f"{so.urn}: {q} reads a metric the runtime lacks"
        assert 'namespace="tiny"' in q, f"{so.urn}: {q} is not limited to this model's pods"
    assert {t["metadata"]["threshold"] for t in prom} == {"4", "16"}, so.urn
    server = _release(p, "prometheus")
    address = f"http://prometheus-server.{server.inputs['namespace']}.svc.cluster.local:80"
    assert {t["metadata"]["serverAddress"] for t in prom} == {address}, f"{so.urn} reads another Prometheus"
    assert not p.of_type(HTTP_SCALED_OBJECT), "min 2 needs no request holding"


@pytest.mark.parametrize("stack", ["local", "dev", "prod"])
def test_no_cpu_hpa_remains(stack: str) -> None:
    p = _run(stack)
    hpas = p.of_type("kubernetes:autoscaling/v2:HorizontalPodAutoscaler")
    assert not hpas, f"{stack}: a CPU HPA is declared"


def test_stabilization_fits_a_gpu_cold_start() -> None:
    behavior = _run("prod").one(SCALED_OBJECT).inputs["spec"]["advanced"]["horizontalPodAutoscalerConfig"][
        "behavior"
    ]
    up, down = behavior["scaleUp"], behavior["scaleDown"]
    assert up["stabilizationWindowSeconds"] == 0, "scale-up must not wait: a replica takes minutes to arrive"
    assert down["stabilizationWindowSeconds"] >= 600, "scale-down must ride out lulls"
    assert all(p["value"] == 1 for p in down["policies"] if p["type"] == "Pods"), "one pod at a time"


def test_dev_scales_to_zero_and_a_request_at_zero_waits_at_the_interceptor() -> None:
    p = _run("dev")
    dep = p.one(DEPLOYMENT)
    assert dep.inputs["spec"]["replicas"] == 0, f"{dep.urn}: a model that scales to zero starts at zero"
    so = p.one(SCALED_OBJECT)
    assert so.inputs["spec"]["minReplicaCount"] == 0, so.urn
    assert so.inputs["spec"]["cooldownPeriod"] == 900, so.urn
    hso = p.one(HTTP_SCALED_OBJECT)
    skip = hso.inputs["metadata"]["annotations"]["httpscaledobject.keda.sh/skip-scaledobject-creation"]
    assert skip == "true", f"{hso.urn}: the add-on would create a second ScaledObject for the Deployment"
    triggers = so.inputs["spec"]["triggers"]
    # KEDA's CRD types trigger metadata as map[string]string: a number there is rejected by the API
    assert all(isinstance(v, str) for t in triggers for v in t["metadata"].values()), triggers
    (push,) = [t for t in triggers if t["type"] == "external-push"]
    assert push["metadata"]["httpScaledObject"] == hso.inputs["metadata"]["name"], so.urn
    assert push["metadata"]["scalerAddress"] == "keda-add-ons-http-external-scaler.keda:9090", so.urn
    # the interceptor forwards to a Service that selects the pods ...
    target = hso.inputs["spec"]["scaleTargetRef"]
    backend = next(s for s in p.of_type(SERVICE) if s.inputs["metadata"]["name"] == target["service"])
    assert backend.inputs["spec"]["selector"] == dep.inputs["spec"]["selector"]["matchLabels"], backend.urn
    assert target["name"] == dep.inputs["metadata"]["name"] and target["port"] == 8000, hso.urn
    # ... and clients reach the interceptor: the internal NLB selects its pods, its hostname is routed
    front = next(s for s in p.of_type(SERVICE) if s.inputs["spec"].get("type") == "LoadBalancer")
    assert front.inputs["spec"]["selector"] == INTERCEPTOR_LABELS, front.urn
    assert front.inputs["metadata"]["namespace"] == "keda", front.urn
    host = p.outputs_of(front.urn)["status"]["loadBalancer"]["ingress"][0]["hostname"]
    assert host in hso.inputs["spec"]["hosts"], hso.urn
    assert p.outputs["endpointUrl"] == f"http://{host}:8000", p.outputs["endpointUrl"]


def _local_at(min_replicas: int) -> Program:
    return _run("local", {"autoscaling": {"minReplicas": min_replicas, "maxReplicas": 2}})


def test_min_zero_in_cluster_routes_the_models_service_name_to_the_interceptor() -> None:
    p = _local_at(0)
    svc = next(s for s in p.of_type(SERVICE) if s.inputs["metadata"]["name"] == "tiny")
    assert svc.inputs["metadata"]["namespace"] == "tiny", svc.urn
    assert svc.inputs["spec"]["type"] == "ExternalName", svc.urn
    proxy = "keda-add-ons-http-interceptor-proxy.keda.svc.cluster.local"
    assert svc.inputs["spec"]["externalName"] == proxy
    assert "selector" not in svc.inputs["spec"], svc.urn
    hosts = p.one(HTTP_SCALED_OBJECT).inputs["spec"]["hosts"]
    # clients in the model's namespace call http://tiny:8000: the interceptor must route that Host too
    assert {"tiny", "tiny.tiny", "tiny.tiny.svc", "tiny.tiny.svc.cluster.local"} <= set(hosts), hosts
    assert p.outputs["endpointUrl"] == "http://tiny.tiny.svc.cluster.local:8000"
    # the interceptor proxies HTTP only: no grpc port at zero; the backend Service carries both
    assert [port["name"] for port in svc.inputs["spec"]["ports"]] == ["http"], svc.urn
    target = p.one(HTTP_SCALED_OBJECT).inputs["spec"]["scaleTargetRef"]["service"]
    backend = next(s for s in p.of_type(SERVICE) if s.inputs["metadata"]["name"] == target)
    assert [(port["name"], port.get("appProtocol")) for port in backend.inputs["spec"]["ports"]] == [
        ("http", None), ("grpc", "kubernetes.io/h2c")], backend.urn


def _owners(p: Program) -> dict[tuple[str, str, str], str]:
    owners: dict[tuple[str, str, str], str] = {}
    for r in p.kubernetes_objects():
        meta = r.inputs.get("metadata") or {}
        key = (r.type, meta.get("namespace") or "", meta.get("name") or "")
        assert key not in owners, f"{key} declared by {owners[key]} and {r.urn}"
        owners[key] = r.urn
    return owners


@pytest.mark.parametrize("stack", ["local", "dev"])
def test_changing_the_minimum_keeps_one_owner_per_kubernetes_object(stack: str) -> None:
    # `pulumi up` from min 1 to min 0 (and back) must update objects, never hand one to another
    # resource: a create of a name that exists fails, and a rename's deferred delete removes it
    at_zero = _owners(_run(stack, {"autoscaling": {"minReplicas": 0, "maxReplicas": 1}}))
    at_one = _owners(_run(stack, {"autoscaling": {"minReplicas": 1, "maxReplicas": 1}}))
    service = (SERVICE, "tiny", "tiny")
    assert service in at_zero and service in at_one
    for key in at_zero.keys() & at_one.keys():
        assert at_zero[key] == at_one[key], f"{key}: {at_one[key]} at min 1, {at_zero[key]} at min 0"
    by_urn_zero = {urn: key for key, urn in at_zero.items()}
    for key, urn in at_one.items():
        assert by_urn_zero.get(urn, key) == key, f"{urn} is {key} at min 1 and {by_urn_zero[urn]} at min 0"


def test_min_zero_without_the_http_add_on_is_refused() -> None:
    with pytest.raises(ValueError, match="AutoscalingArgs.backend_service.*HTTP add-on"):
        run_program(
            lambda: Autoscaling(
                "tiny",
                AutoscalingArgs(model_name="tiny", namespace="tiny", min_replicas=0, max_replicas=1,
                                prometheus_address="http://p:9090"),
            )
        )


def test_the_add_on_releases_exist_and_dcgm_runs_on_gpu_nodes_only() -> None:
    p = _run("dev")
    charts = {r.inputs["chart"]: r for r in p.of_type(RELEASE)}
    assert {"keda", "keda-add-ons-http", "prometheus", "grafana", "dcgm-exporter"} <= set(charts), charts
    assert charts["keda"].inputs["repositoryOpts"]["repo"] == "https://kedacore.github.io/charts"
    dcgm = charts["dcgm-exporter"].inputs["values"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in dcgm["tolerations"]
    assert dcgm["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert dcgm["podAnnotations"]["prometheus.io/scrape"] == "true", "Prometheus would not scrape the GPUs"
    wait = charts["keda-add-ons-http"].inputs["values"]["interceptor"]["replicas"]["waitTimeout"]
    # a request at zero waits for a node, the image and the model load: the startup probe's budget
    # alone covers only the last
    probe = p.one(DEPLOYMENT).inputs["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    budget = probe["periodSeconds"] * probe["failureThreshold"]
    assert int(wait.rstrip("s")) >= budget + 600, f"the interceptor gives up on a cold GPU start after {wait}"
    local = _run("local")
    assert not [r for r in local.of_type(RELEASE) if r.inputs["chart"] == "dcgm-exporter"], "no GPUs there"


def test_grafana_reads_the_stacks_prometheus_and_gets_the_dashboard_from_a_labelled_config_map() -> None:
    p = _run("dev")
    grafana = _release(p, "grafana").inputs["values"]
    (ds,) = grafana["datasources"]["datasources.yaml"]["datasources"]
    assert ds["url"] == "http://prometheus-server.monitoring.svc.cluster.local:80", ds
    sidecar = grafana["sidecar"]["dashboards"]
    cm = p.one("kubernetes:core/v1:ConfigMap", "dashboards")
    assert cm.inputs["metadata"]["labels"][sidecar["label"]] == sidecar["labelValue"], cm.urn
    shipped = json.loads(cm.inputs["data"]["inferstack.json"])
    assert shipped == load_dashboards()["inferstack.json"], f"{cm.urn} is not the dashboard in the repository"


def test_min_replicas_zero_is_allowed_and_bounds_are_checked() -> None:
    from inferstack.components import config

    with pytest.raises(config.ConfigError, match="autoscaling.minReplicas"):
        _run("dev", {"autoscaling": {"minReplicas": -1, "maxReplicas": 2}})
    with pytest.raises(config.ConfigError, match="targetCpuUtilization"):
        _run("dev", {"autoscaling": {"minReplicas": 0, "maxReplicas": 2, "targetCpuUtilization": 70}})


def test_autoscaling_without_a_prometheus_is_a_config_error_and_another_one_can_be_named() -> None:
    from inferstack.components import config

    cfg = copy.deepcopy(load_stack("dev"))
    cfg["inferstack:addons"] = {"prometheus": False, "grafana": False}
    with pytest.raises(config.ConfigError, match="addons.prometheusAddress.*tiny"):
        run_program(main, cfg, stack="dev")
    cfg["inferstack:addons"]["prometheusAddress"] = "http://prometheus.observability:9090"
    p = run_program(main, cfg, stack="dev")
    assert not [r for r in p.of_type(RELEASE) if r.inputs["chart"] in ("prometheus", "grafana")]
    triggers = p.one(SCALED_OBJECT).inputs["spec"]["triggers"]
    assert {t["metadata"]["serverAddress"] for t in triggers if t["type"] == "prometheus"} == {
        "http://prometheus.observability:9090"
    }


def test_add_ons_refuse_an_unpinned_chart_or_a_cold_start_the_interceptor_cannot_wait_for() -> None:
    from inferstack.components.keda import Keda, KedaArgs
    from inferstack.components.keda_http_addon import KedaHttpAddon, KedaHttpAddonArgs

    with pytest.raises(ValueError, match="KedaArgs.version"):
        run_program(lambda: Keda("k", KedaArgs(version="latest")))
    with pytest.raises(ValueError, match="KedaHttpAddonArgs.wait_timeout_s"):
        run_program(lambda: KedaHttpAddon("h", KedaHttpAddonArgs(wait_timeout_s=5)))


def _local_zero_with(addons: dict[str, Any]) -> dict[str, Any]:
    cfg = copy.deepcopy(load_stack("local"))
    cfg["inferstack:models"][0]["autoscaling"] = {"minReplicas": 0, "maxReplicas": 1}
    cfg["inferstack:addons"] = addons
    return cfg


def test_a_user_installed_http_add_on_is_reached_where_the_config_says() -> None:
    # the chart's own default port is 8080, not the 8000 the stack gives its add-on: never assumed
    missing = r"inferstack:addons.httpAddon: \(missing\).*proxyPort: 8080"
    with pytest.raises(config.ConfigError, match=missing):
        run_program(main, _local_zero_with({"keda": False}), stack="local")
    cfg = _local_zero_with({"keda": False, "httpAddon": {"namespace": "http", "proxyPort": 8080}})
    p = run_program(main, cfg, stack="local")
    charts = [r.inputs["chart"] for r in p.of_type(RELEASE)]
    assert not [c for c in charts if c.startswith("keda")], "the user installed them"
    svc = next(s for s in p.of_type(SERVICE) if s.inputs["metadata"]["name"] == "tiny")
    proxy = "keda-add-ons-http-interceptor-proxy.http.svc.cluster.local"
    assert svc.inputs["spec"]["externalName"] == proxy
    (push,) = [t for t in p.one(SCALED_OBJECT).inputs["spec"]["triggers"] if t["type"] == "external-push"]
    assert push["metadata"]["scalerAddress"] == "keda-add-ons-http-external-scaler.http:9090"
    assert p.outputs["endpointUrl"] == "http://tiny.tiny.svc.cluster.local:8080"


@pytest.mark.parametrize(
    ("addons", "key", "fragment"),
    [
        ({"keda": True, "httpAddon": {"proxyPort": 8080}}, "addons.httpAddon", "only with addons.keda"),
        ({"keda": False, "httpAddon": {"proxyPort": 0}}, "addons.httpAddon.proxyPort", "from 1 to 65535"),
        ({"keda": False, "httpAddon": {"proxyPort": "8080"}}, "addons.httpAddon.proxyPort", "an integer"),
        (
            {"keda": False, "httpAddon": {"namespace": "Keda!", "proxyPort": 8080}},
            "addons.httpAddon.namespace",
            "a DNS label",
        ),
        ({"keda": False, "httpAddon": {"port": 8080}}, "addons.httpAddon.port", "did you mean 'proxyPort'"),
    ],
)
def test_http_add_on_config_is_validated(addons: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        run_program(main, _local_zero_with(addons), stack="local")
    msg = str(info.value)
    assert msg.startswith(f"inferstack:{key}:") and fragment in msg, msg
