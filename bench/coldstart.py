"""Cold start: process start to ready for inferstack on a ~100 MB model on local disk, next to the
time onnxruntime alone needs to load the same file (the part no server can avoid)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from inferstack.manifest import MANIFEST_NAME, Manifest, TensorSpec, file_entries, write_manifest

HIDDEN = 5000  # 256x5000 + 5000x5000 + 5000x10 float32 weights: about 105 MB

_ORT_LOAD = """
import sys, time
import onnxruntime as ort
t0 = time.perf_counter()
o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
print(time.perf_counter() - t0)
"""


def build_large_package(directory: Path) -> Path:
    """A 256-5000-5000-10 MLP written with onnx.helper (random weights; the size is what matters)."""
    if (directory / MANIFEST_NAME).is_file():
        return directory
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(0)
    shapes = {"w1": (256, HIDDEN), "w2": (HIDDEN, HIDDEN), "w3": (HIDDEN, 10)}
    weights = [
        numpy_helper.from_array((rng.standard_normal(s) * 0.01).astype(np.float32), n)
        for n, s in shapes.items()
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("MatMul", ["a1", "w2"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["a2"]),
        helper.make_node("MatMul", ["a2", "w3"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    directory.mkdir(parents=True, exist_ok=True)
    save(model, str(directory / "model.onnx"))
    write_manifest(
        directory,
        Manifest(
            name="large",
            version="1",
            model_file="model.onnx",
            files=file_entries(directory, ["model.onnx"]),
            inputs=[TensorSpec("x", "FP32", [-1, 256])],
            outputs=[TensorSpec("logits", "FP32", [-1, 10])],
            max_batch_size=32,
            opset=18,
        ),
    )
    return directory


def ort_load_seconds(model: Path, core: int) -> float:
    out = subprocess.run(
        ["taskset", "-c", str(core), sys.executable, "-c", _ORT_LOAD, str(model)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def measure(work: Path, core: int, tries: int, start_server: Any) -> dict[str, Any]:
    """``start_server(package) -> seconds`` starts inferstack on the package and stops it again."""
    package = build_large_package(work / "models" / "large")
    model = package / "model.onnx"
    loads = [ort_load_seconds(model, core) for _ in range(tries)]
    starts = [start_server(package) for _ in range(tries)]
    ort_load = statistics.median(loads)
    start = statistics.median(starts)
    return {
        "model_bytes": model.stat().st_size,
        "ort_load_s": ort_load,
        "ort_load_runs": loads,
        "start_to_ready_s": start,
        "start_to_ready_runs": starts,
        "overhead_s": start - ort_load,
        "goal": "start_to_ready <= 2 s + ort_load",
        "met": start <= 2.0 + ort_load,
    }


if __name__ == "__main__":
    print(json.dumps({"ort_load_s": ort_load_seconds(Path(sys.argv[1]), 0)}))
