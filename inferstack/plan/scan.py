"""Read checkov's JSON report (``checkov -o json``) and say what failed, what was skipped and why.

``python -m inferstack.plan.scan REPORT.json`` prints a table and exits 1 when any check failed
or a file could not be parsed; ``make scan`` runs it after checkov.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferstack.errors import InferstackError


@dataclass(frozen=True)
class Finding:
    framework: str
    check_id: str
    check_name: str
    file: str
    resource: str
    lines: tuple[int, int] | None
    reason: str | None = None
    """For a skipped check: the reason written next to the resource."""


@dataclass
class ScanReport:
    passed: int = 0
    failed: list[Finding] = field(default_factory=list)
    skipped: list[Finding] = field(default_factory=list)
    parsing_errors: list[str] = field(default_factory=list)
    frameworks: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.parsing_errors


# What checkov records for a skip annotation or comment written without a reason (no "=" / ":").
NO_REASON = "No comment provided"


def _finding(framework: str, raw: dict[str, Any]) -> Finding:
    line_range = raw.get("file_line_range")
    result = raw.get("check_result") or {}
    return Finding(
        framework=framework,
        check_id=str(raw.get("check_id", "")),
        check_name=str(raw.get("check_name", "")),
        file=str(raw.get("file_path") or raw.get("repo_file_path") or "").lstrip("/"),
        resource=str(raw.get("resource", "")),
        lines=(int(line_range[0]), int(line_range[1])) if line_range else None,
        reason=None
        if result.get("suppress_comment") in (None, "", NO_REASON)
        else result["suppress_comment"],
    )


def parse_report(data: Any) -> ScanReport:
    """One framework's report is an object; several frameworks give a list of them. A run that
    found nothing to scan gives a bare summary object, which counts as zero checks."""
    reports = data if isinstance(data, list) else [data]
    out = ScanReport()
    for report in reports:
        if not isinstance(report, dict):
            raise InferstackError(f"not a checkov JSON report: unexpected {type(report).__name__}")
        if "results" not in report:
            if {"passed", "failed"} <= set(report):  # empty run
                continue
            raise InferstackError("not a checkov JSON report: no `results`")
        framework = str(report.get("check_type", "unknown"))
        out.frameworks.append(framework)
        results = report["results"]
        out.passed += len(results.get("passed_checks") or [])
        out.failed += [_finding(framework, r) for r in results.get("failed_checks") or []]
        out.skipped += [_finding(framework, r) for r in results.get("skipped_checks") or []]
        out.parsing_errors += [str(p) for p in results.get("parsing_errors") or []]
    return out


def load_report(path: Path) -> ScanReport:
    try:
        return parse_report(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as e:
        raise InferstackError(f"{path}: not JSON ({e})") from None


def render(report: ScanReport) -> str:
    lines = [
        f"checkov ({', '.join(report.frameworks) or 'nothing scanned'}): {report.passed} passed, "
        f"{len(report.failed)} failed, {len(report.skipped)} skipped, "
        f"{len(report.parsing_errors)} parsing errors"
    ]
    for f in report.failed:
        lines.append(f"  FAILED  {f.check_id}  {f.file}  {f.resource}: {f.check_name}")
    for f in report.skipped:
        lines.append(f"  skipped {f.check_id}  {f.file}  {f.resource}: {f.reason or '(no reason given)'}")
    lines += [f"  cannot parse {p}" for p in report.parsing_errors]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m inferstack.plan.scan CHECKOV_REPORT.json", file=sys.stderr)
        return 2
    try:
        report = load_report(Path(args[0]))
    except (InferstackError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(render(report))
    unexplained = [f for f in report.skipped if not f.reason]
    if unexplained:
        print(f"error: {len(unexplained)} skipped checks without a reason", file=sys.stderr)
    return 0 if report.ok and not unexplained else 1


if __name__ == "__main__":
    raise SystemExit(main())
