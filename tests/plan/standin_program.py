"""A small stand-in for the real program: the same kinds of resources, read from pulumi.Config.

The plan tests run the plan engine on it so that they cover the engine itself, whatever the real
program declares.
"""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s


class Stand(pulumi.ComponentResource):
    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("inferstack:test:Stand", name, None, opts)
        cfg = pulumi.Config()
        prod = cfg.get_bool("prod") or False
        gpu = cfg.get_object("gpu") or {}
        child = pulumi.ResourceOptions(parent=self)
        zones = aws.get_availability_zones()

        self.bucket = aws.s3.Bucket(
            f"{name}-models",
            force_destroy=not prod,
            tags={"project": "inferstack"},
            opts=pulumi.ResourceOptions(parent=self, protect=prod, retain_on_delete=prod),
        )
        aws.s3.BucketPublicAccessBlock(
            f"{name}-models-pab",
            bucket=self.bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        aws.s3.BucketVersioning(
            f"{name}-models-versioning",
            bucket=self.bucket.id,
            versioning_configuration={"status": "Enabled"},
            opts=child,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-models-sse",
            bucket=self.bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "aws:kms"}}],
            opts=child,
        )
        aws.s3.BucketObjectv2(
            f"{name}-model-file",
            bucket=self.bucket.id,
            key="models/standin_program.py",
            source=pulumi.FileAsset(__file__),
            opts=child,
        )

        trust = aws.iam.get_policy_document(
            statements=[
                {
                    "actions": ["sts:AssumeRole", "sts:TagSession"],
                    "principals": [{"type": "Service", "identifiers": ["pods.eks.amazonaws.com"]}],
                }
            ]
        )
        self.role = aws.iam.Role(f"{name}-pod", assume_role_policy=trust.json, opts=child)
        aws.iam.RolePolicy(
            f"{name}-pod-read",
            role=self.role.name,
            policy=self.bucket.arn.apply(
                lambda arn: json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [f"{arn}/models/*"]}
                        ],
                    }
                )
            ),
            opts=child,
        )

        cluster = aws.eks.Cluster(
            f"{name}-cluster",
            version=cfg.get("kubernetesVersion") or "1.33",
            role_arn=self.role.arn,
            vpc_config={"subnet_ids": ["subnet-a", "subnet-b"]},
            opts=child,
        )
        aws.eks.NodeGroup(
            f"{name}-gpu",
            cluster_name=cluster.name,
            node_role_arn=self.role.arn,
            subnet_ids=["subnet-a"],
            instance_types=gpu.get("instanceTypes", ["g4dn.xlarge"]),
            ami_type="AL2023_x86_64_NVIDIA",
            scaling_config={"min_size": gpu.get("min", 0), "max_size": gpu.get("max", 2), "desired_size": 0},
            taints=[{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}]
            if cfg.get_bool("gpuTaint") is not False
            else [],
            tags={"project": "inferstack"},
            opts=child,
        )

        ns = k8s.core.v1.Namespace(f"{name}-ns", metadata={"name": "inference"}, opts=child)
        labels = {"app": "model"}
        token = cfg.get_secret("authToken")
        container = {
            "name": "server",
            "image": "example/runtime:1.0",
            "ports": [{"container_port": 8000}],
            "env": [
                {"name": "AUTH_TOKEN", "value": token},
                {"name": "ZONE", "value": zones.names[0]},
                {"name": "MODEL_URI", "value": self.bucket.bucket.apply(lambda b: f"s3://{b}/models")},
            ],
            "resources": {"limits": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}},
            "security_context": {"run_as_non_root": True, "allow_privilege_escalation": False},
        }
        k8s.apps.v1.Deployment(
            f"{name}-deploy",
            metadata={"name": "model", "namespace": ns.metadata["name"]},
            spec={
                "replicas": 1,
                "selector": {"match_labels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            },
            opts=child,
        )
        svc = k8s.core.v1.Service(
            f"{name}-svc",
            metadata={"name": "model", "namespace": ns.metadata["name"]},
            spec={
                "type": cfg.get("serviceType") or "ClusterIP",
                "selector": labels,
                "ports": [{"port": _port(cfg.get("servicePort")), "target_port": 8000}],
            },
            opts=child,
        )
        if cfg.get("secretData"):  # pulumi_kubernetes marks a Secret's data secret itself
            k8s.core.v1.Secret(
                f"{name}-creds",
                metadata={"name": "creds", "namespace": ns.metadata["name"]},
                string_data={"token": cfg.get("secretData")},
                opts=child,
            )
        if cfg.get_bool("debugNamespace"):
            k8s.core.v1.Namespace(f"{name}-debug", metadata={"name": "debug"}, opts=child)
        if cfg.get("fail"):
            raise ValueError(f"inferstack:fail: {cfg.get('fail')!r}; expected nothing")
        self.endpoint = svc.metadata.apply(lambda m: f"http://{m['name']}.inference")
        self.register_outputs({"endpoint": self.endpoint, "bucket": self.bucket.bucket})


def _port(text: str | None) -> int | str:
    """Whole numbers as numbers; anything else is passed on as given (to test schema validation)."""
    if text is None:
        return 80
    return int(text) if text.isdigit() else text


def main() -> None:
    stand = Stand("inferstack")
    pulumi.export("endpoint", stand.endpoint)
    pulumi.export("bucket", stand.bucket.bucket)
