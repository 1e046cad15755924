"""The stack's configuration: read once from ``pulumi.Config`` and validated into typed dataclasses.

Every key lives in the ``inferstack`` namespace (``inferstack:<key>`` in ``stacks/Pulumi.<stack>.yaml``).
``load()`` checks everything before the program declares a single resource; a ``ConfigError`` names
the key, the value it saw and what is allowed, e.g.::

    inferstack:gpuPools[0].minSize: -1 is not allowed; expected an integer >= 0

See ``stacks/Pulumi.dev.yaml`` for every key with a comment, and ``stacks/Pulumi.multi.yaml`` for
``servers`` (several models in one Deployment).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pulumi
from inferstack.components.runtime_image import DOCKERFILES, PINNED_IMAGE, PLATFORMS, REPOSITORY

from inferstack.errors import InferstackError
from inferstack.manifest import MANIFEST_NAME, Manifest, load_manifest, sha256_file, verify_files

NAMESPACE = "inferstack"
#: Every top-level key of the namespace (``inferstack:<key>``); any other key is refused as a typo,
#: with the nearest of these. One per line, sorted: a new key is one added line.
KNOWN_KEYS = (
    "addons",
    "authToken",
    "clusterAdmins",
    "clusterEndpoint",
    "clusterSupportType",
    "clusterVersion",
    "gpuPools",
    "kubeContext",
    "kubeconfig",
    "kubeconfigContents",
    "modelStore",
    "models",
    "network",
    "objectStore",
    "region",
    "runtimeImage",
    "servers",
    "systemPool",
    "tags",
    "target",
)
#: Keys (``top.nested`` for a value inside an object) that hold secrets: a plaintext value in a
#: stack file is refused, since Pulumi would then show and store it as plain text.
SECRET_KEYS = ("authToken", "kubeconfigContents", "objectStore.secretAccessKey")
TARGETS = ("aws", "kubernetes")
AMI_TYPES = ("AL2023_x86_64_NVIDIA", "BOTTLEROCKET_x86_64_NVIDIA")
CAPACITY_TYPES = ("ON_DEMAND", "SPOT")
NAT_MODES = ("single", "perAz")
# internal / public: an internal / internet-facing NLB on aws; on kubernetes ClusterIP / LoadBalancer.
EXPOSURES = ("internal", "public", "clusterIP", "nodePort", "loadBalancer", "ingress")
# Kubernetes versions this project renders and validates (kubernetes-validate ships their schemas).
CLUSTER_VERSIONS = ("1.31", "1.32", "1.33", "1.34", "1.35")
DEFAULT_CLUSTER_VERSION = "1.34"
SUPPORT_TYPES = ("STANDARD", "EXTENDED")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,30}[a-z0-9])?$")
_BUCKET_PREFIX = re.compile(r"^[a-z0-9][a-z0-9.-]{1,35}$")
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
ADDRESSING_STYLES = ("path", "virtual")
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
# x86_64 NVIDIA families (the AMI types above are x86_64 NVIDIA; g5g is ARM, g4ad is AMD).
_GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "gr6", "p3", "p4d", "p4de", "p5", "p5e", "p5en")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]$")
PIN_HINT = (
    "an image pinned by digest, repo@sha256:<64 hex> (the release workflow prints each image's digest; "
    "or run `docker buildx imagetools inspect <repo>:<tag>` and take its Digest)"
)


class ConfigError(InferstackError, ValueError):
    """A stack config value is missing or not allowed; the message names the key."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        shown = "(missing)" if value is None else repr(value)
        super().__init__(f"{NAMESPACE}:{key}: {shown} is not allowed; expected {allowed}")
        self.key = key
        self.value = value
        self.allowed = allowed


class ConfigKeyError(ConfigError):
    """A key that is unknown, or a secret set in plain text; the message never shows the value."""

    def __init__(self, key: str, problem: str) -> None:
        InferstackError.__init__(self, f"{NAMESPACE}:{key}: {problem}")
        self.key = key
        self.value = None
        self.allowed = problem


# -- typed config --------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkConfig:
    cidr: str = "10.40.0.0/16"
    """VPC CIDR block, at least a /20 (default 10.40.0.0/16)."""
    az_count: int = 2
    """Availability zones to spread subnets over, 2-3 (default 2)."""
    nat: str = "single"
    """``single`` NAT gateway (cheap, dev) or ``perAz`` (one per zone, prod). Default ``single``."""


@dataclass(frozen=True)
class GpuPoolConfig:
    name: str
    instance_types: list[str]
    min_size: int = 0
    max_size: int = 1
    desired_size: int = 1
    disk_size_gib: int = 100
    ami_type: str = AMI_TYPES[0]
    capacity_type: str = "ON_DEMAND"


@dataclass(frozen=True)
class SystemPoolConfig:
    instance_types: list[str] = field(default_factory=lambda: ["t3.medium"])
    min_size: int = 1
    max_size: int = 2
    desired_size: int = 1


@dataclass(frozen=True)
class ModelStoreConfig:
    bucket_prefix: str = "inferstack-models"
    force_destroy: bool = False
    protect: bool = False
    noncurrent_version_days: int = 30
    bucket_name: str | None = None
    """``modelStore.bucketName``: the exact bucket name, no random suffix (Tencent COS needs
    ``<name>-<appid>``). Default none: ``bucketPrefix`` plus a unique suffix."""


@dataclass(frozen=True)
class ObjectStoreConfig:
    """An S3-compatible endpoint (MinIO, Ceph, OSS, COS) for the ``kubernetes`` target."""

    endpoint: str
    cluster_endpoint: str
    access_key_id: str
    secret_access_key: pulumi.Output[str]
    region: str = "us-east-1"
    addressing_style: str = "path"
    """``objectStore.addressingStyle``: ``path`` (MinIO, Ceph; the default) or ``virtual`` (Alibaba
    OSS, Tencent COS, which refuse path-style requests)."""


@dataclass(frozen=True)
class AutoscalingConfig:
    """KEDA scaling of one model on the runtime's own load (see components/autoscaling.py)."""

    min_replicas: int
    """0 (scale to zero: requests wait at the KEDA HTTP add-on's interceptor) to 100."""
    max_replicas: int
    target_queue_depth: int = 4
    """Requests waiting for the batcher per replica before another replica is wanted. Default 4."""
    target_inflight: int = 16
    """Requests in flight (queued or computing) per replica before another is wanted. Default 16."""
    scale_to_zero_after_s: int = 900
    """Seconds without requests before the last replica goes (min 0 only). Default 900."""


@dataclass(frozen=True, kw_only=True)
class DeploymentConfig:
    """What a Deployment running ``inferstack serve`` is given (the ``SERVING_KEYS`` of a model
    without a server, or of a ``servers[]`` entry): its image, pods, GPUs, scaling and exposure."""

    image: str | None
    """A prebuilt image pinned by digest, or None: the stack's runtime image (``runtimeImage``)."""
    replicas: int = 1
    gpus: int = 1
    """``nvidia.com/gpu`` per replica, shared by every model of the server."""
    cpu: str = "2"
    memory: str = "8Gi"
    autoscaling: AutoscalingConfig | None = None
    exposure: str = "internal"
    auth: bool = False
    image_pull_policy: str | None = None
    """None: Always for a tag, IfNotPresent for a digest (see InferenceServiceArgs)."""
    cache_size: str = "10Gi"
    """``cacheSize``: the model cache emptyDir's size limit (ephemeral-storage follows it): every
    model of the server is downloaded into it."""
    ingress_class: str | None = None
    """``ingress.className`` with ``exposure: ingress``."""
    ingress_host: str | None = None
    """``ingress.host`` with ``exposure: ingress``."""

    @property
    def variant(self) -> str:
        """The runtime image variant: ``gpu`` with GPUs, else ``cpu``."""
        return "gpu" if self.gpus else "cpu"


@dataclass(frozen=True)
class ModelConfig(DeploymentConfig):
    """One entry of ``models``; its Deployment keys are used when no server lists it."""

    name: str
    path: Path
    manifest: Manifest
    server: str | None = None
    """The ``servers[].name`` whose Deployment serves this model (the Deployment keys are then
    that server's, and unused here); None: the model has a Deployment of its own."""


#: The keys that describe a Deployment (a model server) rather than a model: on a model without
#: a server, or once on a ``servers[]`` entry for all of its models.
SERVING_KEYS = (
    "image",
    "imagePullPolicy",
    "replicas",
    "gpus",
    "cpu",
    "memory",
    "autoscaling",
    "exposure",
    "auth",
    "cacheSize",
    "ingress",
)


@dataclass(frozen=True)
class ModelServerConfig(DeploymentConfig):
    """One Deployment running ``inferstack serve`` with one or more models (a model server, in
    Triton's and KServe's terms): a ``servers[]`` entry, or a model of ``models`` that no server
    lists (a server of its own, named after it). Its pods, GPUs, scaling and exposure are declared
    once; each model keeps its own package, upload and sha256 check."""

    name: str
    """DNS label; names the namespace, Deployment and Service."""
    models: list[ModelConfig]
    """The models the server's pods load, in the order given (each served as
    ``/v2/models/<name>``)."""
    declared: bool = False
    """True for a ``servers[]`` entry; False for a model's own Deployment."""

    @classmethod
    def of_model(cls, m: ModelConfig) -> ModelServerConfig:
        """The Deployment of a model that no server lists: named after it, with its own keys."""
        return cls(name=m.name, models=[m], **{f.name: getattr(m, f.name) for f in fields(DeploymentConfig)})


@dataclass(frozen=True)
class RuntimeImageConfig:
    """Where the runtime images come from: built during ``pulumi up``, or prebuilt by digest."""

    build: bool = False
    """Build ``runtime/Dockerfile`` (GPU) / ``Dockerfile.cpu`` (CPU) during ``pulumi up``. Default false."""
    registry: str | None = None
    """``build``: ``ecr`` (the stack's ECR repository, target aws) or a repository the cluster pulls
    from, e.g. ``localhost:5001/inferstack-runtime`` (kind's local registry). Default none."""
    platform: str = "linux/amd64"
    """``build``: the image platform. Default linux/amd64 (the GPU AMIs are x86_64)."""
    prebuilt: dict[str, str] = field(default_factory=dict)
    """Without ``build``: variant (``gpu``/``cpu``) -> image pinned by digest. Default none."""


@dataclass(frozen=True)
class AddonsConfig:
    """The cluster add-ons that autoscaling and monitoring need (``inferstack:addons``)."""

    keda: bool = True
    """Install KEDA and its HTTP add-on. Default true (false: the cluster already runs them)."""
    prometheus: bool = True
    """Install Prometheus (scrapes the runtime and DCGM). Default true."""
    prometheus_address: str | None = None
    """With ``prometheus: false``: the Prometheus KEDA queries, e.g. http://prometheus.mon:9090."""
    grafana: bool = True
    """Install Grafana with the inferstack dashboard. Default true."""
    http_addon_namespace: str | None = None
    """``httpAddon.namespace``, with ``keda: false``: where the installed HTTP add-on runs
    (default keda)."""
    http_addon_proxy_port: int | None = None
    """``httpAddon.proxyPort``, with ``keda: false``: its interceptor proxy Service's port (the chart's
    ``interceptor.proxy.port``, 8080 unless set). Required there when a model scales to zero."""


@dataclass(frozen=True)
class StackConfig:
    target: str
    region: str
    cluster_version: str
    network: NetworkConfig
    gpu_pools: list[GpuPoolConfig]
    system_pool: SystemPoolConfig | None
    model_store: ModelStoreConfig
    object_store: ObjectStoreConfig | None
    kube_context: str | None
    kubeconfig: str | None
    """``kubeconfig``: a kubeconfig file's path exactly as the stack file gives it (``~/...``,
    absolute, or relative to the project directory, where Pulumi runs the program and the provider)."""
    runtime_image: RuntimeImageConfig
    models: list[ModelConfig]
    tags: dict[str, str]
    auth_token: pulumi.Output[str] | None
    project_dir: Path
    cluster_admins: list[str] = field(default_factory=list)
    cluster_support_type: str = "EXTENDED"
    """EKS upgrade policy (``clusterSupportType``): STANDARD (auto-upgrade when the version leaves
    standard support) or EXTENDED (the EKS default: stay, at the extended-support price)."""
    addons: AddonsConfig = field(default_factory=AddonsConfig)
    public_access_cidrs: list[str] = field(default_factory=list)
    """``clusterEndpoint.publicAccessCidrs`` (target aws, required there): who reaches the EKS API's
    public endpoint; empty: the public endpoint is off (private endpoint only)."""
    kubeconfig_contents: pulumi.Output[str] | None = None
    """``kubeconfigContents``: a kubeconfig's contents, a secret (it holds tokens and keys)."""
    servers: list[ModelServerConfig] = field(default_factory=list)
    """Every Deployment of models: each ``servers[]`` entry and each model no server lists, in the
    order of ``models`` (a server where its first model stands). Empty: one per model."""

    def model_servers(self) -> list[ModelServerConfig]:
        """``servers``, or one server per model when none was built (a hand-made config)."""
        return self.servers or [ModelServerConfig.of_model(m) for m in self.models]


# -- reading -------------------------------------------------------------------------------


def find_project_dir(start: Path | None = None) -> Path:
    """The directory of ``Pulumi.yaml``: searched upwards from ``start`` (default: the cwd), then from
    this package's location; relative paths in the config resolve against it, never the cwd."""
    candidates = [start or Path.cwd(), Path(__file__).resolve().parent]
    for base in candidates:
        for d in [base.resolve(), *base.resolve().parents]:
            if (d / "Pulumi.yaml").is_file():
                return d
    raise InferstackError("Pulumi.yaml not found above the working directory; run inside the project")


def load(project_dir: Path | None = None) -> StackConfig:
    """Read and validate the whole stack config; raises ``ConfigError`` on the first bad value."""
    cfg = pulumi.Config(NAMESPACE)
    root = project_dir or find_project_dir()
    _check_keys_and_secrets()

    target = _choice(cfg.get("target") or "aws", "target", TARGETS)
    region = cfg.get("region") or "us-east-1"
    if not _REGION.match(region):
        raise ConfigError("region", region, "an AWS region name such as us-east-1")
    version = str(cfg.get("clusterVersion") or DEFAULT_CLUSTER_VERSION)
    _choice(version, "clusterVersion", CLUSTER_VERSIONS)
    support_type = _choice(cfg.get("clusterSupportType") or "EXTENDED", "clusterSupportType", SUPPORT_TYPES)

    network = _network(_obj(cfg, "network") or {})
    gpu_pools = [_gpu_pool(p, f"gpuPools[{i}]") for i, p in enumerate(_list(cfg, "gpuPools"))]
    names = [p.name for p in gpu_pools]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise ConfigError(f"gpuPools[{i}].name", n, "a name used by one pool only")
    system_raw = _obj(cfg, "systemPool")
    system_pool = _system_pool(system_raw) if system_raw else None
    store = _model_store(_obj(cfg, "modelStore") or {})

    object_store = None
    kube_context = cfg.get("kubeContext")
    kubeconfig, kubeconfig_contents = _kubeconfig(cfg)
    if target == "kubernetes":
        if gpu_pools:
            raise ConfigError("gpuPools", names, "no GPU pools with target kubernetes (the cluster exists)")
        object_store = _object_store(cfg)
    elif cfg.get_object("objectStore") is not None:
        raise ConfigError("objectStore", "(set)", "objectStore only with target kubernetes; aws uses S3")

    runtime_image = _runtime_image(_obj(cfg, "runtimeImage") or {}, target)
    raw_models = _list(cfg, "models")
    if not raw_models:
        raise ConfigError("models", None, "a list with at least one model")
    raw_servers = _list(cfg, "servers")
    membership = _server_membership(raw_servers, raw_models)
    models = [
        _model(m, f"models[{i}]", root, target, membership.get(i)) for i, m in enumerate(raw_models)
    ]
    seen: list[str] = []
    packages: dict[tuple[str, str], int] = {}
    for i, m in enumerate(models):
        if m.name in seen:
            raise ConfigError(f"models[{i}].name", m.name, "a name used by one model only")
        seen.append(m.name)
        package = (m.manifest.name, sha256_file(m.path / MANIFEST_NAME))
        if package in packages:
            j = packages[package]
            raise ConfigError(
                f"models[{i}].path",
                str(raw_models[i].get("path")),
                f"a package no other model uses: models[{j}] ({models[j].name}) uploads the same one to "
                f"the same prefix (models/{m.manifest.name}/<its manifest's sha256>/), and destroying "
                "either would delete the other's objects",
            )
        packages[package] = i
    servers = _servers(raw_servers, models, membership, target)
    for key, s in servers:
        if s.gpus > 0 and target == "aws" and not gpu_pools:
            raise ConfigError(f"{key}.gpus", s.gpus, "0, or at least one entry in gpuPools")
        if s.gpus > 0 and target == "aws":
            _check_gpu_fit(s, key, gpu_pools)
            _check_gpu_capacity(s, key, gpu_pools)
        if s.image is None and not runtime_image.build and s.variant not in runtime_image.prebuilt:
            raise ConfigError(
                f"runtimeImage.{s.variant}",
                None,
                f"the {s.variant} runtime image for {key} ({s.name}): runtimeImage.build: true, "
                f"or runtimeImage.{s.variant}: " + PIN_HINT,
            )
    _check_ingress_hosts(servers)
    addons = _addons(_obj(cfg, "addons") or {})
    scaled = [s.name for _, s in servers if s.autoscaling]
    if scaled and not addons.prometheus and not addons.prometheus_address:
        raise ConfigError(
            "addons.prometheusAddress",
            None,
            f"the Prometheus that KEDA reads for {', '.join(scaled)} (autoscaling), "
            "or addons.prometheus: true",
        )

    at_zero = [s.name for _, s in servers if s.autoscaling and s.autoscaling.min_replicas == 0]
    if at_zero and not addons.keda and addons.http_addon_proxy_port is None:
        raise ConfigError(
            "addons.httpAddon",
            None,
            f"the installed KEDA HTTP add-on's namespace and interceptor proxy port for {', '.join(at_zero)} "
            "(minReplicas 0 with addons.keda: false), e.g. {namespace: keda, proxyPort: 8080}; "
            "docs/infrastructure.md lists the chart values it needs",
        )

    auth_token = None
    if any(s.auth for _, s in servers):
        auth_token = cfg.get_secret("authToken")
        if auth_token is None:
            raise ConfigError(
                "authToken",
                None,
                "a secret bearer token when a model sets auth: true "
                "(pulumi config set --secret inferstack:authToken ...)",
            )

    admins = _list(cfg, "clusterAdmins")
    for i, arn in enumerate(admins):
        if not isinstance(arn, str) or not re.match(r"^arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/.+$", arn):
            raise ConfigError(
                f"clusterAdmins[{i}]", arn, "IAM role or user ARNs (arn:aws:iam::<account>:role/...)"
            )
    if admins and target != "aws":
        raise ConfigError("clusterAdmins", admins, "clusterAdmins only with target aws")
    public_access_cidrs = _cluster_endpoint(_obj(cfg, "clusterEndpoint"), target)
    if cfg.get("clusterSupportType") is not None and target != "aws":
        raise ConfigError(
            "clusterSupportType", support_type, "clusterSupportType only with target aws (EKS upgrade policy)"
        )

    tags = _obj(cfg, "tags") or {}
    for k, v in tags.items():
        if not isinstance(v, str) or not k:
            raise ConfigError(f"tags.{k}", v, "string tag values")

    return StackConfig(
        target=target,
        region=region,
        cluster_version=version,
        network=network,
        gpu_pools=gpu_pools,
        system_pool=system_pool,
        model_store=store,
        object_store=object_store,
        kube_context=kube_context,
        kubeconfig=kubeconfig,
        runtime_image=runtime_image,
        models=models,
        tags={"project": "inferstack", "stack": pulumi.get_stack(), **tags},
        auth_token=auth_token,
        project_dir=root,
        cluster_admins=admins,
        cluster_support_type=support_type,
        addons=addons,
        kubeconfig_contents=kubeconfig_contents,
        public_access_cidrs=public_access_cidrs,
        servers=[s for _, s in servers],
    )


def _cluster_endpoint(raw: Mapping[str, Any] | None, target: str) -> list[str]:
    """``clusterEndpoint.publicAccessCidrs``: stated on every aws stack, never assumed open."""
    if target != "aws":
        if raw is not None:
            raise ConfigError(
                "clusterEndpoint", "(set)", "clusterEndpoint only with target aws (the EKS API)"
            )
        return []
    if raw is None:
        raise ConfigError(
            "clusterEndpoint",
            None,
            "the networks that reach the EKS API's public endpoint: {publicAccessCidrs: [<your "
            "deployers' egress CIDRs>]}, or {publicAccessCidrs: []} for the private endpoint only "
            "(reached from the VPC); 0.0.0.0/0 only when written out",
        )
    _keys(raw, "clusterEndpoint", {"publicAccessCidrs"})
    cidrs = raw.get("publicAccessCidrs")
    if not isinstance(cidrs, list) or len(cidrs) > 40:
        raise ConfigError(
            "clusterEndpoint.publicAccessCidrs",
            cidrs,
            "a list of at most 40 IPv4 CIDR blocks ([] = private only)",
        )
    for i, c in enumerate(cidrs):
        try:
            if not isinstance(c, str) or "/" not in c:
                raise ValueError(c)
            ipaddress.IPv4Network(c, strict=True)
        except (ValueError, TypeError):
            raise ConfigError(
                f"clusterEndpoint.publicAccessCidrs[{i}]",
                c,
                "an IPv4 CIDR block with its prefix length and no host bits, such as 198.51.100.0/24",
            ) from None
    return list(cidrs)


_KUBECONFIG_HINT = (
    "set a kubeconfig's contents encrypted with "
    "`pulumi config set --secret inferstack:kubeconfigContents \"$(cat <file>)\" --stack {stack}`"
)


def _kubeconfig(cfg: pulumi.Config) -> tuple[str | None, pulumi.Output[str] | None]:
    """``kubeconfig`` (a file's path, kept as given: the plan never shows the builder's home) or
    ``kubeconfigContents`` (the file's contents, a secret). A path key that holds contents, or a
    secret, is refused without showing the value: contents carry tokens and client keys."""
    values, secrets = _stack_values()
    path_key, contents_key = f"{NAMESPACE}:kubeconfig", f"{NAMESPACE}:kubeconfigContents"
    hint = _KUBECONFIG_HINT.format(stack=pulumi.get_stack())
    if path_key in values and contents_key in values:
        raise ConfigKeyError("kubeconfig", "set kubeconfig (a path) or kubeconfigContents, not both")
    if path_key in secrets:
        raise ConfigKeyError(
            "kubeconfig", f"a secret, but this key holds a file's path; for the file's contents {hint}"
        )
    path = values.get(path_key)
    if path is not None:
        looks_inline = path.lstrip().startswith(("{", "[")) or re.search(
            r"(^|\s)(apiVersion|clusters|users|kind)\s*:", path
        )
        if looks_inline or any(ord(c) < 32 for c in path):
            raise ConfigKeyError(
                "kubeconfig",
                f"a kubeconfig's contents, not a file path; remove it from the stack file and {hint}",
            )
        if not path.strip() or len(path) > 4096:
            raise ConfigKeyError("kubeconfig", "a kubeconfig file's path (1-4096 characters)")
        return path, None
    if contents_key in values:
        return None, cfg.get_secret("kubeconfigContents")
    return None, None


def _stack_values() -> tuple[dict[str, Any], set[str]]:
    """Every config value Pulumi hands the program (fully qualified key -> text) and the keys that
    are secrets: from the language host's environment (``PULUMI_CONFIG``,
    ``PULUMI_CONFIG_SECRET_KEYS``) under ``pulumi up``/``preview``, and from the runtime's config map
    (which ``inferstack plan`` and Pulumi's mocks set)."""
    from pulumi.runtime import config as runtime_config

    values = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    secrets = set(runtime_config.get_config_secret_keys_env())
    secrets |= {k for k in values if runtime_config.is_config_secret(k)}
    return values, secrets


def _nearest(key: str, known: tuple[str, ...] | set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _check_keys_and_secrets() -> None:
    """Refuse unknown top-level keys (with the nearest known one) and secrets in plain text (with
    the command that sets them encrypted), before any value is read."""
    values, secrets = _stack_values()
    prefix = f"{NAMESPACE}:"
    for full in sorted(values):
        key = full[len(prefix):]
        if full.startswith(prefix) and key not in KNOWN_KEYS:
            raise ConfigKeyError(
                key, f"unknown key; {_nearest(key, KNOWN_KEYS)}(known keys: {', '.join(KNOWN_KEYS)})"
            )
    for path in SECRET_KEYS:
        top, _, nested = path.partition(".")
        full = prefix + top
        if full not in values or full in secrets:
            continue
        if nested:
            try:
                holder = json.loads(values[full])
            except (TypeError, ValueError):
                continue  # not an object: its section's check names the problem
            if not isinstance(holder, dict) or nested not in holder:
                continue
        stack = pulumi.get_stack()
        raise ConfigKeyError(
            path,
            f"a secret in plain text in Pulumi.{stack}.yaml; remove it there and set it encrypted with "
            f"`pulumi config set --secret {'--path ' if nested else ''}'{prefix}{path}' <value> "
            f"--stack {stack}`",
        )


def _check_gpu_capacity(s: ModelServerConfig, key: str, pools: list[GpuPoolConfig]) -> None:
    """The rollout surges one replica before an old one goes (maxUnavailable 0): at the largest
    replica count the pools must still fit one more, or a rollout at peak waits forever. ``key``
    is the server's (``servers[i]``, or ``models[i]`` for a model's own Deployment)."""
    from inferstack.components.gpu_node_pool import gpus_per_node

    capacity = sum(p.max_size * min(gpus_per_node(t) for t in p.instance_types) for p in pools)
    peak = s.autoscaling.max_replicas if s.autoscaling else s.replicas
    needed = s.gpus * (peak + 1)
    if capacity < needed:
        where = f"{key}.autoscaling.maxReplicas" if s.autoscaling else f"{key}.replicas"
        raise ConfigError(
            where,
            peak,
            f"at most {capacity // s.gpus - 1}: the GPU pools hold {capacity} GPUs at maxSize, and "
            f"{peak} replicas of {s.gpus} GPU(s) plus one surging during a rollout need {needed} "
            "(raise gpuPools[].maxSize or lower the replicas)",
        )


def _check_gpu_fit(s: ModelServerConfig, key: str, pools: list[GpuPoolConfig]) -> None:
    """A pod's GPUs come from one node: some pool's every instance type (the cluster autoscaler
    may launch any of them) must carry at least ``gpus``, or the pod stays Pending."""
    from inferstack.components.gpu_node_pool import gpus_per_node

    per_pool = {p.name: min(gpus_per_node(t) for t in p.instance_types) for p in pools}
    if s.gpus > max(per_pool.values()):
        sizes = ", ".join(f"{name}: {n}" for name, n in per_pool.items())
        raise ConfigError(
            f"{key}.gpus",
            s.gpus,
            f"at most {max(per_pool.values())}: a replica's GPUs must be on one node, and the GPU pools' "
            f"instance types carry at most that many each ({sizes}); add a pool of larger GPU instances",
        )


def _check_ingress_hosts(servers: list[tuple[str, ModelServerConfig]]) -> None:
    """Several servers may share an Ingress host (each model's ``/v2/models/<name>`` path leads to
    its server), but not at zero replicas: KEDA's interceptor, which holds requests then, is given
    hosts to route, so a host it routes must belong to one server."""
    by_host: dict[str, list[str]] = {}
    paths: dict[tuple[str, str], str] = {}
    for key, s in servers:
        if s.exposure == "ingress" and s.ingress_host:
            by_host.setdefault(s.ingress_host, []).append(s.name)
            for m in s.models:  # the Ingress path is the name the runtime serves: the manifest's
                other = paths.setdefault((s.ingress_host, m.manifest.name), m.name)
                if other != m.name:
                    raise ConfigError(
                        f"{key}.ingress.host",
                        s.ingress_host,
                        f"a host where /v2/models/{m.manifest.name} leads to one model: {other} and "
                        f"{m.name} are both served under that name (their manifests')",
                    )
    for key, s in servers:
        others = [n for n in by_host.get(s.ingress_host or "", []) if n != s.name]
        if others and s.exposure == "ingress" and s.autoscaling and s.autoscaling.min_replicas == 0:
            raise ConfigError(
                f"{key}.autoscaling.minReplicas",
                0,
                f"1 or more: ingress host {s.ingress_host} is shared with {', '.join(others)}, and at zero "
                "KEDA's interceptor answers for the whole host (it routes by Host); give this server an "
                "ingress.host of its own to scale it to zero",
            )


def _server_membership(raw_servers: list[Any], raw_models: list[Any]) -> dict[int, tuple[int, str]]:
    """``servers[].models`` checked against ``models``: model index -> (server index, server name)
    for every model a server lists. A model in two servers, a name listed twice, an unknown model,
    a server with no model or a server name used twice is refused."""
    names = [m.get("name") if isinstance(m, Mapping) else None for m in raw_models]
    known = {n for n in names if isinstance(n, str)}
    owner: dict[int, tuple[int, str]] = {}
    server_names: list[str] = []
    for i, raw in enumerate(raw_servers):
        key = f"servers[{i}]"
        if not isinstance(raw, Mapping):
            raise ConfigError(
                key, raw, "a mapping with name, models and the Deployment's keys (gpus, cpu, ...)"
            )
        _keys(raw, key, {"name", "models", *SERVING_KEYS})
        name = _name(raw.get("name"), f"{key}.name")
        if name in server_names:
            raise ConfigError(f"{key}.name", name, "a name used by one server only")
        server_names.append(name)
        listed = raw.get("models")
        if not isinstance(listed, list) or not listed:
            raise ConfigError(
                f"{key}.models", listed, "a non-empty list of model names (models[].name) this server serves"
            )
        for j, model in enumerate(listed):
            mkey = f"{key}.models[{j}]"
            if not isinstance(model, str) or model not in known:
                hint = _nearest(str(model), known) if isinstance(model, str) else ""
                raise ConfigError(mkey, model, f"the name of a model in models; {hint}(models: "
                                  f"{', '.join(sorted(known))})")
            index = names.index(model)
            if index in owner:
                other_i, other = owner[index]
                where = (
                    f"listed twice in {key}" if other_i == i else f"already in servers[{other_i}] ({other})"
                )
                raise ConfigError(mkey, model, f"a model of one server only ({model} is {where})")
            owner[index] = (i, name)
    for i, name in enumerate(server_names):
        if name in known and names.index(name) not in owner:
            raise ConfigError(
                f"servers[{i}].name",
                name,
                f"a name no model with a Deployment of its own uses (models[{names.index(name)}] {name} "
                "names its own namespace, Deployment and Service)",
            )
    return owner


def _servers(
    raw_servers: list[Any],
    models: list[ModelConfig],
    membership: dict[int, tuple[int, str]],
    target: str,
) -> list[tuple[str, ModelServerConfig]]:
    """Every Deployment with the key its errors name: a ``servers[i]`` entry where its first model
    stands in ``models``, each model no server lists as ``models[i]``."""
    out: list[tuple[str, ModelServerConfig]] = []
    placed: set[int] = set()
    for i, m in enumerate(models):
        if i not in membership:
            out.append((f"models[{i}]", ModelServerConfig.of_model(m)))
            continue
        si, _ = membership[i]
        if si in placed:
            continue
        placed.add(si)
        raw, key = raw_servers[si], f"servers[{si}]"
        members = [models[names_i] for names_i in _listed(raw, models)]
        serving = _serving(raw, key, target)
        out.append((key, ModelServerConfig(raw["name"], members, declared=True, **serving)))
    return out


def _listed(raw: Mapping[str, Any], models: list[ModelConfig]) -> list[int]:
    by_name = {m.name: i for i, m in enumerate(models)}
    return [by_name[n] for n in raw["models"]]


# -- sections ------------------------------------------------------------------------------


def _network(raw: Mapping[str, Any]) -> NetworkConfig:
    _keys(raw, "network", {"cidr", "azCount", "nat"})
    cidr = raw.get("cidr", NetworkConfig.cidr)
    try:
        net = ipaddress.IPv4Network(cidr)
    except (ValueError, TypeError):
        raise ConfigError("network.cidr", cidr, "an IPv4 CIDR block such as 10.40.0.0/16") from None
    if net.prefixlen > 20:
        raise ConfigError("network.cidr", cidr, "a block of /20 or larger (room for 2 subnets per AZ)")
    az = _int(raw.get("azCount", NetworkConfig.az_count), "network.azCount", 2, 3)
    nat = _choice(raw.get("nat", NetworkConfig.nat), "network.nat", NAT_MODES)
    return NetworkConfig(cidr=str(net), az_count=az, nat=nat)


def _gpu_pool(raw: Any, key: str) -> GpuPoolConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(key, raw, "a mapping with name, instanceTypes, minSize, maxSize, ...")
    _keys(
        raw,
        key,
        {
            "name",
            "instanceTypes",
            "minSize",
            "maxSize",
            "desiredSize",
            "diskSizeGiB",
            "amiType",
            "capacityType",
        },
    )
    name = _name(raw.get("name"), f"{key}.name")
    types = _instance_types(raw.get("instanceTypes"), f"{key}.instanceTypes", gpu=True)
    lo = _int(raw.get("minSize", 0), f"{key}.minSize", 0, 100)
    hi = _int(raw.get("maxSize", max(lo, 1)), f"{key}.maxSize", max(lo, 1), 100)
    desired = _int(raw.get("desiredSize", max(lo, 1)), f"{key}.desiredSize", lo, hi)
    disk = _int(raw.get("diskSizeGiB", 100), f"{key}.diskSizeGiB", 50, 16384)
    ami = _choice(raw.get("amiType", AMI_TYPES[0]), f"{key}.amiType", AMI_TYPES)
    cap = _choice(raw.get("capacityType", "ON_DEMAND"), f"{key}.capacityType", CAPACITY_TYPES)
    from inferstack.components.gpu_node_pool import gpu_model

    try:
        gpu_model(types)
    except ValueError as e:
        raise ConfigError(f"{key}.instanceTypes", types, f"one GPU model per pool ({e})") from None
    return GpuPoolConfig(name, types, lo, hi, desired, disk, ami, cap)


def _system_pool(raw: Mapping[str, Any]) -> SystemPoolConfig:
    _keys(raw, "systemPool", {"instanceTypes", "minSize", "maxSize", "desiredSize"})
    types = _instance_types(raw.get("instanceTypes", ["t3.medium"]), "systemPool.instanceTypes", gpu=False)
    lo = _int(raw.get("minSize", 1), "systemPool.minSize", 1, 100)
    hi = _int(raw.get("maxSize", max(lo, 2)), "systemPool.maxSize", lo, 100)
    desired = _int(raw.get("desiredSize", lo), "systemPool.desiredSize", lo, hi)
    return SystemPoolConfig(types, lo, hi, desired)


def _model_store(raw: Mapping[str, Any]) -> ModelStoreConfig:
    _keys(
        raw, "modelStore", {"bucketPrefix", "bucketName", "forceDestroy", "protect", "noncurrentVersionDays"}
    )
    prefix = raw.get("bucketPrefix", ModelStoreConfig.bucket_prefix)
    if not isinstance(prefix, str) or not _BUCKET_PREFIX.match(prefix) or ".." in prefix:
        raise ConfigError(
            "modelStore.bucketPrefix",
            prefix,
            "2-36 characters of a-z, 0-9, '.', '-', starting with a letter or digit",
        )
    force = _bool(raw.get("forceDestroy", False), "modelStore.forceDestroy")
    protect = _bool(raw.get("protect", False), "modelStore.protect")
    if force and protect:
        raise ConfigError("modelStore.forceDestroy", force, "false when modelStore.protect is true")
    days = _int(raw.get("noncurrentVersionDays", 30), "modelStore.noncurrentVersionDays", 1, 3650)
    name = raw.get("bucketName")
    if name is not None:
        if "bucketPrefix" in raw:
            raise ConfigError("modelStore.bucketName", name, "bucketName or bucketPrefix, not both")
        if not isinstance(name, str) or not _BUCKET_NAME.match(name) or ".." in name:
            raise ConfigError(
                "modelStore.bucketName",
                name,
                "an S3 bucket name: 3-63 characters of a-z, 0-9, '.', '-', starting and ending with a "
                "letter or digit (e.g. models-1250000000 on Tencent COS)",
            )
    return ModelStoreConfig(prefix, force, protect, days, bucket_name=name)


def _object_store(cfg: pulumi.Config) -> ObjectStoreConfig:
    raw = cfg.get_object("objectStore")
    if not isinstance(raw, Mapping):
        raise ConfigError(
            "objectStore",
            raw,
            "a mapping with endpoint, clusterEndpoint, accessKeyId "
            "(and secretAccessKey) for target kubernetes",
        )
    _keys(
        raw,
        "objectStore",
        {"endpoint", "clusterEndpoint", "accessKeyId", "secretAccessKey", "region", "addressingStyle"},
    )
    endpoint = _url(raw.get("endpoint"), "objectStore.endpoint")
    cluster_endpoint = _url(raw.get("clusterEndpoint", endpoint), "objectStore.clusterEndpoint")
    access_key = raw.get("accessKeyId")
    if not isinstance(access_key, str) or not access_key:
        raise ConfigError("objectStore.accessKeyId", access_key, "the store's access key id")
    secret = raw.get("secretAccessKey")
    secret_key: pulumi.Output[str] | None
    if secret is None:
        # Not set (yet): `pulumi up` then stops below. Asking pulumi.Config for it by its --path name
        # lets `inferstack plan`, which holds no secrets, stand in for it and list it as assumed.
        secret_key = cfg.get_secret("objectStore.secretAccessKey")
    elif isinstance(secret, str) and secret:
        secret_key = pulumi.Output.secret(secret)
    else:
        secret_key = None
    if secret_key is None:
        raise ConfigError(
            "objectStore.secretAccessKey",
            "(hidden)" if secret else None,
            "the store's secret key (pulumi config set --secret --path "
            "'inferstack:objectStore.secretAccessKey' ...)",
        )
    region = raw.get("region", "us-east-1")
    style = _choice(raw.get("addressingStyle", "path"), "objectStore.addressingStyle", ADDRESSING_STYLES)
    return ObjectStoreConfig(
        endpoint, cluster_endpoint, access_key, secret_key, region, addressing_style=style
    )


def _runtime_image(raw: Mapping[str, Any], target: str) -> RuntimeImageConfig:
    _keys(raw, "runtimeImage", {"build", "registry", "platform", *DOCKERFILES})
    build = _bool(raw.get("build", False), "runtimeImage.build")
    prebuilt: dict[str, str] = {}
    for variant in DOCKERFILES:
        if raw.get(variant) is not None:
            if build:
                raise ConfigError(
                    f"runtimeImage.{variant}", raw[variant], "no prebuilt image with runtimeImage.build: true"
                )
            prebuilt[variant] = _pinned(raw[variant], f"runtimeImage.{variant}")
    registry = raw.get("registry")
    if not build:
        if registry is not None:
            raise ConfigError(
                "runtimeImage.registry", registry, "a registry only with runtimeImage.build: true"
            )
        return RuntimeImageConfig(prebuilt=prebuilt)
    if registry is None and target == "aws":
        registry = "ecr"
    if registry == "ecr":
        if target != "aws":
            raise ConfigError(
                "runtimeImage.registry",
                registry,
                "a repository address with target kubernetes (ECR is AWS only), "
                "e.g. localhost:5001/inferstack-runtime",
            )
    elif not isinstance(registry, str) or not REPOSITORY.match(registry):
        raise ConfigError(
            "runtimeImage.registry",
            registry,
            "ecr (target aws) or a repository the cluster pulls from, host[:port]/path in lowercase, "
            "e.g. localhost:5001/inferstack-runtime",
        )
    platform = _choice(raw.get("platform", "linux/amd64"), "runtimeImage.platform", PLATFORMS)
    return RuntimeImageConfig(build=True, registry=registry, platform=platform)


def _pinned(value: Any, key: str) -> str:
    if not isinstance(value, str) or not PINNED_IMAGE.match(value):
        raise ConfigError(key, value, PIN_HINT)
    return value


def _addons(raw: Mapping[str, Any]) -> AddonsConfig:
    _keys(raw, "addons", {"keda", "prometheus", "prometheusAddress", "grafana", "httpAddon"})
    keda = _bool(raw.get("keda", True), "addons.keda")
    http_ns = http_port = None
    http = raw.get("httpAddon")
    if http is not None:
        if keda:
            raise ConfigError(
                "addons.httpAddon", "(set)", "httpAddon only with addons.keda: false (the stack's own "
                "add-on listens on 8000 in namespace keda)"
            )
        if not isinstance(http, Mapping):
            raise ConfigError("addons.httpAddon", http, "a mapping with namespace and proxyPort")
        _keys(http, "addons.httpAddon", {"namespace", "proxyPort"})
        http_ns = _name(http.get("namespace", "keda"), "addons.httpAddon.namespace")
        http_port = _int(http.get("proxyPort"), "addons.httpAddon.proxyPort", 1, 65535)
    prometheus = _bool(raw.get("prometheus", True), "addons.prometheus")
    address = raw.get("prometheusAddress")
    _no_userinfo(address, "addons.prometheusAddress")
    if address is not None:
        if prometheus:
            raise ConfigError(
                "addons.prometheusAddress", address, "an address only with addons.prometheus: false"
            )
        if not isinstance(address, str) or not re.match(r"^https?://[^/\s]+/?$", address):
            raise ConfigError(
                "addons.prometheusAddress", address, "an http(s) URL such as http://prometheus.mon:9090"
            )
        address = address.rstrip("/")
    grafana = _bool(raw.get("grafana", True), "addons.grafana")
    if grafana and not prometheus:
        raise ConfigError(
            "addons.grafana", grafana, "false when addons.prometheus is false (it reads that one)"
        )
    return AddonsConfig(keda, prometheus, address, grafana, http_ns, http_port)


def _autoscaling(a: Any, key: str, replicas: int) -> AutoscalingConfig:
    if not isinstance(a, Mapping):
        raise ConfigError(
            key, a, "a mapping with minReplicas, maxReplicas, targetQueueDepth, targetInflight"
        )
    _keys(
        a,
        key,
        {"minReplicas", "maxReplicas", "targetQueueDepth", "targetInflight", "scaleToZeroAfterSeconds"},
    )
    lo = _int(a.get("minReplicas", replicas), f"{key}.minReplicas", 0, 100)
    hi = _int(a.get("maxReplicas", max(lo, 1)), f"{key}.maxReplicas", max(lo, 1), 100)
    queue = _int(a.get("targetQueueDepth", 4), f"{key}.targetQueueDepth", 1, 10000)
    inflight = _int(a.get("targetInflight", 16), f"{key}.targetInflight", 1, 10000)
    idle = _int(a.get("scaleToZeroAfterSeconds", 900), f"{key}.scaleToZeroAfterSeconds", 60, 86400)
    return AutoscalingConfig(lo, hi, queue, inflight, idle)


def _model(
    raw: Any, key: str, root: Path, target: str, server: tuple[int, str] | None = None
) -> ModelConfig:
    """``models[i]``: its name and package, and, without a ``server`` (index, name) listing it, the
    keys of its own Deployment (``SERVING_KEYS``); a model a server lists may set none of those."""
    if not isinstance(raw, Mapping):
        raise ConfigError(key, raw, "a mapping with name, path, image, ...")
    if server is not None:
        for k in SERVING_KEYS:
            if k in raw:
                si, sname = server
                raise ConfigKeyError(
                    f"{key}.{k}",
                    f"not on a model that servers[{si}] ({sname}) serves: its Deployment's {k} is "
                    f"set once, as servers[{si}].{k}",
                )
        _keys(raw, key, {"name", "path"})
    else:
        _keys(raw, key, {"name", "path", *SERVING_KEYS})
    name = _name(raw.get("name"), f"{key}.name")
    rel = raw.get("path")
    if not isinstance(rel, str) or not rel:
        raise ConfigError(
            f"{key}.path",
            rel,
            "the path of a packaged model directory (model.onnx + "
            "manifest.json), relative to the project root",
        )
    path = (root / rel).resolve()
    if not (path / "manifest.json").is_file():
        raise ConfigError(
            f"{key}.path",
            rel,
            f"a model package directory with a manifest.json (looked in {path.name}/ under the project root)",
        )
    try:
        manifest = load_manifest(path)
        verify_files(path, manifest)
    except InferstackError as e:
        raise ConfigError(f"{key}.path", rel, f"a valid, intact model package ({e})") from None
    if server is not None:
        if manifest.name != name:
            raise ConfigError(
                f"{key}.name",
                name,
                f"{manifest.name!r}, the name its package's manifest gives: a server with several models "
                "serves each under its manifest's name (/v2/models/<name>), so the stack names it so too",
            )
        return ModelConfig(name, path, manifest, image=None, server=server[1])
    return ModelConfig(name, path, manifest, **_serving(raw, key, target))


def _serving(raw: Mapping[str, Any], key: str, target: str) -> dict[str, Any]:
    """The keys of a Deployment (``SERVING_KEYS``) of ``models[i]`` or ``servers[i]`` (``key``), as
    keyword arguments of ``ModelConfig`` / ``ModelServerConfig``."""
    gpus = _int(raw.get("gpus", 1 if target == "aws" else 0), f"{key}.gpus", 0, 8)
    image = raw.get("image")
    if image is not None:  # otherwise the stack's runtime image (runtimeImage)
        image = _pinned(image, f"{key}.image")
    replicas = _int(raw.get("replicas", 1), f"{key}.replicas", 1, 100)
    cpu = _quantity(raw.get("cpu", "2"), f"{key}.cpu")
    memory = _quantity(raw.get("memory", "8Gi"), f"{key}.memory")
    scaling = None
    if raw.get("autoscaling") is not None:
        scaling = _autoscaling(raw["autoscaling"], f"{key}.autoscaling", replicas)
    exposure = _choice(raw.get("exposure", "internal"), f"{key}.exposure", EXPOSURES)
    if exposure == "nodePort" and scaling is not None and scaling.min_replicas == 0:
        # at zero KEDA's interceptor answers, and it routes by Host: a node port's clients send a
        # node's address, which no configuration can name in advance
        raise ConfigError(
            f"{key}.exposure",
            exposure,
            "clusterIP, internal, public, loadBalancer or ingress with autoscaling.minReplicas 0",
        )
    cache_size = _quantity(raw.get("cacheSize", "10Gi"), f"{key}.cacheSize")
    from inferstack.components.inference_service import ephemeral_storage

    try:
        ephemeral_storage(cache_size)
    except ValueError:
        raise ConfigError(
            f"{key}.cacheSize", cache_size, "a storage size of at least 64Mi such as 10Gi"
        ) from None
    ingress = raw.get("ingress")
    ingress_class = ingress_host = None
    if exposure == "ingress":
        if not isinstance(ingress, Mapping):
            raise ConfigError(
                f"{key}.ingress", ingress, "a mapping with className and host (exposure: ingress)"
            )
        _keys(ingress, f"{key}.ingress", {"className", "host"})
        ingress_class = ingress.get("className")
        if not isinstance(ingress_class, str) or not re.match(
            r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", ingress_class
        ):
            raise ConfigError(f"{key}.ingress.className", ingress_class, "an IngressClass name such as nginx")
        ingress_host = ingress.get("host")
        if not isinstance(ingress_host, str) or not re.match(
            r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z0-9]([-a-z0-9]*[a-z0-9])?$", ingress_host
        ):
            raise ConfigError(
                f"{key}.ingress.host", ingress_host, "a DNS name such as tiny.models.example.com"
            )
    elif ingress is not None:
        raise ConfigError(f"{key}.ingress", "(set)", "ingress only with exposure: ingress")
    auth = _bool(raw.get("auth", False), f"{key}.auth")
    pull = raw.get("imagePullPolicy")
    if pull is not None:
        pull = _choice(pull, f"{key}.imagePullPolicy", PULL_POLICIES)
    return {
        "image": image,
        "replicas": replicas,
        "gpus": gpus,
        "cpu": cpu,
        "memory": memory,
        "autoscaling": scaling,
        "exposure": exposure,
        "auth": auth,
        "image_pull_policy": pull,
        "cache_size": cache_size,
        "ingress_class": ingress_class,
        "ingress_host": ingress_host,
    }


# -- primitives ----------------------------------------------------------------------------


def _obj(cfg: pulumi.Config, key: str) -> dict[str, Any] | None:
    try:
        value = cfg.get_object(key)
    except Exception:  # pulumi raises on malformed JSON
        raise ConfigError(key, cfg.get(key), "a YAML mapping") from None
    if value is not None and not isinstance(value, dict):
        raise ConfigError(key, value, "a YAML mapping")
    return value


def _list(cfg: pulumi.Config, key: str) -> list[Any]:
    try:
        value = cfg.get_object(key)
    except Exception:
        raise ConfigError(key, cfg.get(key), "a YAML list") from None
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(key, value, "a YAML list")
    return value


def _keys(raw: Mapping[str, Any], key: str, allowed: set[str]) -> None:
    for k in raw:
        if k not in allowed:  # the value is not shown: a misspelt secret key holds a secret
            hint = f"unknown key; {_nearest(str(k), allowed)}(known keys: {', '.join(sorted(allowed))})"
            raise ConfigKeyError(f"{key}.{k}", hint)


def _choice(value: Any, key: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(key, value, "one of " + ", ".join(allowed))
    return str(value)


def _int(value: Any, key: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(key, value, f"an integer from {lo} to {hi}")
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, value, "true or false")
    return value


def _name(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _DNS_LABEL.match(value):
        raise ConfigError(
            key, value, "a DNS label: 1-32 characters of a-z, 0-9 and '-', starting with a letter"
        )
    return value


def _quantity(value: Any, key: str) -> str:
    value = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    if not isinstance(value, str) or not _QUANTITY.match(value) or float(re.sub(r"[a-zA-Z]", "", value)) <= 0:
        raise ConfigError(key, value, "a positive Kubernetes quantity such as 2, 500m, 8Gi")
    return value


def _no_userinfo(value: Any, key: str) -> None:
    """Refuse ``scheme://user:password@host``: the stack file and the plan would carry the
    credentials in plain text. The message does not show the value."""
    if isinstance(value, str) and "@" in value.partition("://")[2].split("/", 1)[0]:
        raise ConfigKeyError(
            key,
            "a URL with credentials (user:password@) is not allowed: they would be stored and planned "
            "in plain text; give the address alone (the store's keys go in accessKeyId and the secret "
            "secretAccessKey)",
        )


def _url(value: Any, key: str) -> str:
    _no_userinfo(value, key)
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+/?$", value):
        raise ConfigError(key, value, "an http(s) URL without a path, e.g. http://minio.minio:9000")
    return value.rstrip("/")


def _instance_types(value: Any, key: str, gpu: bool) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ConfigError(key, value, "a non-empty list of EC2 instance types")
    for t in value:
        if not isinstance(t, str) or not _INSTANCE_TYPE.match(t):
            raise ConfigError(key, t, "EC2 instance type names such as g5.xlarge")
        if gpu and t.split(".")[0] not in _GPU_FAMILIES:
            raise ConfigError(key, t, "NVIDIA GPU instance types (" + ", ".join(_GPU_FAMILIES) + " families)")
    return list(value)
