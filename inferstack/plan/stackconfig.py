"""Read a stack's configuration the way the Pulumi CLI hands it to a program.

``stacks/Pulumi.<stack>.yaml`` holds a ``config:`` map. Keys without a namespace belong to the
project (``gpuInstanceTypes`` -> ``inferstack:gpuInstanceTypes``). Pulumi passes every value to the
program as a string: numbers and booleans as their text, objects and lists as JSON. Encrypted
values (``secure: v1:...``) cannot be read offline; they become the placeholder ``<secret>`` and are
marked secret, so the program sees a secret of the right shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inferstack.errors import InferstackError

SECRET_PLACEHOLDER = "<secret>"


@dataclass(frozen=True)
class StackConfig:
    project: str
    stack: str
    root: Path
    """The project folder (where ``Pulumi.yaml`` is)."""
    values: dict[str, str] = field(default_factory=dict)
    """Fully qualified key (``project:key`` or ``aws:region``) -> value as Pulumi passes it."""
    secret_keys: list[str] = field(default_factory=list)


def find_project_root(start: Path) -> Path:
    """The nearest folder at or above ``start`` that has a ``Pulumi.yaml``."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / "Pulumi.yaml").is_file():
            return folder
    raise InferstackError(f"no Pulumi.yaml in {start} or any folder above it")


#: a stack file is a few KB of config; more is refused unread
MAX_FILE_BYTES = 1 << 20


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases (``&a``, ``*a``, ``<<: *a``): a few KB of
    nested aliases expand into gigabytes (the "billion laughs"), and stack files never need them
    (``pulumi config set`` writes plain maps)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.YAMLError(
                f"line {event.start_mark.line + 1}: YAML anchors and aliases (&, *) are not allowed in "
                "Pulumi files; write the values out"
            )
        return super().compose_node(parent, index)


def _read_yaml(path: Path) -> Any:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise InferstackError(f"{path}: cannot be read ({e.strerror or e})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise InferstackError(f"{path}: larger than {MAX_FILE_BYTES} bytes; not a Pulumi config file")
    try:
        return yaml.load(raw.decode("utf-8"), Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError as e:
        raise InferstackError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        raise InferstackError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise InferstackError(f"{path}: nested too deeply; not a Pulumi config file") from None


def _as_config_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _contains_secure(value: Any) -> bool:
    if isinstance(value, dict):
        if set(value) == {"secure"}:
            return True
        return any(_contains_secure(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_secure(v) for v in value)
    return False


def _blank_secure(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"secure"}:
            return SECRET_PLACEHOLDER
        return {k: _blank_secure(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_blank_secure(v) for v in value]
    return value


def _config_dir(root: Path, project_doc: Any) -> Path:
    where = project_doc.get("stackConfigDir") if isinstance(project_doc, dict) else None
    return root / str(where or ".")


def _stacks_in(config_dir: Path) -> list[str]:
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in config_dir.glob("Pulumi.*.yaml"))


def stack_names(root: Path) -> list[str]:
    """The stacks the project has: ``Pulumi.<name>.yaml`` files in its stackConfigDir."""
    return _stacks_in(_config_dir(root, _read_yaml(root / "Pulumi.yaml")))


def load_stack_config(root: Path, stack: str) -> StackConfig:
    """Read ``Pulumi.yaml`` (project name, config defaults, stackConfigDir) and the stack's file."""
    project_file = root / "Pulumi.yaml"
    project_doc = _read_yaml(project_file) or {}
    if not isinstance(project_doc, dict) or not isinstance(project_doc.get("name"), str):
        raise InferstackError(f"{project_file}: needs a `name:`")
    project = project_doc["name"]
    config_dir = _config_dir(root, project_doc)
    stack_file = config_dir / f"Pulumi.{stack}.yaml"
    if not stack_file.is_file():
        known = _stacks_in(config_dir)
        raise InferstackError(
            f"no stack {stack!r}: {stack_file.relative_to(root)} does not exist "
            f"(stacks: {', '.join(known) or 'none'})"
        )

    def qualify(key: str) -> str:
        return key if ":" in key else f"{project}:{key}"

    raw: dict[str, Any] = {}
    defaults = project_doc.get("config") or {}
    if not isinstance(defaults, dict):
        raise InferstackError(f"{project_file}: `config:` must be a map")
    for key, spec in defaults.items():
        if isinstance(spec, dict) and ("default" in spec or "value" in spec):
            raw[qualify(key)] = spec.get("value", spec.get("default"))
        elif not isinstance(spec, dict):
            raw[qualify(key)] = spec

    stack_doc = _read_yaml(stack_file) or {}
    if not isinstance(stack_doc, dict):
        raise InferstackError(f"{stack_file.relative_to(root)}: must be a map with a `config:` key")
    stack_values = stack_doc.get("config") or {}
    if not isinstance(stack_values, dict):
        raise InferstackError(f"{stack_file.relative_to(root)}: `config:` must be a map")
    for key, value in stack_values.items():
        raw[qualify(str(key))] = value

    values: dict[str, str] = {}
    secrets: list[str] = []
    for key, value in sorted(raw.items()):
        if _contains_secure(value):
            secrets.append(key)
            value = _blank_secure(value)
        values[key] = _as_config_text(value)
    return StackConfig(project=project, stack=stack, root=root, values=values, secret_keys=secrets)
