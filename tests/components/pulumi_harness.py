"""Pulumi's own mocks for the component tests: no CLI, no cloud (imported by conftest.py).

``run_program(fn, config)`` builds a program afresh under ``pulumi.runtime.set_mocks`` with the
project ``inferstack`` and the given stack config, and returns a ``Program`` with every resource
registration the engine would have received: type, name, parent, inputs as sent (camelCase for
Kubernetes), and the resource options that only the engine sees (protect, retainOnDelete,
ignoreChanges, customTimeouts, dependencies).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import settings as pulumi_settings

ROOT = Path(__file__).resolve().parents[2]
STACKS = ROOT / "stacks"
ACCOUNT = "123456789012"


ZONES = ["us-east-1a", "us-east-1b", "us-east-1c"]


class Mocks(pulumi.runtime.Mocks):
    """Returns the inputs plus the outputs a real provider would add, per type.

    ``unoffered`` maps a zone to the instance types EC2 does not offer there (every type is offered
    in every zone unless a test says otherwise)."""

    def __init__(self, unoffered: dict[str, set[str]] | None = None) -> None:
        self.unoffered = unoffered or {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        state = dict(args.inputs)
        rid = f"{args.name}_id"
        t = args.typ
        if t == "aws:s3/bucket:Bucket":
            state["bucket"] = state.get("bucket") or f"{state.get('bucketPrefix', args.name)}20260101abcdef"
            state["arn"] = f"arn:aws:s3:::{state['bucket']}"
            rid = state["bucket"]
        elif t == "aws:kms/key:Key":
            state["arn"] = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{args.name}"
        elif t == "aws:iam/role:Role":
            state["arn"] = f"arn:aws:iam::{ACCOUNT}:role/{args.name}"
            state["name"] = args.name
            rid = args.name
        elif t == "aws:eks/cluster:Cluster":
            state.update(
                name=state.get("name") or args.name,
                arn=f"arn:aws:eks:us-east-1:{ACCOUNT}:cluster/{args.name}",
                endpoint="https://ABCDEF.gr7.us-east-1.eks.amazonaws.com",
                certificateAuthority={"data": "LS0tLS1CRUdJTi1DRVJUSUZJQ0FURS0tLS0t"},
                identities=[{"oidcs": [{"issuer": "https://oidc.eks.us-east-1.amazonaws.com/id/ABC"}]}],
                vpcConfig={**state.get("vpcConfig", {}), "clusterSecurityGroupId": "sg-cluster"},
            )
            rid = state["name"]
        elif t == "aws:ecr/repository:Repository":
            repo = state.get("name", args.name)
            state["repositoryUrl"] = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/{repo}"
            state["arn"] = f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/{args.name}"
        elif t == "docker-build:index:Image":
            # what a push returns: the manifest digest, here derived from the resource name
            state["digest"] = "sha256:" + hashlib.sha256(args.name.encode()).hexdigest()
            state["ref"] = f"{(state.get('tags') or ['image'])[0]}@{state['digest']}"
        elif t == "aws:ec2/vpc:Vpc":
            rid = "vpc-0123"
        elif t == "aws:eks/nodeGroup:NodeGroup":
            state["nodeGroupName"] = args.name
            state["resources"] = [{"autoscalingGroups": [{"name": f"eks-{args.name}-asg"}]}]
        elif t == "aws:ec2/launchTemplate:LaunchTemplate":
            state["latestVersion"] = 1
        elif t == "kubernetes:core/v1:Service":
            if (state.get("spec") or {}).get("type") == "LoadBalancer":
                host = f"{args.name}.elb.amazonaws.com"
                state["status"] = {"loadBalancer": {"ingress": [{"hostname": host}]}}
        elif t.startswith("aws:") and "arn" not in state:
            state["arn"] = f"arn:aws:{t.split(':')[1].split('/')[0]}:us-east-1:{ACCOUNT}:{args.name}"
        return rid, state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        tok = args.token
        if tok == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {
                "names": ZONES,
                "zoneIds": ["use1-az1", "use1-az2", "use1-az4"],
                "id": "us-east-1",
            }, []
        if tok == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
            assert args.args.get("locationType") == "availability-zone", args.args
            filters = args.args.get("filters") or []
            wanted = [v for f in filters if f["name"] == "instance-type" for v in f["values"]]
            pairs = [(z, t) for z in ZONES for t in wanted if t not in self.unoffered.get(z, set())]
            return {
                "id": "us-east-1",
                "locations": [z for z, _ in pairs],
                "instanceTypes": [t for _, t in pairs],
                "locationTypes": ["availability-zone"] * len(pairs),
            }, []
        if tok == "aws:eks/getAddonVersion:getAddonVersion":
            name, version = args.args["addonName"], args.args["kubernetesVersion"]
            return {
                "id": name,
                "addonName": name,
                "kubernetesVersion": version,
                "version": f"v-{name}-for-{version}",
            }, []
        if tok == "aws:index/getCallerIdentity:getCallerIdentity":
            return {
                "accountId": ACCOUNT,
                "arn": f"arn:aws:iam::{ACCOUNT}:user/test",
                "userId": "AID",
                "id": ACCOUNT,
            }, []
        if tok == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"}, []
        if tok == "aws:iam/getPolicyDocument:getPolicyDocument":
            return {"json": json.dumps({"Version": "2012-10-17", "Statement": []}), "id": "doc"}, []
        if tok == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
            registry = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com"
            return {"id": registry, "userName": "AWS", "password": "ecr-password",
                    "authorizationToken": "token", "proxyEndpoint": f"https://{registry}"}, []
        if tok == "aws:eks/getClusterAuth:getClusterAuth":
            return {"token": "k8s-aws-v1.token", "name": args.args.get("name"), "id": "auth"}, []
        raise AssertionError(f"unexpected invoke {tok} with {args.args}")


@dataclass
class Registration:
    urn: str
    type: str
    name: str
    parent: str
    custom: bool
    inputs: dict[str, Any]
    protect: bool
    retain_on_delete: bool
    ignore_changes: list[str]
    custom_timeouts: dict[str, str]
    dependencies: list[str]
    provider: str
    state: dict[str, Any] = field(default_factory=dict)
    """What the (mock) provider returned: inputs plus computed outputs such as a build's digest."""
    secret_inputs: set[str] = field(default_factory=set)
    """The top-level inputs the program sent as secrets (``inputs`` shows them unwrapped)."""


@dataclass
class Program:
    resources: list[Registration] = field(default_factory=list)
    result: Any = None
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)

    def of_type(self, typ: str) -> list[Registration]:
        return [r for r in self.resources if r.type == typ]

    def one(self, typ: str, name_part: str = "") -> Registration:
        found = [r for r in self.of_type(typ) if name_part in r.name]
        assert len(found) == 1, f"expected one {typ} named *{name_part}*, found {[r.name for r in found]}"
        return found[0]

    def by_urn(self, urn: str) -> Registration:
        return next(r for r in self.resources if r.urn == urn)

    def outputs_of(self, urn: str) -> dict[str, Any]:
        return self.by_urn(urn).state

    def kubernetes_objects(self) -> list[Registration]:
        return [
            r
            for r in self.resources
            if r.custom
            and r.type.startswith("kubernetes:")
            and not r.type.startswith("kubernetes:helm")
            and r.type != "pulumi:providers:kubernetes"
        ]


class RecordingMonitor(pulumi_mocks.MockMonitor):
    def __init__(self, mocks: Mocks, program: Program) -> None:
        super().__init__(mocks)
        self.program = program

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (gRPC method name)
        response = super().RegisterResource(request)
        timeouts = request.customTimeouts
        self.program.resources.append(
            Registration(
                urn=response.urn,
                type=request.type,
                name=request.name,
                parent=request.parent,
                custom=request.custom,
                inputs=_unwrap(pulumi.runtime.rpc.deserialize_properties(request.object))
                if request.object
                else {},
                protect=request.protect,
                retain_on_delete=request.retainOnDelete,
                ignore_changes=list(request.ignoreChanges),
                custom_timeouts={
                    k: getattr(timeouts, k) for k in ("create", "update", "delete") if getattr(timeouts, k)
                },
                dependencies=list(request.dependencies),
                provider=request.provider,
                state=_unwrap(pulumi.runtime.rpc.deserialize_properties(response.object))
                if response.object
                else {},
                secret_inputs=_secret_keys(pulumi.runtime.rpc.deserialize_properties(request.object))
                if request.object
                else set(),
            )
        )
        return response


def _secret_keys(inputs: dict[str, Any]) -> set[str]:
    sig = pulumi.runtime.rpc._special_sig_key
    return {
        k
        for k, v in inputs.items()
        if isinstance(v, dict) and v.get(sig) == pulumi.runtime.rpc._special_secret_sig
    }


def _unwrap(value: Any) -> Any:
    """Secret values arrive wrapped with Pulumi's signature key; the tests look at the plain value."""
    if isinstance(value, dict):
        if value.get(pulumi.runtime.rpc._special_sig_key) == pulumi.runtime.rpc._special_secret_sig:
            return _unwrap(value["value"])
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def to_config(stack_config: dict[str, Any]) -> dict[str, str]:
    """Stack YAML ``config:`` values as the engine passes them: strings, objects as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in stack_config.items()}


def load_stack(stack: str) -> dict[str, Any]:
    """A committed stack's ``config:``, plus the object store's secret key where the stack has a
    store: stack files hold no secrets, a user sets it with ``pulumi config set --secret --path``."""
    data = yaml.safe_load((STACKS / f"Pulumi.{stack}.yaml").read_text())
    cfg = data["config"]
    store = cfg.get("inferstack:objectStore")
    if isinstance(store, dict) and "secretAccessKey" not in store:
        store["secretAccessKey"] = "test-secret-key"
    return cfg


def secret_keys_of(config: dict[str, Any]) -> list[str]:
    """The keys of ``config`` that ``pulumi config set --secret`` would have set: those holding a
    secret the program declares (``config.SECRET_KEYS``)."""
    from inferstack.components.config import NAMESPACE, SECRET_KEYS

    return sorted({f"{NAMESPACE}:{k.split('.')[0]}" for k in SECRET_KEYS} & set(config))


def run_program(
    fn: Callable[[], Any],
    config: dict[str, Any] | None = None,
    stack: str = "test",
    program: Program | None = None,
    mocks: Mocks | None = None,
    secret_keys: list[str] | None = None,
) -> Program:
    """Build ``fn``'s resources afresh under mocks with ``config`` (``inferstack:<key>`` -> value).
    Pass ``program`` to inspect what was registered when ``fn`` raises, ``mocks`` for other answers
    from the cloud (e.g. ``Mocks(unoffered=...)``). ``secret_keys``: the keys set with ``--secret``
    (default: :func:`secret_keys_of`; ``[]`` for a stack file in plain text)."""
    monitor = RecordingMonitor(mocks or Mocks(), program if program is not None else Program())
    pulumi_settings.ROOT.set(None)  # a fresh root Stack (and its outputs) for every program
    pulumi.runtime.set_mocks(monitor.mocks, project="inferstack", stack=stack, preview=False, monitor=monitor)
    config = config or {}
    pulumi.runtime.set_all_config(
        to_config(config), secret_keys_of(config) if secret_keys is None else secret_keys
    )
    program = monitor.program

    @pulumi.runtime.test
    def body() -> Any:
        program.result = fn()
        # An Output (e.g. ``Output.all(...).apply(check)``) is awaited: a failing check fails the run.
        return program.result if isinstance(program.result, pulumi.Output) else None

    body()
    root = pulumi_settings.get_root_resource()
    outputs = getattr(root, "outputs", {}) or {}

    async def resolve() -> None:
        for k, v in outputs.items():
            out = pulumi.Output.from_input(v)
            program.outputs[k] = await out.future()
            if await out.is_secret():
                program.secret_outputs.add(k)

    from pulumi.runtime.sync_await import _sync_await

    _sync_await(resolve())
    return program


def expect_config_error(cfg: dict[str, Any], key: str, *fragments: str) -> str:
    """Run the stack program on ``cfg`` (as stack ``dev``) and return its ConfigError's message:
    one line, starting ``inferstack:<key>:``, holding every fragment, and raised before any
    resource was declared."""
    import pytest
    from inferstack.components import config
    from inferstack.components.program import main

    program = Program()
    with pytest.raises(config.ConfigError) as info:
        run_program(main, cfg, stack="dev", program=program)
    msg = str(info.value)
    assert msg.startswith(f"inferstack:{key}:"), msg
    assert "\n" not in msg, "one line"
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    declared = [r for r in program.resources if r.type != "pulumi:pulumi:Stack"]
    assert declared == [], f"resources declared before validation failed: {[r.urn for r in declared]}"
    return msg


def resolve(output: Any) -> Any:
    """The value of an Output after a run (mocks resolve everything)."""
    from pulumi.runtime.sync_await import _sync_await

    return _sync_await(pulumi.Output.from_input(output).future())


def find(container: Any, *path: str | int) -> Any:
    for p in path:
        container = container[p]
    return container


def as_manifest(reg: Registration) -> dict[str, Any]:
    """A Kubernetes object as the provider would send it: the inputs, with whole floats (the
    engine's number type) turned back into integers."""

    def fix(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return fix(reg.inputs)


def container(program: Program, name_part: str = "") -> dict[str, Any]:
    dep = program.one("kubernetes:apps/v1:Deployment", name_part)
    return dep.inputs["spec"]["template"]["spec"]["containers"][0]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
