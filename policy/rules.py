"""The policy rules for ML infrastructure, as plain functions over resource properties.

They run in two places with the same code: inside the Pulumi policy pack (``__main__.py``, via
``pulumi preview --policy-pack policy``) and over a plan snapshot (``inferstack plan``), so they
work without the Pulumi CLI too. Each rule sees :class:`Resource` views; property names are the
Pulumi schema's (camelCase), as the engine passes them.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

GPU_FAMILIES = (
    "g4dn",
    "g5",
    "g5g",
    "g6",
    "g6e",
    "g6f",
    "gr6",
    "p3",
    "p4d",
    "p4de",
    "p5",
    "p5e",
    "p5en",
    "p6",
)
GPU_TAINT_KEY = "nvidia.com/gpu"
DEFAULT_REQUIRED_TAGS = ("project", "stack")
BUCKET_TYPES = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")


@dataclass(frozen=True)
class Resource:
    """What a rule sees of one resource."""

    type: str
    name: str
    urn: str
    props: Mapping[str, Any]
    property_dependencies: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Property name -> URNs of the resources its value came from."""
    provider_props: Mapping[str, Any] = field(default_factory=dict)
    """Inputs of the explicit provider the resource uses (empty for the default provider)."""

    @property
    def provider_default_tags(self) -> dict[str, str]:
        value = _document(self.provider_props.get("defaultTags")) or {}
        return {str(k): str(v) for k, v in (value.get("tags") or {}).items()}

    @property
    def on_s3_compatible_store(self) -> bool:
        """Managed through an AWS provider pointed at another S3 endpoint (MinIO, Ceph...): AWS-only
        controls (public access blocks, KMS, billing tags) do not exist there."""
        endpoints = self.provider_props.get("endpoints")
        if isinstance(endpoints, str):
            try:
                endpoints = json.loads(endpoints)
            except ValueError:
                return False
        return any(isinstance(e, Mapping) and e.get("s3") for e in _as_list(endpoints))


@dataclass(frozen=True)
class Violation:
    policy: str
    urn: str
    message: str
    mandatory: bool


ResourceCheck = Callable[[Resource], list[str]]
StackCheck = Callable[[Sequence[Resource], Mapping[str, Any]], list[tuple[str, str]]]


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    mandatory: bool
    resource_check: ResourceCheck | None = None
    stack_check: StackCheck | None = None


# ---------------------------------------------------------------- helpers


def _known(value: Any) -> bool:
    """Values unknown during a preview are skipped rather than judged."""
    return value is not None and not (isinstance(value, str) and value.startswith("04da6b54-"))


def _document(value: Any) -> dict[str, Any] | None:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            parsed = json.loads(value)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None
    return None


def _as_list(value: Any) -> list[Any]:
    """A list of whatever sequence the caller has (the policy SDK hands over read-only proxies)."""
    if value is None:
        return []
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return list(value)
    return [value]


def _linked(res: Resource, prop: str, target: Resource) -> bool:
    """Whether ``res.prop`` refers to ``target``: by dependency, or by the target's id/name/arn."""
    if target.urn in (res.property_dependencies.get(prop) or ()):
        return True
    value = res.props.get(prop)
    if not _known(value):
        return False
    ids = {target.props.get(k) for k in ("id", "bucket", "name", "arn")} - {None}
    return value in ids


def is_gpu_instance(instance_type: str) -> bool:
    return str(instance_type).split(".")[0] in GPU_FAMILIES


# ---------------------------------------------------------------- GPU node pools


def check_gpu_pool_tainted(res: Resource) -> list[str]:
    if res.type != "aws:eks/nodeGroup:NodeGroup":
        return []
    types = [str(t) for t in _as_list(res.props.get("instanceTypes"))]
    ami = str(res.props.get("amiType") or "").upper()
    if not (any(is_gpu_instance(t) for t in types) or "NVIDIA" in ami or "GPU" in ami):
        return []
    for taint in _as_list(res.props.get("taints")):
        if (
            isinstance(taint, Mapping)
            and taint.get("key") == GPU_TAINT_KEY
            and taint.get("effect") in ("NO_SCHEDULE", "NoSchedule")
        ):
            return []
    return [
        f"GPU node group {res.name} ({', '.join(types) or ami}) has no {GPU_TAINT_KEY}:NoSchedule taint; "
        "pods without a GPU request could land on (and keep alive) expensive GPU nodes"
    ]


# ---------------------------------------------------------------- model buckets

_PUBLIC_ACCESS_FLAGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")


def check_buckets_hardened(resources: Sequence[Resource], config: Mapping[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    buckets = [r for r in resources if r.type in BUCKET_TYPES]
    for bucket in buckets:
        aws_only = not bucket.on_s3_compatible_store

        def attached(type_: str, bucket: Resource = bucket) -> list[Resource]:
            return [r for r in resources if r.type == type_ and _linked(r, "bucket", bucket)]

        blocks = attached("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
        if aws_only and not any(all(b.props.get(f) is True for f in _PUBLIC_ACCESS_FLAGS) for b in blocks):
            missing = (
                _PUBLIC_ACCESS_FLAGS
                if not blocks
                else [f for f in _PUBLIC_ACCESS_FLAGS if not all(b.props.get(f) is True for b in blocks)]
            )
            found.append(
                (
                    bucket.urn,
                    f"bucket {bucket.name} does not block public access ({', '.join(missing)} must be true)",
                )
            )

        sse_types = (
            "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
            "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2",
        )
        rules = [rule for t in sse_types for c in attached(t) for rule in _as_list(c.props.get("rules"))]
        rules += _as_list((bucket.props.get("serverSideEncryptionConfiguration") or {}).get("rule"))
        algorithms = {
            str(((rule or {}).get("applyServerSideEncryptionByDefault") or {}).get("sseAlgorithm"))
            for rule in rules
            if isinstance(rule, Mapping)
        }
        if aws_only and not algorithms & {"aws:kms", "aws:kms:dsse"}:
            found.append(
                (
                    bucket.urn,
                    f"bucket {bucket.name} is not encrypted with SSE-KMS "
                    "(add a server-side encryption configuration with sseAlgorithm aws:kms)",
                )
            )

        version_types = (
            "aws:s3/bucketVersioning:BucketVersioning",
            "aws:s3/bucketVersioningV2:BucketVersioningV2",
        )
        statuses = {
            str((v.props.get("versioningConfiguration") or {}).get("status"))
            for t in version_types
            for v in attached(t)
        }
        if (bucket.props.get("versioning") or {}).get("enabled") is True:
            statuses.add("Enabled")
        if "Enabled" not in statuses:
            found.append(
                (
                    bucket.urn,
                    f"bucket {bucket.name} is not versioned (add a bucket versioning with status Enabled)",
                )
            )
    return found


# ---------------------------------------------------------------- pod roles

S3_WRITE_ACTIONS = (
    "s3:PutObject",
    "s3:PutObjectAcl",
    "s3:PutObjectTagging",
    "s3:PutObjectRetention",
    "s3:PutObjectLegalHold",
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:DeleteObjectTagging",
    "s3:AbortMultipartUpload",
    "s3:RestoreObject",
    "s3:ReplicateObject",
    "s3:ReplicateDelete",
    "s3:CreateBucket",
    "s3:DeleteBucket",
    "s3:PutBucketPolicy",
    "s3:DeleteBucketPolicy",
    "s3:PutBucketAcl",
    "s3:PutBucketVersioning",
    "s3:PutLifecycleConfiguration",
    "s3:PutEncryptionConfiguration",
    "s3:PutBucketPublicAccessBlock",
    "s3:CreateMultipartUpload",
    "s3:BypassGovernanceRetention",
    "s3:PutBucketTagging",
)
BROAD_MANAGED_POLICIES = ("FullAccess", "AdministratorAccess", "PowerUserAccess")

# Read-only actions for which AWS supports no resource-level permissions: the Service Authorization
# Reference (docs.aws.amazon.com/service-authorization/latest/reference/) lists no resource type for
# them, so "*" is the only Resource they accept. A statement may allow Resource "*" only when every
# action it names is on this list, spelled out in full: a wildcard such as "ec2:Describe*" is not
# accepted, since it also matches actions that can be scoped. Add an action here only after checking
# that its "Resource types" column is empty and its access level is List or Read.
RESOURCE_LESS_READ_ACTIONS = frozenset(
    a.lower()
    for a in (
        # Amazon EC2 Auto Scaling (the cluster autoscaler's discovery)
        "autoscaling:DescribeAutoScalingGroups",
        "autoscaling:DescribeAutoScalingInstances",
        "autoscaling:DescribeLaunchConfigurations",
        "autoscaling:DescribeScalingActivities",
        "autoscaling:DescribeTags",
        # Amazon EC2 (Describe* calls are not resource-scoped)
        "ec2:DescribeAvailabilityZones",
        "ec2:DescribeImages",
        "ec2:DescribeInstances",
        "ec2:DescribeInstanceTypes",
        "ec2:DescribeLaunchTemplateVersions",
        "ec2:DescribeSubnets",
        "ec2:GetInstanceTypesFromInstanceRequirements",
        # Amazon ECR: the registry login token is account-wide
        "ecr:GetAuthorizationToken",
    )
)


def is_pod_role(props: Mapping[str, Any]) -> bool:
    trust = _document(props.get("assumeRolePolicy"))
    if trust is None:
        return False
    for st in _as_list(trust.get("Statement")):
        if not isinstance(st, Mapping):
            continue
        principal = st.get("Principal") or {}
        services = _as_list(principal.get("Service")) if isinstance(principal, Mapping) else []
        actions = [str(a) for a in _as_list(st.get("Action"))]
        if "pods.eks.amazonaws.com" in services:
            return True
        if (
            isinstance(principal, Mapping)
            and principal.get("Federated")
            and "sts:AssumeRoleWithWebIdentity" in actions
        ):
            return True
    return False


def policy_document_problems(document: Mapping[str, Any]) -> list[str]:
    problems = []
    for i, st in enumerate(_as_list(document.get("Statement"))):
        if not isinstance(st, Mapping) or st.get("Effect", "Allow") != "Allow":
            continue
        label = f"statement {st.get('Sid') or i}"
        if "NotAction" in st or "NotResource" in st:
            problems.append(f"{label} allows with NotAction/NotResource (grants everything not listed)")
        if any(str(r).strip() == "*" for r in _as_list(st.get("Resource"))):
            actions = [str(a) for a in _as_list(st.get("Action"))]
            scoped = sorted({a for a in actions if a.lower() not in RESOURCE_LESS_READ_ACTIONS})
            if scoped or not actions:
                shown = ", ".join(scoped[:3]) + (", ..." if len(scoped) > 3 else "")
                problems.append(
                    f'{label} allows Resource "*" for {shown or "its actions"}, which AWS lets you scope '
                    "to resource ARNs (only read-only actions without resource-level permissions may use "
                    '"*"; see RESOURCE_LESS_READ_ACTIONS)'
                )
        writes = sorted(
            {
                a
                for pattern in _as_list(st.get("Action"))
                for a in S3_WRITE_ACTIONS
                if fnmatch.fnmatch(a.lower(), str(pattern).lower())
            }
        )
        if writes:
            shown = ", ".join(writes[:3]) + (", ..." if len(writes) > 3 else "")
            problems.append(f"{label} allows S3 writes ({shown})")
    return problems


def check_pod_roles(resources: Sequence[Resource], config: Mapping[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    roles = [r for r in resources if r.type == "aws:iam/role:Role" and is_pod_role(r.props)]
    policies = [r for r in resources if r.type == "aws:iam/policy:Policy"]
    for role in roles:
        documents: list[tuple[str, str, Any]] = []  # (urn to blame, what, document)
        for inline in _as_list(role.props.get("inlinePolicies")):
            if isinstance(inline, Mapping):
                documents.append((role.urn, f"inline policy {inline.get('name', '')}", inline.get("policy")))
        for r in resources:
            if r.type == "aws:iam/rolePolicy:RolePolicy" and _linked(r, "role", role):
                documents.append((r.urn, f"role policy {r.name}", r.props.get("policy")))
            elif r.type == "aws:iam/rolePolicyAttachment:RolePolicyAttachment" and _linked(r, "role", role):
                arn = str(r.props.get("policyArn") or "")
                if any(word in arn for word in BROAD_MANAGED_POLICIES):
                    found.append((r.urn, f"pod role {role.name} has the broad managed policy {arn}"))
                for p in policies:
                    if _linked(r, "policyArn", p):
                        documents.append((p.urn, f"policy {p.name}", p.props.get("policy")))
        for urn, what, value in documents:
            document = _document(value)
            if document is None:
                continue  # unknown until apply; judged at `pulumi up` by the policy pack
            found += [
                (urn, f"pod role {role.name}: {what}: {problem}")
                for problem in policy_document_problems(document)
            ]
    return found


# ---------------------------------------------------------------- containers

_POD_SPEC_PATHS = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}


def pod_spec(res: Resource) -> Mapping[str, Any] | None:
    if not res.type.startswith("kubernetes:"):
        return None
    path = _POD_SPEC_PATHS.get(res.type.rsplit(":", 1)[-1])
    if path is None:
        return None
    node: Any = res.props
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else None


def check_containers(res: Resource) -> list[str]:
    spec = pod_spec(res)
    if spec is None:
        return []
    problems = []
    pod_ctx = spec.get("securityContext") or {}
    for c in [*_as_list(spec.get("initContainers")), *_as_list(spec.get("containers"))]:
        if not isinstance(c, Mapping):
            continue
        ctx = c.get("securityContext") or {}
        non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
        user = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
        if non_root is not True and not (isinstance(user, int) and user > 0):
            problems.append(
                f"container {c.get('name')} in {res.name} may run as root (set runAsNonRoot: true)"
            )
        limits = (c.get("resources") or {}).get("limits") or {}
        missing = [k for k in ("cpu", "memory") if not limits.get(k)]
        if missing:
            problems.append(f"container {c.get('name')} in {res.name} has no {' or '.join(missing)} limit")
    return problems


# ---------------------------------------------------------------- public endpoints

_INTERNAL_ANNOTATIONS = {
    "service.beta.kubernetes.io/aws-load-balancer-scheme": "internal",
    "service.beta.kubernetes.io/aws-load-balancer-internal": "true",
    "networking.gke.io/load-balancer-type": "Internal",
    "service.beta.kubernetes.io/azure-load-balancer-internal": "true",
    "alb.ingress.kubernetes.io/scheme": "internal",
}
AUTH_ENV_NAMES = ("INFERSTACK_AUTH_TOKEN", "INFERSTACK_AUTH_TOKEN_FILE")


def is_public_endpoint(res: Resource) -> bool:
    kind = res.type.rsplit(":", 1)[-1]
    if not res.type.startswith("kubernetes:") or kind not in ("Service", "Ingress"):
        return False
    annotations = (res.props.get("metadata") or {}).get("annotations") or {}
    if any(str(annotations.get(k, "")).lower() == v.lower() for k, v in _INTERNAL_ANNOTATIONS.items()):
        return False
    if kind == "Service":
        return (res.props.get("spec") or {}).get("type") == "LoadBalancer"
    return True


def _selects(selector: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _has_auth(spec: Mapping[str, Any]) -> bool:
    for c in _as_list(spec.get("containers")):
        for env in _as_list((c or {}).get("env")):
            if (
                isinstance(env, Mapping)
                and env.get("name") in AUTH_ENV_NAMES
                and (env.get("value") or env.get("valueFrom"))
            ):
                return True
    return False


def _backends(
    selector: Mapping[str, Any], namespace: Any, workloads: list[tuple[Resource, Any]]
) -> list[Mapping[str, Any]]:
    """The pod specs of the workloads (in ``namespace``, when known) that ``selector`` selects."""
    backends = []
    for w, spec in workloads:
        if spec is None:
            continue
        w_ns = (w.props.get("metadata") or {}).get("namespace")
        template = (w.props.get("spec") or {}).get("template") or {}
        labels = (
            (template.get("metadata") or {}).get("labels")
            or (w.props.get("metadata") or {}).get("labels")
            or {}
        )
        if (namespace is None or w_ns is None or w_ns == namespace) and _selects(selector, labels):
            backends.append(spec)
    return backends


def _ingress_services(res: Resource) -> list[str]:
    """The Service names an Ingress's rules (and default backend) send requests to."""
    spec = res.props.get("spec") or {}
    found = [((spec.get("defaultBackend") or {}).get("service") or {}).get("name")]
    for rule in _as_list(spec.get("rules")):
        for path in _as_list(((rule or {}).get("http") or {}).get("paths")):
            found.append((((path or {}).get("backend") or {}).get("service") or {}).get("name"))
    return [str(n) for n in found if n]


def check_public_endpoints(resources: Sequence[Resource], config: Mapping[str, Any]) -> list[tuple[str, str]]:
    found = []
    workloads = [(r, pod_spec(r)) for r in resources]
    services = {
        ((r.props.get("metadata") or {}).get("namespace"), (r.props.get("metadata") or {}).get("name")): r
        for r in resources
        if r.type == "kubernetes:core/v1:Service"
    }
    for res in resources:
        if not is_public_endpoint(res):
            continue
        namespace = (res.props.get("metadata") or {}).get("namespace")
        if res.type.endswith(":Service"):
            selector = (res.props.get("spec") or {}).get("selector") or {}
            backends = _backends(selector, namespace, workloads)
            if backends and all(_has_auth(s) for s in backends):
                continue
            reason = (
                "no workload it selects"
                if not backends
                else "its pods have no " + " or ".join(AUTH_ENV_NAMES)
            )
            found.append(
                (res.urn, f"public LoadBalancer Service {res.name} does not require auth ({reason})")
            )
        else:
            # An Ingress passes when every Service it routes to (of its namespace, as Kubernetes
            # resolves them) selects pods and all of them require a bearer token.
            names = _ingress_services(res)
            backends = []
            complete = bool(names)
            for name in names:
                svc = services.get((namespace, name))
                selector = ((svc.props.get("spec") or {}).get("selector") or {}) if svc else {}
                selected = _backends(selector, namespace, workloads) if selector else []
                complete = complete and bool(selected)
                backends += selected
            if complete and all(_has_auth(s) for s in backends):
                continue
            found.append(
                (
                    res.urn,
                    f"public Ingress {res.name}: its pods do not all require auth (auth: true); put it "
                    "behind an authenticating proxy or mark it internal",
                )
            )
    return found


# ---------------------------------------------------------------- cost tags

TAGGABLE_TYPES = {
    "aws:ec2/vpc:Vpc",
    "aws:ec2/subnet:Subnet",
    "aws:ec2/natGateway:NatGateway",
    "aws:ec2/eip:Eip",
    "aws:ec2/internetGateway:InternetGateway",
    "aws:ec2/routeTable:RouteTable",
    "aws:ec2/securityGroup:SecurityGroup",
    "aws:ec2/launchTemplate:LaunchTemplate",
    "aws:eks/cluster:Cluster",
    "aws:eks/nodeGroup:NodeGroup",
    "aws:eks/addon:Addon",
    "aws:s3/bucket:Bucket",
    "aws:s3/bucketV2:BucketV2",
    "aws:iam/role:Role",
    "aws:iam/policy:Policy",
    "aws:kms/key:Key",
    "aws:ecr/repository:Repository",
    "aws:ec2/vpcEndpoint:VpcEndpoint",
    "aws:eks/podIdentityAssociation:PodIdentityAssociation",
}


def required_tags(config: Mapping[str, Any]) -> list[str]:
    return [str(t) for t in (config.get("requiredTags") or DEFAULT_REQUIRED_TAGS)]


def check_cost_tags(resources: Sequence[Resource], config: Mapping[str, Any]) -> list[tuple[str, str]]:
    wanted = required_tags(config)
    default_tags = dict(config.get("defaultTags") or {})
    found = []
    for res in resources:
        if res.type not in TAGGABLE_TYPES or res.on_s3_compatible_store:
            continue
        tags = {**default_tags, **res.provider_default_tags, **(res.props.get("tags") or {})}
        missing = [t for t in wanted if not tags.get(t)]
        if missing:
            found.append((res.urn, f"{res.name} lacks the cost tag(s) {', '.join(missing)}"))
    return found


RULES: tuple[Rule, ...] = (
    Rule(
        "gpu-node-pools-tainted",
        "GPU node groups carry the nvidia.com/gpu NoSchedule taint.",
        True,
        resource_check=check_gpu_pool_tainted,
    ),
    Rule(
        "model-buckets-private-encrypted-versioned",
        "S3 buckets block all four kinds of public access, use SSE-KMS and are versioned.",
        True,
        stack_check=check_buckets_hardened,
    ),
    Rule(
        "pod-roles-least-privilege",
        'Roles assumed by pods have no "*" resources (except for read-only actions AWS cannot scope) '
        "and no S3 write actions.",
        True,
        stack_check=check_pod_roles,
    ),
    Rule(
        "containers-non-root-with-limits",
        "Every container runs as non-root and has CPU and memory limits.",
        True,
        resource_check=check_containers,
    ),
    Rule(
        "public-endpoints-require-auth",
        "Internet-facing Services and Ingresses front pods that require a bearer token.",
        True,
        stack_check=check_public_endpoints,
    ),
    Rule(
        "cost-tags-present",
        "Taggable AWS resources carry the required cost tags (advisory).",
        False,
        stack_check=check_cost_tags,
    ),
)


def evaluate(resources: Iterable[Resource], config: Mapping[str, Any] | None = None) -> list[Violation]:
    """Run every rule over a whole stack."""
    resources = list(resources)
    config = config or {}
    violations: list[Violation] = []
    for rule in RULES:
        if rule.resource_check is not None:
            for res in resources:
                violations += [
                    Violation(rule.name, res.urn, m, rule.mandatory) for m in rule.resource_check(res)
                ]
        if rule.stack_check is not None:
            violations += [
                Violation(rule.name, urn, m, rule.mandatory) for urn, m in rule.stack_check(resources, config)
            ]
    return violations
