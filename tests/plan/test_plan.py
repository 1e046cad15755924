"""inferstack plan on a stand-in program: snapshot, determinism, diff, --check, summary, errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferstack.cli import app
from inferstack.plan.cost import price_table

runner = CliRunner()


def _plan(project, *extra: str):
    return runner.invoke(app, project.args(*extra))


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_two_runs_write_identical_bytes(project) -> None:
    a, b = project.root / "a", project.root / "b"
    assert _plan(project, "--stack", "dev", "--out", str(a)).exit_code == 0
    assert _plan(project, "--stack", "dev", "--out", str(b)).exit_code == 0
    first, second = _files(a), _files(b)
    assert set(first) == {
        "dev.json",
        "dev.md",
        "dev/k8s/deployment-model.yaml",
        "dev/k8s/namespace-inference.yaml",
        "dev/k8s/service-model.yaml",
    }
    assert first == second


def test_snapshot_records_types_parents_options_secrets_assets(project) -> None:
    out = project.root / "plan"
    result = _plan(project, "--stack", "dev", "--stack", "prod")
    assert result.exit_code == 0, result.output
    dev = json.loads((out / "dev.json").read_text())
    prod = json.loads((out / "prod.json").read_text())
    by_name = {r["name"]: r for r in dev["resources"]}

    component = by_name["inferstack"]
    assert component["type"] == "inferstack:test:Stand" and component["custom"] is False
    bucket = by_name["inferstack-models"]
    assert bucket["parent"] == component["urn"]
    assert bucket["inputs"]["forceDestroy"] is True and "protect" not in bucket
    # Placeholders for what the cloud computes flow into dependents.
    assert by_name["inferstack-models-pab"]["inputs"]["bucket"] == "<bucket of inferstack-models>"
    assert by_name["inferstack-pod-read"]["inputs"]["role"] == "<name of inferstack-pod>"
    assert "<arn of inferstack-models>/models/*" in by_name["inferstack-pod-read"]["inputs"]["policy"]
    # Secrets never appear, encrypted or not.
    env = by_name["inferstack-deploy"]["inputs"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "AUTH_TOKEN", "value": "<secret>"} in env
    assert dev["config"]["inferstack:authToken"] == "<secret>"
    assert "AAAAencrypted" not in (out / "dev.json").read_text()
    # Provider functions were answered deterministically and their answers used.
    assert {"name": "ZONE", "value": "us-east-1a"} in env
    assert dev["providerFunctions"]["aws:index/getAvailabilityZones:getAvailabilityZones"] == 1
    # Assets are a path and the content hash.
    source = by_name["inferstack-model-file"]["inputs"]["source"]
    assert (
        source["sha256"]
        == hashlib.sha256(Path(__file__).with_name("standin_program.py").read_bytes()).hexdigest()
    )
    assert dev["outputs"] == {"bucket": "<bucket of inferstack-models>", "endpoint": "http://model.inference"}

    # Two stacks planned in one process do not leak into each other.
    prod_bucket = {r["name"]: r for r in prod["resources"]}["inferstack-models"]
    assert prod_bucket["protect"] is True and prod_bucket["retainOnDelete"] is True
    assert all(r["urn"].startswith("urn:pulumi:prod::inferstack::") for r in prod["resources"])
    assert all(r["urn"].startswith("urn:pulumi:dev::inferstack::") for r in dev["resources"])
    assert prod["config"]["inferstack:prod"] == "true" and "inferstack:prod" not in dev["config"]


def test_summary_has_counts_capacity_cost_endpoints_and_tree(project) -> None:
    project.set_stack(
        "dev", serviceType="LoadBalancer", gpu={"instanceTypes": ["g4dn.xlarge"], "min": 1, "max": 3}
    )
    assert _plan(project, "--stack", "dev", "--no-policy").exit_code == 0
    md = (project.root / "plan" / "dev.md").read_text()
    prices = price_table()
    g4dn = prices["instances"]["g4dn.xlarge"]["usd_per_hour"]
    # the stand-in's cluster runs 1.33 with no upgrade policy: EKS's default (EXTENDED), and 1.33
    # left standard support on 2026-07-29, before the table's date
    eks = prices["eks_extended_support_usd_per_hour"]
    nlb = prices["nlb_usd_per_hour"]
    assert "| `kubernetes:core/v1:Namespace` | 1 |" in md
    # one replica of one GPU, a pool of 1..3 nodes
    assert "GPUs: **1** at rest, **1** at max scale, **3** with every GPU node group at its max size." in md
    assert f"| **total** | **${g4dn + eks + nlb:,.2f}** | **${g4dn + eks + nlb:,.2f}** |" in md
    ceiling = f"${3 * g4dn + eks + nlb:,.2f}"
    assert f"Ceiling, every node group at its max size of its dearest instance type: {ceiling}." in md
    assert "upgrade policy EXTENDED, standard support ends 2026-07-29; extended-support rate" in md
    assert prices["as_of"] in md and "Estimates" in md
    assert "Kubernetes Service `inference/model` is internet-facing" in md
    assert "Deleted with their contents (forceDestroy): `inferstack-models`" in md
    assert "```mermaid" in md and 'c0["inferstack<br/><i>inferstack:test:Stand</i>"]' in md
    assert "root --> c0" in md
    assert "validated against the schemas of Kubernetes 1.33" in md


def test_diff_shows_added_removed_and_changed_fields(project) -> None:
    project.set_stack("dev", debugNamespace=True)
    assert _plan(project, "--stack", "dev").exit_code == 0
    project.set_stack("dev", gpu={"instanceTypes": ["g4dn.xlarge"], "min": 0, "max": 5})
    committed = (project.root / "plan" / "dev.json").read_bytes()

    result = _plan(project, "--stack", "dev", "--diff")
    assert result.exit_code == 0, result.output
    text = result.output
    assert "stack dev: 0 to add, 1 to change, 1 to remove" in text
    assert "- k8s:Namespace  inferstack-debug" in text
    assert "~ aws:eks:NodeGroup  inferstack-gpu" in text
    assert "inputs.scalingConfig.maxSize: 2 -> 5" in text
    assert '~ stack config\n    inferstack:debugNamespace: "true" -> (absent)' in text
    assert (project.root / "plan" / "dev.json").read_bytes() == committed  # --diff writes nothing

    project.set_stack("dev", debugNamespace=True)
    assert (
        "stack dev: no changes against the committed plan"
        in _plan(project, "--stack", "dev", "--diff").output
    )


def test_check_exit_codes(project) -> None:
    assert _plan(project, "--stack", "dev").exit_code == 0
    ok = _plan(project, "--stack", "dev", "--check")
    assert ok.exit_code == 0 and "is up to date" in ok.output

    project.set_stack("dev", servicePort=8080)
    stale = _plan(project, "--stack", "dev", "--check")
    assert stale.exit_code == 1
    assert "run `inferstack plan --stack dev`" in stale.output

    project.set_stack("dev")
    leftover = project.root / "plan" / "dev" / "k8s" / "configmap-old.yaml"
    leftover.write_text("kind: ConfigMap\n")
    assert _plan(project, "--stack", "dev", "--check").exit_code == 1
    assert _plan(project, "--stack", "dev").exit_code == 0
    assert not leftover.exists()

    # the plan of a stack whose Pulumi.<stack>.yaml was removed
    orphan = project.root / "plan" / "staging.json"
    orphan.write_bytes((project.root / "plan" / "dev.json").read_bytes())
    removed = _plan(project, "--stack", "dev", "--check")
    assert removed.exit_code == 1
    expected = "plan/staging.json is the plan of stack 'staging', which has no Pulumi.staging.yaml"
    assert expected in removed.output
    orphan.unlink()
    assert _plan(project, "--stack", "dev", "--check").exit_code == 0


def test_policy_violation_fails_the_plan(project) -> None:
    project.set_stack("dev", gpuTaint=False)
    result = _plan(project, "--stack", "dev")
    assert result.exit_code == 1
    assert "gpu-node-pools-tainted" in result.output and "inferstack-gpu" in result.output
    assert "gpu-node-pools-tainted" in (project.root / "plan" / "dev.md").read_text()
    assert _plan(project, "--stack", "dev", "--no-policy").exit_code == 0


@pytest.mark.parametrize(
    ("stack_config", "stack", "message"),
    [
        ({}, "nope", "no stack 'nope'"),
        ({"fail": "yes"}, "dev", "inferstack:fail: 'yes'; expected nothing"),
        ({"servicePort": "eighty"}, "dev", "service-model.yaml: 'eighty' is not of type 'integer'"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(project, stack_config, stack, message) -> None:
    project.set_stack("dev", **stack_config)
    result = _plan(project, "--stack", stack)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (project.root / "plan").exists()


def test_missing_secret_is_stood_in_and_named(project) -> None:
    project.set_stack("dev", authToken=None)
    assert _plan(project, "--stack", "dev").exit_code == 0
    snapshot = json.loads((project.root / "plan" / "dev.json").read_text())
    assert snapshot["assumedSecrets"] == ["inferstack:authToken"]
    assert "`inferstack:authToken`" in (project.root / "plan" / "dev.md").read_text()
