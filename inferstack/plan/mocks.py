"""Deterministic answers for what only the cloud knows.

Under :func:`pulumi.runtime.set_mocks` every resource gets back its inputs plus placeholders for
the values a provider computes (``<arn of NAME>``, ``<endpoint of NAME>``), and every provider
function (``aws.get_availability_zones``, ``aws.iam.get_policy_document``...) a fixed answer.
The same program and config therefore always produce the same plan, with no credentials.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pulumi

ACCOUNT_ID = "123456789012"

Outputs = dict[str, Any]


def _aws_common(name: str, inputs: Outputs) -> Outputs:
    return {
        "arn": f"<arn of {name}>",
        "name": inputs.get("name") or f"<name of {name}>",
        "tagsAll": inputs.get("tags") or {},
    }


def _eks_cluster(name: str, inputs: Outputs) -> Outputs:
    vpc = dict(inputs.get("vpcConfig") or {})
    vpc.setdefault("clusterSecurityGroupId", f"<cluster security group of {name}>")
    return {
        "endpoint": f"https://<endpoint of {name}>",
        "certificateAuthority": {"data": f"<certificate authority of {name}>"},
        "identities": [{"oidcs": [{"issuer": f"https://<oidc issuer of {name}>"}]}],
        "clusterId": f"<cluster id of {name}>",
        "status": "ACTIVE",
        "vpcConfig": vpc,
    }


def _bucket(name: str, inputs: Outputs) -> Outputs:
    bucket = inputs.get("bucket") or f"<bucket of {name}>"
    return {
        "bucket": bucket,
        "bucketDomainName": f"<domain of {name}>",
        "bucketRegionalDomainName": f"<regional domain of {name}>",
    }


def _ecr_repository(name: str, inputs: Outputs) -> Outputs:
    return {"repositoryUrl": f"{ACCOUNT_ID}.dkr.ecr.<region>.amazonaws.com/{inputs.get('name') or name}"}


def _kms_key(name: str, inputs: Outputs) -> Outputs:
    return {"keyId": f"<key id of {name}>"}


def _role(name: str, inputs: Outputs) -> Outputs:
    return {"uniqueId": f"<unique id of {name}>"}


def _eip(name: str, inputs: Outputs) -> Outputs:
    return {"publicIp": f"<public ip of {name}>", "allocationId": f"<allocation id of {name}>"}


def _security_group(name: str, inputs: Outputs) -> Outputs:
    return {"ownerId": ACCOUNT_ID}


def _oidc_provider(name: str, inputs: Outputs) -> Outputs:
    return {"url": str(inputs.get("url", "")).removeprefix("https://")}


def _k8s(name: str, inputs: Outputs) -> Outputs:
    metadata = dict(inputs.get("metadata") or {})
    metadata.setdefault("name", name)
    extra: Outputs = {"metadata": metadata}
    if inputs.get("kind") == "Service" and (inputs.get("spec") or {}).get("type") == "LoadBalancer":
        extra["status"] = {"loadBalancer": {"ingress": [{"hostname": f"<load balancer of {name}>"}]}}
    return extra


def _helm_release(name: str, inputs: Outputs) -> Outputs:
    return {
        "name": inputs.get("name") or name,
        "status": {"name": inputs.get("name") or name, "namespace": inputs.get("namespace", "default")},
    }


def _docker_image(name: str, inputs: Outputs) -> Outputs:
    return {"ref": f"<image ref of {name}>", "digest": f"sha256:<digest of {name}>"}


_BY_TYPE: dict[str, Callable[[str, Outputs], Outputs]] = {
    "aws:eks/cluster:Cluster": _eks_cluster,
    "aws:s3/bucket:Bucket": _bucket,
    "aws:s3/bucketV2:BucketV2": _bucket,
    "aws:ecr/repository:Repository": _ecr_repository,
    "aws:kms/key:Key": _kms_key,
    "aws:iam/role:Role": _role,
    "aws:ec2/eip:Eip": _eip,
    "aws:ec2/securityGroup:SecurityGroup": _security_group,
    "aws:iam/openIdConnectProvider:OpenIdConnectProvider": _oidc_provider,
    "kubernetes:helm.sh/v3:Release": _helm_release,
    "docker-build:index:Image": _docker_image,
    "docker:index/image:Image": _docker_image,
}


def computed_outputs(type_: str, name: str, inputs: Outputs) -> Outputs:
    """The placeholders a provider would fill in for this resource, on top of its inputs."""
    extra: Outputs = {}
    if type_.startswith("aws:"):
        extra.update(_aws_common(name, inputs))
    if type_.startswith("kubernetes:") and "metadata" in inputs:
        extra.update(_k8s(name, inputs))
    handler = _BY_TYPE.get(type_)
    if handler is not None:
        extra.update(handler(name, inputs))
    return extra


def _policy_document(args: Outputs) -> Outputs:
    def one_or_list(values: list[Any]) -> Any:
        return values[0] if len(values) == 1 else values

    statements = []
    for st in args.get("statements") or []:
        out: dict[str, Any] = {}
        if st.get("sid"):
            out["Sid"] = st["sid"]
        out["Effect"] = st.get("effect") or "Allow"
        for src, dst in (
            ("actions", "Action"),
            ("notActions", "NotAction"),
            ("resources", "Resource"),
            ("notResources", "NotResource"),
        ):
            if st.get(src):
                out[dst] = one_or_list(list(st[src]))
        for src, dst in (("principals", "Principal"), ("notPrincipals", "NotPrincipal")):
            if st.get(src):
                principal: dict[str, Any] = {}
                for p in st[src]:
                    principal[p["type"]] = one_or_list(list(p.get("identifiers") or []))
                out[dst] = principal
        if st.get("conditions"):
            condition: dict[str, dict[str, Any]] = {}
            for c in st["conditions"]:
                condition.setdefault(c["test"], {})[c["variable"]] = one_or_list(list(c.get("values") or []))
            out["Condition"] = condition
        statements.append(out)
    document = {"Version": args.get("version") or "2012-10-17", "Statement": statements}
    return {
        "json": json.dumps(document, indent=2),
        "minifiedJson": json.dumps(document, separators=(",", ":")),
        "id": "<policy document>",
    }


class PlanMocks(pulumi.runtime.Mocks):
    """Inputs echoed back plus deterministic placeholders; fixed answers to provider functions."""

    def __init__(self, region: str = "us-east-1") -> None:
        self.region = region
        self.calls: list[str] = []
        """Tokens of the provider functions the program called, in call order."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        if args.typ.startswith("pulumi:providers:"):
            return f"<id of {args.name}>", dict(args.inputs)
        state = {**args.inputs, **computed_outputs(args.typ, args.name, args.inputs)}
        resource_id = args.resource_id or f"<id of {args.name}>"
        if args.typ in ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2"):
            resource_id = state["bucket"]  # an S3 bucket's id is its name
        return resource_id, state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        self.calls.append(args.token)
        function = args.token.rsplit(":", 1)[-1]
        region = self.region
        if function == "getAvailabilityZones":
            letters = "abc"
            return {
                "id": region,
                "names": [f"{region}{x}" for x in letters],
                "zoneIds": [f"{region}-az{i + 1}" for i in range(len(letters))],
                "state": "available",
            }, []
        if function == "getInstanceTypeOfferings":
            # every requested instance type in every zone getAvailabilityZones names
            wanted = [
                v
                for f in args.args.get("filters") or []
                if f.get("name") == "instance-type"
                for v in f.get("values") or []
            ]
            pairs = [(f"{region}{x}", t) for x in "abc" for t in wanted]
            return {
                "id": region,
                "locations": [z for z, _ in pairs],
                "instanceTypes": [t for _, t in pairs],
                "locationTypes": [args.args.get("locationType") or "availability-zone"] * len(pairs),
            }, []
        if function == "getCallerIdentity":
            return {
                "id": ACCOUNT_ID,
                "accountId": ACCOUNT_ID,
                "arn": f"arn:aws:iam::{ACCOUNT_ID}:user/inferstack-plan",
                "userId": "INFERSTACKPLAN",
            }, []
        if function == "getRegion":
            return {
                "id": region,
                "name": region,
                "region": region,
                "endpoint": f"ec2.{region}.amazonaws.com",
                "description": region,
            }, []
        if function == "getPartition":
            return {
                "id": "aws",
                "partition": "aws",
                "dnsSuffix": "amazonaws.com",
                "reverseDnsPrefix": "com.amazonaws",
            }, []
        if function == "getPolicyDocument":
            return _policy_document(args.args), []
        if function == "getParameter":
            name = args.args.get("name", "")
            return {
                "id": name,
                "name": name,
                "value": f"<value of {name}>",
                "type": "String",
                "arn": f"<arn of {name}>",
                "version": 1,
            }, []
        if function == "getAmi":
            return {"id": "ami-00000000000000000", "imageId": "ami-00000000000000000"}, []
        if function == "getClusterAuth":
            return {
                "id": args.args.get("name", ""),
                "name": args.args.get("name", ""),
                "token": "<token>",
            }, []
        if function == "getAuthorizationToken":
            return {
                "id": region,
                "userName": "AWS",
                "password": "<password>",
                "authorizationToken": "<token>",
                "proxyEndpoint": f"https://{ACCOUNT_ID}.dkr.ecr.{region}.amazonaws.com",
            }, []
        if function == "getAddonVersion":
            return {"id": args.args.get("addonName", ""), "version": "<latest version>"}, []
        if args.token == "kubernetes:yaml:decode":
            import yaml

            return {"result": [d for d in yaml.safe_load_all(args.args.get("text", "")) if d]}, []
        return {}, []
