"""Stack config validation: each kind of bad value fails before any resource, naming key, value, allowed."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from inferstack.components import config
from inferstack.components.program import main
from pulumi_harness import ROOT, Program, load_stack, run_program
from pulumi_harness import expect_config_error as _expect


def _dev() -> dict[str, Any]:
    return copy.deepcopy(load_stack("dev"))


def _set(cfg: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    cfg[f"inferstack:{key}"] = value
    return cfg


def _pool(cfg: dict[str, Any], **kw: Any) -> dict[str, Any]:
    cfg["inferstack:gpuPools"][0].update(kw)
    return cfg


def _model(cfg: dict[str, Any], **kw: Any) -> dict[str, Any]:
    cfg["inferstack:models"][0].update(kw)
    return cfg


@pytest.mark.parametrize("stack", ["local", "dev", "prod"])
def test_committed_stacks_validate(stack: str) -> None:
    cfg = load_stack(stack)
    if stack == "prod":
        cfg["inferstack:authToken"] = "t"
    seen: dict[str, config.StackConfig] = {}
    run_program(lambda: seen.setdefault("cfg", config.load(ROOT)), cfg, stack=stack)
    loaded = seen["cfg"]
    assert loaded.models[0].manifest.name == "tiny-linear"
    assert loaded.project_dir == ROOT


def test_bad_target() -> None:
    _expect(_set(_dev(), "target", "gcp"), "target", "'gcp'", "aws, kubernetes")


def test_bad_region_and_cluster_version() -> None:
    _expect(_set(_dev(), "region", "mars-1"), "region", "'mars-1'", "us-east-1")
    _expect(_set(_dev(), "clusterVersion", "1.20"), "clusterVersion", "'1.20'", "1.34")


def test_bad_gpu_pool_values() -> None:
    _expect(_pool(_dev(), minSize=-1), "gpuPools[0].minSize", "-1", "integer from 0")
    _expect(_pool(_dev(), maxSize=0), "gpuPools[0].maxSize", "0", "integer from 1")
    _expect(
        _pool(_dev(), amiType="AL2_x86_64_GPU"),
        "gpuPools[0].amiType",
        "AL2023_x86_64_NVIDIA",
        "BOTTLEROCKET_x86_64_NVIDIA",
    )
    _expect(
        _pool(_dev(), instanceTypes=["m5.large"]), "gpuPools[0].instanceTypes", "'m5.large'", "NVIDIA GPU"
    )
    _expect(_pool(_dev(), diskSizeGiB=10), "gpuPools[0].diskSizeGiB", "10", "from 50")
    _expect(_pool(_dev(), name="GPU_pool"), "gpuPools[0].name", "DNS label")
    _expect(_pool(_dev(), spot=True), "gpuPools[0].spot", "unknown key; (known keys: amiType, capacityType")


def test_bad_network() -> None:
    _expect(_set(_dev(), "network", {"nat": "two"}), "network.nat", "'two'", "single, perAz")
    _expect(_set(_dev(), "network", {"cidr": "10.0.0.0/28"}), "network.cidr", "/20 or larger")
    _expect(_set(_dev(), "network", {"cidr": "banana"}), "network.cidr", "IPv4 CIDR")


def test_bad_model_store() -> None:
    _expect(
        _set(_dev(), "modelStore", {"forceDestroy": True, "protect": True}),
        "modelStore.forceDestroy",
        "protect is true",
    )
    _expect(_set(_dev(), "modelStore", {"bucketPrefix": "Upper_Case"}), "modelStore.bucketPrefix", "a-z")
    _expect(_set(_dev(), "modelStore", {"protect": "yes"}), "modelStore.protect", "true or false")


def test_bad_models() -> None:
    _expect(_set(_dev(), "models", []), "models", "at least one model")
    _expect(_model(_dev(), path="examples/packages/nope"), "models[0].path", "manifest.json")
    _expect(_model(_dev(), exposure="world"), "models[0].exposure", "internal, public")
    _expect(_model(_dev(), gpus=9), "models[0].gpus", "from 0 to 8")
    _expect(_model(_dev(), memory="lots"), "models[0].memory", "Kubernetes quantity")
    _expect(_model(_dev(), replicas=0), "models[0].replicas", "from 1")
    _expect(
        _model(_dev(), autoscaling={"minReplicas": 3, "maxReplicas": 2}),
        "models[0].autoscaling.maxReplicas",
        "from 3",
    )
    _expect(_model(_dev(), image="ecr"), "models[0].image", "@sha256:", "release workflow")
    _expect(
        _model(_dev(), imagePullPolicy="Sometimes"),
        "models[0].imagePullPolicy",
        "Always, IfNotPresent, Never",
    )
    cfg = _dev()
    cfg["inferstack:models"].append(dict(cfg["inferstack:models"][0]))
    _expect(cfg, "models[1].name", "one model only")


def test_tampered_model_package_is_refused(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "Pulumi.yaml").write_text("name: inferstack\nruntime: python\n")
    src = ROOT / "examples" / "packages" / "tiny-linear"
    for f in src.iterdir():
        shutil.copy(f, project / "pkg" / f.name)
    (project / "pkg" / "model.onnx").write_bytes(b"tampered")
    cfg = _model(_dev(), path="pkg")
    with pytest.raises(
        config.ConfigError, match=r"models\[0\].path.*checksum mismatch|models\[0\].path.*size"
    ):
        run_program(lambda: main(project), cfg, stack="dev")


def test_auth_needs_a_token() -> None:
    _expect(_model(_dev(), auth=True), "authToken", "pulumi config set --secret")


def test_gpu_model_needs_a_gpu_pool_on_aws() -> None:
    _expect(_set(_dev(), "gpuPools", []), "models[0].gpus", "gpuPools")


def test_kubernetes_target_rules() -> None:
    local = copy.deepcopy(load_stack("local"))
    bad = copy.deepcopy(local)
    del bad["inferstack:objectStore"]
    _expect(bad, "objectStore", "(missing)", "endpoint")
    bad = copy.deepcopy(local)
    bad["inferstack:objectStore"]["endpoint"] = "minio:9000"
    _expect(bad, "objectStore.endpoint", "http(s) URL")
    bad = copy.deepcopy(local)
    bad["inferstack:gpuPools"] = [{"name": "gpu", "instanceTypes": ["g5.xlarge"]}]
    _expect(bad, "gpuPools", "no GPU pools with target kubernetes")
    _expect(
        _set(copy.deepcopy(local), "runtimeImage", {"build": True, "registry": "ecr"}),
        "runtimeImage.registry",
        "AWS only",
    )
    _expect(
        _set(_dev(), "objectStore", {"endpoint": "http://x:9000"}),
        "objectStore",
        "only with target kubernetes",
    )


def test_bad_admins_and_tags() -> None:
    _expect(_set(_dev(), "clusterAdmins", ["alice"]), "clusterAdmins[0]", "'alice'", "IAM role or user ARNs")
    _expect(_set(_dev(), "tags", {"team": 5}), "tags.team", "string tag values")


def test_gpu_pools_must_fit_a_rollout_at_peak() -> None:
    cfg = _pool(_dev(), maxSize=2)  # dev scales to 2 replicas of 1 GPU; the surge needs a third GPU
    _expect(cfg, "models[0].autoscaling.maxReplicas", "at most 1", "need 3", "gpuPools[].maxSize")


def _local() -> dict[str, Any]:
    return copy.deepcopy(load_stack("local"))


def _kube_provider(cfg: dict[str, Any]) -> Any:
    return run_program(main, cfg, stack="local").one("pulumi:providers:kubernetes")


def test_a_kubeconfig_path_is_kept_as_given() -> None:
    # the provider expands ~ and resolves a relative path where Pulumi runs it (the project
    # directory); the plan must not carry the builder's home or checkout path
    for given in ("~/.kube/other", "kube/config"):
        provider = _kube_provider(_set(_local(), "kubeconfig", given))
        assert provider.inputs["kubeconfig"] == given
        assert str(Path.home()) not in str(provider.inputs) and str(ROOT) not in str(provider.inputs)


TOKEN = "eyJhbGciOiJSUzI1NiJ9.kubeconfig-token-4711"
INLINE = (
    "apiVersion: v1\nkind: Config\nclusters: []\nusers:\n- name: u\n  user:\n"
    f"    token: {TOKEN}\n    client-key-data: a2V5\n"
)
ONE_LINE = json.dumps({"apiVersion": "v1", "kind": "Config", "users": [{"user": {"token": TOKEN}}]})


@pytest.mark.parametrize("contents", [INLINE, ONE_LINE], ids=["yaml", "one-line-json"])
def test_kubeconfig_contents_under_the_path_key_are_refused_unshown(contents: str) -> None:
    program = Program()
    with pytest.raises(config.ConfigKeyError) as info:
        run_program(main, _set(_local(), "kubeconfig", contents), stack="local", program=program)
    msg = str(info.value)
    assert msg.startswith("inferstack:kubeconfig: a kubeconfig's contents, not a file path"), msg
    assert "pulumi config set --secret inferstack:kubeconfigContents" in msg
    assert TOKEN not in msg and "a2V5" not in msg


def test_plaintext_kubeconfig_contents_are_refused() -> None:
    with pytest.raises(config.ConfigKeyError) as info:
        run_program(main, _set(_local(), "kubeconfigContents", INLINE), stack="local", secret_keys=[])
    assert "inferstack:kubeconfigContents: a secret in plain text" in str(info.value)
    assert TOKEN not in str(info.value)


def test_kubeconfig_contents_reach_the_provider_as_a_secret() -> None:
    cfg = _set(_local(), "kubeconfigContents", INLINE)  # set with --secret (secret_keys_of)
    provider = _kube_provider(cfg)
    assert provider.inputs["kubeconfig"] == INLINE  # as given: not joined onto a path
    assert "kubeconfig" in provider.secret_inputs
    both = _set(cfg, "kubeconfig", "~/.kube/other")
    with pytest.raises(config.ConfigKeyError, match="not both"):
        run_program(main, both, stack="local")


def test_a_gpu_pool_has_one_gpu_model() -> None:
    _expect(
        _pool(_dev(), instanceTypes=["g6.xlarge", "g5.xlarge"]),
        "gpuPools[0].instanceTypes",
        "one GPU model per pool",
        "nvidia-a10g, nvidia-l4",
    )


def test_cluster_support_type() -> None:
    _expect(_set(_dev(), "clusterSupportType", "LTS"), "clusterSupportType", "'LTS'", "STANDARD, EXTENDED")
    local = _set(copy.deepcopy(load_stack("local")), "clusterSupportType", "STANDARD")
    _expect(local, "clusterSupportType", "only with target aws")


def test_bad_cache_size_and_ingress() -> None:
    _expect(_model(_dev(), cacheSize="lots"), "models[0].cacheSize", "'lots'", "quantity")
    _expect(_model(_dev(), cacheSize="1Mi"), "models[0].cacheSize", "at least 64Mi")
    _expect(_model(_dev(), exposure="ingress"), "models[0].ingress", "className and host")
    _expect(
        _model(_dev(), exposure="ingress", ingress={"className": "nginx", "host": "not a host"}),
        "models[0].ingress.host",
        "DNS name",
    )
    _expect(
        _model(_dev(), ingress={"className": "nginx"}), "models[0].ingress", "only with exposure: ingress"
    )


def test_bad_addressing_style_and_bucket_name() -> None:
    local = copy.deepcopy(load_stack("local"))
    local["inferstack:objectStore"]["addressingStyle"] = "dns"
    _expect(local, "objectStore.addressingStyle", "'dns'", "path, virtual")
    _expect(
        _set(_dev(), "modelStore", {"bucketName": "Models_1"}), "modelStore.bucketName", "'Models_1'", "3-63"
    )
    _expect(
        _set(_dev(), "modelStore", {"bucketName": "models-1", "bucketPrefix": "models"}),
        "modelStore.bucketName",
        "not both",
    )


# -- keys and secrets --------------------------------------------------------------------------
def _refused(cfg: dict[str, Any], secret_keys: list[str] | None = None, stack: str = "dev") -> str:
    program = Program()
    with pytest.raises(config.ConfigError) as info:
        run_program(main, cfg, stack=stack, program=program, secret_keys=secret_keys)
    assert [r for r in program.resources if r.type != "pulumi:pulumi:Stack"] == []
    return str(info.value)


def test_an_unknown_key_names_the_nearest_known_one() -> None:
    cfg = _model(_dev(), auth=True)
    cfg["inferstack:autToken"] = "typo-token-value"  # authToken misspelt: auth would go unprotected
    msg = _refused(cfg, secret_keys=["inferstack:autToken"])
    assert msg.startswith("inferstack:autToken: unknown key; did you mean 'authToken'? (known keys: "), msg
    assert "typo-token-value" not in msg
    msg = _refused(_set(_dev(), "gpuPool", []))
    assert msg.startswith("inferstack:gpuPool: unknown key; did you mean 'gpuPools'?"), msg


def test_a_misspelt_nested_key_does_not_echo_its_value() -> None:
    local = copy.deepcopy(load_stack("local"))
    local["inferstack:objectStore"]["secretAcessKey"] = "leaked-if-echoed"
    msg = _refused(local, stack="local")
    assert msg.startswith(
        "inferstack:objectStore.secretAcessKey: unknown key; did you mean 'secretAccessKey'?"
    ), msg
    assert "leaked-if-echoed" not in msg


def test_a_plaintext_secret_is_refused_with_the_command_that_encrypts_it() -> None:
    prod = copy.deepcopy(load_stack("prod"))
    prod["inferstack:authToken"] = "plain-prod-token"
    msg = _refused(prod, secret_keys=[], stack="prod")
    assert msg == (
        "inferstack:authToken: a secret in plain text in Pulumi.prod.yaml; remove it there and set it "
        "encrypted with `pulumi config set --secret 'inferstack:authToken' <value> --stack prod`"
    )
    local = copy.deepcopy(load_stack("local"))  # the store key in plain text inside objectStore
    msg = _refused(local, secret_keys=[], stack="local")
    assert msg.endswith(
        "`pulumi config set --secret --path 'inferstack:objectStore.secretAccessKey' <value> --stack local`"
    ), msg
    assert "test-secret-key" not in msg


def test_the_checks_hold_for_pulumi_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `pulumi up` the language host hands the program its config in the environment
    (PULUMI_CONFIG, PULUMI_CONFIG_SECRET_KEYS), not through the mocks' config map."""
    import json

    from pulumi_harness import to_config

    prod = copy.deepcopy(load_stack("prod"))
    prod["inferstack:authToken"] = "env-token"
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps(to_config(prod)))
    monkeypatch.setenv("PULUMI_CONFIG_SECRET_KEYS", json.dumps([]))
    assert "a secret in plain text" in _refused({}, secret_keys=[], stack="prod")
    monkeypatch.setenv("PULUMI_CONFIG_SECRET_KEYS", json.dumps(["inferstack:authToken"]))
    seen: dict[str, config.StackConfig] = {}
    run_program(lambda: seen.setdefault("cfg", config.load(ROOT)), {}, stack="prod", secret_keys=[])
    assert seen["cfg"].auth_token is not None
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps({**to_config(prod), "inferstack:regoin": "eu-west-1"}))
    msg = _refused({}, secret_keys=[], stack="prod")
    assert "inferstack:regoin: unknown key; did you mean 'region'?" in msg


def _eks(p: Any) -> dict[str, Any]:
    return p.one("aws:eks/cluster:Cluster").inputs["vpcConfig"]


def test_prod_keeps_the_eks_api_off_the_internet() -> None:
    prod = copy.deepcopy(load_stack("prod"))
    prod["inferstack:authToken"] = "t"
    vpc = _eks(run_program(main, prod, stack="prod"))
    assert vpc["endpointPublicAccess"] is False and vpc["endpointPrivateAccess"] is True, vpc
    assert "0.0.0.0/0" not in str(vpc)
    prod["inferstack:clusterEndpoint"] = {"publicAccessCidrs": ["198.51.100.0/24"]}
    vpc = _eks(run_program(main, prod, stack="prod"))
    assert vpc["endpointPublicAccess"] is True and vpc["publicAccessCidrs"] == ["198.51.100.0/24"], vpc


def test_the_eks_api_is_open_only_when_written_out() -> None:
    missing = _dev()
    del missing["inferstack:clusterEndpoint"]
    _expect(missing, "clusterEndpoint", "(missing)", "publicAccessCidrs", "0.0.0.0/0 only when written out")
    _expect(
        _set(_dev(), "clusterEndpoint", {"publicAccessCidrs": ["10.0.0.1"]}),
        "clusterEndpoint.publicAccessCidrs[0]",
        "prefix length",
    )
    _expect(
        _set(_dev(), "clusterEndpoint", {"publicAccessCidrs": ["10.0.0.1/8"]}),
        "clusterEndpoint.publicAccessCidrs[0]",
    )
    one = _set(_dev(), "clusterEndpoint", {"publicAccessCidrs": "0.0.0.0/0"})
    _expect(one, "clusterEndpoint.publicAccessCidrs", "a list")
    _expect(_set(_dev(), "clusterEndpoint", {"private": True}), "clusterEndpoint.private", "unknown key")
    local = _set(_local(), "clusterEndpoint", {"publicAccessCidrs": []})
    with pytest.raises(config.ConfigError, match="clusterEndpoint only with target aws"):
        run_program(main, local, stack="local")
    assert _eks(run_program(main, _dev(), stack="dev"))["publicAccessCidrs"] == ["0.0.0.0/0"]  # dev says so


@pytest.mark.parametrize("key", ["endpoint", "clusterEndpoint"])
def test_a_store_url_with_credentials_is_refused_unshown(key: str) -> None:
    local = _local()
    local["inferstack:objectStore"][key] = "http://admin:pw-4711@minio.minio:9000"
    with pytest.raises(config.ConfigKeyError) as info:
        run_program(main, local, stack="local")
    msg = str(info.value)
    assert msg.startswith(f"inferstack:objectStore.{key}: a URL with credentials"), msg
    assert "pw-4711" not in msg and "admin" not in msg


def test_a_prometheus_url_with_credentials_is_refused_unshown() -> None:
    cfg = _set(_dev(), "addons", {"prometheus": False, "grafana": False,
                                  "prometheusAddress": "https://u:pw-4711@prom.example.com"})
    with pytest.raises(config.ConfigKeyError) as info:
        run_program(main, cfg, stack="dev")
    assert str(info.value).startswith("inferstack:addons.prometheusAddress: a URL with credentials")
    assert "pw-4711" not in str(info.value)
