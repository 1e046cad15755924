"""The benchmark's models: example PyTorch modules exported to ONNX packages.

Each model is exported once with the dynamo exporter (opset 18, dynamic batch axis, example batch
2) into ``<work>/models/<name>/`` with a ``manifest.json``; a later run reuses the package when the
manifest is intact. The servers under test all load the same ``model.onnx``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inferstack.manifest import (
    MANIFEST_NAME,
    Manifest,
    TensorSpec,
    file_entries,
    load_manifest,
    verify_files,
    write_manifest,
)

OPSET = 18
EXAMPLE_BATCH = 2
PARITY_BATCHES = (1, 2, 7)
ATOL, RTOL = 1e-4, 1e-3


@dataclass(frozen=True)
class ModelSpec:
    """One benchmark model: where it comes from and the shape of one request's input."""

    name: str
    module: str  # import path of an ``inferstack.examples`` module with build() and INPUTS
    input_name: str
    sample_shape: tuple[int, ...]  # one request's shape without the batch axis
    output_name: str = "logits"

    def request_array(self, seed: int = 0) -> np.ndarray:
        """The input of one request (batch 1), the same for every setup."""
        rng = np.random.default_rng(seed)
        return rng.standard_normal((1, *self.sample_shape)).astype(np.float32)


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec("mlp", "inferstack.examples.mlp", "x", (256,)),
    "transformer": ModelSpec("transformer", "inferstack.examples.transformer", "x", (32, 64)),
    "cnn": ModelSpec("cnn", "inferstack.examples.cnn", "image", (3, 32, 32)),
}


def package_dir(work: Path, spec: ModelSpec) -> Path:
    return work / "models" / spec.name


def ensure_package(work: Path, spec: ModelSpec, max_batch_size: int) -> Path:
    """Export ``spec`` into a package under ``work`` unless an intact one is already there."""
    out = package_dir(work, spec)
    if (out / MANIFEST_NAME).is_file():
        try:
            manifest = load_manifest(out)
            verify_files(out, manifest)
            if manifest.max_batch_size == max_batch_size:
                return out
        except Exception:  # a stale or damaged package is simply rebuilt
            pass
    export_package(spec, out, max_batch_size)
    return out


def export_package(spec: ModelSpec, out: Path, max_batch_size: int) -> None:
    import onnx
    import onnxruntime
    import torch

    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_file():
            old.unlink()
    module = importlib.import_module(spec.module).build()
    example = torch.randn(EXAMPLE_BATCH, *spec.sample_shape)
    batch = torch.export.Dim("batch", min=1, max=4096)
    model_path = out / "model.onnx"
    torch.onnx.export(
        module,
        (example,),
        str(model_path),
        dynamo=True,
        opset_version=OPSET,
        input_names=[spec.input_name],
        output_names=[spec.output_name],
        dynamic_shapes={spec.input_name: {0: batch}},
        external_data=False,
    )
    graph = onnx.load(str(model_path), load_external_data=False)
    files = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != MANIFEST_NAME)
    parity = _parity(
        module, onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]), spec
    )
    if not parity["passed"]:
        raise RuntimeError(f"{spec.name}: ONNX output differs from PyTorch: {parity}")
    classes = int(graph.graph.output[0].type.tensor_type.shape.dim[1].dim_value)
    manifest = Manifest(
        name=spec.name,
        version="1",
        model_file="model.onnx",
        files=file_entries(out, files),
        inputs=[TensorSpec(spec.input_name, "FP32", [-1, *spec.sample_shape])],
        outputs=[TensorSpec(spec.output_name, "FP32", [-1, classes])],
        max_batch_size=max_batch_size,
        opset=OPSET,
        producer={
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "ir_version": str(graph.ir_version),
        },
        parity=parity,
        source={"factory": f"{spec.module}:build"},
    )
    write_manifest(out, manifest)


def _parity(module: Any, session: Any, spec: ModelSpec) -> dict[str, Any]:
    """PyTorch against onnxruntime at several batch sizes, in the manifest's parity format."""
    import torch

    batches = []
    for batch in PARITY_BATCHES:
        x = torch.randn(batch, *spec.sample_shape, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            want = module(x).numpy()
        got = session.run([spec.output_name], {spec.input_name: x.numpy()})[0]
        abs_diff = float(np.max(np.abs(got - want)))
        rel_diff = float(np.max(np.abs(got - want) / (np.abs(want) + 1e-12)))
        ok = bool(np.allclose(got, want, rtol=RTOL, atol=ATOL))
        batches.append(
            {
                "batch": batch,
                "passed": ok,
                "outputs": {
                    spec.output_name: {"max_abs_diff": abs_diff, "max_rel_diff": rel_diff, "passed": ok}
                },
            }
        )
    return {
        "atol": ATOL,
        "rtol": RTOL,
        "batches": batches,
        "max_abs_diff": max(b["outputs"][spec.output_name]["max_abs_diff"] for b in batches),
        "max_rel_diff": max(b["outputs"][spec.output_name]["max_rel_diff"] for b in batches),
        "passed": all(b["passed"] for b in batches),
    }
