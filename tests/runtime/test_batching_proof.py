"""Merging only where it cannot change an answer: the static proof of row independence
(inferstack.batchproof) on real exported PyTorch modules, and the server under 16 concurrent
clients with models that mix rows only where a finite check does not look (at a batch of 6 or
more, for large values, by less than a tolerance, for an index of 16 or more), a model that drops
rows, and a manifest record not made on the served model."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from batch_models import export
from runtime_harness import package, save_graph

from inferstack.batchcheck import check_batch_independence, check_sizes, random_rows
from inferstack.batchproof import prove_row_independence
from inferstack.manifest import load_manifest, sha256_file, write_manifest

CLIENTS = 16


@pytest.fixture(scope="module")
def proof_models(models_dir: Path) -> dict[str, Path]:
    """name -> .onnx, exported once: models that mix rows in ways a finite check can miss, and
    row-wise models (an MLP, a CNN) the proof must accept."""
    import torch
    from torch import nn

    class SizeGate(nn.Module):  # mixes rows only at a batch of 6 or more
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = torch.ones_like(x[:, 0]).sum()
            return x * 2 + (n >= 6).float() * x.mean(0, keepdim=True)

    class SizeOnly(nn.Module):  # no other row's values: only the batch size
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = torch.ones_like(x[:, 0]).sum()
            return x * 2 + (n >= 6).float()

    class SizeMul(nn.Module):  # the batch size as data
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * x.shape[0]

    class ValueGate(nn.Module):  # mixes rows only when some value in the batch exceeds 8
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 + (x.abs().max() > 8).float() * x.mean(0, keepdim=True)

    class TinyMix(nn.Module):  # always mixes, below the tolerance for standard-normal rows
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 + 1e-5 * x.sum(0, keepdim=True)

    class EmbGate(nn.Module):  # mixes rows only for an index of 16 or more
        def __init__(self) -> None:
            super().__init__()
            self.e = nn.Embedding(64, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            e = self.e(x)
            return e + (x.max() >= 16).float() * e.mean(0, keepdim=True)

    class Sort(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sort(x, 0).values

    class Transposed(nn.Module):  # the same shape back, but each row made of other rows' values
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.t().reshape(x.shape[0], 8)

    class Folded(nn.Module):  # each row folded into two rows of 4 and back: row-wise
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x.reshape(-1, 4) * 3).reshape(x.shape[0], 8)

    class Encoder(nn.Module):  # 4 layers, batch first: attention folds the batch into the heads
        def __init__(self) -> None:
            super().__init__()
            layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
            self.enc = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.enc(x)

    directory = models_dir / "proof-models"
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=1024)
    x8 = (torch.randn(4, 8),)
    one = {"x": {0: batch}}
    paths = {
        name: export(module, x8, directory / f"{name}.onnx", ["x"], one)
        for name, module in (("sizegate", SizeGate()), ("sizeonly", SizeOnly()), ("sizemul", SizeMul()),
                             ("valuegate", ValueGate()), ("tinymix", TinyMix()), ("sort", Sort()),
                             ("transposed", Transposed()), ("folded", Folded()))
    }
    seq = torch.export.Dim("seq", min=2, max=512)
    paths["encoder"] = export(Encoder(), (torch.randn(2, 5, 32),), directory / "encoder.onnx", ["x"],
                              {"x": {0: batch, 1: seq}})
    paths["embgate"] = export(EmbGate(), (torch.randint(0, 16, (4, 3)),), directory / "embgate.onnx",
                              ["x"], one)
    paths["mlp"] = export(nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 4),
                                        nn.Softmax(-1)), x8, directory / "mlp.onnx", ["x"],
                          {"input": {0: batch}})
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    paths["cnn"] = export(cnn, (torch.randn(2, 3, 16, 16),), directory / "cnn.onnx", ["x"],
                          {"input": {0: batch}})
    paths["filter"] = _filter_model(directory / "filter.onnx")
    return paths


def _filter_model(path: Path) -> Path:
    """y = x * x for the rows whose first value is > -5 (Compress along the batch): an output
    declared (batch, 4) that drops rows."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["x", "idx"], ["c0"], axis=1, name="first"),
            helper.make_node("Greater", ["c0", "thr"], ["keep"], name="keep"),
            helper.make_node("Compress", ["x", "keep"], ["kept"], axis=0, name="drop_rows"),
            helper.make_node("Mul", ["kept", "kept"], ["y"], name="square"),
        ],
        "filter",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[
            helper.make_tensor("thr", TensorProto.FLOAT, [], [-5.0]),
            helper.make_tensor("idx", TensorProto.INT64, [], [0]),
        ],
    )
    save_graph(graph, path)
    return path


# -- the static proof ---------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "op", "why"), [
    ("sizegate", "ReduceSum", "the batch axis included"),
    ("sizeonly", "ReduceSum", "the batch axis included"),
    ("sizemul", "Mul", "the batch size flows into data"),
    ("valuegate", "ReduceMax", "the batch axis included"),
    ("tinymix", "ReduceSum", "a reduction over the batch axis"),
    ("embgate", "ReduceMax", "the batch axis included"),
    ("filter", "Compress", "not understood"),
    ("sort", "TopK", "sorts along the batch axis"),
    ("transposed", "Reshape", "does not keep each row a block of its own"),
])
def test_the_proof_refuses_models_that_mix_rows_and_names_the_node(
        proof_models: dict[str, Path], name: str, op: str, why: str) -> None:
    proof = prove_row_independence(proof_models[name])
    assert not proof.proven
    assert "\n" not in proof.reason
    assert proof.reason.startswith(("node '", "a ")), proof.reason
    assert f"({op})" in proof.reason and why in proof.reason, proof.reason


@pytest.mark.parametrize("name", ["mlp", "cnn", "encoder", "folded"])
def test_the_proof_accepts_row_wise_models(proof_models: dict[str, Path], ort_run, name: str) -> None:
    """An MLP (GELU, LayerNorm, Softmax), a CNN (Conv, BatchNorm, pools, Flatten), a 4-layer
    batch-first transformer encoder and a model that folds each row into two and back; and what
    the proof claims is true: merged rows equal rows run alone."""
    model = proof_models[name]
    proof = prove_row_independence(model)
    assert proof.proven, proof.reason
    assert "every output row depends on its input row alone" in proof.reason
    shape = {"cnn": (5, 3, 16, 16), "encoder": (5, 6, 32)}.get(name, (5, 8))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    (merged,) = ort_run(model, {"x": x})
    alone = np.concatenate([ort_run(model, {"x": x[i:i + 1]})[0] for i in range(5)])
    np.testing.assert_allclose(merged, alone, rtol=1e-4, atol=1e-4)


def test_the_proof_follows_rows_of_a_sequence_model(batch_models: dict[str, Path]) -> None:
    """x: batch, seq, 8 -> y: batch, seq, 4 (per-row layers over a sequence); the same layer in
    PyTorch's sequence-first layout has no batch axis first."""
    assert prove_row_independence(batch_models["rowseq"]).proven
    refused = prove_row_independence(batch_models["seqfirst"])
    assert not refused.proven and "input 'x' does not have 'batch' as its first dimension" in refused.reason
    assert not prove_row_independence(batch_models["cumsum"]).proven


@pytest.mark.parametrize(("name", "found"), [("sizegate", "at batch 6"), ("sizeonly", "at batch 6"),
                                           ("tinymix", "differs merged vs alone")])
def test_the_merged_vs_alone_check_tries_every_size_and_mixed_magnitudes(
        proof_models: dict[str, Path], name: str, found: str) -> None:
    """The second line on its own: merged sizes 2..16 (and max_batch_size) find a model that mixes
    rows only from a batch of 6 on; rows scaled by up to 1e6 find a mix by 1e-5."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(proof_models[name]), providers=["CPUExecutionProvider"])
    record = check_batch_independence(
        lambda feeds: session.run(None, feeds), [("x", ["batch", 8])], [("y", ["batch", 8])],
        random_rows([("x", ["batch", 8], np.float32)]), sizes=check_sizes(64))
    assert not record.batchable
    assert record.reason.startswith("output 'y' row ") and found in record.reason, record.reason
    assert check_sizes(64) == [*range(2, 17), 64] and check_sizes(4) == [2, 3, 4]


# -- the server ---------------------------------------------------------------------------------

def _request(name: str, i: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + i)
    if name == "embgate":
        return rng.integers(0, 64, (1, 3)).astype(np.int64)
    x = rng.standard_normal((1, 8)).astype(np.float32)
    if i % 16 == 0:  # one client in 16 sends large values
        x *= {"valuegate": 1e3, "tinymix": 1e6}.get(name, 1.0)
    return x


def _infer(s: Any, x: np.ndarray) -> tuple[int, Any]:
    import httpx

    doc = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "INT64" if x.dtype == np.int64
                       else "FP32", "data": x.ravel().tolist()}]}
    r = httpx.post(f"{s.url}/v2/models/{s.name}/infer", json=doc, timeout=30)
    return r.status_code, r.json()


def _assert_own_answers(s: Any, model: Path, requests: list[np.ndarray], ort_run: Any) -> None:
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(lambda x: _infer(s, x), requests))
    for i, (x, (status, body)) in enumerate(zip(requests, answers, strict=True)):
        assert status == 200, body
        out = body["outputs"][0]
        got = np.asarray(out["data"], np.float32).reshape(out["shape"])
        (want,) = ort_run(model, {"x": x})
        assert got.shape == want.shape, f"request {i}: shape {got.shape}, alone {want.shape}"
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"request {i}")


def _config(s: Any) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{s.url}/v2/models/{s.name}/config").json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", ["sizegate", "valuegate", "tinymix", "embgate"])
def test_row_mixing_outside_the_checked_rows_is_never_merged(
    serve, proof_models: dict[str, Path], ort_run, name: str
) -> None:
    model = proof_models[name]
    s = serve(model, "--max-queue-delay-us", "200000")
    config = _config(s)
    assert config["max_batch_size"] == 0
    assert "not proven row-independent: node " in config["parameters"]["batch_check"]["string_value"]
    _assert_own_answers(s, model, [_request(name, i) for i in range(64)], ort_run)


def test_an_output_that_drops_rows_never_shifts_other_answers(serve, proof_models: dict[str, Path],
                                                              ort_run) -> None:
    """Even merged by force, an output that lost rows is never sliced: every request is answered
    from its own run, and merging stops for the model."""
    model = proof_models["filter"]
    assert "drop_rows" in prove_row_independence(model).reason
    s = serve(model, "--max-queue-delay-us", "200000", "--unsafe-force-batching")
    requests = [np.random.default_rng(i).standard_normal((1, 4)).astype(np.float32) for i in range(32)]
    for x in requests[::4]:
        x[0, 0] = -10.0  # rows the model drops
    _assert_own_answers(s, model, requests, ort_run)
    config = _config(s)
    assert config["max_batch_size"] == 0
    assert "output 'y' has shape" in config["parameters"]["batch_check"]["string_value"]
    assert "serving without batching from now on: output 'y' has shape" in s.log()


def _with_record(directory: Path, onnx: Path, record: dict[str, Any]) -> Path:
    package(directory, [onnx], directory.name, 16)
    manifest = load_manifest(directory)
    manifest.batch_check = record
    write_manifest(directory, manifest)
    return directory


@pytest.mark.parametrize("kind", ["no digest", "other model's digest", "no proof", "no sizes"])
def test_a_record_not_made_on_the_served_model_is_not_trusted(
        serve, batch_models: dict[str, Path], ort_run, tmp_path: Path, kind: str) -> None:
    """x - x.mean(0) in a package whose batch_check says it passed: left over from another model,
    forged, or without the static proof. The runtime proves and checks for itself."""
    model = batch_models["mixing"]
    record: dict[str, Any] = {
        "batchable": True, "reason": "every output row equals its row run alone at batch 2, 3, 5",
        "batch_dim": "batch", "sizes": [2, 3, 5], "data": "example", "proven": True, "proof": "proven",
        "model_sha256": sha256_file(batch_models["rowwise"]),
    }
    if kind == "no digest":
        del record["model_sha256"]
        del record["proven"]
    elif kind == "no proof":
        record.update(proven=False, model_sha256=sha256_file(model))
    elif kind == "no sizes":
        record.update(sizes=[], model_sha256=sha256_file(model))
    s = serve(_with_record(tmp_path / "stale", model, record), "--max-queue-delay-us", "20000")
    config = _config(s)
    assert config["max_batch_size"] == 0
    assert "static proof at warm-up" in config["parameters"]["batch_check"]["string_value"]
    requests = [np.random.default_rng(i).standard_normal((1, 8)).astype(np.float32) for i in range(32)]
    _assert_own_answers(s, model, requests, ort_run)
