"""Values JSON cannot carry or a datatype cannot hold are refused, never changed: inf/NaN outputs
requested as JSON, overflowing FP16/FP32 inputs, booleans for numbers, null, ragged BYTES,
non-object parameters, a truncated gzip body, and onnxruntime's internal paths in a 400."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from runtime_harness import save_graph

VALID: dict[str, tuple[str, list[Any]]] = {
    "f16": ("FP16", [1.5, 2, 3]),
    "f32": ("FP32", [1.5, 2, 3]),
    "f64": ("FP64", [1.5, 2, 3]),
    "i8": ("INT8", [1, 2, 3]),
    "i32": ("INT32", [1, 2, 3]),
    "i64": ("INT64", [1, 2, 3]),
    "u8": ("UINT8", [1, 2, 3]),
    "u64": ("UINT64", [1, 2, 3]),
    "b": ("BOOL", [True, False, True]),
    "s": ("BYTES", ["a", "b", "c"]),
}


def _doc(**override: Any) -> dict[str, Any]:
    inputs = []
    for name, (datatype, data) in VALID.items():
        tensor = {"name": name, "datatype": datatype, "shape": [1, 3], "data": data}
        tensor.update(override.get(name, {}))
        inputs.append(tensor)
    return {"inputs": inputs}


def _post(server: Any, doc: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/dtypes/infer", content=json.dumps(doc), timeout=30)


def test_the_valid_request_is_answered(dtypes_server) -> None:
    r = _post(dtypes_server, _doc())
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"f16": {"data": [70000, 1, 2]}}, "input 'f16': a value is out of range for FP16 (-65504..65504)"),
        ({"f32": {"data": [1e300, 1, 2]}}, "input 'f32': a value is out of range for FP32 (-3.40282e+38.."),
        ({"f32": {"data": [True, 2.5, 3]}}, "input 'f32': FP32 data holds true/false; only BOOL takes"),
        ({"i64": {"data": [[1, True, 3]]}}, "input 'i64': INT64 data holds true/false; only BOOL takes"),
        ({"f32": {"data": [None, 2.5, 3]}}, "input 'f32': 'data' holds null; JSON cannot carry NaN"),
        ({"s": {"shape": [2, 3], "data": [["a"], ["b", "c", "d", "e", "f"]]}},
         "input 's': nested 'data' does not follow shape [2, 3]"),
        ({"f32": {"parameters": []}}, "input 'f32': 'parameters' must be a JSON object, got an array"),
    ],
)
def test_values_json_or_the_datatype_cannot_hold_are_refused(
    dtypes_server, override: dict[str, Any], message: str
) -> None:
    doc = _doc(**override)
    if override.get("s", {}).get("shape") == [2, 3]:  # every input of the request: two rows
        doc = {"inputs": [t if t["name"] == "s" else {**t, "shape": [2, 3], "data": t["data"] * 2}
                          for t in doc["inputs"]]}
    r = _post(dtypes_server, doc)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"], r.json()


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_json_inputs_say_to_send_binary_data(dtypes_server, token: str) -> None:
    body = json.dumps(_doc()).replace("[1.5, 2, 3]", f"[1.5, {token}, 3]", 1)
    r = httpx.post(f"{dtypes_server.url}/v2/models/dtypes/infer", content=body)
    assert r.status_code == 400, r.text
    assert "NaN/Infinity" in r.json()["error"] and "binary data" in r.json()["error"], r.text


def test_request_parameters_that_are_not_an_object_are_refused(dtypes_server) -> None:
    r = _post(dtypes_server, {**_doc(), "parameters": []})
    assert r.status_code == 400 and r.json()["error"] == "'parameters' must be a JSON object, got an array"
    regular = _doc(s={"shape": [1, 3], "data": [["a", "b", "c"]]})
    assert _post(dtypes_server, regular).status_code == 200  # nested BYTES that follows the shape


def _identity(models_dir: Path) -> Path:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    return save_graph(graph, models_dir / "values-identity.onnx")


def test_non_finite_outputs_are_refused_as_json_and_exact_as_binary(serve, models_dir: Path) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    s = serve(_identity(models_dir))
    client = httpclient.InferenceServerClient(s.address)
    x = np.array([[np.inf, -np.inf, np.nan, 1.5]], np.float32)
    tensor = httpclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    with pytest.raises(InferenceServerException) as info:
        client.infer(s.name, [tensor], outputs=[httpclient.InferRequestedOutput("y", binary_data=False)])
    assert info.value.status() == "400"
    assert "output 'y' holds inf or NaN, which JSON cannot carry" in info.value.message()
    assert "binary_data_output" in info.value.message()
    result = client.infer(s.name, [tensor], outputs=[httpclient.InferRequestedOutput("y", binary_data=True)])
    np.testing.assert_array_equal(result.as_numpy("y"), x)
    finite = np.array([[1.0, -2.0, 3.5, 0.0]], np.float32)
    tensor.set_data_from_numpy(finite, binary_data=True)
    result = client.infer(s.name, [tensor], outputs=[httpclient.InferRequestedOutput("y", binary_data=False)])
    np.testing.assert_array_equal(result.as_numpy("y"), finite)


def test_a_truncated_gzip_body_says_so(dtypes_server) -> None:
    body = gzip.compress(json.dumps(_doc()).encode())
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    url = f"{dtypes_server.url}/v2/models/dtypes/infer"
    assert httpx.post(url, content=body, headers=headers).status_code == 200
    for cut in (body[: len(body) // 2], body[:-4]):  # half the stream; the length trailer cut
        r = httpx.post(url, content=cut, headers=headers)
        assert r.status_code == 400 and r.json()["error"] == "gzip body is truncated or corrupt", r.text


def test_onnxruntime_errors_carry_no_internal_source_paths(serve, models_dir: Path) -> None:
    from onnx import TensorProto, helper

    shape = helper.make_tensor("s", TensorProto.INT64, [2], [-1, 4])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["y"])],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[shape],
    )
    path = save_graph(graph, models_dir / "values-reshape.onnx")
    s = serve(path)
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    r = httpx.post(f"{s.url}/v2/models/{s.name}/infer", json=doc)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "The input tensor cannot be reshaped to the requested shape" in error, error
    assert "onnxruntime_src" not in error and ".h:" not in error and "was false" not in error, error
    assert "[ONNXRuntimeError]" not in error, error
