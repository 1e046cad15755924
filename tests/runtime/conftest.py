"""Real parts for the runtime's tests: ONNX models exported from small PyTorch modules (and built
with onnx.helper for the odd datatypes), packaged with inferstack.manifest, served by the real
server in a subprocess on a free loopback port, and onnxruntime run directly for the expected
results."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from runtime_harness import DTYPE_CASES, Served, package, save_graph, start_server  # noqa: E402


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runtime-models")


@pytest.fixture(scope="session")
def mlp_package(models_dir: Path) -> Path:
    """A small MLP (16 -> 32 -> 4) exported with the dynamo exporter with a dynamic batch axis,
    its weights in external data (two files in the package)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    export_dir = models_dir / "mlp-export"
    export_dir.mkdir()
    onnx_path = export_dir / "mlp.onnx"
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(
        module,
        (torch.randn(4, 16),),
        dynamo=True,
        input_names=["x"],
        output_names=["y"],
        dynamic_shapes={"input": {0: batch}},
    )
    program.save(str(onnx_path), external_data=True)
    files = sorted(export_dir.iterdir())
    return package(models_dir / "mlp", [onnx_path, *[f for f in files if f != onnx_path]], "mlp", 16)


@pytest.fixture(scope="session")
def dtypes_package(models_dir: Path) -> Path:
    """One Identity per v2 datatype (FP16 ... BYTES), batched along a dynamic first axis."""
    import onnx
    from onnx import TensorProto, helper

    inputs, outputs, nodes = [], [], []
    for name, (_, _, elem) in DTYPE_CASES.items():
        inputs.append(helper.make_tensor_value_info(name, elem, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"{name}_out", elem, ["batch", 3]))
        nodes.append(helper.make_node("Identity", [name], [f"{name}_out"]))
    graph = helper.make_graph(nodes, "dtypes", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    assert TensorProto.STRING == 8
    path = models_dir / "dtypes.onnx"
    onnx.save(model, str(path))
    return package(models_dir / "dtypes", [path], "dtypes", 8)


@pytest.fixture(scope="session")
def fixed_onnx(models_dir: Path) -> Path:
    """A bare .onnx with a fixed first dimension: z = x * 2 + 1 on [2, 3] (served without batching)."""
    from onnx import TensorProto, helper

    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t"]), helper.make_node("Add", ["t", "one"], ["z"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])],
        initializer=[two, one],
    )
    path = save_graph(graph, models_dir / "fixed.onnx")
    return path


@pytest.fixture(scope="session")
def ort_run() -> Callable[[Path, dict[str, np.ndarray]], list[np.ndarray]]:
    """Run onnxruntime directly on a model file (the expected results)."""
    import onnxruntime as ort

    sessions: dict[Path, ort.InferenceSession] = {}

    def run(model_file: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if model_file not in sessions:
            sessions[model_file] = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
        return sessions[model_file].run(None, feeds)  # type: ignore[no-any-return]

    return run


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """Start servers in a test; all are stopped afterwards."""
    started: list[Served] = []

    def _serve(model: str | Path, *args: str, **kwargs: object) -> Served:
        s = start_server(model, *args, **kwargs)  # type: ignore[arg-type]
        started.append(s)
        return s

    yield _serve
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def mlp_server(mlp_package: Path) -> Iterator[Served]:
    s = start_server(mlp_package)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def dtypes_server(dtypes_package: Path) -> Iterator[Served]:
    s = start_server(dtypes_package)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def batch_models(models_dir: Path) -> dict[str, Path]:
    """Models that merging can and cannot serve (see batch_models.export_all)."""
    from batch_models import export_all

    return export_all(models_dir / "batch-models")


@pytest.fixture(scope="session")
def grid_package(models_dir: Path) -> Path:
    """y = x * 2 on x: [batch, h, w] FP32 and t = s on s: [batch, n] BYTES: every non-batch
    dimension is dynamic, so a request may be empty (h = 0) or describe huge dimensions."""
    from onnx import TensorProto, helper

    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"]), helper.make_node("Identity", ["s"], ["t"])],
        "grid",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "h", "w"]),
         helper.make_tensor_value_info("s", TensorProto.STRING, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "h", "w"]),
         helper.make_tensor_value_info("t", TensorProto.STRING, ["batch", "n"])],
        initializer=[two],
    )
    path = save_graph(graph, models_dir / "grid.onnx")
    return package(models_dir / "grid", [path], "grid", 8)


@pytest.fixture(scope="session")
def grid_server(grid_package: Path) -> Iterator[Served]:
    s = start_server(grid_package)
    yield s
    s.stop()
