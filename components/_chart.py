"""What every Helm-installed add-on checks before it declares its release."""

from __future__ import annotations

import re


def check_chart_args(version: str, namespace: str, where: str) -> None:
    """A pinned ``x.y.z`` chart version and a DNS-label namespace; ``ValueError`` naming the field."""
    if not re.match(r"^[0-9]+\.[0-9]+\.[0-9]+$", version):
        raise ValueError(f"{where}.version: {version!r}; expected a pinned x.y.z")
    if not re.match(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", namespace):
        raise ValueError(f"{where}.namespace: {namespace!r}; expected a DNS label")
