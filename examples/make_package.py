"""Regenerate the small model packages the stacks point at: ``examples/packages/<name>``.

    python -m inferstack.examples.make_package            # writes every package under examples/packages/
    python -m inferstack.examples.make_package --name tiny-relu --out DIR

``tiny-linear``: y = x @ W + b; ``tiny-relu``: y = relu(x @ W + b); ``tiny-softmax``:
y = softmax(x @ W + b) over the last axis (x: [batch, 4] FP32, y: [batch, 3] FP32; each row on its
own, so all three batch). The last two are the models a stack serves side by side from one
Deployment (``servers`` in stacks/Pulumi.dev.yaml). Each graph is built with ``onnx.helper``
from fixed weights, and the manifest holds no time, so the output is byte-for-byte the same on every
run: the committed package and its content digest stay stable, and the stacks'
rendering under mocks is reproducible. Each is a few hundred bytes, small enough to commit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inferstack.manifest import Manifest, TensorSpec, file_entries, write_manifest

NAME = "tiny-linear"
#: package name -> the ONNX operator applied to x @ W + b (None: none)
PACKAGES: dict[str, str | None] = {"tiny-linear": None, "tiny-relu": "Relu", "tiny-softmax": "Softmax"}
VERSION = "1"
OPSET = 18
PACKAGES_DIR = Path(__file__).resolve().parent / "packages"
DEFAULT_OUT = PACKAGES_DIR / NAME


def build_model(name: str = NAME) -> onnx.ModelProto:
    if name not in PACKAGES:
        raise ValueError(f"{name!r}: not one of {', '.join(PACKAGES)}")
    weights = (np.arange(12, dtype=np.float32).reshape(4, 3) - 6.0) / 8.0
    bias = np.array([0.5, -0.25, 0.0], dtype=np.float32)
    op = PACKAGES[name]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y" if op is None else "z"]),
    ]
    if op is not None:
        nodes.append(helper.make_node(op, ["z"], ["y"], **({"axis": -1} if op == "Softmax" else {})))
    graph = helper.make_graph(
        nodes=nodes,
        name=name,
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


def make_package(out: Path = DEFAULT_OUT, name: str = NAME) -> Manifest:
    model = build_model(name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(model.SerializeToString(deterministic=True))
    manifest = Manifest(
        name=name,
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
    parser.add_argument("--name", choices=sorted(PACKAGES), help="one package (default: every one)")
    parser.add_argument("--out", type=Path, help="package directory to write (with --name)")
    args = parser.parse_args()
    if args.out is not None and args.name is None:
        parser.error("--out needs --name")
    for name in [args.name] if args.name else list(PACKAGES):
        manifest = make_package(args.out or PACKAGES_DIR / name, name)
        print(f"{manifest.name}: digest {manifest.digest}")


if __name__ == "__main__":
    main()
