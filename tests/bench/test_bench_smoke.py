"""A small run of the benchmark's machinery: a real server (the plain peer) on a real ONNX model,
driven by real wrk through the Lua scripts, its numbers parsed and turned into the report.

Skips when wrk is absent. Runs in a few seconds: 1-second points, a tiny model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from inferstack.bench import payloads, report, wrk
from inferstack.bench.procs import Server
from inferstack.bench.run import Config, check_answer, measure_ceiling, measure_server
from inferstack.bench.setups import ServerConfig, launch
from tiny_model import SPEC, W, build_package

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(wrk.available() is not None, reason=str(wrk.available()))


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """x[N,8] @ W -> logits[N,3], with a dynamic batch axis (what the servers expect)."""
    return build_package(tmp_path_factory.mktemp("tiny"))


def _cores() -> tuple[int, int]:
    return (0, 1) if (os.cpu_count() or 1) >= 2 else (0, 0)


def _config(tmp_path: Path) -> Config:
    server_core, client_core = _cores()
    return Config(
        models=["tiny"],
        concurrency=[1, 4],
        duration_s=1,
        warmup_s=0,
        repeats=1,
        server=ServerConfig(max_batch_size=4, core=server_core),
        client_core=client_core,
        work_dir=tmp_path,
        out_dir=tmp_path / "out",
    )


def test_plain_peer_is_measured_and_reported(package: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    x = SPEC.request_array()
    expected = x @ W
    bodies = payloads.write_bodies(tmp_path / "bodies", "x", x, "logits")
    logged: list[str] = []

    setups = measure_server("plain", ["json"], package, SPEC, bodies, expected, cfg, logged.append)
    ceiling = measure_ceiling(package, dataclasses.replace(cfg, concurrency=[4]), logged.append)

    result = setups["plain-json"]
    assert result["status"] == "ok", result
    assert result["cold_start_s"] > 0
    for c in ("1", "4"):
        point = result["points"][c]
        (run,) = point["repeats"]
        assert run["errors"] == 0 and run["statuses"] == {"200": run["requests"]}
        assert point["throughput"] > 50  # a matmul of 8x3 over loopback: far more than 50 req/s
        assert 0 < point["p50_us"] <= point["p90_us"] <= point["p99_us"]
        assert point["cpu_us_per_request"] > 0  # the server's own CPU time was read around the point
    assert ceiling["points"]["4"]["batch"] == 4 and ceiling["points"]["4"]["throughput"] > 0

    results = {
        "started": "now",
        "config": cfg.to_dict(),
        "machine": {**_machine()},
        "models": {"mlp": {"setups": {"plain-json": result, "ceiling": ceiling}}},
    }
    written = report.write(results, cfg.out_dir, "smoke")
    assert {p.name for p in written} == {"smoke.json", "smoke.md", "smoke-mlp.png"}
    md = (cfg.out_dir / "smoke.md").read_text()
    assert f"| plain-json | 4 | {result['points']['4']['throughput']:.0f} |" in md
    # the ratio needs inferstack's rows, which this run does not have: shown as not run, not as a pass
    assert "| MLP c=32: inferstack json / plain JSON | not run | >= 1.3x | - |" in md
    assert (
        json.loads((cfg.out_dir / "smoke.json").read_text())["models"]["mlp"]["setups"]["plain-json"][
            "status"
        ]
        == "ok"
    )


def _machine() -> dict[str, object]:
    from inferstack.bench import machine

    return machine.describe()


def test_non_2xx_responses_count_as_errors_and_wrong_answers_are_caught(
    package: Path, tmp_path: Path
) -> None:
    cfg = _config(tmp_path)
    x = SPEC.request_array()
    bodies = payloads.write_bodies(tmp_path / "bodies", "x", x, "logits")
    how = launch("plain", package, "tiny", cfg.server, cfg.venvs_dir)
    with Server(how.argv, how.base_url, tmp_path / "plain.log", ready_path=how.ready_path("tiny")) as server:
        server.start(timeout_s=60)
        check_answer(how.infer_url("tiny"), bodies["json"], SPEC, x @ W)
        with pytest.raises(ValueError, match="wrong result"):
            check_answer(how.infer_url("tiny"), bodies["json"], SPEC, x @ W + 1)
        missing = wrk.run(how.infer_url("nope"), bodies["json"], 2, 1, core=cfg.client_core)
    assert missing["requests"] > 0
    assert missing["errors"] == missing["requests"] and missing["statuses"] == {"404": missing["requests"]}
    assert missing["throughput"] == 0


def test_inferstack_binary_is_measured_with_its_batching(package: Path, tmp_path: Path) -> None:
    pytest.importorskip("inferstack.runtime.server", reason="the serving runtime is not installed")
    cfg = _config(tmp_path)
    cfg.concurrency = [4]
    cfg.paired_ceiling_models = (SPEC.name,)
    x = SPEC.request_array()
    bodies = payloads.write_bodies(tmp_path / "bodies", "x", x, "logits")

    setups = measure_server("inferstack", ["binary"], package, SPEC, bodies, x @ W, cfg, print)

    result = setups["inferstack-binary"]
    assert result["status"] == "ok", result
    point = result["points"]["4"]
    (run,) = point["repeats"]
    assert run["errors"] == 0 and run["statuses"] == {"200": run["requests"]} and point["throughput"] > 50
    # the server's own counters were read around the point: every request went through a batch
    batching = point["batching"]
    assert batching["batches"] >= 1 and 1 <= batching["mean_batch"] <= 4
    # the ceiling measured right after the run, and the ratio of the pair
    (ceiling,) = point["paired_ceiling"]
    assert ceiling > 0
    assert point["paired_ratio"] == pytest.approx(run["throughput"] / ceiling)


def test_cli_rejects_an_unknown_model() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--models", "resnet9000", "--duration", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "--models: unknown resnet9000" in proc.stdout + proc.stderr


def test_inferstack_grpc_is_measured_with_h2load_and_refusals_count_as_errors(
    package: Path, tmp_path: Path
) -> None:
    from inferstack.bench import grpc_load

    if grpc_load.available():
        pytest.skip(str(grpc_load.available()))
    cfg = _config(tmp_path)
    cfg.concurrency = [4]
    x = SPEC.request_array()
    bodies = payloads.write_bodies(tmp_path / "bodies", "x", x, "logits")

    setups = measure_server("inferstack", ["binary", "grpc"], package, SPEC, bodies, x @ W, cfg, print)

    result = setups["inferstack-grpc"]
    assert result["status"] == "ok", result
    point = result["points"]["4"]
    (run,) = point["repeats"]
    assert run["errors"] == 0 and run["ok"] == run["requests"] > 50, run
    assert point["throughput"] > 50 and 0 < point["p50_us"] <= point["p99_us"]
    # every call went through the batcher: the server's counters moved by as many calls
    assert point["batching"]["batches"] >= 1

    # a call the server refuses (unknown model) brings no answer: an error, not a success
    how = launch("inferstack", package, "tiny", cfg.server, cfg.venvs_dir)
    assert how.grpc_address is not None
    with Server(how.argv, how.base_url, tmp_path / "grpc.log", ready_path=how.ready_path("tiny")) as server:
        server.start(timeout_s=60)
        good = grpc_load.request_message("tiny", "x", x, "logits")
        size = grpc_load.check(how.grpc_address, good, "logits", x @ W)
        with pytest.raises(ValueError, match="wrong result"):
            grpc_load.check(how.grpc_address, good, "logits", x @ W + 1)
        bad = grpc_load.request_message("nope", "x", x, "logits")
        refused = grpc_load.run(how.grpc_address, bad, size, 2, 1, core=cfg.client_core)
    assert refused["requests"] > 0 and refused["errors"] == refused["requests"] and refused["throughput"] == 0
