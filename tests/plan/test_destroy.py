"""inferstack destroy, against the committed plan snapshots (the Pulumi CLI itself is not run here
except as a recording stand-in executable)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferstack.cli import app
from inferstack.plan.destroy import is_production, teardown

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _snapshot(stack: str) -> dict:
    return json.loads((ROOT / "plan" / f"{stack}.json").read_text())


@pytest.fixture
def no_pulumi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))


@pytest.fixture
def recording_pulumi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A `pulumi` executable that records its arguments and working directory."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "pulumi-args.txt"
    script = bin_dir / "pulumi"
    script.write_text(f'#!/bin/sh\necho "$PWD $@" > {log}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return log


def _destroy(*args: str, input: str | None = None):
    return runner.invoke(app, ["destroy", "--project-dir", str(ROOT), *args], input=input)


def test_teardown_splits_deleted_retained_protected() -> None:
    prod = teardown(_snapshot("prod"))
    assert prod.protected, "prod protects its model store"
    assert all(r.get("protect") for r in prod.protected)
    assert "--exclude-protected" in prod.command()
    dev = teardown(_snapshot("dev"))
    assert not dev.protected and not dev.retained
    assert dev.command() == ["pulumi", "destroy", "--stack", "dev", "--yes"]
    assert len(dev.deleted) == sum(1 for r in _snapshot("dev")["resources"] if r["custom"])
    assert is_production("prod") and not is_production("dev")


def test_summary_then_clear_error_without_the_pulumi_cli(no_pulumi) -> None:
    result = _destroy("--stack", "dev", "--yes")
    assert result.exit_code == 1
    n = len(teardown(_snapshot("dev")).deleted)
    assert f"stack dev: {n} resources will be deleted" in result.output
    assert "the Pulumi CLI is needed" in result.output
    assert "pulumi destroy --stack dev --yes" in result.output


def test_prod_is_refused_without_allow_prod(recording_pulumi: Path) -> None:
    result = _destroy("--stack", "prod", "--yes")
    assert result.exit_code == 1
    assert "refusing to destroy it without --allow-prod" in result.output
    assert not recording_pulumi.exists()


def test_prod_needs_the_stack_name_typed(recording_pulumi: Path) -> None:
    wrong = _destroy("--stack", "prod", "--allow-prod", input="dev\n")
    assert wrong.exit_code == 1 and "destroy cancelled" in wrong.output
    assert not recording_pulumi.exists()

    right = _destroy("--stack", "prod", "--allow-prod", input="prod\n")
    assert right.exit_code == 0, right.output
    assert "protected (kept" in right.output
    cwd, args = recording_pulumi.read_text().split(" ", 1)
    assert args.split() == ["destroy", "--stack", "prod", "--yes", "--exclude-protected"]
    assert Path(cwd).resolve() == ROOT


def test_declining_the_confirmation_runs_nothing(recording_pulumi: Path) -> None:
    result = _destroy("--stack", "dev", input="n\n")
    assert result.exit_code == 1 and "destroy cancelled" in result.output
    assert not recording_pulumi.exists()
    assert _destroy("--stack", "dev", input="y\n").exit_code == 0
    assert recording_pulumi.read_text().split()[1:] == ["destroy", "--stack", "dev", "--yes"]


def test_unknown_stack_names_the_missing_snapshot(no_pulumi) -> None:
    result = _destroy("--stack", "staging", "--yes")
    assert result.exit_code == 1
    assert "no plan snapshot" in result.output and "staging.json" in result.output
