"""InferenceService: one model server (one or more models) run by the inferstack runtime on Kubernetes.

Declares the namespace, a ServiceAccount whose cloud identity may only read the models' prefixes, the
Deployment (GPU request, toleration and node selector, v2 health probes, hardened securityContext,
a rollout that never drops below capacity), the Service, PodDisruptionBudget and NetworkPolicy. Scaling
is not here: with ``autoscaled`` the replica count belongs to KEDA (``autoscaling.py``).
The same code serves both targets: on ``aws`` the identity is an IAM role bound through an EKS Pod
Identity association; on ``kubernetes`` it is the S3-compatible store's credentials, a Secret mounted
read-only as a shared credentials file (``AWS_SHARED_CREDENTIALS_FILE``), never environment variables.

Where the Deployment departs from a scanner's default (an image by tag, a pull policy other than
Always), it says why in ``checkov.io/skip<N>`` annotations next to the container.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlparse

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

#: seconds the startup probe gives a started container to download and load its model
STARTUP_TIMEOUT_S = 900
TYPE = "inferstack:inference_service:InferenceService"

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT_KEY = "nvidia.com/gpu"
GPU_NODE_LABEL = ("nvidia.com/gpu.present", "true")
HEALTH_READY = "/v2/health/ready"
HEALTH_LIVE = "/v2/health/live"
EXPOSURES = ("clusterIP", "nodePort", "loadBalancer", "ingress")
LB_SCHEMES = ("internal", "internet-facing")
#: the emptyDir at /tmp (the runtime's scratch space)
TMP_SIZE = "1Gi"
#: ephemeral storage beyond the two emptyDirs: container logs (the root file system is read-only)
LOG_ALLOWANCE_BYTES = 512 * 1024**2
RUNTIME_UID = 10001
CACHE_DIR = "/var/cache/inferstack"
TOKEN_DIR = "/var/run/inferstack/auth"
#: seconds the runtime keeps serving after SIGTERM with readiness 503, before it drains
DRAIN_DELAY_S = 5
#: the runtime's default --request-timeout-s: the longest a request in flight takes to finish
RUNTIME_REQUEST_TIMEOUT_S = 30
S3_CREDENTIALS_DIR = "/var/run/inferstack/s3"
S3_CREDENTIALS_FILE = f"{S3_CREDENTIALS_DIR}/credentials"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")


@dataclass
class S3Credentials:
    """Static credentials for an S3-compatible store (target ``kubernetes``)."""

    access_key_id: pulumi.Input[str]
    secret_access_key: pulumi.Input[str]


@dataclass
class ServedModel:
    """One more model of a multi-model server (``InferenceServiceArgs.extra_models``)."""

    uri: pulumi.Input[str]
    """``s3://bucket/prefix/`` of its uploaded package: one more argument of ``inferstack serve``."""
    prefix: str
    """Its key prefix in the bucket, ending in ``/``: the pods' identity may read it too."""


@dataclass
class InferenceServiceArgs:
    model_name: str
    """DNS label; names the namespace (unless ``namespace``), Deployment and Service. Required."""
    image: pulumi.Input[str]
    """The runtime image reference, by tag or pinned by digest (``repo@sha256:...``). Required."""
    model_uri: pulumi.Input[str]
    """``s3://bucket/prefix/`` of the uploaded package, with its digest. Required."""
    bucket: pulumi.Input[str]
    """Bucket holding the model (for the read-only policy). Required."""
    model_prefix: str
    """Key prefix of the model inside the bucket, ending in ``/``. Required."""
    extra_models: list[ServedModel] = field(default_factory=list)
    """More models the same pods serve (a multi-model server: one ``inferstack serve`` process, one
    GPU allocation): their URIs follow ``model_uri`` in the container's arguments, in this order.
    ``model_name`` then names the server, not a model. Default none."""
    image_pull_policy: str | None = None
    """``Always``, ``IfNotPresent`` or ``Never``. Default: ``IfNotPresent`` for an image pinned by digest
    (it cannot change), ``Always`` for a tag (a re-pushed tag is picked up). ``IfNotPresent``/``Never``
    with a tag is for an image loaded onto the nodes that no registry serves (``kind load``)."""
    namespace: str | None = None
    """Namespace to create. Default: ``model_name``."""
    cluster_name: pulumi.Input[str] | None = None
    """EKS cluster: when set, the pods get an IAM role through a Pod Identity association. Default none."""
    kms_key_arn: pulumi.Input[str] | None = None
    """KMS key of the bucket; the role may decrypt with it, through S3 only. Default none."""
    s3_credentials: S3Credentials | None = None
    """Static keys for an S3-compatible store (when there is no ``cluster_name``). Default none."""
    s3_endpoint: str | None = None
    """``AWS_ENDPOINT_URL_S3`` for the runtime (MinIO etc.). Default none (AWS S3)."""
    region: str = "us-east-1"
    """Region for the S3 client. Default us-east-1."""
    s3_addressing_style: str | None = None
    """``path`` or ``virtual`` bucket addressing for the runtime's S3 client
    (``INFERSTACK_S3_ADDRESSING_STYLE``). Default none: path with ``s3_endpoint``, else boto's."""
    replicas: int = 1
    """Replicas; with ``autoscaled`` only the count the Deployment is created with (0 allowed: a
    model that scales to zero starts at zero). Default 1."""
    autoscaled: bool = False
    """An autoscaler (KEDA) owns ``spec.replicas``: ``pulumi up`` never resets the live count. Default
    false."""
    backend_service: str | None = None
    """A model that scales to zero: the name of a ClusterIP Service that selects the pods, which
    KEDA's interceptor forwards to. Default none. Requires ``external_name``."""
    external_name: pulumi.Input[str] | None = None
    """A model that scales to zero: the host (KEDA's interceptor proxy) the Service ``model_name``
    leads to as an ``ExternalName``, instead of selecting the pods. The same Pulumi resource
    (``<name>-service``) owns ``<namespace>/<model_name>`` either way, so switching between
    ``minReplicas`` 0 and >= 1 updates that one object. Default none. Requires ``backend_service``."""
    gpus: int = 1
    """``nvidia.com/gpu`` per replica; 0 runs on CPU without toleration or node selector. Default 1."""
    cpu: str = "2"
    """CPU request and limit. Default 2."""
    memory: str = "8Gi"
    """Memory request and limit. Default 8Gi."""
    cache_size: str = "10Gi"
    """Size limit of the emptyDir the model is downloaded into (at least the model package's size).
    The container's ``ephemeral-storage`` request and limit are this plus /tmp's 1Gi and 512Mi for
    logs, so the scheduler places the pod on a node with that much disk and the kubelet evicts it
    only past it. Default 10Gi."""
    exposure: str = "clusterIP"
    """How clients reach the model: ``clusterIP`` (in-cluster only), ``nodePort``, ``loadBalancer``
    (a LoadBalancer Service: on clusters without a load balancer implementation its address never
    comes) or ``ingress`` (a ClusterIP Service behind an Ingress of class ``ingress_class``).
    Default ``clusterIP``."""
    load_balancer_scheme: str | None = None
    """With ``loadBalancer`` on EKS: ``internal`` or ``internet-facing`` AWS NLB (annotations of the
    AWS cloud provider / load balancer controller). Default none: the cluster's own load balancer."""
    ingress_class: str | None = None
    """``ingressClassName`` of the Ingress (``exposure: ingress``), e.g. ``nginx``. Required there."""
    ingress_host: str | None = None
    """Host name the Ingress routes to the model; the endpoint URL is ``http://<host>``. Required with
    ``ingress``."""
    ingress_paths: list[str] | None = None
    """Paths (``Prefix`` matches) of ``ingress_host`` the Ingress sends to the Service, e.g.
    ``/v2/models/<name>`` per model when several servers share the host. Default none: every path
    (``/``)."""
    auth_token: pulumi.Input[str] | None = None
    """Bearer token the runtime requires; stored in a Secret, mounted as a file. Default: no auth."""
    port: int = 8000
    """Container and Service port of the HTTP front end (the probes use it). Default 8000."""
    grpc_port: int = 8001
    """Container and Service port of the gRPC front end (``inference.GRPCInferenceService``).
    Default 8001. At zero replicas (``external_name``) the Service carries the HTTP port only: the
    KEDA HTTP add-on's interceptor proxies HTTP, so gRPC clients reach the model while it runs."""
    startup_timeout_s: int = STARTUP_TIMEOUT_S
    """How long the startup probe waits for the model to load (from the container's start: node
    launch and image pull excluded). Default 900."""
    await_timeout: str = "30m"
    """Pulumi's wait for the Deployment to become ready (node scale-up + pull + load). Default 30m."""
    service_depends_on: list[pulumi.Resource] = field(default_factory=list)
    """Resources the Service must outlive, e.g. the VPC's gateways: a LoadBalancer Service is then
    destroyed (and its NLB released) before them. Default none."""
    tags: dict[str, str] = field(default_factory=dict)
    """Tags on the cloud resources (IAM role). Default none."""


class InferenceService(pulumi.ComponentResource):
    namespace: pulumi.Output[str]
    service_name: pulumi.Output[str]
    endpoint_url: pulumi.Output[str]
    role_arn: pulumi.Output[str] | None

    def __init__(
        self, name: str, args: InferenceServiceArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        _validate(args)
        super().__init__(TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ns_name = args.namespace or args.model_name
        labels: dict[str, Any] = {
            "app.kubernetes.io/name": "inferstack-runtime",
            "app.kubernetes.io/instance": args.model_name,
            "app.kubernetes.io/managed-by": "pulumi",
        }

        meta: Any = {"name": args.model_name, "namespace": ns_name, "labels": labels}
        ns = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata={
                "name": ns_name,
                "labels": {**labels, "pod-security.kubernetes.io/enforce": "restricted"},
            },
            opts=child,
        )
        in_ns = pulumi.ResourceOptions(parent=self, depends_on=[ns])
        sa = k8s.core.v1.ServiceAccount(
            f"{name}-service-account",
            metadata=meta,
            automount_service_account_token=False,
            opts=in_ns,
        )

        image = pulumi.Output.from_input(args.image)
        uris: list[pulumi.Input[str]] = [args.model_uri, *(m.uri for m in args.extra_models)]
        plural = "es" if args.extra_models else ""
        prefixes = [args.model_prefix, *(m.prefix for m in args.extra_models)]
        # `inferstack serve` reads several PATHs from INFERSTACK_MODEL split at whitespace (click's
        # rule for a variadic argument); the arguments below take precedence and say the same.
        model_env: pulumi.Input[str] = (
            args.model_uri if not args.extra_models else pulumi.Output.all(*uris).apply(" ".join)
        )
        env: list[dict[str, Any]] = [
            {"name": "INFERSTACK_MODEL", "value": model_env},
            {"name": "INFERSTACK_PORT", "value": str(args.port)},
            {"name": "INFERSTACK_GRPC_PORT", "value": str(args.grpc_port)},
            {"name": "INFERSTACK_HOST", "value": "0.0.0.0"},
            {"name": "INFERSTACK_CACHE_DIR", "value": CACHE_DIR},
            {"name": "INFERSTACK_REQUIRE_GPU", "value": "true" if args.gpus else "false"},
            # On SIGTERM the runtime first answers 503 on readiness and keeps serving (new
            # connections included) while the endpoint removal reaches every node's proxy; then it
            # stops accepting and finishes what it read.
            {"name": "INFERSTACK_DRAIN_DELAY_S", "value": str(DRAIN_DELAY_S)},
            {"name": "AWS_REGION", "value": args.region},
        ]
        identity: list[pulumi.Resource] = []
        self.role_arn = None
        if args.cluster_name is not None:
            role = aws.iam.Role(
                f"{name}-role",
                description=f"{args.model_name}: read the model prefix{plural} only",
                assume_role_policy=json.dumps(_POD_IDENTITY_TRUST),
                tags=args.tags,
                opts=child,
            )
            aws.iam.RolePolicy(
                f"{name}-read-model",
                role=role.id,
                policy=pulumi.Output.all(args.bucket, args.kms_key_arn, args.region).apply(
                    lambda v: json.dumps(
                        read_model_policy(
                            v[0], prefixes if args.extra_models else args.model_prefix, v[1], v[2]
                        )
                    )
                ),
                opts=child,
            )
            identity.append(
                aws.eks.PodIdentityAssociation(
                    f"{name}-pod-identity",
                    cluster_name=args.cluster_name,
                    namespace=ns_name,
                    service_account=args.model_name,
                    role_arn=role.arn,
                    tags=args.tags,
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[sa]),
                )
            )
            self.role_arn = role.arn
        if args.s3_credentials is not None:
            key_id, secret_key = args.s3_credentials.access_key_id, args.s3_credentials.secret_access_key
            plain: pulumi.Output[str] = pulumi.Output.all(key_id, secret_key).apply(
                lambda v: credentials_file(v[0], v[1])
            )
            # a secret in the state even when the key id (or, locally, both keys) came in plain
            file_text: pulumi.Output[str] = pulumi.Output.secret(plain)
            creds = k8s.core.v1.Secret(
                f"{name}-s3-credentials",
                metadata={"name": f"{args.model_name}-s3", "namespace": ns_name, "labels": labels},
                type="Opaque",
                string_data={"credentials": file_text},
                opts=in_ns,
            )
            identity.append(creds)
            # boto3 (the runtime's S3 client) reads the file itself: the keys never enter the environment.
            env.append({"name": "AWS_SHARED_CREDENTIALS_FILE", "value": S3_CREDENTIALS_FILE})
        if args.s3_endpoint:
            env.append({"name": "AWS_ENDPOINT_URL_S3", "value": args.s3_endpoint})
        if args.s3_addressing_style:
            env.append({"name": "INFERSTACK_S3_ADDRESSING_STYLE", "value": args.s3_addressing_style})

        volumes: list[dict[str, Any]] = [
            {"name": "model-cache", "empty_dir": {"size_limit": args.cache_size}},
            {"name": "tmp", "empty_dir": {"size_limit": TMP_SIZE}},
        ]
        mounts: list[dict[str, Any]] = [
            {"name": "model-cache", "mount_path": CACHE_DIR},
            {"name": "tmp", "mount_path": "/tmp"},
        ]
        if args.s3_credentials is not None:
            volumes.append(
                {
                    "name": "s3-credentials",
                    "secret": {"secret_name": f"{args.model_name}-s3", "default_mode": 0o440},
                }
            )
            mounts.append({"name": "s3-credentials", "mount_path": S3_CREDENTIALS_DIR, "read_only": True})
        if args.auth_token is not None:
            identity.append(
                k8s.core.v1.Secret(
                    f"{name}-auth-token",
                    metadata={"name": f"{args.model_name}-auth", "namespace": ns_name, "labels": labels},
                    type="Opaque",
                    string_data={"token": args.auth_token},
                    opts=in_ns,
                )
            )
            volumes.append(
                {"name": "auth", "secret": {"secret_name": f"{args.model_name}-auth", "default_mode": 0o440}}
            )
            mounts.append({"name": "auth", "mount_path": TOKEN_DIR, "read_only": True})
            env.append({"name": "INFERSTACK_AUTH_TOKEN_FILE", "value": f"{TOKEN_DIR}/token"})

        storage = ephemeral_storage(args.cache_size)
        resources: dict[str, dict[str, str]] = {
            "requests": {"cpu": args.cpu, "memory": args.memory, "ephemeral-storage": storage},
            "limits": {"cpu": args.cpu, "memory": args.memory, "ephemeral-storage": storage},
        }
        pod_spec: dict[str, Any] = {
            "service_account_name": args.model_name,
            "automount_service_account_token": False,
            # the drain delay, then requests in flight (the runtime's request timeout), with room
            "termination_grace_period_seconds": DRAIN_DELAY_S + RUNTIME_REQUEST_TIMEOUT_S + 25,
            "security_context": {
                "run_as_non_root": True,
                "run_as_user": RUNTIME_UID,
                "run_as_group": RUNTIME_UID,
                "fs_group": RUNTIME_UID,
                "seccomp_profile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "runtime",
                    "image": image,
                    "image_pull_policy": image.apply(lambda i: pull_policy(i, args.image_pull_policy)),
                    # The image's entrypoint is the runtime (`python -m inferstack.runtime`, the same
                    # code as `inferstack serve`); its arguments are the model URIs, one per model.
                    "args": uris,
                    "ports": [{"name": "http", "container_port": args.port, "protocol": "TCP"},
                              {"name": "grpc", "container_port": args.grpc_port, "protocol": "TCP"}],
                    "env": env,
                    "resources": resources,
                    "volume_mounts": mounts,
                    "security_context": {
                        "allow_privilege_escalation": False,
                        "read_only_root_filesystem": True,
                        "run_as_non_root": True,
                        "capabilities": {"drop": ["ALL"]},
                        "seccomp_profile": {"type": "RuntimeDefault"},
                    },
                    # ready = model downloaded, checked and warmed up: the startup budget covers the load
                    # (live answers as soon as the port is open, so it would guard nothing).
                    "startup_probe": _probe(
                        HEALTH_READY, period=10, failures=max(1, args.startup_timeout_s // 10)
                    ),
                    "readiness_probe": _probe(HEALTH_READY, period=5, failures=3),
                    "liveness_probe": _probe(HEALTH_LIVE, period=10, failures=3),
                }
            ],
            "volumes": volumes,
        }
        if args.gpus:
            for part in ("requests", "limits"):
                resources[part][GPU_RESOURCE] = str(args.gpus)
            pod_spec["tolerations"] = [
                {"key": GPU_TAINT_KEY, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
            ]
            pod_spec["node_selector"] = {GPU_NODE_LABEL[0]: GPU_NODE_LABEL[1]}

        deployment_spec: Any = {
            "replicas": args.replicas,
            "selector": {"match_labels": labels},
            # Never below capacity: a new pod must be ready before an old one goes.
            "strategy": {"type": "RollingUpdate", "rolling_update": {"max_unavailable": 0, "max_surge": 1}},
            "revision_history_limit": 5,
            "progress_deadline_seconds": max(600, args.startup_timeout_s + 300),
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(args.port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec,
            },
        }
        k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata={
                **meta,
                "annotations": image.apply(lambda i: scan_skips(i, pull_policy(i, args.image_pull_policy))),
            },
            spec=deployment_spec,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[sa, *identity],
                # A GPU cold start = node scale-up from zero + a multi-GB image pull + model load.
                custom_timeouts=pulumi.CustomTimeouts(
                    create=args.await_timeout, update=args.await_timeout, delete="10m"
                ),
                # KEDA owns the live count; `pulumi up` sets it only at creation.
                ignore_changes=["spec.replicas"] if args.autoscaled else None,
            ),
        )

        svc_type, svc_annotations = _exposure(args.exposure, args.load_balancer_scheme)
        ports: Any = [
            {"name": "http", "port": args.port, "target_port": "http", "protocol": "TCP"},
            # cleartext HTTP/2: lets meshes and Gateway API route the calls as gRPC
            {"name": "grpc", "port": args.grpc_port, "target_port": "grpc", "protocol": "TCP",
             "app_protocol": "kubernetes.io/h2c"},
        ]
        spec: Any = {"type": svc_type, "selector": labels, "ports": ports}
        if args.external_name is not None:
            spec = {
                "type": "ExternalName",
                "external_name": args.external_name,
                "ports": [{"name": "http", "port": args.port, "protocol": "TCP"}],
            }
            svc_annotations = {"pulumi.com/skipAwait": "true"}
        service = k8s.core.v1.Service(
            f"{name}-service",
            metadata={
                "name": args.model_name,
                "namespace": ns_name,
                "labels": labels,
                "annotations": svc_annotations,
            },
            spec=spec,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[ns, *args.service_depends_on],
                custom_timeouts=pulumi.CustomTimeouts(create="20m", delete="20m"),
            ),
        )
        if args.backend_service is not None:
            k8s.core.v1.Service(
                f"{name}-backend",
                # at zero it has no ready endpoint: awaiting one would hold `pulumi up`
                metadata={
                    **meta,
                    "name": args.backend_service,
                    "annotations": {"pulumi.com/skipAwait": "true"},
                },
                spec={"type": "ClusterIP", "selector": labels, "ports": ports},
                opts=in_ns,
            )
        ingress = None
        if args.exposure == "ingress" and args.external_name is None:
            ingress = k8s.networking.v1.Ingress(
                f"{name}-ingress",
                metadata={
                    **meta,
                    # the controller may never publish an address (e.g. a NodePort ingress controller)
                    "annotations": {"pulumi.com/skipAwait": "true"},
                },
                spec=ingress_spec(
                    args.ingress_class, args.ingress_host, service.metadata["name"], {"name": "http"},
                    args.ingress_paths,
                ),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[service]),
            )
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata=meta,
            # Drains take replicas one at a time and are never blocked outright.
            spec={"max_unavailable": 1, "selector": {"match_labels": labels}},
            opts=in_ns,
        )
        k8s.networking.v1.NetworkPolicy(
            f"{name}-network-policy",
            metadata=meta,
            spec=_network_policy(labels, (args.port, args.grpc_port), args.s3_endpoint),
            opts=in_ns,
        )

        self.namespace = ns.metadata["name"]
        self.service_name = service.metadata["name"]
        if ingress is not None:
            self.endpoint_url = pulumi.Output.from_input(f"http://{args.ingress_host}")
        else:
            self.endpoint_url = pulumi.Output.all(service.status, service.metadata).apply(
                lambda v: _endpoint(v[0], v[1], args.port)
            )
        self.register_outputs(
            {
                "namespace": self.namespace,
                "service_name": self.service_name,
                "endpoint_url": self.endpoint_url,
                "role_arn": self.role_arn,
            }
        )


_POD_IDENTITY_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "pods.eks.amazonaws.com"},
            "Action": ["sts:AssumeRole", "sts:TagSession"],
        }
    ],
}


def read_model_policy(
    bucket: str, prefix: str | list[str], kms_key_arn: str | None, region: str
) -> dict[str, Any]:
    """Read-only access to ``s3://bucket/prefix`` (each prefix of a multi-model server): GetObject
    under it, ListBucket limited to it by the ``s3:prefix`` condition, and decrypt with the bucket's
    key through S3 only."""
    prefixes = [prefix] if isinstance(prefix, str) else list(prefix)
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ReadModelObjects",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": [f"arn:aws:s3:::{bucket}/{p}*" for p in prefixes],
        },
        {
            "Sid": "ListModelPrefix",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{bucket}"],
            "Condition": {"StringLike": {"s3:prefix": [v for p in prefixes for v in (p, f"{p}*")]}},
        },
    ]
    if kms_key_arn:
        statements.append(
            {
                "Sid": "DecryptModelObjects",
                "Effect": "Allow",
                "Action": ["kms:Decrypt"],
                "Resource": [kms_key_arn],
                "Condition": {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}},
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def credentials_file(access_key_id: str, secret_access_key: str) -> str:
    """The keys as a shared credentials file (the format boto3 and the AWS CLI read)."""
    for what, value in (("access_key_id", access_key_id), ("secret_access_key", secret_access_key)):
        if not value or any(c in value for c in "\r\n[]"):
            raise ValueError(f"S3Credentials.{what}: expected a non-empty key on one line")
    return f"[default]\naws_access_key_id = {access_key_id}\naws_secret_access_key = {secret_access_key}\n"


def has_digest(image: str) -> bool:
    return "@sha256:" in image


def pull_policy(image: str, requested: str | None) -> str:
    """The requested policy, else IfNotPresent for a digest (immutable) and Always for a tag."""
    if requested is not None:
        return requested
    return "IfNotPresent" if has_digest(image) else "Always"


def scan_skips(image: str, policy: str) -> dict[str, str]:
    """``checkov.io/skip<N>`` annotations, each with its reason, for the checks this Deployment
    cannot pass as configured; none when the image is pinned by digest."""
    if has_digest(image):
        return {}
    loaded = policy != "Always"
    if loaded:
        digest_reason = (
            f"{image} is built locally and loaded onto the nodes (imagePullPolicy {policy}); "
            "an image no registry serves has no registry digest"
        )
    else:
        digest_reason = (
            f"{image} is referenced by the tag set per stack in models[].image; pin it by digest "
            "there (repo@sha256:...) for production, which drops this skip"
        )
    skips = {"CKV_K8S_43": digest_reason}
    if loaded:
        skips["CKV_K8S_15"] = (
            f"imagePullPolicy {policy} is set in the stack because {image} is loaded onto the nodes "
            "(kind load docker-image) and no registry serves it; Always would fail the pull"
        )
    # checkov splits each annotation at '=': the reasons must not contain one.
    return {f"checkov.io/skip{i}": f"{check}={reason}" for i, (check, reason) in enumerate(skips.items(), 1)}


def _validate(args: InferenceServiceArgs) -> None:
    label = re.compile(r"^[a-z]([-a-z0-9]{0,30}[a-z0-9])?$")
    if not label.match(args.model_name):
        raise ValueError(
            f"InferenceServiceArgs.model_name: {args.model_name!r}; expected a DNS label "
            "(a-z, 0-9, '-', up to 32 characters, starting with a letter)"
        )
    if args.namespace is not None and not label.match(args.namespace):
        raise ValueError(f"InferenceServiceArgs.namespace: {args.namespace!r}; expected a DNS label")
    if args.exposure not in EXPOSURES:
        raise ValueError(
            f"InferenceServiceArgs.exposure: {args.exposure!r}; expected one of {', '.join(EXPOSURES)}"
        )
    if args.load_balancer_scheme is not None and (
        args.load_balancer_scheme not in LB_SCHEMES or args.exposure != "loadBalancer"
    ):
        raise ValueError(
            f"InferenceServiceArgs.load_balancer_scheme: {args.load_balancer_scheme!r}; expected "
            f"{' or '.join(LB_SCHEMES)}, and only with exposure loadBalancer"
        )
    if args.exposure == "ingress":
        if not args.ingress_class or not re.match(
            r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", args.ingress_class
        ):
            raise ValueError(
                f"InferenceServiceArgs.ingress_class: {args.ingress_class!r}; expected the name of an "
                "IngressClass of the cluster (e.g. nginx) with exposure ingress"
            )
        if not args.ingress_host or not re.match(
            r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z0-9]([-a-z0-9]*[a-z0-9])?$", args.ingress_host
        ):
            raise ValueError(
                f"InferenceServiceArgs.ingress_host: {args.ingress_host!r}; expected a DNS name "
                "(e.g. tiny.models.example.com) with exposure ingress"
            )
    try:
        ephemeral_storage(args.cache_size)
    except ValueError:
        raise ValueError(
            f"InferenceServiceArgs.cache_size: {args.cache_size!r}; expected a quantity of at least "
            "64Mi such as 10Gi"
        ) from None
    named = [("model_prefix", args.model_prefix)]
    named += [(f"extra_models[{i}].prefix", m.prefix) for i, m in enumerate(args.extra_models)]
    for what, prefix in named:
        if not prefix.endswith("/") or prefix.startswith("/") or "*" in prefix:
            raise ValueError(
                f"InferenceServiceArgs.{what}: {prefix!r}; expected a key prefix "
                "ending in '/', without a leading '/' or wildcards"
            )
    if len({p for _, p in named}) < len(named):
        raise ValueError(
            "InferenceServiceArgs.extra_models: a prefix given twice; expected one package per model"
        )
    for path in args.ingress_paths or []:
        if not re.match(r"^/[-a-zA-Z0-9_./]*$", path):
            raise ValueError(
                f"InferenceServiceArgs.ingress_paths: {path!r}; expected a URL path such as /v2/models/tiny"
            )
    if not 0 <= args.gpus <= 8:
        raise ValueError(f"InferenceServiceArgs.gpus: {args.gpus}; expected 0..8")
    if not (0 if args.autoscaled else 1) <= args.replicas <= 100:
        raise ValueError(
            f"InferenceServiceArgs.replicas: {args.replicas}; expected 1..100 (0..100 when autoscaled)"
        )
    if args.backend_service is not None and (
        not label.match(args.backend_service) or args.backend_service == args.model_name
    ):
        raise ValueError(
            f"InferenceServiceArgs.backend_service: {args.backend_service!r}; expected a DNS label "
            "other than model_name"
        )
    if (args.backend_service is None) != (args.external_name is None):
        raise ValueError(
            "InferenceServiceArgs.backend_service/external_name: a model that scales to zero needs "
            "both (the pods' Service and the interceptor's host), otherwise neither"
        )
    if not 1 <= args.port <= 65535 or args.port < 1024:
        raise ValueError(
            f"InferenceServiceArgs.port: {args.port}; expected 1024..65535 (the pod runs as non-root)"
        )
    if not 1024 <= args.grpc_port <= 65535 or args.grpc_port == args.port:
        raise ValueError(
            f"InferenceServiceArgs.grpc_port: {args.grpc_port}; expected 1024..65535 (the pod runs as "
            f"non-root), other than port ({args.port})"
        )
    if args.image_pull_policy is not None and args.image_pull_policy not in PULL_POLICIES:
        raise ValueError(
            f"InferenceServiceArgs.image_pull_policy: {args.image_pull_policy!r}; "
            f"expected one of {', '.join(PULL_POLICIES)}"
        )
    if args.startup_timeout_s < 60:
        raise ValueError(f"InferenceServiceArgs.startup_timeout_s: {args.startup_timeout_s}; expected >= 60")
    if args.cluster_name is not None and args.s3_credentials is not None:
        raise ValueError(
            "InferenceServiceArgs.s3_credentials: not allowed with cluster_name "
            "(EKS pods get their identity from Pod Identity)"
        )
    if args.s3_addressing_style not in (None, "path", "virtual"):
        raise ValueError(
            f"InferenceServiceArgs.s3_addressing_style: {args.s3_addressing_style!r}; "
            "expected path or virtual"
        )
    if args.s3_endpoint is not None and urlparse(args.s3_endpoint).scheme not in ("http", "https"):
        raise ValueError(f"InferenceServiceArgs.s3_endpoint: {args.s3_endpoint!r}; expected an http(s) URL")


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "http_get": {"path": path, "port": "http"},
        "period_seconds": period,
        "timeout_seconds": 3,
        "failure_threshold": failures,
    }


_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes storage quantity (``10Gi``, ``500M``, ``1073741824``) in bytes; ``ValueError``
    for anything else (``m`` and exponents are not storage sizes)."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", quantity)
    if not m:
        raise ValueError(f"{quantity!r}: not a storage quantity such as 10Gi")
    return int(float(m.group(1)) * _SUFFIXES[m.group(2) or ""])


def ephemeral_storage(cache_size: str) -> str:
    """The container's ephemeral-storage request and limit: the model cache, /tmp and the logs
    (emptyDir usage counts toward the pod's ephemeral storage), in Mi rounded up."""
    cache = quantity_bytes(cache_size)
    if cache < 64 * 2**20:
        raise ValueError(f"{cache_size!r}: below 64Mi")
    total = cache + quantity_bytes(TMP_SIZE) + LOG_ALLOWANCE_BYTES
    return f"{-(-total // 2**20)}Mi"



def ingress_spec(
    ingress_class: str | None,
    host: str | None,
    service: Any,
    port: dict[str, Any],
    paths: list[str] | None = None,
) -> k8s.networking.v1.IngressSpecArgsDict:
    """An Ingress spec that sends ``paths`` (``Prefix`` matches; default every path, ``/``) of
    ``host`` to ``service`` at ``port`` (``{"name": ...}`` or ``{"number": ...}``), through the
    controller of ``ingress_class``. Controllers merge the rules of several Ingresses for one host,
    so servers sharing a host each declare their models' paths."""
    spec: dict[str, Any] = {
        "ingress_class_name": ingress_class,
        "rules": [
            {
                "host": host,
                "http": {
                    "paths": [
                        {
                            "path": path,
                            "path_type": "Prefix",
                            "backend": {"service": {"name": service, "port": port}},
                        }
                        for path in (paths or ["/"])
                    ]
                },
            }
        ],
    }
    return cast(k8s.networking.v1.IngressSpecArgsDict, spec)


def _exposure(exposure: str, scheme: str | None) -> tuple[str, dict[str, str]]:
    """Service type and annotations. Only a LoadBalancer Service is awaited (its address is the
    endpoint); the others carry ``pulumi.com/skipAwait``: their readiness is the Deployment's, and a
    Service with no ready endpoint yet (a pool scaling from zero) would hold ``pulumi up``."""
    skip = {"pulumi.com/skipAwait": "true"}
    if exposure == "nodePort":
        return "NodePort", skip
    if exposure != "loadBalancer":
        return "ClusterIP", skip
    if scheme is None:
        return "LoadBalancer", {}
    annotations = {
        "service.beta.kubernetes.io/aws-load-balancer-type": "nlb",
        "service.beta.kubernetes.io/aws-load-balancer-scheme": scheme,
    }
    if scheme == "internal":
        annotations["service.beta.kubernetes.io/aws-load-balancer-internal"] = "true"
    return "LoadBalancer", annotations


def _network_policy(labels: dict[str, str], ports: tuple[int, ...], s3_endpoint: str | None) -> Any:
    egress_ports = [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 80}]
    if s3_endpoint:
        parsed = urlparse(s3_endpoint)
        p = parsed.port or (443 if parsed.scheme == "https" else 80)
        if p not in (80, 443):
            egress_ports.append({"protocol": "TCP", "port": p})
    return {
        "pod_selector": {"match_labels": labels},
        "policy_types": ["Ingress", "Egress"],
        # Clients and Prometheus reach the HTTP and gRPC ports; nothing else is open.
        "ingress": [{"ports": [{"protocol": "TCP", "port": port} for port in ports]}],
        "egress": [
            {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
            # The model store (S3 or the S3-compatible endpoint) and the Pod Identity agent.
            {"ports": egress_ports},
        ],
    }


def _endpoint(status: Any, metadata: Any, port: int) -> str:
    ingress = ((status or {}).get("load_balancer") or {}).get("ingress") or []
    if ingress:
        host = ingress[0].get("hostname") or ingress[0].get("ip")
        if host:
            return f"http://{host}:{port}"
    meta = metadata or {}
    return f"http://{meta.get('name')}.{meta.get('namespace')}.svc.cluster.local:{port}"
