"""The plan snapshot: a deterministic JSON document of everything a stack declares.

Resources are sorted by URN, keys are sorted, values that only the cloud knows are placeholders,
and there are no timestamps: the same program and config always give the same bytes, so the
committed snapshot shows every infrastructure change in a pull request's diff.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from inferstack.errors import InferstackError
from inferstack.plan.engine import ProgramRun, Registration
from inferstack.plan.stackconfig import SECRET_PLACEHOLDER

FORMAT = 1


def _resource_entry(reg: Registration) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "urn": reg.urn,
        "type": reg.type,
        "name": reg.name,
        "parent": reg.parent,
        "custom": reg.custom,
        "inputs": reg.inputs,
    }
    # Options appear only when they differ from Pulumi's defaults, to keep the document short.
    if reg.provider:
        entry["provider"] = reg.provider
    if reg.protect:
        entry["protect"] = True
    if reg.retain_on_delete:
        entry["retainOnDelete"] = True
    if reg.ignore_changes:
        entry["ignoreChanges"] = reg.ignore_changes
    if reg.depends_on:
        entry["dependsOn"] = reg.depends_on
    if reg.property_dependencies:
        entry["propertyDependencies"] = reg.property_dependencies
    if reg.additional_secret_outputs:
        entry["additionalSecretOutputs"] = reg.additional_secret_outputs
    if reg.delete_before_replace:
        entry["deleteBeforeReplace"] = True
    if reg.read:
        entry["read"] = True
    return entry


def build_snapshot(run: ProgramRun) -> dict[str, Any]:
    config = {
        key: (SECRET_PLACEHOLDER if key in run.config.secret_keys else value)
        for key, value in sorted(run.config.values.items())
    }
    return {
        "format": FORMAT,
        "project": run.config.project,
        "stack": run.config.stack,
        "config": config,
        "assumedSecrets": run.assumed_secrets,
        "outputs": run.outputs,
        "providerFunctions": dict(sorted(Counter(run.calls).items())),
        "resources": [_resource_entry(run.resources[urn]) for urn in sorted(run.resources)],
    }


def dumps(snapshot: dict[str, Any]) -> str:
    return json.dumps(snapshot, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def load_snapshot(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InferstackError(f"{path}: not a plan snapshot (invalid JSON: {e})") from None
    if (
        not isinstance(data, dict)
        or data.get("format") != FORMAT
        or not isinstance(data.get("resources"), list)
    ):
        raise InferstackError(f"{path}: not a plan snapshot of format {FORMAT}")
    return data


def resources_by_urn(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["urn"]: r for r in snapshot["resources"]}


def short_type(type_: str) -> str:
    """``aws:s3/bucket:Bucket`` -> ``aws:s3:Bucket``;
    ``kubernetes:apps/v1:Deployment`` -> ``k8s:Deployment``."""
    parts = type_.split(":")
    if len(parts) != 3:
        return type_
    package, module, kind = parts
    if package == "kubernetes":
        return f"k8s:{kind}"
    return f"{package}:{module.split('/')[0]}:{kind}"
