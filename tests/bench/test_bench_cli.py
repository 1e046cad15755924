"""`inferstack bench` is a command of the installed CLI, and bad arguments get one clear line and
exit code 1 before anything is started or written."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from inferstack.cli import app


def test_bench_is_an_inferstack_command() -> None:
    result = CliRunner().invoke(app, ["bench", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    flags = ("--models", "--setups", "--concurrency", "--repeats", "--full", "--overload", "--cold-start")
    for flag in flags:
        assert flag in result.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--models", "mlp,nope"], "--models: unknown nope; known: mlp, transformer, cnn"),
        (["--setups", "foo"], "--setups: unknown foo"),
        (["--concurrency", "8,x"], "--concurrency: expected positive whole numbers separated by commas"),
        (["--concurrency", "0"], "--concurrency: expected positive whole numbers"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    result = CliRunner().invoke(
        app, ["bench", *args, "--out-dir", str(out), "--work-dir", str(work)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()
