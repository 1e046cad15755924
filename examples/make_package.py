"""Regenerate the small model package the stacks point at: ``examples/packages/tiny-linear``.

    python -m inferstack.examples.make_package            # writes examples/packages/tiny-linear/

The graph is built with ``onnx.helper`` (y = x @ W + b, x: [batch, 4] FP32, y: [batch, 3] FP32)
from fixed weights, and the manifest holds no time, so the output is byte-for-byte the same on every
run: the committed package and its content digest stay stable, and the stacks'
rendering under mocks is reproducible. It is a few hundred bytes, small enough to commit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inferstack.manifest import Manifest, TensorSpec, file_entries, write_manifest

NAME = "tiny-linear"
VERSION = "1"
OPSET = 18
DEFAULT_OUT = Path(__file__).resolve().parent / "packages" / NAME


def build_model() -> onnx.ModelProto:
    weights = (np.arange(12, dtype=np.float32).reshape(4, 3) - 6.0) / 8.0
    bias = np.array([0.5, -0.25, 0.0], dtype=np.float32)
    graph = helper.make_graph(
        nodes=[
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        name=NAME,
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="inferstack.examples"
    )
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def make_package(out: Path = DEFAULT_OUT) -> Manifest:
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(build_model().SerializeToString(deterministic=True))
    manifest = Manifest(
        name=NAME,
        version=VERSION,
        model_file="model.onnx",
        files=file_entries(out, ["model.onnx"]),
        inputs=[TensorSpec("x", "FP32", [-1, 4])],
        outputs=[TensorSpec("y", "FP32", [-1, 3])],
        max_batch_size=64,
        opset=OPSET,
        # No library versions here: the graph is written by hand with a fixed IR version, so the
        # bytes do not depend on them, and recording them would break the byte-for-byte rebuild.
        producer={"tool": "inferstack.examples.make_package"},
    )
    write_manifest(out, manifest)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="package directory to write")
    manifest = make_package(parser.parse_args().out)
    print(f"{manifest.name}: digest {manifest.digest}")


if __name__ == "__main__":
    main()
