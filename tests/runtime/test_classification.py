"""The classification extension's arithmetic (:mod:`inferstack.runtime.classification`) on every
datatype Triton classifies, at the edges of each: the order (ties lowest index first, NaN last,
the extremes of each integer type) and the text of each value, checked against C's own
``snprintf`` (what ``std::to_string`` calls: ``%f`` for floats, ``%lld``/``%llu`` for integers).
The served answers over HTTP and gRPC are checked in test_client_compat.py."""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import pytest
from inferstack.runtime.classification import NUMERIC, class_count, top_k
from inferstack.runtime.errors import BadRequest
from inferstack.runtime.model import TensorInfo

from inferstack import datatypes

_libc = ctypes.CDLL(ctypes.util.find_library("c"))


def _c_text(value: object, kind: str) -> str:
    """``value`` printed by C's snprintf as std::to_string does."""
    buf = ctypes.create_string_buffer(512)
    if kind == "f":
        _libc.snprintf(buf, 512, b"%f", ctypes.c_double(float(value)))  # type: ignore[arg-type]
    elif kind == "u":
        _libc.snprintf(buf, 512, b"%llu", ctypes.c_ulonglong(int(value)))  # type: ignore[call-overload]
    else:
        _libc.snprintf(buf, 512, b"%lld", ctypes.c_longlong(int(value)))  # type: ignore[call-overload]
    return buf.value.decode()


def _reference(row: np.ndarray, k: int) -> list[str]:
    """Largest first by Python's own comparison of exact values; ties lowest index first; NaN last."""
    values = row.tolist()
    order = sorted(range(len(values)), key=lambda i: (values[i] != values[i], _neg(values[i]), i))
    return [f"{_c_text(values[i], row.dtype.kind)}:{i}" for i in order[:k]]


def _neg(v: float | int) -> float | int:
    return 0 if v != v else -v


@pytest.mark.parametrize("v2", sorted(NUMERIC))
def test_top_k_every_datatype_at_its_edges(v2: str) -> None:
    dtype = datatypes.by_v2(v2).numpy
    rng = np.random.default_rng(3)
    if dtype.kind == "f":
        info = np.finfo(dtype)
        edges = [info.max, info.min, info.tiny, -0.0, 0.0, 1e-7, 0.1, np.inf, -np.inf, np.nan, 0.1]
        rows = rng.standard_normal((3, 4, 6)).astype(dtype)
    else:
        info = np.iinfo(dtype)  # type: ignore[assignment]
        # max - 1 before max and min + 1 before min: a float64 key would tie them, index first
        edges = [info.max - 1, info.min + 1, info.max, 0, 1, info.min, 7, 7, info.max, 2, 3]
        rows = rng.integers(info.min, info.max, (3, 4, 6), dtype=dtype, endpoint=True)
    rows.reshape(3, -1)[1, : len(edges)] = np.array(edges, dtype=dtype)
    for k in (1, 5, 24, 1000):
        got = top_k(rows, k, batched=True)
        assert got.shape == (3, min(k, 24)) and got.dtype == np.object_
        for r in range(3):
            assert [x.decode() for x in got[r]] == _reference(rows[r].reshape(-1), k), (v2, k, r)
    whole = top_k(rows, 5, batched=False)
    assert whole.shape == (5,)
    assert [x.decode() for x in whole] == _reference(rows.reshape(-1), 5)


def test_top_k_float_text_is_printf() -> None:
    got = top_k(np.array([[0.25, 1e20, -3.5, 1 / 3]], dtype=np.float32), 4, batched=True)
    assert [x.decode() for x in got[0]] == [
        "100000002004087734272.000000:1", "0.333333:3", "0.250000:0", "-3.500000:2"]


def test_class_count_checks() -> None:
    fp32 = TensorInfo("OUT", datatypes.by_v2("FP32"), (-1, 10))
    assert class_count(3, fp32) == 3
    for bad in (0, -1, "3", 2.0, True, None):
        with pytest.raises(BadRequest, match="'classification' parameter"):
            class_count(bad, fp32)
    for v2 in ("BOOL", "FP16", "BYTES"):
        with pytest.raises(BadRequest, match=f"unsupported type '{v2}'"):
            class_count(2, TensorInfo("OUT", datatypes.by_v2(v2), (-1, 10)))
