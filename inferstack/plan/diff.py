"""A readable diff between two plan snapshots: which resources were added, removed or changed,
then which fields changed, old value -> new value."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from inferstack.plan.snapshot import resources_by_urn, short_type

_MISSING = object()


@dataclass
class FieldChange:
    path: str
    old: Any
    new: Any


@dataclass
class ResourceChange:
    urn: str
    type: str
    name: str
    fields: list[FieldChange] = field(default_factory=list)


@dataclass
class PlanDiff:
    added: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    changed: list[ResourceChange] = field(default_factory=list)
    config: list[FieldChange] = field(default_factory=list)
    outputs: list[FieldChange] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.config or self.outputs)


def _as_json_document(value: Any) -> Any:
    """Policies and other documents travel as JSON strings; diff inside them when both parse."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return _MISSING
    return _MISSING


def _walk(path: str, old: Any, new: Any, changes: list[FieldChange]) -> None:
    if old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if "." in str(key) or "/" in str(key):
                sub = f'{path}["{key}"]'
            else:
                sub = f"{path}.{key}" if path else str(key)
            _walk(sub, old.get(key, _MISSING), new.get(key, _MISSING), changes)
        return
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _walk(f"{path}[{i}]", a, b, changes)
        return
    old_doc, new_doc = _as_json_document(old), _as_json_document(new)
    if old_doc is not _MISSING and new_doc is not _MISSING:
        _walk(f"{path}(json)", old_doc, new_doc, changes)
        return
    changes.append(FieldChange(path, old, new))


def diff_snapshots(old: dict[str, Any], new: dict[str, Any]) -> PlanDiff:
    result = PlanDiff()
    before, after = resources_by_urn(old), resources_by_urn(new)
    result.added = [after[u] for u in sorted(set(after) - set(before))]
    result.removed = [before[u] for u in sorted(set(before) - set(after))]
    for urn in sorted(set(before) & set(after)):
        a, b = before[urn], after[urn]
        if a == b:
            continue
        change = ResourceChange(urn=urn, type=b["type"], name=b["name"])
        ignore = {"urn", "type", "name"}
        _walk(
            "",
            {k: v for k, v in a.items() if k not in ignore},
            {k: v for k, v in b.items() if k not in ignore},
            change.fields,
        )
        result.changed.append(change)
    _walk("", old.get("config", {}), new.get("config", {}), result.config)
    _walk("", old.get("outputs", {}), new.get("outputs", {}), result.outputs)
    return result


def _show(value: Any) -> str:
    if value is _MISSING:
        return "(absent)"
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= 200 else text[:197] + "..."


def render_diff(diff: PlanDiff, stack: str) -> str:
    if diff.empty:
        return f"stack {stack}: no changes against the committed plan\n"
    lines = [
        f"stack {stack}: {len(diff.added)} to add, {len(diff.changed)} to change, "
        f"{len(diff.removed)} to remove",
        "",
    ]
    for r in diff.added:
        lines.append(f"+ {short_type(r['type'])}  {r['name']}")
    for c in diff.changed:
        lines.append(f"~ {short_type(c.type)}  {c.name}")
    for r in diff.removed:
        lines.append(f"- {short_type(r['type'])}  {r['name']}")
    if diff.changed or diff.config or diff.outputs:
        lines += ["", "changed fields:"]
    for c in diff.changed:
        lines.append(f"~ {short_type(c.type)}  {c.name}")
        lines += [f"    {f.path}: {_show(f.old)} -> {_show(f.new)}" for f in c.fields]
    if diff.config:
        lines.append("~ stack config")
        lines += [f"    {f.path}: {_show(f.old)} -> {_show(f.new)}" for f in diff.config]
    if diff.outputs:
        lines.append("~ stack outputs")
        lines += [f"    {f.path}: {_show(f.old)} -> {_show(f.new)}" for f in diff.outputs]
    return "\n".join(lines) + "\n"
