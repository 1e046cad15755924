"""The input/output signature of an ONNX graph, in v2 datatypes with -1 for dynamic dimensions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inferstack import datatypes
from inferstack.errors import InferstackError
from inferstack.manifest import TensorSpec


def load_graph(path: Path) -> Any:
    """The ONNX model proto without its external weights (enough for the signature and opset)."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InferstackError(f"{path}: not a valid ONNX model ({first})") from e


def _tensors(values: Any, skip: set[str], where: Path) -> list[TensorSpec]:
    specs = []
    for v in values:
        if v.name in skip:
            continue
        t = v.type.tensor_type
        try:
            dt = datatypes.by_onnx(t.elem_type).v2
        except KeyError as e:
            raise InferstackError(f"{where}: tensor {v.name!r}: {e.args[0]}") from None
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        specs.append(TensorSpec(name=v.name, datatype=dt, shape=shape))
    return specs


def signature(model: Any, where: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    initializers = {i.name for i in model.graph.initializer}
    return _tensors(model.graph.input, initializers, where), _tensors(model.graph.output, set(), where)


def opset(model: Any) -> int | None:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return None


def default_max_batch(inputs: list[TensorSpec], outputs: list[TensorSpec], default: int = 64) -> int:
    """``default`` when every input and output has a dynamic first dimension, else 0."""
    tensors = inputs + outputs
    if tensors and all(t.shape and t.shape[0] == -1 for t in tensors):
        return default
    return 0
