"""The ``serve`` command line (flags, environment variables, one-line errors) and the images: the
Dockerfiles' ENTRYPOINT is the module every server test starts, they run as a non-root user,
keep build tools out of the final stage, and their HEALTHCHECK command works against a live server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from runtime_harness import Served
from typer.testing import CliRunner

from inferstack.cli import app

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"
FLAGS = [
    "--name",
    "--host",
    "--port",
    "--grpc-port",
    "--max-batch-size",
    "--max-queue-delay-us",
    "--follow-wait",
    "--max-queue-size",
    "--max-body-bytes",
    "--request-timeout-s",
    "--providers",
    "--require-gpu",
    "--intra-op-threads",
    "--auth-token-file",
    "--cache-dir",
    "--log-level",
    "--log-format",
    "--access-log",
    "--model-repository",
    "--model-control",
    "--sched-policy",
]


def _env_name(flag: str) -> str:
    return "INFERSTACK_" + flag[2:].upper().replace("-", "_")


def test_help_lists_every_flag_with_its_environment_variable() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0
    text = result.output
    for flag in FLAGS:
        assert flag in text, flag
        assert _env_name(flag) in text, _env_name(flag)
    assert "INFERSTACK_MODEL" in text


@pytest.mark.parametrize(
    "args,env,message",
    [
        (["--port", "70000"], {}, "--port / INFERSTACK_PORT: must be 0..65535, got 70000"),
        ([], {"INFERSTACK_GRPC_PORT": "-1"}, "--grpc-port / INFERSTACK_GRPC_PORT: must be 0..65535, got -1"),
        (
            [],
            {"INFERSTACK_MAX_QUEUE_SIZE": "0"},
            "--max-queue-size / INFERSTACK_MAX_QUEUE_SIZE: must be >= 1",
        ),
        (["--request-timeout-s", "0"], {}, "--request-timeout-s / INFERSTACK_REQUEST_TIMEOUT_S: must be > 0"),
        (["--log-level", "loud"], {}, "--log-level / INFERSTACK_LOG_LEVEL: must be one of"),
        (
            [],
            {"INFERSTACK_HEADER_TIMEOUT_S": "0"},
            "--header-timeout-s / INFERSTACK_HEADER_TIMEOUT_S: must be > 0",
        ),
        (["--body-timeout-s", "-1"], {}, "--body-timeout-s / INFERSTACK_BODY_TIMEOUT_S: must be > 0"),
        (["--idle-timeout-s", "0"], {}, "--idle-timeout-s / INFERSTACK_IDLE_TIMEOUT_S: must be > 0"),
        (["--drain-delay-s", "-1"], {}, "--drain-delay-s / INFERSTACK_DRAIN_DELAY_S: must be >= 0"),
        (
            [],
            {"INFERSTACK_FOLLOW_WAIT": "1.5"},
            "--follow-wait / INFERSTACK_FOLLOW_WAIT: must be from 0 to 1, got 1.5",
        ),
        (
            ["--max-body-bytes", "2000", "--max-buffered-bytes", "1000"],
            {},
            "--max-buffered-bytes / INFERSTACK_MAX_BUFFERED_BYTES: must be >= --max-body-bytes (2000)",
        ),
        (
            ["--providers", " , "],
            {},
            "--providers / INFERSTACK_PROVIDERS: give at least one execution provider",
        ),
        (
            ["--auth-token-file", "/nonexistent/token"],
            {},
            "--auth-token-file / INFERSTACK_AUTH_TOKEN_FILE: cannot read",
        ),
        (
            ["--model-control", "poll"],
            {},
            "--model-control / INFERSTACK_MODEL_CONTROL: must be one of none, explicit",
        ),
        (["--log-format", "xml"], {}, "--log-format / INFERSTACK_LOG_FORMAT: must be one of text, json"),
        (
            ["--sched-policy", "fifo"],
            {},
            "--sched-policy / INFERSTACK_SCHED_POLICY: must be one of auto, batch, other",
        ),
        (
            ["--model-repository", "/nonexistent/repo"],
            {},
            "--model-repository / INFERSTACK_MODEL_REPOSITORY: /nonexistent/repo is not a directory",
        ),
    ],
)
def test_bad_settings_fail_with_one_line_naming_the_setting(
    mlp_package: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    result = CliRunner().invoke(app, ["serve", str(mlp_package), *args], env={"COLUMNS": "300", **env})
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_no_model_and_an_empty_repository_fail_with_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve"], env={"COLUMNS": "300"})
    assert result.exit_code == 1
    assert "PATH / INFERSTACK_MODEL: no model given (give PATH ... or --model-repository)" in result.output
    result = CliRunner().invoke(app, ["serve", "--model-repository", str(tmp_path), "--port", "0"],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 1
    assert f"--model-repository {tmp_path}: no model package in any subfolder" in result.output
    assert "Traceback" not in result.output


def test_unknown_provider_and_required_gpu_from_the_environment(mlp_package: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["serve", str(mlp_package), "--port", "0", "--grpc-port", "0", "--providers",
         "CUDAExecutionProviderX"],
        env={"COLUMNS": "300"},
    )
    assert result.exit_code == 1
    assert "unknown execution provider 'CUDAExecutionProviderX'" in result.output
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        result = runner.invoke(
            app,
            ["serve", "--port", "0", "--grpc-port", "0"],
            env={"COLUMNS": "300", "INFERSTACK_MODEL": str(mlp_package), "INFERSTACK_REQUIRE_GPU": "true"},
        )
        assert result.exit_code == 1
        assert "--require-gpu / INFERSTACK_REQUIRE_GPU: no GPU execution provider is active" in result.output


def test_the_entrypoint_module_runs_the_same_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "inferstack.runtime", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        timeout=60,
    )
    assert out.returncode == 0
    for flag in FLAGS:
        assert flag in out.stdout


def _final_stage(dockerfile: Path) -> tuple[list[str], list[str]]:
    """(all instructions, the final stage's instructions), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    last_from = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return lines, lines[last_from:]


@pytest.mark.parametrize("name,extra", [("Dockerfile", "runtime,gpu"), ("Dockerfile.cpu", "runtime,cpu")])
def test_dockerfile_runs_the_tested_entrypoint_as_non_root(name: str, extra: str) -> None:
    lines, final = _final_stage(RUNTIME / name)
    assert sum(line.startswith("FROM ") for line in lines) >= 2, "multi-stage"
    assert any(f'".[{extra}]"' in line for line in lines), f"installs the {extra} extras"
    entry = [line for line in final if line.startswith("ENTRYPOINT ")]
    assert len(entry) == 1
    # the very command the server tests start (runtime_harness.start_server)
    assert json.loads(entry[0].removeprefix("ENTRYPOINT ")) == ["python", "-m", "inferstack.runtime"]
    user = [line.split()[1] for line in final if line.startswith("USER ")]
    assert user and user[-1] not in ("0", "root")
    assert not any(tool in line for line in final for tool in ("build-essential", "gcc", "python3-dev"))
    assert any(line.startswith("HEALTHCHECK ") and "/v2/health/ready" in line for line in final)
    # both front ends' ports, and the settings that put the server on them
    assert [line.split()[1:] for line in final if line.startswith("EXPOSE ")] == [["8000", "8001"]]
    assert any("INFERSTACK_PORT=8000" in line and "INFERSTACK_GRPC_PORT=8001" in line
               for line in final if line.startswith("ENV "))
    # the access log is on in the image (off by default elsewhere)
    assert any(line.startswith("ENV ") and "INFERSTACK_ACCESS_LOG=true" in line for line in final)
    if extra == "runtime,gpu":
        assert lines[0].startswith("ARG CUDA_IMAGE=nvidia/cuda:") and "runtime" in lines[0]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_healthcheck_command_probes_readiness(name: str, mlp_server: Served) -> None:
    _, final = _final_stage(RUNTIME / name)
    health = next(line for line in final if line.startswith("HEALTHCHECK "))
    command = json.loads(health[health.index("CMD ") + 4 :])
    assert command[0] == "python"
    env = {**os.environ, "INFERSTACK_PORT": str(mlp_server.port)}
    assert subprocess.run([sys.executable, *command[1:]], env=env, timeout=30).returncode == 0
    env["INFERSTACK_PORT"] = "1"  # nothing listens there: unhealthy
    assert (
        subprocess.run([sys.executable, *command[1:]], env=env, timeout=30, capture_output=True).returncode
        != 0
    )


def test_a_port_in_use_fails_with_one_line(mlp_package: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(
            app, ["serve", str(mlp_package), "--port", str(port)], env={"COLUMNS": "300"}
        )
    assert result.exit_code == 1
    assert f"--host / --port: cannot listen on 127.0.0.1:{port}" in result.output
