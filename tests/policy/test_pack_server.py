"""The pack as the Pulumi CLI runs it: `python policy/` starts pulumi_policy's analyzer server and
prints its port; the CLI then calls it over gRPC. Here the test plays the CLI's part."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2, json_format, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

POLICY_DIR = Path(__file__).resolve().parents[2] / "policy"


@pytest.fixture(scope="module")
def analyzer() -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    proc = subprocess.Popen(
        [sys.executable, "-u", str(POLICY_DIR)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=POLICY_DIR,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            proc.kill()
            pytest.fail(
                f"the pack did not print a port: {line!r} {proc.stderr.read() if proc.stderr else ''}"
            )
        with grpc.insecure_channel(f"127.0.0.1:{line}") as channel:
            yield analyzer_pb2_grpc.AnalyzerStub(channel)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _struct(props: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    json_format.ParseDict(props, s)
    return s


def test_serves_every_policy(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty())
    assert info.name == "inferstack-ml"
    levels = {p.name: p.enforcementLevel for p in info.policies}
    assert levels["gpu-node-pools-tainted"] == analyzer_pb2.MANDATORY
    assert levels["cost-tags-present"] == analyzer_pb2.ADVISORY
    assert len(levels) == 6


def test_resource_policy_over_grpc(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    def analyze(taints: list) -> list[str]:
        props = {"instanceTypes": ["g6.xlarge"], "amiType": "AL2023_x86_64_NVIDIA", "taints": taints}
        request = analyzer_pb2.AnalyzeRequest(
            type="aws:eks/nodeGroup:NodeGroup",
            name="gpu",
            properties=_struct(props),
            urn="urn:pulumi:dev::inferstack::aws:eks/nodeGroup:NodeGroup::gpu",
        )
        return [d.policyName for d in analyzer.Analyze(request).diagnostics]

    assert analyze([{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}]) == []
    assert analyze([]) == ["gpu-node-pools-tainted"]


def test_stack_policy_over_grpc(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    trust = {
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "sts:AssumeRole",
                "Principal": {"Service": "pods.eks.amazonaws.com"},
            }
        ]
    }
    role_urn = "urn:pulumi:dev::inferstack::aws:iam/role:Role::pod"

    def analyze(action: str) -> list[tuple[str, str]]:
        policy = {"Statement": [{"Effect": "Allow", "Action": action, "Resource": "arn:aws:s3:::m/*"}]}
        role = analyzer_pb2.AnalyzerResource(
            type="aws:iam/role:Role",
            name="pod",
            urn=role_urn,
            properties=_struct(
                {
                    "assumeRolePolicy": json.dumps(trust),
                    "name": "pod-1",
                    "tags": {"project": "inferstack", "stack": "dev"},
                }
            ),
        )
        attached = analyzer_pb2.AnalyzerResource(
            type="aws:iam/rolePolicy:RolePolicy",
            name="read",
            urn="urn:pulumi:dev::inferstack::aws:iam/rolePolicy:RolePolicy::read",
            properties=_struct({"role": "pod-1", "policy": json.dumps(policy)}),
            propertyDependencies={"role": analyzer_pb2.AnalyzerPropertyDependencies(urns=[role_urn])},
        )
        response = analyzer.AnalyzeStack(analyzer_pb2.AnalyzeStackRequest(resources=[role, attached]))
        return [(d.policyName, d.urn) for d in response.diagnostics]

    assert analyze("s3:GetObject") == []
    assert analyze("s3:PutObject") == [
        ("pod-roles-least-privilege", "urn:pulumi:dev::inferstack::aws:iam/rolePolicy:RolePolicy::read")
    ]
