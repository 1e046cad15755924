"""One table for tensor element types: Open Inference Protocol (v2) names, numpy, ONNX and ORT.

The v2 protocol names datatypes ``BOOL, UINT8 ... FP64, BYTES`` (and ``BF16``); ONNX uses
``TensorProto`` enum values; onnxruntime reports ``tensor(float)`` style strings. Everything that
crosses one of those borders goes through this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    v2: str  # Open Inference Protocol name
    numpy: np.dtype  # element type of arrays on the wire and in ORT
    onnx: int  # onnx.TensorProto enum value
    ort: str  # onnxruntime NodeArg.type
    itemsize: int  # bytes per element in the binary extension; 0 for BYTES (length-prefixed)


_TABLE: tuple[DType, ...] = (
    DType("BOOL", np.dtype(np.bool_), 9, "tensor(bool)", 1),
    DType("UINT8", np.dtype(np.uint8), 2, "tensor(uint8)", 1),
    DType("UINT16", np.dtype(np.uint16), 4, "tensor(uint16)", 2),
    DType("UINT32", np.dtype(np.uint32), 12, "tensor(uint32)", 4),
    DType("UINT64", np.dtype(np.uint64), 13, "tensor(uint64)", 8),
    DType("INT8", np.dtype(np.int8), 3, "tensor(int8)", 1),
    DType("INT16", np.dtype(np.int16), 5, "tensor(int16)", 2),
    DType("INT32", np.dtype(np.int32), 6, "tensor(int32)", 4),
    DType("INT64", np.dtype(np.int64), 7, "tensor(int64)", 8),
    DType("FP16", np.dtype(np.float16), 10, "tensor(float16)", 2),
    DType("FP32", np.dtype(np.float32), 1, "tensor(float)", 4),
    DType("FP64", np.dtype(np.float64), 11, "tensor(double)", 8),
    DType("BYTES", np.dtype(np.object_), 8, "tensor(string)", 0),
)

V2_NAMES: tuple[str, ...] = tuple(d.v2 for d in _TABLE)
_BY_V2 = {d.v2: d for d in _TABLE}
_BY_ONNX = {d.onnx: d for d in _TABLE}
_BY_ORT = {d.ort: d for d in _TABLE}
_BY_NUMPY = {d.numpy: d for d in _TABLE if d.v2 != "BYTES"}

#: Short spellings accepted on the command line (``x:batch,3:float32``) besides the v2 names.
_ALIASES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "half": "FP16",
    "fp16": "FP16",
    "float32": "FP32",
    "float": "FP32",
    "fp32": "FP32",
    "float64": "FP64",
    "double": "FP64",
    "fp64": "FP64",
    "bytes": "BYTES",
    "string": "BYTES",
    "str": "BYTES",
}


def by_v2(name: str) -> DType:
    """The entry for a v2 datatype name; ``KeyError`` lists the known names."""
    try:
        return _BY_V2[name]
    except KeyError:
        raise KeyError(f"unknown datatype {name!r}; known: {', '.join(V2_NAMES)}") from None


def by_onnx(elem_type: int) -> DType:
    try:
        return _BY_ONNX[elem_type]
    except KeyError:
        raise KeyError(f"ONNX element type {elem_type} has no v2 datatype") from None


def by_ort(type_str: str) -> DType:
    try:
        return _BY_ORT[type_str]
    except KeyError:
        raise KeyError(f"onnxruntime type {type_str!r} has no v2 datatype") from None


def by_numpy(dtype: np.dtype | type) -> DType:
    dt = np.dtype(dtype)
    if dt.kind in ("U", "S", "O"):
        return _BY_V2["BYTES"]
    try:
        return _BY_NUMPY[dt]
    except KeyError:
        raise KeyError(f"numpy dtype {dt} has no v2 datatype") from None


def parse(name: str) -> DType:
    """A datatype from a user's spelling: a v2 name (``FP32``) or a numpy-style alias (``float32``)."""
    key = name.strip()
    if key.upper() in _BY_V2:
        return _BY_V2[key.upper()]
    if key.lower() in _ALIASES:
        return _BY_V2[_ALIASES[key.lower()]]
    allowed = ", ".join(V2_NAMES)
    raise KeyError(f"unknown datatype {name!r}; use a v2 name ({allowed}) or a numpy name such as float32")
