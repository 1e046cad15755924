"""Requests are merged only where merging cannot change an answer: the real server, bare .onnx
files and packages of models exported from PyTorch, many concurrent single-row clients with
distinct data; every answer must equal onnxruntime run on that request alone."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from runtime_harness import Served, metric, package

from inferstack.manifest import load_manifest, sha256_file, write_manifest

_V2 = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
CLIENTS = 16
REQUESTS = 48


def _metric(text: str, name: str) -> float:
    return metric(text, name)


def _infer(s: Served, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    doc = {"inputs": [{"name": n, "shape": list(a.shape), "datatype": _V2[a.dtype],
                       "data": a.ravel().tolist()} for n, a in feeds.items()],
           "parameters": {"binary_data_output": False}}
    r = httpx.post(f"{s.url}/v2/models/{s.name}/infer", json=doc, timeout=30)
    assert r.status_code == 200, r.text
    return {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in r.json()["outputs"]}


def _hammer(s: Served, model: Path, requests: list[dict[str, np.ndarray]],
            ort_run: Callable[..., Any]) -> None:
    """Send the requests from CLIENTS threads at once; each answer equals the request run alone."""
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(lambda feeds: _infer(s, feeds), requests))
    for i, (feeds, got) in enumerate(zip(requests, answers, strict=True)):
        (want,) = ort_run(model, feeds)
        assert got["y"].shape == want.shape, f"request {i}: shape {got['y'].shape}, alone {want.shape}"
        np.testing.assert_allclose(got["y"], want, rtol=1e-5, atol=1e-5, err_msg=f"request {i}")


def _config(s: Served) -> dict[str, Any]:
    config: dict[str, Any] = httpx.get(f"{s.url}/v2/models/{s.name}/config").json()
    return config


def _runs(s: Served) -> tuple[float, float]:
    """(requests run, onnxruntime runs) so far."""
    text = httpx.get(f"{s.url}/metrics").text
    return _metric(text, "inferstack_batch_size_sum"), _metric(text, "inferstack_batch_size_count")


def _rows(name: str, i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 + i)
    if name == "width":
        return {"x": rng.standard_normal((1, 8)).astype(np.float32), "n": np.array([[i % 8 + 1]], np.int64)}
    if name == "seqfirst":
        return {"x": rng.standard_normal((3, 1, 32)).astype(np.float32)}
    width = {"rowwise": 16}.get(name, 8)
    return {"x": rng.standard_normal((1, width)).astype(np.float32)}


@pytest.mark.parametrize("name", ["mixing", "width"])
def test_models_that_mix_rows_are_not_merged(serve, batch_models: dict[str, Path], ort_run,
                                             name: str) -> None:
    """x - x.mean(0) and x[:, :max(n)]: merged, each request would get other requests' data or
    the widest width in the batch, with 200."""
    model = batch_models[name]
    s = serve(model, "--max-queue-delay-us", "50000")
    config = _config(s)
    assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
    decision = config["parameters"]["batch_check"]["string_value"]
    assert decision.startswith("off: batch-independence check failed (static proof at warm-up): "
                               "not proven row-independent: node ")
    assert "(ReduceMean): a reduction over the batch axis" in decision or "(ReduceMax)" in decision
    assert "serving without batching: batch-independence check failed" in s.log()
    _hammer(s, model, [_rows(name, i) for i in range(REQUESTS)], ort_run)
    requests, runs = _runs(s)
    assert requests == runs == REQUESTS


def test_a_per_row_model_still_merges(serve, batch_models: dict[str, Path], ort_run) -> None:
    model = batch_models["rowwise"]
    s = serve(model, "--max-queue-delay-us", "50000")
    config = _config(s)
    assert config["max_batch_size"] == 64 and "dynamic_batching" in config
    decision = config["parameters"]["batch_check"]["string_value"]
    assert decision.startswith("passed (checked at warm-up on generated rows in ")
    assert config["parameters"]["batch_dim"]["string_value"] == "batch"
    _hammer(s, model, [_rows("rowwise", i) for i in range(REQUESTS)], ort_run)
    requests, runs = _runs(s)
    assert requests == REQUESTS and runs < REQUESTS  # merged: fewer runs than requests


def test_an_index_into_a_small_table_is_checked_with_small_integers(serve, batch_models: dict[str, Path],
                                                                    ort_run) -> None:
    """nn.Embedding(2, 4): generated indices 0..15 mostly fall outside the table, so the check
    runs again with 0..1, and the model merges."""
    model = batch_models["types"]
    s = serve(model, "--max-queue-delay-us", "50000")
    config = _config(s)
    assert config["max_batch_size"] == 64
    assert config["parameters"]["batch_check"]["string_value"].startswith("passed (checked at warm-up")
    requests = [{"x": np.array([[i % 2, (i // 2) % 2, 1]], np.int64)} for i in range(REQUESTS)]
    _hammer(s, model, requests, ort_run)
    served, runs = _runs(s)
    assert served == REQUESTS and runs < REQUESTS


def test_a_sequence_first_model_is_not_merged(serve, batch_models: dict[str, Path], ort_run) -> None:
    """nn.TransformerEncoderLayer in PyTorch's default layout (x: seq, batch, 32): its first axis
    is dynamic, but it is the sequence."""
    model = batch_models["seqfirst"]
    s = serve(model, "--max-queue-delay-us", "50000")
    config = _config(s)
    assert config["max_batch_size"] == 0
    assert config["parameters"]["batch_check"]["string_value"] == (
        "off: no batch axis (--batch-dim / INFERSTACK_BATCH_DIM is 'batch'): input 'x' has dims "
        "(seq, batch, 32): the batch dimension 'batch' is not first")
    _hammer(s, model, [_rows("seqfirst", i) for i in range(REQUESTS // 2)], ort_run)
    requests, runs = _runs(s)
    assert requests == runs


def test_batch_dim_names_the_axis(serve, batch_models: dict[str, Path]) -> None:
    """--batch-dim (and INFERSTACK_BATCH_DIM) choose the axis: calling the sequence axis the batch
    makes the check run, and attention across merged rows fails it."""
    s = serve(batch_models["seqfirst"], env={"INFERSTACK_BATCH_DIM": "seq"})
    config = _config(s)
    assert config["max_batch_size"] == 0
    assert config["parameters"]["batch_dim"]["string_value"] == "seq"
    decision = config["parameters"]["batch_check"]["string_value"]
    assert decision.startswith("off: batch-independence check failed") and "not proven" in decision


def test_unsafe_force_batching_merges_and_says_so(serve, batch_models: dict[str, Path]) -> None:
    model = batch_models["mixing"]
    s = serve(model, "--max-queue-delay-us", "50000", "--unsafe-force-batching")
    config = _config(s)
    assert config["max_batch_size"] == 64
    assert config["parameters"]["batch_check"]["string_value"].startswith("forced: --unsafe-force-batching")
    assert "WARNING inferstack.runtime: UNSAFE: --unsafe-force-batching" in s.log()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(lambda i: _infer(s, _rows("mixing", i)), range(REQUESTS)))
    requests, runs = _runs(s)
    assert requests == REQUESTS and runs < REQUESTS


def _with_record(directory: Path, onnx: Path, record: dict[str, Any] | None, max_batch: int = 16) -> Path:
    package(directory, [onnx], directory.name, max_batch)
    manifest = load_manifest(directory)
    manifest.batch_check = record
    write_manifest(directory, manifest)
    return directory


def test_a_manifest_record_is_trusted(serve, batch_models: dict[str, Path], tmp_path: Path) -> None:
    """A package's batch_check decides without a check at warm-up: a failed record keeps even a
    per-row model unmerged; a record for another axis name is not used."""
    failed = {"batchable": False, "reason": "output 'y' row 1 differs merged vs alone by 0.5 at batch 2",
              "batch_dim": "batch", "data": "example"}
    s = serve(_with_record(tmp_path / "failed", batch_models["rowwise"], failed))
    config = _config(s)
    assert config["max_batch_size"] == 0
    assert config["parameters"]["batch_check"]["string_value"] == (
        "off: batch-independence check failed (manifest.json batch_check (example rows)): output 'y' row 1 "
        "differs merged vs alone by 0.5 at batch 2")
    passed = {"batchable": True, "reason": "checked on example rows", "batch_dim": "batch", "data": "example",
              "sizes": [2, 3], "proven": True, "proof": "proven",
              "model_sha256": sha256_file(batch_models["rowwise"])}
    s = serve(_with_record(tmp_path / "passed", batch_models["rowwise"], passed))
    assert _config(s)["max_batch_size"] == 16
    assert _config(s)["parameters"]["batch_check"]["string_value"] == (
        "passed (manifest.json batch_check (example rows)): checked on example rows")
    # a record made for another axis name: the server checks for itself
    other = {**passed, "batch_dim": "n", "model_sha256": sha256_file(batch_models["mixing"])}
    s = serve(_with_record(tmp_path / "other", batch_models["mixing"], other))
    assert _config(s)["max_batch_size"] == 0
    assert "static proof at warm-up" in _config(s)["parameters"]["batch_check"]["string_value"]


def test_an_empty_batch_dim_is_refused() -> None:
    from inferstack.runtime.config import ServerConfig
    from inferstack.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="--batch-dim / INFERSTACK_BATCH_DIM: must not be empty"):
        ServerConfig(model="m.onnx", batch_dim=" ")
