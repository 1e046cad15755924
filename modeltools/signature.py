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


def named_dims(
    model: Any,
) -> tuple[list[tuple[str, list[int | str | None]]], list[tuple[str, list[int | str | None]]]]:
    """Inputs and outputs as ``(name, dims)``, each dimension an ``int`` (fixed), its ``dim_param``
    name (a named dynamic dimension, e.g. ``batch``) or None (unnamed): the form of
    :mod:`inferstack.batchcheck`."""
    initializers = {i.name for i in model.graph.initializer}

    def dims(v: Any) -> list[int | str | None]:
        return [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in v.type.tensor_type.shape.dim
        ]

    return (
        [(v.name, dims(v)) for v in model.graph.input if v.name not in initializers],
        [(v.name, dims(v)) for v in model.graph.output],
    )
