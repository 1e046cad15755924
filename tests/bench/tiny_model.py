"""The tiny model the benchmark's tests serve: x[N,8] @ W -> logits[N,3], with a dynamic batch
axis (what every server expects), packaged with its manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from inferstack.bench.models import ModelSpec

from inferstack.manifest import Manifest, TensorSpec, file_entries, write_manifest

SPEC = ModelSpec("tiny", "-", "x", (8,))
W = np.arange(8 * 3, dtype=np.float32).reshape(8, 3) / 10


def build_package(directory: Path) -> Path:
    """Write model.onnx and manifest.json (name ``tiny``, max batch 4) into ``directory``."""
    from onnx import TensorProto, helper, numpy_helper, save

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(W, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    save(model, str(directory / "model.onnx"))
    write_manifest(
        directory,
        Manifest(
            name="tiny",
            version="1",
            model_file="model.onnx",
            files=file_entries(directory, ["model.onnx"]),
            inputs=[TensorSpec("x", "FP32", [-1, 8])],
            outputs=[TensorSpec("logits", "FP32", [-1, 3])],
            max_batch_size=4,
        ),
    )
    return directory
