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
