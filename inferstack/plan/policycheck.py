"""Run the policy pack's rules over a plan snapshot, without the Pulumi CLI."""

from __future__ import annotations

import json
from typing import Any

from inferstack.policy import rules


def _tags_from(value: Any) -> dict[str, str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    tags = value.get("tags") if isinstance(value, dict) else None
    return {str(k): str(v) for k, v in (tags or {}).items()}


def snapshot_resources(snapshot: dict[str, Any]) -> list[rules.Resource]:
    providers = {r["urn"]: r["inputs"] for r in snapshot["resources"] if r["type"] == "pulumi:providers:aws"}
    return [
        rules.Resource(
            type=r["type"],
            name=r["name"],
            urn=r["urn"],
            props=r["inputs"],
            property_dependencies=r.get("propertyDependencies", {}),
            provider_props=providers.get(r.get("provider") or "", {}),
        )
        for r in snapshot["resources"]
        if not r.get("read")
    ]


def check_snapshot(snapshot: dict[str, Any]) -> list[rules.Violation]:
    config: dict[str, Any] = {}
    default_tags = _tags_from(snapshot.get("config", {}).get("aws:defaultTags"))
    if default_tags:
        config["defaultTags"] = default_tags
    return rules.evaluate(snapshot_resources(snapshot), config)
