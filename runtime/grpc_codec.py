"""Tensors of the Open Inference Protocol's gRPC messages <-> numpy, checked against the model's
signature with the same rules and messages as the HTTP bodies (:mod:`protocol`).

Inputs come either all in ``raw_input_contents`` (one entry per input, in the order of
``inputs``: little-endian, row-major; BYTES elements each a 4-byte little-endian length and the
bytes) or all as typed ``InferTensorContents``, the field of each datatype:

=========================  =================  =========================  =================
BOOL                       bool_contents      UINT8, UINT16, UINT32      uint_contents
INT8, INT16, INT32         int_contents       UINT64                     uint64_contents
INT64                      int64_contents     FP32 / FP64                fp32 / fp64_contents
BYTES                      bytes_contents     FP16, BF16                 raw only (as Triton)
=========================  =================  =========================  =================

Outputs always travel in ``raw_output_contents`` (what Triton answers, and what tritonclient's
``InferResult.as_numpy`` reads).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice
from typing import Any

import numpy as np
from inferstack.runtime.classification import classify
from inferstack.runtime.errors import BadRequest
from inferstack.runtime.model import Model, TensorInfo
from inferstack.runtime.proto import grpc_service_pb2 as pb
from inferstack.runtime.protocol import (
    DEFAULT_MAX_BYTES_ELEMENTS,
    InferRequest,
    _check_shape,
    _count,
    _describe,
    _from_binary,
    _requested_outputs,
    _text,
    _to_binary,
    check_all_given,
    count_strings,
    input_spec,
    same_batch,
)
from inferstack.runtime.wording import mixed_contents

#: v2 datatype -> the InferTensorContents field that carries it
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ALL_FIELDS = tuple(dict.fromkeys(CONTENTS_FIELD.values()))
#: bytes held per BYTES element once decoded (a Python bytes object and its slot in the array),
#: beyond the element's own bytes (counted in the message)
BYTES_ELEMENT_OVERHEAD = 64
#: typed contents are read into numpy this many elements at a time: each piece is one C call that
#: holds the GIL, so a message of millions of elements never stalls the other threads for long
_CHUNK = 1 << 16


def _nothing(n: int) -> None:
    return None


def _parameter(value: Any) -> Any:
    """An ``InferParameter`` as the JSON value the HTTP body would carry."""
    which = value.WhichOneof("parameter_choice")
    return None if which is None else getattr(value, which)


def decode_request(request: Any, model: Model,
                   max_bytes_elements: int = DEFAULT_MAX_BYTES_ELEMENTS,
                   hold: Callable[[int], None] = _nothing) -> InferRequest:
    """Check a ``ModelInferRequest`` against ``model`` and read its inputs (raw ones in place).
    BYTES inputs may hold ``max_bytes_elements`` elements together (checked from their shapes,
    before any is read), as over HTTP. Before each input is read, ``hold(n)`` is called with the
    bytes its decoding makes beyond the message (0 for raw numbers, read in place; a typed
    tensor's numpy array; :data:`BYTES_ELEMENT_OVERHEAD` per BYTES element): it may raise to refuse
    (the data plane's --max-buffered-bytes budget). Raises :class:`BadRequest` naming the input and
    what is wrong."""
    raw = request.raw_input_contents
    tensors = request.inputs
    if not tensors:
        raise BadRequest("'inputs' must be a non-empty array of tensors")
    if raw and len(raw) != len(tensors):
        for tensor in tensors:  # typed contents as well: that is the error, in Triton's words
            if tensor.HasField("contents"):
                raise BadRequest(mixed_contents(tensor.name, model.name))
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(tensors)} inputs; send one per input "
            "(in the order of 'inputs') or none"
        )
    inputs: dict[str, np.ndarray] = {}
    rows = -1
    key: list[Any] = []
    batching = model.batching
    strings = 0  # BYTES elements so far
    for index, tensor in enumerate(tensors):
        name = tensor.name
        spec = input_spec(model, index, name, inputs)
        shape = _check_shape({"datatype": tensor.datatype, "shape": list(tensor.shape)}, spec, model)
        strings = count_strings(name, spec, shape, strings, max_bytes_elements)
        hold(_decoded_bytes(tensor, shape, spec, bool(raw)))
        if raw:
            if tensor.HasField("contents"):
                raise BadRequest(mixed_contents(name, model.name))
            blob = raw[index]
            array = _from_binary(blob, 0, len(blob), shape, spec, f"raw_input_contents[{index}]")
        else:
            array = _from_contents(tensor, shape, spec)
        if batching:
            rows = same_batch(name, shape, rows)
            key.append(shape[1:])
        inputs[name] = array
    check_all_given(inputs, model)
    wanted = None
    if request.outputs:
        wanted = [{"name": o.name, "parameters": {k: _parameter(v) for k, v in o.parameters.items()}}
                  for o in request.outputs]
    classes: dict[str, int] = {}
    outputs = _requested_outputs(wanted, model, True, classes)
    return InferRequest(request.id or None, inputs, rows if batching else 1, tuple(key), outputs,
                        classes or None)


def _decoded_bytes(tensor: Any, shape: list[int], spec: TensorInfo, raw: bool) -> int:
    """Bytes that decoding ``tensor`` makes beyond its message (an upper bound; from counts the
    message already holds or its checked shape, before anything is read)."""
    dtype = spec.dtype
    if dtype.v2 == "BYTES":  # (the shape's count is bounded by --max-bytes-elements already)
        return _count(shape) * (BYTES_ELEMENT_OVERHEAD + 8)
    if raw:
        return 0
    field = CONTENTS_FIELD.get(dtype.v2)
    given = len(getattr(tensor.contents, field)) if field is not None else 0
    # the array, and for narrow integers the 64-bit array they are read into first
    narrow = dtype.numpy.kind in "iu" and dtype.itemsize < 8
    return given * (dtype.itemsize + (8 if narrow else 0))


def _read_values(values: Any, dtype: np.dtype, count: int) -> np.ndarray:
    """A protobuf repeated field of ``count`` numbers into a numpy array of ``dtype``, a piece at a
    time (see :data:`_CHUNK`)."""
    if count <= _CHUNK:
        return np.fromiter(values, dtype, count)
    out = np.empty(count, dtype)
    it = iter(values)
    for at in range(0, count, _CHUNK):
        n = min(_CHUNK, count - at)
        out[at:at + n] = np.fromiter(islice(it, n), dtype, n)
    return out


def _from_contents(tensor: Any, shape: list[int], spec: TensorInfo) -> np.ndarray:
    name, v2 = spec.name, spec.dtype.v2
    field = CONTENTS_FIELD.get(v2)
    if field is None:
        raise BadRequest(f"input {name!r}: {v2} has no typed contents; send it in raw_input_contents")
    contents = tensor.contents
    for other in _ALL_FIELDS:
        if other != field and len(getattr(contents, other)):
            raise BadRequest(
                f"input {name!r}: {v2} data goes in contents.{field}, found contents.{other}"
            )
    values = getattr(contents, field)
    count = _count(shape)
    if len(values) != count:
        raise BadRequest(
            f"input {name!r}: shape {_describe(shape)} needs {count} elements, got {len(values)}"
        )
    if v2 == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = [_text(v, name, i) for i, v in enumerate(values)]
        return array.reshape(shape)
    target = spec.dtype.numpy
    # narrow integers arrive as 32 bits: read them wide, then check the range
    narrow = target.kind in "iu" and target.itemsize < 8
    wide = _read_values(values, np.result_type(target, np.int64) if narrow else target, count)
    if wide.dtype != target and count:
        info = np.iinfo(target)
        if wide.min() < info.min or wide.max() > info.max:
            raise BadRequest(f"input {name!r}: a value is out of range for {v2} ({info.min}..{info.max})")
    return wide.astype(target, copy=False).reshape(shape)


def encode_response(model: Model, request: InferRequest, results: dict[str, np.ndarray]) -> Any:
    """The ``ModelInferResponse``: each requested output's name, datatype and shape, its bytes in
    ``raw_output_contents``."""
    if request.classes:
        model, results = classify(model, request.classes, results)
    response = pb.ModelInferResponse(model_name=model.name, model_version=model.version)
    if request.id is not None:
        response.id = request.id
    outputs = response.outputs
    raw = response.raw_output_contents
    for name, _binary in request.outputs:
        array = results[name]
        info = model.output_by_name[name]
        outputs.add(name=name, datatype=info.dtype.v2, shape=array.shape)
        raw.append(bytes(_to_binary(array, info)))
    return response
