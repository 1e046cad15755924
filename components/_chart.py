"""What every Helm-installed add-on checks before it declares its release, and the release itself."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Protocol

import pulumi
import pulumi_kubernetes as k8s

#: seconds Helm waits for a release's resources to be ready
TIMEOUT_S = 600


def check_version(version: str, where: str) -> None:
    """A pinned ``x.y.z`` chart version; ``ValueError`` naming ``<where>.version``."""
    if not re.match(r"^[0-9]+\.[0-9]+\.[0-9]+$", version):
        raise ValueError(f"{where}.version: {version!r}; expected a pinned x.y.z")


def check_chart_args(version: str, namespace: str, where: str) -> None:
    """A pinned ``x.y.z`` chart version and a DNS-label namespace; ``ValueError`` naming the field."""
    check_version(version, where)
    if not re.match(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", namespace):
        raise ValueError(f"{where}.namespace: {namespace!r}; expected a DNS label")


class ChartArgs(Protocol):
    """The arguments every add-on's release takes: its chart's pinned version and its namespace."""

    version: str
    namespace: str


def helm_release(
    parent: pulumi.Resource,
    name: str,
    chart: str,
    repository: str,
    args: ChartArgs,
    values: Mapping[str, Any],
    *,
    create_namespace: bool = True,
) -> k8s.helm.v3.Release:
    """The Helm release ``<name>-release`` of ``chart`` (released under the chart's own name) from the
    chart repository URL ``repository``, at ``args.version`` in ``args.namespace`` (created unless
    ``create_namespace`` is false), with ``values``, a child of ``parent``."""
    extra: dict[str, Any] = {"create_namespace": True} if create_namespace else {}
    return k8s.helm.v3.Release(
        f"{name}-release",
        name=chart,
        chart=chart,
        version=args.version,
        namespace=args.namespace,
        repository_opts={"repo": repository},
        values=values,
        timeout=TIMEOUT_S,
        opts=pulumi.ResourceOptions(parent=parent),
        **extra,
    )


def release_namespace(release: k8s.helm.v3.Release, namespace: str) -> pulumi.Output[str]:
    """The release's namespace once known, ``namespace`` (the one asked for) before."""
    return release.namespace.apply(lambda ns: ns or namespace)
