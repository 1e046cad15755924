"""The checkov report parser, on a report captured from a real checkov run (kubernetes and
dockerfile frameworks, one check skipped by an annotation with its reason)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferstack.errors import InferstackError
from inferstack.plan.scan import load_report, main, parse_report

SAMPLE = Path(__file__).with_name("fixtures") / "checkov-kubernetes-dockerfile.json"


def test_parses_a_real_multi_framework_report() -> None:
    report = load_report(SAMPLE)
    raw = json.loads(SAMPLE.read_text())
    summaries = {r["check_type"]: r["summary"] for r in raw}
    assert report.frameworks == ["dockerfile", "kubernetes"]
    assert report.passed == sum(s["passed"] for s in summaries.values())
    assert len(report.failed) == sum(s["failed"] for s in summaries.values()) == 3
    assert {(f.framework, f.check_id, f.file) for f in report.failed} == {
        ("dockerfile", "CKV_DOCKER_2", "Dockerfile"),
        ("kubernetes", "CKV_K8S_43", "k8s/deployment-tiny.yaml"),
        ("kubernetes", "CKV2_K8S_6", "k8s/deployment-tiny.yaml"),
    }
    (skip,) = report.skipped
    assert skip.check_id == "CKV_K8S_15" and skip.resource == "Deployment.tiny.tiny"
    assert skip.reason == "the image is pinned by digest, so IfNotPresent cannot run a stale image"
    assert not report.ok


def test_exit_code_and_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main([str(SAMPLE)]) == 1
    printed = capsys.readouterr().out
    assert "3 failed, 1 skipped" in printed
    assert "FAILED  CKV_DOCKER_2  Dockerfile" in printed

    raw = json.loads(SAMPLE.read_text())
    for r in raw:  # the same report with the failures fixed
        r["results"]["failed_checks"] = []
    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps(raw))
    assert main([str(clean)]) == 0

    for r in raw:  # a skip written without a reason (checkov fills in a placeholder) does not count
        for skipped in r["results"]["skipped_checks"]:
            skipped["check_result"]["suppress_comment"] = "No comment provided"
    clean.write_text(json.dumps(raw))
    capsys.readouterr()
    assert main([str(clean)]) == 1
    captured = capsys.readouterr()
    assert "(no reason given)" in captured.out and "1 skipped checks without a reason" in captured.err


def test_rejects_what_is_not_a_report(tmp_path: Path) -> None:
    with pytest.raises(InferstackError, match="no `results`"):
        parse_report({"hello": 1})
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main([str(bad)]) == 1
    assert parse_report({"passed": 0, "failed": 0, "skipped": 0, "parsing_errors": 0}).ok
