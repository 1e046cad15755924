"""The command boundary: user-caused errors are one red line, verbatim, and exit code 1."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from inferstack.console import cli_errors
from inferstack.errors import InferstackError


def _app(message: str) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @cli_errors
    def boom() -> None:
        raise InferstackError(message)

    return app


def test_error_text_with_brackets_is_printed_verbatim() -> None:
    message = "name '../a' does not match '^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$' in [bold]manifest[/bold]"
    result = CliRunner().invoke(_app(message), [])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {message}"


def test_missing_file_names_the_file() -> None:
    app = typer.Typer()

    @app.command()
    @cli_errors
    def read() -> None:
        open("/nonexistent-dir/model.onnx")  # noqa: SIM115

    result = CliRunner().invoke(app, [])
    assert result.exit_code == 1
    assert "/nonexistent-dir/model.onnx" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
