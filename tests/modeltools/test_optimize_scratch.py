"""``optimize`` leaves nothing outside its output, even when onnxruntime's tools give up and write
their scratch files to the working directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from modeltools_helpers import read_manifest, run_cli

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))
from runtime_harness import package  # noqa: E402


@pytest.fixture
def fused_pkg(tmp_path: Path) -> Path:
    """A graph with com.microsoft's FusedMatMul: onnxruntime runs it, but its symbolic shape
    inference does not know it, gives up during quantization's pre-processing and saves
    ``sym_shape_infer_temp.onnx`` in the working directory."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    w = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    node = helper.make_node("FusedMatMul", ["x", "w"], ["y"], domain="com.microsoft", alpha=1.0)
    graph = helper.make_graph([node], "g", [x], [y], [helper.make_tensor("w", TensorProto.FLOAT, [16, 4], w)])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    )
    src = tmp_path / "src"
    src.mkdir()
    onnx.save(model, src / "model.onnx")
    return package(tmp_path / "pkg", [src / "model.onnx"], "fused", 8)


def test_optimize_leaves_the_working_directory_as_it_was(
    tmp_path: Path, fused_pkg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "out" / "opt"
    r = run_cli("optimize", fused_pkg, "--out", out, "--candidate", "int8-dynamic", "--seconds", "0.05")
    assert r.exit_code == 0, r.stderr
    assert read_manifest(out)["optimization"]["chosen"] in ("reference", "int8-dynamic")
    assert sorted(os.listdir(cwd)) == []  # no sym_shape_infer_temp.onnx, no <uuid>.data
    assert Path.cwd() == cwd
    assert sorted(os.listdir(out.parent)) == ["opt"]  # no work directory left beside the output
