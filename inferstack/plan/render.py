"""From a stack name to the files of its plan: ``<stack>.json``, ``<stack>.md`` and
``<stack>/k8s/*.yaml``, all rendered in memory first so that nothing half-written lands on disk."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferstack.policy.rules import Violation

from inferstack.errors import InferstackError
from inferstack.plan.cost import estimate
from inferstack.plan.engine import DEFAULT_PROGRAM, load_program, run_program
from inferstack.plan.k8s import Manifest, cluster_version, render_manifests, validate_manifests
from inferstack.plan.policycheck import check_snapshot
from inferstack.plan.snapshot import build_snapshot, dumps
from inferstack.plan.stackconfig import load_stack_config
from inferstack.plan.summary import render_summary


@dataclass
class Plan:
    stack: str
    snapshot: dict[str, Any]
    manifests: list[Manifest]
    k8s_version: str | None
    violations: list[Violation]
    files: dict[str, str] = field(default_factory=dict)
    """Path relative to the output folder -> content."""

    @property
    def mandatory_violations(self) -> list[Violation]:
        return [v for v in self.violations if v.mandatory]


def make_plan(stack: str, root: Path, program: str = DEFAULT_PROGRAM) -> Plan:
    config = load_stack_config(root, stack)
    run = run_program(load_program(program), config)
    snapshot = build_snapshot(run)
    manifests = render_manifests(snapshot)
    version, source = cluster_version(snapshot)
    if manifests:
        problems = validate_manifests(manifests, version or _latest_schema_version())
        if problems:
            raise InferstackError(
                f"stack {stack}: {len(problems)} Kubernetes manifest(s) fail schema validation "
                f"for {version or 'the latest known version'}:\n  " + "\n  ".join(problems)
            )
    violations = check_snapshot(snapshot)
    plan = Plan(
        stack=stack, snapshot=snapshot, manifests=manifests, k8s_version=version, violations=violations
    )
    plan.files[f"{stack}.json"] = dumps(snapshot)
    plan.files[f"{stack}.md"] = render_summary(
        snapshot, estimate(snapshot), manifests, version, source, violations
    )
    for m in manifests:
        plan.files[f"{stack}/k8s/{m.filename}"] = m.text()
    return plan


def _latest_schema_version() -> str:
    import kubernetes_validate

    return ".".join(kubernetes_validate.latest_version().split(".")[:2])


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _k8s_folder(out: Path, stack: str) -> Path:
    return out / stack / "k8s"


def write_plan(plan: Plan, out: Path) -> list[Path]:
    written = []
    for rel, text in sorted(plan.files.items()):
        _atomic_write(out / rel, text)
        written.append(out / rel)
    folder = _k8s_folder(out, plan.stack)
    if folder.is_dir():
        for stale in folder.glob("*.yaml"):
            if f"{plan.stack}/k8s/{stale.name}" not in plan.files:
                stale.unlink()
    return written


def stale_files(plan: Plan, out: Path) -> list[str]:
    """Files under ``out`` that differ from this plan (missing, changed or left over)."""
    stale = []
    for rel, text in sorted(plan.files.items()):
        path = out / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(rel)
    folder = _k8s_folder(out, plan.stack)
    if folder.is_dir():
        stale += sorted(
            f"{plan.stack}/k8s/{p.name}"
            for p in folder.glob("*.yaml")
            if f"{plan.stack}/k8s/{p.name}" not in plan.files
        )
    return stale
