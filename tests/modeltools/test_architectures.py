"""Real architectures, built from Hugging Face configs with random weights (nothing is downloaded):
a decoder (GPT-2) exported by the dynamo exporter on padding masks, an encoder (T5's) that the
dynamo exporter fails on and the TorchScript exporter handles, both served by the real server to
concurrent clients and compared with PyTorch."""

from __future__ import annotations

import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from modeltools_helpers import assert_one_line_error, load_models, read_manifest, run_cli

pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))
from runtime_harness import Served, start_server  # noqa: E402

VOCAB = 1000
SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class GPT2Logits(nn.Module):
        def __init__(self):
            super().__init__()
            from transformers import GPT2Config, GPT2LMHeadModel

            torch.manual_seed(0)
            config = GPT2Config(
                n_layer=2, n_embd=64, n_head=2, vocab_size=1000, n_positions=64,
                bos_token_id=0, eos_token_id=0,
            )
            self.model = GPT2LMHeadModel(config).eval()

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


    def gpt2():
        return GPT2Logits().eval()


    class T5Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            from transformers import T5Config, T5EncoderModel

            torch.manual_seed(0)
            config = T5Config(
                vocab_size=1000, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                decoder_start_token_id=0,
            )
            self.model = T5EncoderModel(config).eval()

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


    def t5_encoder():
        return T5Encoder().eval()
    """
)
INPUTS = ("-i", f"input_ids:batch,seq:INT64:0..{VOCAB - 1}", "-i", "attention_mask:batch,seq:INT64:0..1")


@pytest.fixture(scope="module")
def hf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hf") / "hf_models.py"
    path.write_text(SOURCE)
    return path


@pytest.fixture(scope="module")
def gpt2_pkg(tmp_path_factory: pytest.TempPathFactory, hf_file: Path) -> Path:
    out = tmp_path_factory.mktemp("gpt2") / "pkg"
    r = run_cli("export", f"{hf_file}:gpt2", *INPUTS, "-o", out, "--name", "gpt2")
    assert r.exit_code == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def t5_export(tmp_path_factory: pytest.TempPathFactory, hf_file: Path) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("t5") / "pkg"
    r = run_cli("export", f"{hf_file}:t5_encoder", *INPUTS, "-o", out, "--name", "t5")
    assert r.exit_code == 0, r.stderr
    return out, r.stdout


def _padded(rng: np.random.Generator, rows: int, seq: int) -> dict[str, np.ndarray]:
    lengths = rng.integers(1, seq + 1, (rows, 1))
    return {
        "input_ids": rng.integers(0, VOCAB, (rows, seq)).astype(np.int64),
        "attention_mask": (np.arange(seq) < lengths).astype(np.int64),
    }


def _serve_and_compare(pkg: Path, model: Any, name: str) -> None:
    """48 requests from 12 concurrent clients, single rows and 2-3 rows, of four lengths; every
    answer equals PyTorch's on that request alone."""
    import torch
    import tritonclient.http as th

    rng = np.random.default_rng(5)
    requests = [_padded(rng, 1 if i % 3 else 1 + i % 2 + 1, (3, 5, 8, 16)[i % 4]) for i in range(48)]
    with torch.no_grad():
        expected = [
            model(torch.from_numpy(r["input_ids"]), torch.from_numpy(r["attention_mask"])).numpy()
            for r in requests
        ]
    served: Served = start_server(pkg, "--max-queue-delay-us", "20000")
    try:
        out_name = read_manifest(pkg)["outputs"][0]["name"]

        def call(i: int) -> np.ndarray:
            client = th.InferenceServerClient(served.address)
            inputs = []
            for key, value in requests[i].items():
                inp = th.InferInput(key, list(value.shape), "INT64")
                inp.set_data_from_numpy(value, binary_data=i % 2 == 0)
                inputs.append(inp)
            result = client.infer(name, inputs, outputs=[th.InferRequestedOutput(out_name)])
            return result.as_numpy(out_name)

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(call, range(len(requests))))
    finally:
        served.stop()
    for i, (got, want) in enumerate(zip(answers, expected, strict=True)):
        assert got.shape == want.shape, i
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4, err_msg=f"request {i}")


def test_gpt2_from_a_config_exports_with_padding_masks_and_serves_pytorch_answers(
    gpt2_pkg: Path, hf_file: Path
) -> None:
    manifest = read_manifest(gpt2_pkg)
    assert manifest["exporter"] == "dynamo"
    assert manifest["parity"]["passed"]
    assert {b["dims"]["seq"] for b in manifest["parity"]["batches"]} == {1, 4, 8}
    _serve_and_compare(gpt2_pkg, load_models(hf_file).gpt2(), "gpt2")


@pytest.mark.slow  # a second GPT-2 export; the 0..1 export that passes is the fixture of the test above
def test_a_mask_drawn_from_0_to_9_fails_gpt2_parity_where_0_to_1_passes(
    tmp_path: Path, hf_file: Path
) -> None:
    # the same export as gpt2_pkg's, which passes, with the mask's range widened: values 2-9 and
    # rows that mask their first token make PyTorch and the exported graph disagree
    r = run_cli(
        "export",
        f"{hf_file}:gpt2",
        "-i",
        f"input_ids:batch,seq:INT64:0..{VOCAB - 1}",
        "-i",
        "attention_mask:batch,seq:INT64:0..9",
        "-o",
        tmp_path / "pkg",
    )
    assert_one_line_error(r, "parity check failed")


def test_t5_encoder_falls_back_to_torchscript_says_so_and_serves_pytorch_answers(
    t5_export: tuple[Path, str], hf_file: Path
) -> None:
    pkg, stdout = t5_export
    manifest = read_manifest(pkg)
    assert manifest["exporter"] == "torchscript"
    assert manifest["parity"]["passed"]
    assert "Cannot view a tensor" in manifest["source"]["exporter_reason"]
    lines = [ln for ln in " ".join(stdout.split()).split("exporter: ")[1:]]
    assert len(lines) == 1 and lines[0].startswith("torchscript")
    assert "the dynamo exporter failed" in lines[0]
    _serve_and_compare(pkg, load_models(hf_file).t5_encoder(), "t5")


def test_exporter_dynamo_refuses_the_fallback_in_one_line(tmp_path: Path, hf_file: Path) -> None:
    r = run_cli("export", f"{hf_file}:t5_encoder", *INPUTS, "-o", tmp_path / "pkg", "--exporter", "dynamo")
    assert_one_line_error(r, "ONNX export failed", "Cannot view a tensor")
    assert not (tmp_path / "pkg").exists()
