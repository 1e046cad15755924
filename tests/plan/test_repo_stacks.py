"""The repo's own stacks: their committed plans are current, their manifests match the Kubernetes
schemas of each stack's cluster version, and they pass the policy pack."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from inferstack.cli import app
from inferstack.plan.k8s import cluster_version, is_addon_resource
from inferstack.plan.policycheck import check_snapshot

ROOT = Path(__file__).resolve().parents[2]
STACKS = sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))


def test_every_stack_has_a_committed_plan() -> None:
    assert STACKS, "no stacks/Pulumi.<stack>.yaml"
    for stack in STACKS:
        assert (ROOT / "plan" / f"{stack}.json").is_file(), f"run `inferstack plan --stack {stack}`"


def test_committed_plans_are_current() -> None:
    args = ["plan", "--check", "--project-dir", str(ROOT)]
    for stack in STACKS:
        args += ["--stack", stack]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("is up to date") == len(STACKS)


@pytest.mark.parametrize("stack", STACKS)
def test_manifests_match_the_cluster_schemas(stack: str) -> None:
    snapshot = json.loads((ROOT / "plan" / f"{stack}.json").read_text())
    version, _ = cluster_version(snapshot)
    assert version, f"stack {stack} declares no Kubernetes version"
    manifests = sorted((ROOT / "plan" / stack / "k8s").glob("*.yaml"))
    assert manifests
    kinds = set()
    for path in manifests:
        body = yaml.safe_load(path.read_text())
        if is_addon_resource(body):
            continue  # KEDA's custom resources: no Kubernetes schema; test_autoscaling.py checks them
        kubernetes_validate.validate(body, version, strict=True)
        kinds.add(body["kind"])
    assert {"Deployment", "Service"} <= kinds


@pytest.mark.parametrize("stack", STACKS)
def test_stack_passes_the_mandatory_policies(stack: str) -> None:
    snapshot = json.loads((ROOT / "plan" / f"{stack}.json").read_text())
    mandatory = [v for v in check_snapshot(snapshot) if v.mandatory]
    assert mandatory == []


def test_only_the_add_ons_custom_resources_skip_the_schema_check() -> None:
    from inferstack.plan.k8s import Manifest, validate_manifests

    def manifest(api_version: str, kind: str, spec: dict) -> Manifest:
        body = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}, "spec": spec}
        return Manifest(filename=f"{kind.lower()}-x.yaml", urn="urn:x", body=body)

    keda = manifest("keda.sh/v1alpha1", "ScaledObject", {"scaleTargetRef": {"name": "x"}})
    unknown = manifest("example.com/v1", "Widget", {})
    broken = manifest("apps/v1", "Deployment", {"replicas": "many"})
    problems = validate_manifests([keda, unknown, broken], "1.34")
    assert len(problems) == 2, problems
    assert "no schema for example.com/v1/Widget" in problems[0] and "deployment-x.yaml" in problems[1]
