"""The Open Inference Protocol (KServe v2) request and response bodies, JSON and with the binary
tensor data extension, checked against the model's signature.

Every defect gets a :class:`BadRequest` naming the field and, where it applies, the input:
``input 'x': shape [1, 255] does not match the model's [-1, 256] (dim 1)``.
Binary tensors are read in place (``np.frombuffer``); JSON goes through orjson.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from inferstack.runtime.classification import class_count, classify
from inferstack.runtime.errors import BadRequest
from inferstack.runtime.model import Model, TensorInfo

from inferstack.datatypes import DType

JSON_CONTENT_TYPE = b"application/json"
BINARY_CONTENT_TYPE = b"application/octet-stream"
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY

#: numpy kinds a JSON array may have for each v2 datatype (after ``np.asarray``)
_FLOAT_KINDS = frozenset("iuf")
_INT_KINDS = frozenset("iu")
_BOOL_KINDS = frozenset("b")
#: BYTES elements one request may carry (``--max-bytes-elements``'s default)
DEFAULT_MAX_BYTES_ELEMENTS = 1 << 19
#: BYTES elements encoded per piece of a binary output (bounds the per-element objects alive at once)
_BYTES_CHUNK = 1 << 14
#: an empty input's shape with its zero dimensions counted as 1 may describe at most this many bytes
_MAX_EMPTY_DESCRIBED_BYTES = 1 << 28


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    rows: int  # along the batch axis (1 when the model is not batched)
    key: tuple[Any, ...]  # non-batch shapes: requests merge only with equal keys
    outputs: list[tuple[str, bool]]  # (name, binary) in answer order
    #: outputs to classify (name -> k, Triton's classification extension), None when none
    classes: dict[str, int] | None = None


def _describe(shape: Any) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be a JSON object, got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _params(value: Any, where: str) -> dict[str, Any]:
    """A ``parameters`` field: absent or null is no parameters; anything else must be an object."""
    return {} if value is None else _object(value, where)


def _flag(params: dict[str, Any], key: str, where: str) -> bool | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise BadRequest(f"{where}: parameter {key!r} must be true or false, got {_json_type(value)}")
    return value



def same_batch(name: str, shape: list[int], rows: int) -> int:
    """The batch size every input of one request shares (``rows`` is -1 before the first input);
    an input with another batch size is a 400 naming it. Used by the HTTP and gRPC codecs."""
    if rows != -1 and shape[0] != rows:
        raise BadRequest(f"input {name!r}: batch size {shape[0]} differs from the other inputs' {rows}")
    return shape[0]


def input_spec(model: Model, index: int, name: str, seen: dict[str, Any]) -> TensorInfo:
    """The model's input ``name`` (the request's ``index``-th), a 400 when the model has no such
    input or the request already gave it. Used by the HTTP and gRPC codecs."""
    spec = model.input_by_name.get(name)
    if spec is None:
        raise BadRequest(
            f"inputs[{index}]: unknown input {name!r}; model {model.name!r} has inputs "
            f"{', '.join(repr(t.name) for t in model.inputs)}"
        )
    if name in seen:
        raise BadRequest(f"input {name!r} appears twice")
    return spec


def count_strings(name: str, spec: TensorInfo, shape: list[int], strings: int, limit: int) -> int:
    """The request's BYTES elements so far, with input ``name`` of ``shape`` added; over ``limit``
    (``--max-bytes-elements``) is a 400, decided from the shapes before any element is read."""
    if spec.dtype.v2 != "BYTES":
        return strings
    strings += _count(shape)
    if strings > limit:
        raise BadRequest(
            f"input {name!r}: the request's BYTES inputs hold more than {limit} "
            "elements (--max-bytes-elements / INFERSTACK_MAX_BYTES_ELEMENTS); send fewer per request"
        )
    return strings


def check_all_given(inputs: dict[str, Any], model: Model) -> None:
    """Every input of ``model`` is in ``inputs``, else a 400 naming the missing ones."""
    missing = [t.name for t in model.inputs if t.name not in inputs]
    if missing:
        raise BadRequest(f"missing input {', '.join(repr(m) for m in missing)} for model {model.name!r}")

def decode(body: bytes, header_length: int | None, model: Model,
           max_bytes_elements: int = DEFAULT_MAX_BYTES_ELEMENTS) -> InferRequest:
    """Parse and check an infer request body; ``header_length`` is the value of
    ``Inference-Header-Content-Length`` (None when the whole body is JSON). BYTES inputs may hold
    ``max_bytes_elements`` elements together (checked from their shapes, before any is read)."""
    size = len(body)
    header: bytes | memoryview
    if header_length is None:
        header, binary_start = body, size
    else:
        if header_length > size:
            raise BadRequest(
                f"Inference-Header-Content-Length is {header_length}, but the body has only {size} bytes"
            )
        header, binary_start = memoryview(body)[:header_length], header_length
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as e:
        where = "request body" if header_length is None else "request JSON header"
        near = bytes(header[max(e.pos - 1, 0):e.pos + 8])
        if any(token in near for token in (b"NaN", b"Infinity")):  # Python's json.dumps writes them
            raise BadRequest(
                f"{where} is not valid JSON: NaN/Infinity at char {e.pos}; JSON cannot carry "
                "non-finite numbers: send the input as binary data (the binary tensor data extension)"
            ) from None
        raise BadRequest(f"{where} is not valid JSON: {e}") from None
    doc = _object(doc, "request body")

    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f"'id' must be a string, got {_json_type(request_id)}")
    params = _params(doc.get("parameters"), "'parameters'")
    binary_output = _flag(params, "binary_data_output", "request") or False

    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("'inputs' must be a non-empty array of tensors")
    inputs: dict[str, np.ndarray] = {}
    offset = binary_start
    rows = -1
    key: list[Any] = []
    batching = model.batching
    strings = 0  # BYTES elements so far
    for index, raw in enumerate(raw_inputs):
        tensor = _object(raw, f"inputs[{index}]")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise BadRequest(f"inputs[{index}]: 'name' must be a string, got {_json_type(name)}")
        spec = input_spec(model, index, name, inputs)
        shape = _check_shape(tensor, spec, model)
        strings = count_strings(name, spec, shape, strings, max_bytes_elements)
        tparams = _params(tensor.get("parameters"), f"input {name!r}: 'parameters'")
        binary_size = tparams.get("binary_data_size")
        has_data = "data" in tensor
        if binary_size is not None:
            if has_data:
                raise BadRequest(f"input {name!r} has both 'data' and binary_data_size; send one")
            if header_length is None:
                raise BadRequest(
                    f"input {name!r} has binary_data_size but the request has no "
                    "Inference-Header-Content-Length header"
                )
            if isinstance(binary_size, bool) or not isinstance(binary_size, int) or binary_size < 0:
                raise BadRequest(f"input {name!r}: binary_data_size must be a non-negative integer")
            end = offset + binary_size
            if end > size:
                raise BadRequest(
                    f"input {name!r}: binary_data_size {binary_size} runs past the end of the body "
                    f"({size - offset} bytes left)"
                )
            array = _from_binary(body, offset, binary_size, shape, spec)
            offset = end
        elif has_data:
            array = _from_json(tensor["data"], shape, spec)
        else:
            raise BadRequest(f"input {name!r} has neither 'data' nor a binary_data_size parameter")
        if batching:
            rows = same_batch(name, shape, rows)
            key.append(shape[1:])
        inputs[name] = array
    if offset != size:
        raise BadRequest(
            f"the body has {size - offset} bytes after the last binary input; binary_data_size values "
            f"and Inference-Header-Content-Length must add up to the body length ({size})"
        )
    check_all_given(inputs, model)

    classes: dict[str, int] = {}
    outputs = _requested_outputs(doc.get("outputs"), model, binary_output, classes)
    return InferRequest(request_id, inputs, rows if batching else 1, tuple(key), outputs, classes or None)


def _check_shape(tensor: dict[str, Any], spec: TensorInfo, model: Model) -> list[int]:
    name = spec.name
    datatype = tensor.get("datatype")
    if datatype != spec.dtype.v2:
        got = repr(datatype) if isinstance(datatype, str) else _json_type(datatype)
        raise BadRequest(f"input {name!r}: datatype {got} does not match the model's {spec.dtype.v2}")
    shape = tensor.get("shape")
    expected = spec.shape
    if type(shape) is not list:
        raise BadRequest(f"input {name!r}: 'shape' must be an array of non-negative integers")
    if len(shape) != len(expected):
        if all(type(d) is int and d >= 0 for d in shape):
            raise BadRequest(
                f"input {name!r}: shape {_describe(shape)} has {len(shape)} dimensions, the model's "
                f"{_describe(expected)} has {len(expected)}"
            )
        raise BadRequest(f"input {name!r}: 'shape' must be an array of non-negative integers")
    for i, d in enumerate(shape):  # type(d) is int: not bool, not float
        if type(d) is not int or d < 0:
            raise BadRequest(f"input {name!r}: 'shape' must be an array of non-negative integers")
        e = expected[i]
        if d != e and e != -1:
            raise BadRequest(
                f"input {name!r}: shape {_describe(shape)} does not match the model's "
                f"{_describe(expected)} (dim {i} is {d}, expected {e})"
            )
    if 0 in shape:
        # an empty tensor carries no bytes, so nothing bounds its other dimensions: numpy refuses
        # more than 2**63 bytes, and a model may still make them real (ReduceSum over the empty axis)
        described = _count([d or 1 for d in shape]) * max(spec.dtype.itemsize, 1)
        if described > _MAX_EMPTY_DESCRIBED_BYTES:
            raise BadRequest(
                f"input {name!r}: shape {_describe(shape)} is empty, but its other dimensions describe "
                f"{described} bytes of {spec.dtype.v2} (at most {_MAX_EMPTY_DESCRIBED_BYTES})"
            )
    if model.batching:
        if shape[0] < 1:
            raise BadRequest(f"input {name!r}: batch size (dim 0) must be at least 1")
        if shape[0] > model.max_batch_size:
            raise BadRequest(
                f"input {name!r}: batch size {shape[0]} exceeds the model's max batch size "
                f"{model.max_batch_size}"
            )
    return shape


def _count(shape: list[int]) -> int:
    return math.prod(shape)


def _from_binary(body: bytes, offset: int, nbytes: int, shape: list[int], spec: TensorInfo,
                 size_name: str = "binary_data_size") -> np.ndarray:
    """Elements of ``shape`` read in place from ``body[offset:offset + nbytes]`` (little-endian,
    row-major; BYTES: each element a 4-byte length and its bytes). ``size_name`` names the size in
    errors (the HTTP parameter, or the gRPC field)."""
    dtype: DType = spec.dtype
    count = _count(shape)
    if dtype.v2 == "BYTES":
        return _bytes_elements(memoryview(body)[offset:offset + nbytes], count, shape, spec.name)
    expected = count * dtype.itemsize
    if nbytes != expected:
        raise BadRequest(
            f"input {spec.name!r}: {size_name} is {nbytes} bytes, but shape {_describe(shape)} of "
            f"{dtype.v2} needs {expected}"
        )
    return np.frombuffer(body, dtype=dtype.numpy, count=count, offset=offset).reshape(shape)


def _bytes_elements(view: memoryview, count: int, shape: list[int], name: str) -> np.ndarray:
    """BYTES in the binary extension: each element is a 4-byte little-endian length, then the bytes."""
    items: list[str] = []
    pos, end = 0, len(view)
    while pos < end:
        if pos + 4 > end:
            raise BadRequest(f"input {name!r}: BYTES element {len(items)} has a truncated length prefix")
        length = int.from_bytes(view[pos:pos + 4], "little")
        pos += 4
        if pos + length > end:
            raise BadRequest(
                f"input {name!r}: BYTES element {len(items)} says {length} bytes, only {end - pos} left"
            )
        items.append(_text(bytes(view[pos:pos + length]), name, len(items)))
        pos += length
    if len(items) != count:
        raise BadRequest(
            f"input {name!r}: shape {_describe(shape)} needs {count} BYTES elements, got {len(items)}"
        )
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(shape)


def _text(raw: bytes, name: str, index: int) -> str:
    # onnxruntime string tensors hold text
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"input {name!r}: BYTES element {index} is not valid UTF-8") from None


def _flatten_strings(data: Any, name: str, out: list[str]) -> None:
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, list):
                if len(stack) > 32:
                    raise BadRequest(f"input {name!r}: 'data' is nested too deeply")
                stack.append(iter(item))
                break
            else:
                raise BadRequest(f"input {name!r}: BYTES data must be strings, found {_json_type(item)}")
        else:
            stack.pop()


def _check_nesting(data: list[Any], shape: list[int], name: str) -> None:
    """Nested ``data`` must follow the shape level by level (a ragged array is refused, as numpy
    refuses a ragged numeric one); flat data is checked by its element count alone."""
    level: list[Any] = [data]
    for depth, dim in enumerate(shape):
        for item in level:
            if not isinstance(item, list) or len(item) != dim:
                raise BadRequest(
                    f"input {name!r}: nested 'data' does not follow shape {_describe(shape)} "
                    f"(level {depth}); send a regular array or a flat one"
                )
        level = [x for item in level for x in item]
    if any(isinstance(x, list) for x in level):
        raise BadRequest(f"input {name!r}: nested 'data' is deeper than shape {_describe(shape)}")


def _has_booleans(data: list[Any]) -> bool:
    """Whether a (nested) JSON array holds ``true``/``false``: numpy would read them as 1 and 0.
    One ``type`` call per element, in C (``map``)."""
    level = [data]
    while level:
        types: set[type] = set()
        for items in level:
            types.update(map(type, items))
        if bool in types:
            return True
        if list not in types:
            return False
        level = [x for items in level for x in items if type(x) is list]
    return False


def _from_json(data: Any, shape: list[int], spec: TensorInfo) -> np.ndarray:
    name = spec.name
    count = _count(shape)
    if not isinstance(data, list):
        raise BadRequest(f"input {name!r}: 'data' must be an array, got {_json_type(data)}")
    dtype = spec.dtype
    if dtype.v2 == "BYTES":
        if any(isinstance(item, list) for item in data):
            _check_nesting(data, shape, name)
        flat: list[str] = []
        _flatten_strings(data, name, flat)
        if len(flat) != count:
            raise BadRequest(
                f"input {name!r}: shape {_describe(shape)} needs {count} elements, got {len(flat)}"
            )
        array = np.empty(count, dtype=object)
        array[:] = flat
        return array.reshape(shape)
    # cheap checks before numpy converts anything: the element count the data implies (flat, or
    # along the first path of a nested array) must be the shape's
    if data and isinstance(data[0], list):
        implied, level = 1, data
        for _ in range(64):
            implied *= len(level)
            if not level or not isinstance(level[0], list):
                break
            level = level[0]
    else:
        implied = len(data)
    if implied != count:
        raise BadRequest(f"input {name!r}: shape {_describe(shape)} needs {count} elements, got {implied}")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise BadRequest(f"input {name!r}: 'data' is not a regular array of numbers") from None
    if array.size != count:
        raise BadRequest(f"input {name!r}: shape {_describe(shape)} needs {count} elements, got {array.size}")
    if count:
        kind = array.dtype.kind
        target = dtype.numpy
        if kind == "O" and None in array.reshape(-1).tolist():
            raise BadRequest(
                f"input {name!r}: 'data' holds null; JSON cannot carry NaN or infinity: send "
                "this input as binary data (the binary tensor data extension)"
            )
        if target.kind != "b" and kind != "b" and _has_booleans(data):
            raise BadRequest(f"input {name!r}: {dtype.v2} data holds true/false; only BOOL takes booleans")
        if target.kind == "b":
            allowed = _BOOL_KINDS
        elif target.kind in "iu":
            allowed = _INT_KINDS
        else:
            allowed = _FLOAT_KINDS
        if kind in "fO" and target.kind in "iu":
            # integers beyond int64 (UINT64's upper half) make numpy fall back to float or object
            array = _exact_integers(data, array, target, spec)
            kind = array.dtype.kind
        if kind == "f" and target.kind in "iu":
            _integers_in_range(array, target, spec)
        if kind not in allowed:
            want = {"b": "true/false", "i": "integers", "u": "integers", "f": "numbers"}[target.kind]
            raise BadRequest(f"input {name!r}: {dtype.v2} data must be {want}; found {_kind_name(kind)}")
        if target.kind in "iu" and array.dtype != target:
            info = np.iinfo(target)
            if array.min() < info.min or array.max() > info.max:
                raise BadRequest(
                    f"input {name!r}: a value is out of range for {dtype.v2} ({info.min}..{info.max})"
                )
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            cast = array.astype(dtype.numpy, copy=False).reshape(shape)
    except (ValueError, TypeError, OverflowError):
        raise BadRequest(f"input {name!r}: 'data' cannot be read as {dtype.v2}") from None
    if cast.dtype.kind == "f" and count and not np.isfinite(cast).all():
        # JSON has no inf/NaN (orjson refuses them): a non-finite value here is one the
        # datatype cannot hold (FP16 70000, FP32 1e300), which would become inf
        limit = float(np.finfo(cast.dtype).max)
        raise BadRequest(
            f"input {name!r}: a value is out of range for {dtype.v2} (-{limit:.6g}..{limit:.6g})"
        )
    return cast


def _integers_in_range(array: np.ndarray, target: np.dtype, spec: TensorInfo) -> None:
    """JSON integers too large for 64 bits arrive as floats: name the range, not the kind."""
    info = np.iinfo(target)
    with np.errstate(invalid="ignore"):
        whole = np.isfinite(array) & (array == np.floor(array))
    # (as floats the bounds round to +-2**63 / 2**64; an integer equal to them arrives as an int)
    low, high = float(info.min), float(info.max)
    lowest = array.min()
    if whole.all() and (array.max() >= high or lowest < low or (info.min < 0 and lowest <= low)):
        raise BadRequest(
            f"input {spec.name!r}: a value is out of range for {spec.dtype.v2} ({info.min}..{info.max})"
        )


def _exact_integers(data: Any, array: np.ndarray, target: np.dtype, spec: TensorInfo) -> np.ndarray:
    try:
        exact = np.array(data, dtype=object)
    except (ValueError, TypeError, RecursionError):
        return array
    if exact.shape != array.shape or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in exact.reshape(-1)
    ):
        return array
    try:
        return np.array(data, dtype=target)
    except (OverflowError, ValueError):
        info = np.iinfo(target)
        raise BadRequest(
            f"input {spec.name!r}: a value is out of range for {spec.dtype.v2} ({info.min}..{info.max})"
        ) from None


def _kind_name(kind: str) -> str:
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers", "U": "strings",
            "O": "mixed or non-numeric values"}.get(kind, "non-numeric values")


def _requested_outputs(raw: Any, model: Model, binary_default: bool,
                       classes: dict[str, int] | None = None) -> list[tuple[str, bool]]:
    """The outputs to answer, (name, binary) in order; ``classes`` gets name -> k of those with
    a ``classification`` parameter (:mod:`classification`)."""
    if raw is None:
        return [(n, binary_default) for n in model.output_names]
    if not isinstance(raw, list):
        raise BadRequest(f"'outputs' must be an array, got {_json_type(raw)}")
    chosen: list[tuple[str, bool]] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        out = _object(item, f"outputs[{index}]")
        name = out.get("name")
        if not isinstance(name, str):
            raise BadRequest(f"outputs[{index}]: 'name' must be a string, got {_json_type(name)}")
        if name not in model.output_by_name:
            raise BadRequest(
                f"outputs[{index}]: unknown output {name!r}; model {model.name!r} has outputs "
                f"{', '.join(repr(n) for n in model.output_names)}"
            )
        if name in seen:
            raise BadRequest(f"output {name!r} is requested twice")
        seen.add(name)
        params = _params(out.get("parameters"), f"output {name!r}: 'parameters'")
        if "classification" in params and classes is not None:
            classes[name] = class_count(params["classification"], model.output_by_name[name])
        binary = _flag(params, "binary_data", f"output {name!r}")
        chosen.append((name, binary_default if binary is None else binary))
    return chosen


# -- responses -----------------------------------------------------------------------------------
def encode(
    model: Model, request: InferRequest, results: dict[str, np.ndarray]
) -> tuple[bytes, list[bytes | memoryview], int | None]:
    """The response: (JSON header, binary parts, header length or None when all JSON)."""
    if request.classes:
        model, results = classify(model, request.classes, results)
    entries = []
    blobs: list[bytes | memoryview] = []
    for name, binary in request.outputs:
        array = results[name]
        info = model.output_by_name[name]
        shape = list(array.shape)
        if binary:
            blob = _to_binary(array, info)
            blobs.append(blob)
            entries.append({"name": name, "datatype": info.dtype.v2, "shape": shape,
                            "parameters": {"binary_data_size": len(blob)}})
        else:
            entries.append({"name": name, "datatype": info.dtype.v2, "shape": shape,
                            "data": _to_json(array, info, name)})
    doc: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": entries}
    if request.id is not None:
        doc["id"] = request.id
    header = orjson.dumps(doc, option=_DUMPS_OPTIONS)
    return header, blobs, (len(header) if blobs else None)


def _to_json(array: np.ndarray, info: TensorInfo, name: str) -> Any:
    if info.dtype.v2 == "BYTES":
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in array.reshape(-1)]
    flat = array.reshape(-1)
    if flat.dtype.kind in "fc" and flat.size and not np.isfinite(flat).all():
        # JSON has no inf/-inf/NaN (orjson would write null, read back as NaN): refuse, never lose
        raise BadRequest(
            f"output {name!r} holds inf or NaN, which JSON cannot carry; request it as binary data "
            "(parameter binary_data_output, or binary_data on the output)"
        )
    if not flat.flags.c_contiguous:
        flat = np.ascontiguousarray(flat)
    return flat


def _to_binary(array: np.ndarray, info: TensorInfo) -> bytes | memoryview:
    if info.dtype.v2 == "BYTES":
        # in pieces: the per-element bytes objects of one piece at a time, then one join
        flat = array.reshape(-1)
        pieces = []
        for start in range(0, len(flat), _BYTES_CHUNK):
            parts: list[bytes] = []
            for x in flat[start:start + _BYTES_CHUNK]:
                raw = x if isinstance(x, bytes) else str(x).encode("utf-8")
                parts += (len(raw).to_bytes(4, "little"), raw)
            pieces.append(b"".join(parts))
        return b"".join(pieces)
    if array.dtype != info.dtype.numpy:
        array = array.astype(info.dtype.numpy)
    # flat bytes (a zero-size view with several dimensions cannot be cast)
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))  # type: ignore[arg-type]


def dumps(doc: Any) -> bytes:
    return orjson.dumps(doc, option=_DUMPS_OPTIONS)
