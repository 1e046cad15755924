"""Hypothesis throws arbitrary and almost-valid request bodies (JSON and binary framing) at the live
server: the answer is never a 5xx, and every refusal is ``{"error": "..."}``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_harness import DTYPE_CASES, Served

from inferstack.datatypes import V2_NAMES

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=30,
)
names = st.sampled_from(["x", "y", "", "X"] + list(DTYPE_CASES))
datatypes = st.sampled_from([*V2_NAMES, "fp32", "BF16", ""]) | st.text(max_size=5)
shapes = (
    st.lists(st.integers(-2, 20), max_size=4)
    | st.lists(st.integers(0, 3), min_size=2, max_size=2)
    | json_values
)
numbers = st.lists(
    st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(-(2**65), 2**65)
    | st.booleans()
    | st.text(max_size=3),
    max_size=40,
)
data = numbers | st.lists(st.lists(st.floats(-1e3, 1e3), max_size=20), max_size=4) | json_values


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, Any]:
    tensor: dict[str, Any] = {"name": draw(names), "datatype": draw(datatypes), "shape": draw(shapes)}
    if draw(st.booleans()):
        tensor["data"] = draw(data)
    if draw(st.booleans()):
        tensor["parameters"] = draw(
            st.fixed_dictionaries({"binary_data_size": st.integers(-4, 200) | json_scalars}) | json_values
        )
    return tensor


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {"inputs": draw(st.lists(tensors(), max_size=3) | json_values)}
    if draw(st.booleans()):
        doc["outputs"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "name": names,
                        "parameters": st.fixed_dictionaries({"binary_data": json_scalars}) | json_values,
                    }
                ),
                max_size=2,
            )
            | json_values
        )
    if draw(st.booleans()):
        doc["parameters"] = draw(st.fixed_dictionaries({"binary_data_output": json_scalars}) | json_values)
    if draw(st.booleans()):
        doc["id"] = draw(json_scalars)
    return doc


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c


def _check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error, str) and error


FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("target", ["mlp", "dtypes"])
@FUZZ
@given(doc=requests() | json_values)
def test_json_bodies_never_get_a_5xx(
    target: str, doc: Any, client: httpx.Client, mlp_server: Served, dtypes_server: Served
) -> None:
    server = mlp_server if target == "mlp" else dtypes_server
    _check(client.post(f"{server.url}/v2/models/{target}/infer", content=json.dumps(doc).encode()))


@pytest.mark.parametrize("target", ["mlp", "dtypes"])
@FUZZ
@given(
    doc=requests(),
    tail=st.binary(max_size=300),
    header_length=st.none()
    | st.integers(-5, 2000)
    | st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=4),
)
def test_binary_framing_never_gets_a_5xx(
    target: str,
    doc: dict[str, Any],
    tail: bytes,
    header_length: Any,
    client: httpx.Client,
    mlp_server: Served,
    dtypes_server: Served,
) -> None:
    server = mlp_server if target == "mlp" else dtypes_server
    header = json.dumps(doc).encode()
    value = str(len(header)) if header_length is None else str(header_length)
    r = client.post(
        f"{server.url}/v2/models/{target}/infer",
        content=header + tail,
        headers={"Inference-Header-Content-Length": value},
    )
    _check(r)


@FUZZ
@given(raw=st.binary(max_size=400))
def test_arbitrary_bytes_never_get_a_5xx(raw: bytes, client: httpx.Client, mlp_server: Served) -> None:
    _check(client.post(f"{mlp_server.url}/v2/models/mlp/infer", content=raw))


# -- shapes: products that overflow, zero-size, negative and huge dimensions, binary sizes that
#    do not match; JSON and binary, in and out. A 200 must carry the right answer.
dims = st.sampled_from([0, 1, 2, 3, -1, 2**31, 2**32 + 1, 2**62, 2**63 - 1, 2**64 - 1]) | st.integers(0, 4)


@st.composite
def shaped_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str], list[Any] | None]:
    """A grid-model request (x: [batch, h, w] FP32; s: [batch, n] BYTES) with a drawn shape for
    x and data that fits it or not; returns (body, headers, x's shape when the data fits it)."""
    # mostly [batch, h, w] with a valid batch, so that h and w reach the model; sometimes anything
    shape = draw(st.tuples(st.integers(1, 3), dims, dims).map(list) | st.lists(dims, max_size=4))
    binary = draw(st.booleans())
    count = 1
    for d in shape:
        count *= d if d >= 0 else 0
    fits = count <= 64 and all(d >= 0 for d in shape)
    n = count if fits else draw(st.integers(0, 8))
    if draw(st.integers(0, 4)) == 0:
        n = max(0, n + draw(st.sampled_from([-1, 1])))  # one element too few or too many
    values = [float(i) for i in range(n)]
    blob = b"".join(int(v).to_bytes(4, "little") for v in values)  # not floats: any bytes will do
    x: dict[str, Any] = {"name": "x", "datatype": "FP32", "shape": shape}
    s: dict[str, Any] = {"name": "s", "datatype": "BYTES", "shape": [1, 0], "data": []}
    if binary:
        size = draw(st.sampled_from([len(blob), len(blob) + 4, max(0, len(blob) - 4), 0]))
        x["parameters"] = {"binary_data_size": size}
        blob = (blob + b"\0" * 4)[:size] if size <= len(blob) + 4 else blob
    else:
        x["data"] = values
    doc = {"inputs": [x, s], "parameters": {"binary_data_output": draw(st.booleans())}}
    header = json.dumps(doc).encode()
    if binary:
        return header + blob, {"Inference-Header-Content-Length": str(len(header))}, shape
    return header, {}, shape


@FUZZ
@given(case=shaped_requests())
def test_shapes_and_binary_sizes_get_a_200_or_a_400(case: tuple[bytes, dict[str, str], Any],
                                                    client: httpx.Client, grid_server: Served) -> None:
    body, headers, shape = case
    r = client.post(f"{grid_server.url}/v2/models/grid/infer", content=body, headers=headers)
    _check(r)
    if r.status_code == 200:
        length = r.headers.get("inference-header-content-length")
        header = json.loads(r.content[: int(length)] if length else r.content)
        y = next(o for o in header["outputs"] if o["name"] == "y")
        assert y["shape"] == shape
        if "data" in y:
            assert len(y["data"]) == int(np.prod(shape))
        else:
            assert y["parameters"]["binary_data_size"] == 4 * int(np.prod(shape))
