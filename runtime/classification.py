"""Triton's classification extension: an output requested with the parameter ``classification: k``
(HTTP: ``{"name": "OUTPUT0", "parameters": {"classification": 3}}``; gRPC:
``parameters["classification"].int64_param``; tritonclient: ``InferRequestedOutput(name,
class_count=k)``) is answered, instead of the tensor, with the ``k`` largest values of each batch
entry as BYTES strings ``"<value>:<index>"``, largest first.

As Triton (server ``src/classification.cc`` and its HTTP/gRPC front ends):

- each batch entry (a row along the batch axis when the model batches, i.e. its configuration's
  ``max_batch_size`` > 0; else the whole tensor) is flattened; ``index`` is the position in it;
- the answer's shape is ``[batch, min(k, n)]`` (``[min(k, n)]`` without batching), ``n`` the
  elements of one entry: a ``k`` larger than the class count is clamped, not refused;
- ``value`` is printed as C++ ``std::to_string`` prints it: integers in decimal, FP32 and FP64
  with ``%f`` (six decimals: ``0.250000``);
- outputs of BOOL, FP16 and BYTES are refused (400 / INVALID_ARGUMENT), as is a count that
  is not a positive integer.

Ties (equal values) are listed lowest index first (Triton's ``std::sort`` leaves their order
unspecified); NaN ranks below every number. No model here carries class labels, so Triton's
third field (``":<label>"``) is never written.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from inferstack.runtime.errors import BadRequest
from inferstack.runtime.model import Model, TensorInfo

from inferstack import datatypes

#: the output datatypes Triton classifies
NUMERIC = frozenset(
    ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP32", "FP64")
)
_BYTES = datatypes.by_v2("BYTES")


def class_count(value: Any, info: TensorInfo) -> int:
    """The ``classification`` parameter of requested output ``info``: a positive integer, else a
    :class:`BadRequest`; a :class:`BadRequest` too when the output's datatype cannot be
    classified."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(
            f"output {info.name!r}: invalid value type for 'classification' parameter, expected an "
            "integer (gRPC: int64_param)"
        )
    if value < 1:
        raise BadRequest(
            f"output {info.name!r}: invalid value for 'classification' parameter, expected a "
            f"positive integer, got {value}"
        )
    if info.dtype.v2 not in NUMERIC:
        raise BadRequest(
            f"class result not available for output {info.name!r} due to unsupported type "
            f"'{info.dtype.v2}'; the classification extension needs INT*, UINT*, FP32 or FP64"
        )
    return value


def top_k(array: np.ndarray, k: int, batched: bool) -> np.ndarray:
    """The classification of ``array`` (see the module docstring): an object array of bytes of
    shape ``[batch, min(k, n)]`` (``batched``) or ``[min(k, n)]``."""
    rows = array.reshape(array.shape[0] if batched and array.ndim else 1, -1)
    n = rows.shape[1]
    take = min(k, n)
    # a key whose ascending stable order is the values' descending one: floats negated (NaN stays
    # NaN, which sorts last), integers bit-inverted (~x = -x - 1 reverses the order with no overflow)
    key = -rows if rows.dtype.kind == "f" else ~rows
    order = np.argsort(key, axis=1, kind="stable")[:, :take]
    values = np.take_along_axis(rows, order, axis=1)
    form = "{:f}:{}" if rows.dtype.kind == "f" else "{}:{}"
    text = [[form.format(v, i).encode() for v, i in zip(vs, ix, strict=True)]
            for vs, ix in zip(values.tolist(), order.tolist(), strict=True)]
    out = np.empty((rows.shape[0], take), dtype=object)
    if take:
        out[:] = text
    return out if batched else out.reshape(take)


def classify(model: Model, classes: dict[str, int],
             results: dict[str, np.ndarray]) -> tuple[Model, dict[str, np.ndarray]]:
    """The model and results an encoder writes when outputs are classified: ``results`` with each
    output of ``classes`` (name -> k) replaced by its classification, and a shallow copy of
    ``model`` whose ``output_by_name`` says BYTES for those outputs (the session is shared)."""
    view = copy.copy(model)
    view.output_by_name = dict(model.output_by_name)
    results = dict(results)
    for name, k in classes.items():
        results[name] = top_k(results[name], k, model.batching)
        view.output_by_name[name] = TensorInfo(name, _BYTES, (-1, -1) if model.batching else (-1,))
    return view, results


__all__ = ["NUMERIC", "class_count", "classify", "top_k"]
