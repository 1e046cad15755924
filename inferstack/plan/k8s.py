"""The Kubernetes objects a stack declares, as manifests, checked against the cluster's schemas."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from inferstack.errors import InferstackError


@dataclass(frozen=True)
class Manifest:
    filename: str
    urn: str
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))

    @property
    def name(self) -> str:
        return str((self.body.get("metadata") or {}).get("name", ""))

    @property
    def namespace(self) -> str | None:
        ns = (self.body.get("metadata") or {}).get("namespace")
        return str(ns) if ns else None

    def text(self) -> str:
        header = f"# {self.urn}\n# Rendered by `inferstack plan`; do not edit.\n"
        return header + yaml.safe_dump(self.body, sort_keys=True, default_flow_style=False, width=100)


def _is_object(resource: dict[str, Any]) -> bool:
    inputs = resource.get("inputs") or {}
    return (
        resource["type"].startswith("kubernetes:")
        and resource.get("custom", True)
        and not resource.get("read")
        and isinstance(inputs.get("apiVersion"), str)
        and isinstance(inputs.get("kind"), str)
    )


def render_manifests(snapshot: dict[str, Any]) -> list[Manifest]:
    """One manifest per declared Kubernetes object. An object without ``metadata.name`` is shown
    under its Pulumi name (the provider would add a random suffix)."""
    found: list[tuple[str, dict[str, Any]]] = []
    for resource in snapshot["resources"]:
        if not _is_object(resource):
            continue
        body = {k: v for k, v in resource["inputs"].items() if not k.startswith("__")}
        metadata = dict(body.get("metadata") or {})
        metadata.setdefault("name", resource["name"])
        body["metadata"] = metadata
        found.append((resource["urn"], body))

    def base(body: dict[str, Any]) -> str:
        return f"{body['kind'].lower()}-{body['metadata']['name']}"

    counts: dict[str, int] = {}
    for _, body in found:
        counts[base(body)] = counts.get(base(body), 0) + 1
    manifests = []
    for urn, body in found:
        stem = base(body)
        if counts[stem] > 1:
            stem = f"{body['metadata'].get('namespace', 'cluster')}-{stem}"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
        manifests.append(Manifest(filename=f"{safe}.yaml", urn=urn, body=body))
    return sorted(manifests, key=lambda m: m.filename)


def cluster_version(snapshot: dict[str, Any]) -> tuple[str | None, str]:
    """The Kubernetes version the stack's cluster runs, and where that was found."""
    for resource in snapshot["resources"]:
        if resource["type"] == "aws:eks/cluster:Cluster" and resource["inputs"].get("version"):
            return str(resource["inputs"]["version"]), f"EKS cluster {resource['name']}"
    for key, value in sorted(snapshot.get("config", {}).items()):
        short = key.split(":", 1)[-1].lower()
        if short in ("kubernetesversion", "clusterversion", "k8sversion") and value:
            return str(value), f"config {key}"
    return None, "not declared"


#: API groups of the custom resources the stack declares whose CRDs its own add-ons install (KEDA and
#: its HTTP add-on): the Kubernetes schemas do not cover them; the component tests check their fields.
ADDON_API_GROUPS = ("keda.sh", "http.keda.sh")


def is_addon_resource(body: dict[str, Any]) -> bool:
    return str(body.get("apiVersion", "")).split("/")[0] in ADDON_API_GROUPS


def validate_manifests(manifests: list[Manifest], version: str) -> list[str]:
    """Problems found by validating each manifest (strict: unknown fields are errors). Custom
    resources of the add-ons' API groups (``ADDON_API_GROUPS``) are not schema-checked here."""
    import kubernetes_validate
    from kubernetes_validate import utils

    known = sorted(
        {utils.major_minor(v) for v in utils.all_versions()}, key=lambda v: tuple(map(int, v.split(".")))
    )
    wanted = ".".join(version.split(".")[:2])
    if wanted not in known:
        raise InferstackError(
            f"no Kubernetes schemas for version {version} (kubernetes-validate has {known[0]} to {known[-1]})"
        )
    problems = []
    for m in manifests:
        if is_addon_resource(m.body):
            continue
        try:
            kubernetes_validate.validate(m.body, wanted, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{m.filename}: no schema for {m.body.get('apiVersion')}/{m.kind} in {wanted}")
        except kubernetes_validate.ValidationError as e:
            where = "/".join(str(p) for p in getattr(e, "path", []) or [])
            message = getattr(e, "message", str(e)).splitlines()[0]
            problems.append(f"{m.filename}: {message}" + (f" (at {where})" if where else ""))
    return problems


def write_manifests(manifests: list[Manifest], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.yaml"):
        if stale.name not in {m.filename for m in manifests}:
            stale.unlink()
    for m in manifests:
        (folder / m.filename).write_text(m.text(), encoding="utf-8")
