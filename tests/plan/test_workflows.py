"""The GitHub workflows for the project's users parse and have the jobs they promise."""

from __future__ import annotations

from pathlib import Path

import yaml

WORKFLOWS = Path(__file__).resolve().parents[2] / ".github" / "workflows"


def _load(name: str) -> dict:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def _steps(job: dict) -> list[dict]:
    return job["steps"]


def _uses(job: dict, action: str) -> list[dict]:
    return [s for s in _steps(job) if str(s.get("uses", "")).startswith(action)]


def test_pull_request_runs_tests_plan_check_and_preview_comment() -> None:
    doc = _load("pull-request.yml")
    assert "pull_request" in doc["on"]
    jobs = doc["jobs"]
    assert any("make test" in s.get("run", "") for s in _steps(jobs["test"]))
    assert any("make plan-check" in s.get("run", "") for s in _steps(jobs["plan-check"]))
    assert any("make scan" in s.get("run", "") for s in _steps(jobs["scan"]))
    (preview,) = _uses(jobs["preview"], "pulumi/actions")
    assert preview["with"]["command"] == "preview"
    assert preview["with"]["comment-on-pr"] is True and preview["with"]["diff"] is True
    # Without credentials the preview steps are skipped, not failed.
    assert "PULUMI_ACCESS_TOKEN != ''" in preview["if"]
    assert any("skipped" in s.get("run", "") and "== ''" in s.get("if", "") for s in _steps(jobs["preview"]))
    assert jobs["preview"]["permissions"]["pull-requests"] == "write"


def test_main_updates_dev() -> None:
    doc = _load("deploy-dev.yml")
    assert doc["on"]["push"]["branches"] == ["main"]
    (job,) = doc["jobs"].values()
    (up,) = _uses(job, "pulumi/actions")
    assert up["with"] == {"command": "up", "stack-name": "dev", "policyPacks": "policy"}


def test_manual_dispatch_for_prod_and_destroy_with_typed_name() -> None:
    doc = _load("manual.yml")
    inputs = doc["on"]["workflow_dispatch"]["inputs"]
    assert "prod" in inputs["stack"]["options"] and set(inputs["action"]["options"]) == {"up", "destroy"}
    jobs = doc["jobs"]
    (up,) = _uses(jobs["up"], "pulumi/actions")
    assert up["with"]["command"] == "up" and up["with"]["stack-name"] == "${{ inputs.stack }}"
    destroy = jobs["destroy"]
    assert destroy["if"] == "inputs.action == 'destroy'"
    guard = _steps(destroy)[0]
    assert guard["if"] == "inputs.stack == 'prod' && inputs.confirm != 'prod'" and "exit 1" in guard["run"]
    assert any(
        "inferstack destroy" in s.get("run", "") and "--allow-prod" in s["run"] for s in _steps(destroy)
    )


def test_release_publishes_both_runtime_images_on_a_tag_and_records_their_digests() -> None:
    doc = _load("release.yml")
    assert doc["on"]["push"]["tags"], "releases run on a tag"
    job = doc["jobs"]["image"]
    assert job["permissions"]["packages"] == "write"
    built = {m["variant"]: m["dockerfile"] for m in job["strategy"]["matrix"]["include"]}
    assert built == {"gpu": "runtime/Dockerfile", "cpu": "runtime/Dockerfile.cpu"}
    for dockerfile in built.values():
        assert (WORKFLOWS.parents[1] / dockerfile).is_file(), dockerfile
    (build,) = _uses(job, "docker/build-push-action")
    assert build["with"]["push"] is True and build["with"]["file"] == "${{ matrix.dockerfile }}"
    assert "${{ matrix.variant }}" in build["with"]["tags"]
    # OCI repository names are lowercase and GitHub owners need not be: every image reference is
    # built from the lowercased owner, none from the raw one
    (name,) = [s for s in _steps(job) if s.get("id") == "image"]
    assert "${OWNER,,}" in name["run"] and name["env"]["OWNER"] == "${{ github.repository_owner }}"
    images = [build["with"]["tags"], *(str(s.get("env", {})) for s in _steps(job) if s is not name)]
    assert all("github.repository_owner" not in i for i in images), images
    assert build["with"]["tags"].startswith("${{ steps.image.outputs.name }}:")
    (record,) = [s for s in _steps(job) if "steps.build.outputs.digest" in str(s.get("env", {}))]
    assert "@${DIGEST}" in record["run"] and "GITHUB_STEP_SUMMARY" in record["run"]
    (upload,) = _uses(job, "actions/upload-artifact")
    assert upload["with"]["path"] == "digest-${{ matrix.variant }}.txt"
