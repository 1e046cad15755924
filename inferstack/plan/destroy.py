"""What ``inferstack destroy`` would delete and keep, read from the stack's plan snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inferstack.plan.snapshot import short_type

PROD_NAMES = ("prod", "production")


@dataclass
class Teardown:
    stack: str
    deleted: list[dict[str, Any]]
    """Deleted from the cloud."""
    retained: list[dict[str, Any]]
    """Removed from the stack but left in the cloud (retainOnDelete)."""
    protected: list[dict[str, Any]]
    """Skipped: the destroy runs with --exclude-protected and leaves them (and what they need) alone."""
    emptied: list[dict[str, Any]]
    """Buckets deleted together with their contents (forceDestroy)."""

    def command(self) -> list[str]:
        cmd = ["pulumi", "destroy", "--stack", self.stack, "--yes"]
        if self.protected:
            cmd.append("--exclude-protected")
        return cmd


def is_production(stack: str, snapshot: dict[str, Any] | None = None) -> bool:
    name = stack.lower()
    if name in PROD_NAMES or name.startswith(("prod-", "prod.", "prod_", "production-")):
        return True
    config = (snapshot or {}).get("config", {})
    return any(
        key.split(":", 1)[-1] in ("environment", "env") and str(v).lower() in PROD_NAMES
        for key, v in config.items()
    )


def teardown(snapshot: dict[str, Any]) -> Teardown:
    managed = [r for r in snapshot["resources"] if r["custom"] and not r.get("read")]
    protected = [r for r in managed if r.get("protect")]
    retained = [r for r in managed if r.get("retainOnDelete") and not r.get("protect")]
    deleted = [r for r in managed if not r.get("protect") and not r.get("retainOnDelete")]
    emptied = [r for r in deleted if r["inputs"].get("forceDestroy") is True]
    return Teardown(
        stack=snapshot["stack"], deleted=deleted, retained=retained, protected=protected, emptied=emptied
    )


def describe(t: Teardown) -> list[str]:
    def names(rs: list[dict[str, Any]]) -> list[str]:
        return [f"    {short_type(r['type'])}  {r['name']}" for r in rs]

    lines = [f"stack {t.stack}: {len(t.deleted)} resources will be deleted"]
    lines += names(t.deleted)
    if t.emptied:
        lines.append(
            "  deleted with everything in them (forceDestroy): " + ", ".join(r["name"] for r in t.emptied)
        )
    if t.retained:
        lines.append(f"  {len(t.retained)} retained (left in the cloud, removed from the stack):")
        lines += names(t.retained)
    if t.protected:
        lines.append(
            f"  {len(t.protected)} protected (kept; the destroy skips them with --exclude-protected):"
        )
        lines += names(t.protected)
    return lines
