"""Each rule of the policy pack, through the pulumi_policy objects the Pulumi CLI would call, with a
passing and a failing resource (validation args constructed directly, no CLI)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from inferstack.policy import pack, rules
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

POLICIES = {p.name: p for p in pack.policies()}


def _opts() -> PolicyResourceOptions:
    return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])


def _urn(type_: str, name: str) -> str:
    return f"urn:pulumi:dev::inferstack::{type_}::{name}"


def run_resource(policy: str, type_: str, props: dict[str, Any], name: str = "r") -> list[str]:
    p = POLICIES[policy]
    assert isinstance(p, ResourceValidationPolicy)
    seen: list[str] = []
    args = ResourceValidationArgs(type_, props, _urn(type_, name), name, _opts(), None)
    p.validate(args, lambda message, urn=None: seen.append(message))
    return seen


def res(
    type_: str,
    name: str,
    props: dict[str, Any],
    deps: dict[str, list[PolicyResource]] | None = None,
    provider: Any = None,
) -> PolicyResource:
    return PolicyResource(type_, props, _urn(type_, name), name, _opts(), provider, None, [], deps or {})


def run_stack(
    policy: str, resources: list[PolicyResource], config: dict | None = None
) -> list[tuple[str, str]]:
    p = POLICIES[policy]
    assert isinstance(p, StackValidationPolicy)
    seen: list[tuple[str, str]] = []
    p.validate(StackValidationArgs(resources, config), lambda message, urn=None: seen.append((message, urn)))
    return seen


def test_pack_has_every_rule_with_its_level() -> None:
    assert set(POLICIES) == {r.name for r in rules.RULES}
    assert POLICIES["cost-tags-present"].enforcement_level == EnforcementLevel.ADVISORY
    mandatory = [n for n, p in POLICIES.items() if p.enforcement_level == EnforcementLevel.MANDATORY]
    assert len(mandatory) == 5


# ------------------------------------------------------------------ GPU taint

GPU_POOL = {
    "instanceTypes": ["g5.xlarge"],
    "amiType": "AL2023_x86_64_NVIDIA",
    "taints": [{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}],
}


def test_gpu_pool_taint() -> None:
    t = "aws:eks/nodeGroup:NodeGroup"
    assert run_resource("gpu-node-pools-tainted", t, GPU_POOL) == []
    (msg,) = run_resource("gpu-node-pools-tainted", t, {**GPU_POOL, "taints": []}, name="gpu")
    assert "gpu" in msg and "nvidia.com/gpu:NoSchedule" in msg
    wrong_effect = [{"key": "nvidia.com/gpu", "effect": "PREFER_NO_SCHEDULE"}]
    assert run_resource("gpu-node-pools-tainted", t, {**GPU_POOL, "taints": wrong_effect})
    assert (
        run_resource(
            "gpu-node-pools-tainted", t, {"instanceTypes": ["m6i.large"], "amiType": "AL2023_x86_64"}
        )
        == []
    )


# ------------------------------------------------------------------ buckets


def _bucket_stack(
    block: bool = True, kms: str = "aws:kms", versioning: str = "Enabled", provider: Any = None
) -> list[PolicyResource]:
    bucket = res("aws:s3/bucket:Bucket", "models", {"bucket": "models-123"}, provider=provider)
    link = {"bucket": [bucket]}
    flags = {f: True for f in rules._PUBLIC_ACCESS_FLAGS}
    if not block:
        flags["restrictPublicBuckets"] = False
    return [
        bucket,
        res(
            "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
            "pab",
            {"bucket": "models-123", **flags},
            link,
        ),
        res(
            "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
            "sse",
            {
                "bucket": "models-123",
                "rules": [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": kms}}],
            },
            link,
        ),
        res(
            "aws:s3/bucketVersioning:BucketVersioning",
            "ver",
            {"bucket": "models-123", "versioningConfiguration": {"status": versioning}},
            link,
        ),
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"block": False}, "restrictPublicBuckets"),
        ({"kms": "AES256"}, "SSE-KMS"),
        ({"versioning": "Suspended"}, "not versioned"),
    ],
)
def test_model_bucket(change: dict, expected: str) -> None:
    name = "model-buckets-private-encrypted-versioned"
    assert run_stack(name, _bucket_stack()) == []
    ((message, urn),) = run_stack(name, _bucket_stack(**change))
    assert expected in message and urn.endswith("::models")


def test_bucket_without_companions_fails_all_three() -> None:
    bucket = res("aws:s3/bucket:Bucket", "models", {"bucket": "m"})
    assert len(run_stack("model-buckets-private-encrypted-versioned", [bucket])) == 3


def test_s3_compatible_store_is_only_held_to_versioning() -> None:
    class Provider:
        resource_type = "pulumi:providers:aws"
        props = {"endpoints": json.dumps([{"s3": "http://minio:9000"}])}

    stack = [r for r in _bucket_stack(provider=Provider()) if r.name in ("models", "ver")]
    assert run_stack("model-buckets-private-encrypted-versioned", stack) == []


# ------------------------------------------------------------------ pod roles

POD_TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["sts:AssumeRole", "sts:TagSession"],
                "Principal": {"Service": "pods.eks.amazonaws.com"},
            }
        ],
    }
)


def _role_stack(statement: dict) -> list[PolicyResource]:
    role = res("aws:iam/role:Role", "pod", {"assumeRolePolicy": POD_TRUST, "name": "pod-role"})
    document = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    return [
        role,
        res(
            "aws:iam/rolePolicy:RolePolicy",
            "read",
            {"role": "pod-role", "policy": document},
            {"role": [role]},
        ),
    ]


READ_ONLY = {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::models/m/*"]}


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ({**READ_ONLY, "Resource": "*"}, 'Resource "*"'),
        ({**READ_ONLY, "Action": ["s3:GetObject", "s3:PutObject"]}, "S3 writes (s3:PutObject)"),
        ({**READ_ONLY, "Action": "s3:*"}, "S3 writes"),
        ({**READ_ONLY, "Action": "s3:Delete*"}, "s3:DeleteBucket"),
    ],
)
def test_pod_role(statement: dict, expected: str) -> None:
    name = "pod-roles-least-privilege"
    assert run_stack(name, _role_stack(READ_ONLY)) == []
    ((message, urn),) = run_stack(name, _role_stack(statement))
    assert expected in message and urn.endswith("::read")


AUTOSCALER_DESCRIBE = {
    "Sid": "DescribeScalingState",
    "Effect": "Allow",
    "Action": [
        "autoscaling:DescribeAutoScalingGroups",
        "autoscaling:DescribeAutoScalingInstances",
        "autoscaling:DescribeLaunchConfigurations",
        "autoscaling:DescribeScalingActivities",
        "autoscaling:DescribeTags",
        "ec2:DescribeImages",
        "ec2:DescribeInstanceTypes",
        "ec2:DescribeLaunchTemplateVersions",
        "ec2:GetInstanceTypesFromInstanceRequirements",
    ],
    "Resource": "*",
}


def test_resource_star_allowed_for_read_only_actions_aws_cannot_scope() -> None:
    name = "pod-roles-least-privilege"
    assert run_stack(name, _role_stack(AUTOSCALER_DESCRIBE)) == []
    # the same statement written as a list, in another case: IAM action names are case-insensitive
    lowered = {**AUTOSCALER_DESCRIBE, "Action": [a.lower() for a in AUTOSCALER_DESCRIBE["Action"]]}
    assert run_stack(name, _role_stack({**lowered, "Resource": ["*"]})) == []


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["eks:DescribeNodegroup"], "eks:DescribeNodegroup"),  # can be scoped to the node group ARN
        (["autoscaling:SetDesiredCapacity"], "autoscaling:SetDesiredCapacity"),  # a write
        (["s3:GetObject"], "s3:GetObject"),
        (["ec2:Describe*"], "ec2:Describe*"),  # a wildcard also matches scopable actions
    ],
)
def test_resource_star_fails_when_a_statement_mixes_in_other_actions(extra: list[str], named: str) -> None:
    statement = {**AUTOSCALER_DESCRIBE, "Action": [*AUTOSCALER_DESCRIBE["Action"], *extra]}
    ((message, urn),) = run_stack("pod-roles-least-privilege", _role_stack(statement))
    assert 'statement DescribeScalingState allows Resource "*" for ' + named in message
    assert "autoscaling:DescribeAutoScalingGroups" not in message and urn.endswith("::read")


def test_resource_star_never_excuses_s3_writes() -> None:
    statement = {**AUTOSCALER_DESCRIBE, "Action": [*AUTOSCALER_DESCRIBE["Action"], "s3:PutObject"]}
    messages = sorted(m for m, _ in run_stack("pod-roles-least-privilege", _role_stack(statement)))
    assert len(messages) == 2
    assert 'Resource "*" for s3:PutObject' in messages[0] and "S3 writes (s3:PutObject)" in messages[1]


def test_s3_get_object_on_star_fails() -> None:
    statement = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}
    ((message, _),) = run_stack("pod-roles-least-privilege", _role_stack(statement))
    assert 'allows Resource "*" for s3:GetObject' in message


def test_role_not_assumed_by_pods_is_out_of_scope() -> None:
    stack = _role_stack({**READ_ONLY, "Resource": "*"})
    stack[0].props = {
        "assumeRolePolicy": json.dumps(
            {
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "sts:AssumeRole",
                        "Principal": {"Service": "eks.amazonaws.com"},
                    }
                ]
            }
        )
    }
    assert run_stack("pod-roles-least-privilege", stack) == []


# ------------------------------------------------------------------ containers


def _deployment(ctx: dict, limits: dict) -> dict:
    return {
        "kind": "Deployment",
        "spec": {
            "template": {
                "spec": {
                    "securityContext": {},
                    "containers": [
                        {"name": "server", "securityContext": ctx, "resources": {"limits": limits}}
                    ],
                }
            }
        },
    }


def test_containers_non_root_with_limits() -> None:
    t = "kubernetes:apps/v1:Deployment"
    good = _deployment({"runAsNonRoot": True}, {"cpu": "2", "memory": "8Gi"})
    assert run_resource("containers-non-root-with-limits", t, good) == []
    (root,) = run_resource(
        "containers-non-root-with-limits", t, _deployment({}, {"cpu": "2", "memory": "1Gi"})
    )
    assert "may run as root" in root
    (limits,) = run_resource(
        "containers-non-root-with-limits", t, _deployment({"runAsNonRoot": True}, {"nvidia.com/gpu": "1"})
    )
    assert "no cpu or memory limit" in limits


# ------------------------------------------------------------------ public endpoints

SELECTOR = {"app": "model"}


def _endpoint_stack(scheme: str, env: list[dict]) -> list[PolicyResource]:
    svc = res(
        "kubernetes:core/v1:Service",
        "svc",
        {
            "metadata": {
                "namespace": "m",
                "annotations": {"service.beta.kubernetes.io/aws-load-balancer-scheme": scheme},
            },
            "spec": {"type": "LoadBalancer", "selector": SELECTOR},
        },
    )
    deploy = res(
        "kubernetes:apps/v1:Deployment",
        "deploy",
        {
            "metadata": {"namespace": "m"},
            "spec": {
                "template": {
                    "metadata": {"labels": SELECTOR},
                    "spec": {"containers": [{"name": "s", "env": env}]},
                }
            },
        },
    )
    return [svc, deploy]


TOKEN = [{"name": "INFERSTACK_AUTH_TOKEN_FILE", "value": "/var/run/inferstack/auth/token"}]


def test_public_endpoint_requires_auth() -> None:
    name = "public-endpoints-require-auth"
    assert run_stack(name, _endpoint_stack("internet-facing", TOKEN)) == []
    assert run_stack(name, _endpoint_stack("internal", [])) == []
    ((message, urn),) = run_stack(name, _endpoint_stack("internet-facing", []))
    assert "does not require auth" in message and urn.endswith("::svc")


def _ingress_stack(envs: dict[str, list[dict]]) -> list[PolicyResource]:
    """An Ingress routing one path per model to the ClusterIP Services of two Deployments (one a
    multi-model server), each with the given container env."""
    out = [
        res(
            "kubernetes:networking.k8s.io/v1:Ingress",
            "ing",
            {
                "metadata": {"namespace": "m"},
                "spec": {
                    "rules": [
                        {
                            "host": "models.example.com",
                            "http": {
                                "paths": [
                                    {"path": f"/v2/models/{model}", "pathType": "Prefix",
                                     "backend": {"service": {"name": svc, "port": {"name": "http"}}}}
                                    for model, svc in (("a", "one"), ("b", "two"), ("c", "two"))
                                ]
                            },
                        }
                    ]
                },
            },
        )
    ]
    for svc, env in envs.items():
        labels = {"app": svc}
        out.append(res("kubernetes:core/v1:Service", svc, {
            "metadata": {"namespace": "m", "name": svc}, "spec": {"type": "ClusterIP", "selector": labels}}))
        out.append(res("kubernetes:apps/v1:Deployment", f"{svc}-deploy", {
            "metadata": {"namespace": "m"},
            "spec": {"template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "s", "env": env}]}}}}))
    return out


def test_public_ingress_passes_only_when_every_pod_it_routes_to_requires_auth() -> None:
    name = "public-endpoints-require-auth"
    assert run_stack(name, _ingress_stack({"one": TOKEN, "two": TOKEN})) == []
    ((message, urn),) = run_stack(name, _ingress_stack({"one": TOKEN, "two": []}))
    assert "public Ingress ing" in message and urn.endswith("::ing")
    # a path to a Service that selects nothing (or does not exist) is not known to require auth
    assert len(run_stack(name, _ingress_stack({"one": TOKEN}))) == 1


# ------------------------------------------------------------------ cost tags


def test_cost_tags_advisory() -> None:
    vpc = "aws:ec2/vpc:Vpc"
    good = res(vpc, "vpc", {"tags": {"project": "inferstack", "stack": "dev"}})
    bad = res(vpc, "vpc2", {"tags": {"project": "inferstack"}})
    assert run_stack("cost-tags-present", [good]) == []
    ((message, urn),) = run_stack("cost-tags-present", [good, bad])
    assert "stack" in message and urn.endswith("::vpc2")
    assert run_stack("cost-tags-present", [bad], {"requiredTags": ["project"]}) == []
