"""The Open Inference Protocol against the real server, through tritonclient (a real v2 client):
metadata, the Triton config extension, JSON and binary inference equal to onnxruntime run
directly, every datatype, and a precise 4xx for every kind of bad request."""

from __future__ import annotations

import contextlib
import gzip
import json
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as th
from runtime_harness import DTYPE_CASES, Served, metric
from tritonclient.utils import InferenceServerException


def _infer(
    client: th.InferenceServerClient,
    model: str,
    arrays: dict[str, np.ndarray],
    datatypes: dict[str, str],
    binary_in: bool,
    binary_out: bool,
    outputs: list[str],
    **kwargs: object,
) -> th.InferResult:
    inputs = []
    for name, array in arrays.items():
        inp = th.InferInput(name, list(array.shape), datatypes[name])
        inp.set_data_from_numpy(array, binary_data=binary_in)
        inputs.append(inp)
    requested = [th.InferRequestedOutput(n, binary_data=binary_out) for n in outputs]
    return client.infer(model, inputs, outputs=requested, **kwargs)


def test_server_and_model_metadata(mlp_server: Served) -> None:
    client = th.InferenceServerClient(mlp_server.address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
    server = client.get_server_metadata()
    assert server["name"] == "inferstack" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("mlp")
    assert meta["name"] == "mlp" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]


def test_config_in_triton_shape(mlp_server: Served) -> None:
    config = th.InferenceServerClient(mlp_server.address).get_model_config("mlp")
    assert config["max_batch_size"] == 16  # from the manifest
    assert config["platform"] == "onnxruntime_onnx"
    # inputs carry Triton's format (FORMAT_NONE unless the package gives an image layout)
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [16]}]
    assert config["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [4]}]
    assert "dynamic_batching" in config


@pytest.mark.parametrize("binary_in,binary_out", [(False, False), (True, True), (False, True), (True, False)])
def test_mlp_infer_equals_onnxruntime(
    mlp_server: Served, mlp_package: Path, ort_run, rng, binary_in: bool, binary_out: bool
) -> None:
    client = th.InferenceServerClient(mlp_server.address)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    result = _infer(client, "mlp", {"x": x}, {"x": "FP32"}, binary_in, binary_out, ["y"], request_id="r-7")
    expected = ort_run(mlp_package / "mlp.onnx", {"x": x})[0]
    got = result.as_numpy("y")
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    response = result.get_response()
    assert response["model_name"] == "mlp" and response["id"] == "r-7"
    assert ("binary_data_size" in response["outputs"][0].get("parameters", {})) is binary_out


def test_versioned_route_and_default_binary_output(mlp_server: Served, mlp_package: Path, ort_run) -> None:
    client = th.InferenceServerClient(mlp_server.address)
    x = np.ones((1, 16), np.float32)
    inp = th.InferInput("x", [1, 16], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp], model_version="1")  # no outputs named: all, binary
    np.testing.assert_allclose(
        result.as_numpy("y"), ort_run(mlp_package / "mlp.onnx", {"x": x})[0], rtol=1e-6
    )
    with pytest.raises(InferenceServerException,
                       match="Request for unknown model: 'mlp' version 2 is not found"):
        client.infer("mlp", [inp], model_version="2")


def _dtype_value(name: str, rng: np.random.Generator) -> np.ndarray:
    v2, np_type, _ = DTYPE_CASES[name]
    if v2 == "BYTES":
        return np.array([["a", "", "héllo"], ["x y", "0", "ünï"]], dtype=object)
    if v2 == "BOOL":
        return rng.integers(0, 2, (2, 3)).astype(bool)
    if v2.startswith("FP"):
        return rng.standard_normal((2, 3)).astype(np_type)
    info = np.iinfo(np_type)
    return np.array([[info.min, 0, 1], [info.max, 7, info.max - 1]], dtype=np_type)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_every_datatype_round_trips(
    dtypes_server: Served, dtypes_package: Path, ort_run, rng, binary: bool
) -> None:
    client = th.InferenceServerClient(dtypes_server.address)
    arrays = {name: _dtype_value(name, rng) for name in DTYPE_CASES}
    datatypes = {name: v2 for name, (v2, _, _) in DTYPE_CASES.items()}
    result = _infer(client, "dtypes", arrays, datatypes, binary, binary, [f"{n}_out" for n in DTYPE_CASES])
    expected = ort_run(dtypes_package / "dtypes.onnx", arrays)
    meta = {o["name"]: o["datatype"] for o in result.get_response()["outputs"]}
    for (name, (v2, np_type, _)), want in zip(DTYPE_CASES.items(), expected, strict=True):
        got = result.as_numpy(f"{name}_out")
        assert meta[f"{name}_out"] == v2
        if v2 == "BYTES":
            assert [x.decode() if isinstance(x, bytes) else x for x in got.ravel()] == list(want.ravel())
        else:
            assert got.dtype == np.dtype(np_type), name
            np.testing.assert_array_equal(got, want)


def test_fixed_first_dim_is_served_without_batching(serve, fixed_onnx: Path, ort_run) -> None:
    # asking for batching changes nothing: the graph has no dynamic first axis
    s = serve(fixed_onnx, "--max-batch-size", "8", "--max-queue-delay-us", "50000")
    client = th.InferenceServerClient(s.address)
    assert s.name == "fixed"  # the file stem
    assert client.get_model_config("fixed")["max_batch_size"] == 0
    assert client.get_model_config("fixed")["input"][0]["dims"] == [2, 3]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    result = _infer(client, "fixed", {"x": x}, {"x": "FP32"}, True, True, ["z"])
    np.testing.assert_array_equal(result.as_numpy("z"), x * 2 + 1)
    bad = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    r = httpx.post(f"{s.url}/v2/models/fixed/infer", json=bad)
    assert r.status_code == 400 and "dim 0 is 1, expected 2" in r.json()["error"]

    # concurrent requests each run alone and get their own answer
    def call(i: int) -> np.ndarray:
        xi = x + 10 * i
        return _infer(
            th.InferenceServerClient(s.address), "fixed", {"x": xi}, {"x": "FP32"}, False, True, ["z"]
        ).as_numpy("z")

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, range(6)))
    for i, got in enumerate(results):
        np.testing.assert_array_equal(got, (x + 10 * i) * 2 + 1)
    metrics = httpx.get(f"{s.url}/metrics").text
    sizes = {k: metric(metrics, f'inferstack_batch_size_{k}{{model="fixed"}}') for k in ("sum", "count")}
    assert sizes["count"] == sizes["sum"] == 7
    assert "serving without batching" in s.log()


def _post(url: str, body: bytes | dict, headers: dict[str, str] | None = None) -> httpx.Response:
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    return httpx.post(url, content=content, headers=headers or {})


X16 = [0.5] * 16


def _x(**overrides: object) -> dict[str, object]:
    tensor: dict[str, object] = {"name": "x", "shape": [1, 16], "datatype": "FP32", "data": X16}
    tensor.update(overrides)
    return tensor


BAD_JSON = [
    (b"{not json", "not valid JSON"),
    (b"[]", "request body must be a JSON object"),
    ({"inputs": []}, "'inputs' must be a non-empty array"),
    ({"inputs": [_x(name="z")]}, "unknown input 'z'; model 'mlp' has inputs 'x'"),
    ({"inputs": [_x(datatype="FP64")]}, "input 'x': datatype 'FP64' does not match the model's FP32"),
    ({"inputs": [_x(shape=[1, 15])]}, "dim 1 is 15, expected 16"),
    ({"inputs": [_x(shape=[16])]}, "has 1 dimensions, the model's [-1, 16] has 2"),
    ({"inputs": [_x(shape=[1, -16])]}, "'shape' must be an array of non-negative integers"),
    ({"inputs": [_x(data=[0.5] * 15)]}, "shape [1, 16] needs 16 elements, got 15"),
    ({"inputs": [_x(data=["a"] * 16)]}, "FP32 data must be numbers; found strings"),
    ({"inputs": [_x(data=[[0.5] * 8, [0.5] * 7])]}, "not a regular array"),
    # the count is checked before numpy converts anything
    ({"inputs": [_x(data=[[0.5] * 7, [0.5] * 9])]}, "shape [1, 16] needs 16 elements, got 14"),
    ({"inputs": [_x(data=[0.5] * 100_000)]}, "shape [1, 16] needs 16 elements, got 100000"),
    ({"inputs": [_x(data=None)]}, "'data' must be an array, got null"),
    (
        {"inputs": [_x(shape=[17, 16], data=[0.5] * 272)]},
        "batch size 17 exceeds the model's max batch size 16",
    ),
    ({"inputs": [_x(shape=[0, 16], data=[])]}, "batch size (dim 0) must be at least 1"),
    ({"inputs": [_x(), _x()]}, "input 'x' appears twice"),
    (
        {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32"}]},
        "neither 'data' nor a binary_data_size",
    ),
    ({"inputs": [_x()], "outputs": [{"name": "nope"}]}, "unknown output 'nope'"),
    (
        {"inputs": [_x()], "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]},
        "parameter 'binary_data' must be true or false",
    ),
    ({"inputs": [_x()], "id": 5}, "'id' must be a string"),
    (
        {
            "inputs": [
                {"name": "x", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}}
            ]
        },
        "no Inference-Header-Content-Length header",
    ),
    ({"inputs": [_x(parameters={"binary_data_size": 64})]}, "has both 'data' and binary_data_size"),
]


@pytest.mark.parametrize("body,message", BAD_JSON, ids=[m for _, m in BAD_JSON])
def test_bad_json_requests_get_a_precise_400(mlp_server: Served, body: bytes | dict, message: str) -> None:
    r = _post(f"{mlp_server.url}/v2/models/mlp/infer", body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def _binary_body(size: int | None = None, extra: bytes = b"", data_bytes: int = 64) -> tuple[bytes, int]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 16],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": data_bytes if size is None else size},
                }
            ]
        }
    )
    return header.encode() + np.ones(16, np.float32).tobytes()[:data_bytes] + extra, len(header)


def test_bad_binary_framing_gets_a_precise_400(mlp_server: Served) -> None:
    url = f"{mlp_server.url}/v2/models/mlp/infer"
    cases = []
    body, hl = _binary_body()
    cases.append((body, {"Inference-Header-Content-Length": str(len(body) + 1)}, "but the body has only"))
    cases.append((body, {"Inference-Header-Content-Length": "abc"}, "must be a non-negative integer"))
    digits = str(hl)
    # int() would take the first two
    for lenient in (f"+{digits}", f"{digits[0]}_{digits[1:]}", f"{digits}.0", f"-{digits}"):
        cases.append((body, {"Inference-Header-Content-Length": lenient}, "must be a non-negative integer"))
    cases.append(
        (body, {"Inference-Header-Content-Length": str(hl - 3)}, "request JSON header is not valid JSON")
    )
    body, hl = _binary_body(size=60, data_bytes=60)
    cases.append(
        (body, {"Inference-Header-Content-Length": str(hl)}, "binary_data_size is 60 bytes, but shape")
    )
    body, hl = _binary_body(size=64, data_bytes=40)
    cases.append((body, {"Inference-Header-Content-Length": str(hl)}, "runs past the end of the body"))
    body, hl = _binary_body(extra=b"xyz")
    cases.append((body, {"Inference-Header-Content-Length": str(hl)}, "3 bytes after the last binary input"))
    for content, headers, message in cases:
        r = _post(url, content, headers)
        assert r.status_code == 400, (message, r.text)
        assert message in r.json()["error"], (message, r.text)


def test_bytes_binary_framing_is_checked(dtypes_server: Served) -> None:
    def body(blob: bytes) -> tuple[bytes, dict[str, str]]:
        inputs = [
            {"name": n, "shape": [1, 3], "datatype": v2, "data": [0, 0, 0] if v2 != "BOOL" else [False] * 3}
            for n, (v2, _, _) in DTYPE_CASES.items()
            if v2 != "BYTES"
        ]
        inputs.append(
            {"name": "s", "shape": [1, 3], "datatype": "BYTES", "parameters": {"binary_data_size": len(blob)}}
        )
        header = json.dumps({"inputs": inputs}).encode()
        return header + blob, {"Inference-Header-Content-Length": str(len(header))}

    url = f"{dtypes_server.url}/v2/models/dtypes/infer"
    good = b"".join(len(s).to_bytes(4, "little") + s for s in (b"a", b"bc", b""))
    r = _post(url, *body(good))
    assert r.status_code == 200, r.text
    for blob, message in [
        (good[:-5], "says 2 bytes, only 1 left"),
        (good + b"\x01\x00", "truncated length prefix"),
        (good + b"\x00\x00\x00\x00", "needs 3 BYTES elements, got 4"),
        (b"\x01\x00\x00\x00\xff" + good[5:], "is not valid UTF-8"),
    ]:
        r = _post(url, *body(blob))
        assert r.status_code == 400 and message in r.json()["error"], (message, r.text)


def test_routes_methods_and_unknown_models(mlp_server: Served) -> None:
    base = mlp_server.url
    r = httpx.get(f"{base}/v2/models/nope")
    assert r.status_code == 404 and r.json()["error"] == (
        "Request for unknown model: 'nope' is not found; this server serves 'mlp'")
    r = httpx.post(f"{base}/v2/models/nope/infer", json={"inputs": [_x()]})
    assert r.status_code == 404
    r = httpx.get(f"{base}/v2/models/mlp/infer")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = httpx.get(f"{base}/nothing/here")
    assert r.status_code == 404 and "no route for GET /nothing/here" in r.json()["error"]
    r = httpx.post(f"{base}/v2/health/live")
    assert r.status_code == 405


def test_gzip_body_is_accepted_and_bad_encoding_refused(
    mlp_server: Served, mlp_package: Path, ort_run
) -> None:
    url = f"{mlp_server.url}/v2/models/mlp/infer"
    body = json.dumps({"inputs": [_x()], "outputs": [{"name": "y", "parameters": {"binary_data": False}}]})
    r = _post(url, gzip.compress(body.encode()), {"Content-Encoding": "gzip"})
    assert r.status_code == 200
    expected = ort_run(mlp_package / "mlp.onnx", {"x": np.array([X16], np.float32)})[0]
    np.testing.assert_allclose(np.array(r.json()["outputs"][0]["data"]), expected.ravel(), rtol=1e-6)
    r = _post(url, b"garbage", {"Content-Encoding": "gzip"})
    assert r.status_code == 400 and "not valid gzip" in r.json()["error"]
    r = _post(url, body.encode(), {"Content-Encoding": "br"})
    assert r.status_code == 400 and "unsupported Content-Encoding 'br'" in r.json()["error"]


def test_keep_alive_and_pipelined_requests_are_answered_in_order(mlp_server: Served) -> None:
    import socket

    bodies = [json.dumps({"id": str(i), "inputs": [_x(data=[float(i)] * 16)]}).encode() for i in range(5)]
    raw = b"".join(
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(b)}\r\n\r\n".encode()
        + b
        for b in bodies
    )
    with socket.create_connection((mlp_server.host, mlp_server.port), timeout=10) as sock:
        sock.sendall(raw)
        data = b""
        while data.count(b'"model_name"') < 5:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    ids = [json.loads(part.split(b"\r\n\r\n", 1)[1])["id"] for part in data.split(b"HTTP/1.1 ")[1:]]
    assert ids == ["0", "1", "2", "3", "4"]


def test_endless_headers_are_refused(mlp_server: Served) -> None:
    import socket

    with socket.create_connection((mlp_server.host, mlp_server.port), timeout=10) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Long: ")
        with contextlib.suppress(OSError):  # the server may close while we still send
            for _ in range(40):
                sock.sendall(b"a" * 16384)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b"request line and headers exceed" in data


def test_the_header_bound_counts_only_the_request_s_own_bytes(mlp_server: Served) -> None:
    """The 256 KiB bound on a request line and headers counts that request's bytes, not the end
    of the previous request's body that arrived in the same read: a pipelined request with 255 KB
    of headers after a body is answered (three times over), and one past the bound is refused."""
    import socket

    pad = b"".join(b"X-Pad-%02d: %s\r\n" % (i, b"a" * 10_000) for i in range(25))  # 250 KB
    for extra, want in ((5_000, b"HTTP/1.1 200 "),) * 3 + ((50_000, b"HTTP/1.1 400 "),):
        headers = pad + b"X-More: " + b"b" * extra + b"\r\n\r\n"
        body = b'{"inputs": [' + json.dumps(_x(data=[1.0] * 16)).encode() + b"]}" + b" " * 200_000
        first = (b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
                 + body[:-30_000])
        second = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        with socket.create_connection((mlp_server.host, mlp_server.port), timeout=10) as sock:
            sock.sendall(first)
            time.sleep(0.2)  # read by the server: what follows arrives in one segment, one read
            sock.sendall(body[-30_000:] + second)
            time.sleep(0.2)
            with contextlib.suppress(OSError):  # (refused: the server may close while we send)
                for i in range(0, len(headers) - 2, 10_000):
                    sock.sendall(headers[i:min(i + 10_000, len(headers) - 2)])
                    time.sleep(0.002)
                time.sleep(0.2)  # all but the blank line that ends them: read as still in the headers
                sock.sendall(b"\r\n")
            data = b""
            with contextlib.suppress(OSError):
                while chunk := sock.recv(65536):
                    data += chunk
        answers = data.split(b"HTTP/1.1 ")
        assert data.startswith(b"HTTP/1.1 200 ") and len(answers) == 3, data[:300]
        assert (b"HTTP/1.1 " + answers[2]).startswith(want), (extra, answers[2][:300])


def test_large_bodies_are_read_whole(dtypes_server: Served) -> None:
    big = ["x" * 300_000, "y" * 200_000, "z"]
    inputs = [
        {"name": n, "shape": [1, 3], "datatype": v2, "data": [0, 0, 0] if v2 != "BOOL" else [False] * 3}
        for n, (v2, _, _) in DTYPE_CASES.items()
        if v2 != "BYTES"
    ]
    inputs.append({"name": "s", "shape": [1, 3], "datatype": "BYTES", "data": big})
    body = {"inputs": inputs, "outputs": [{"name": "s_out", "parameters": {"binary_data": False}}]}
    r = _post(f"{dtypes_server.url}/v2/models/dtypes/infer", body)
    assert r.status_code == 200, r.text[:200]
    assert r.json()["outputs"][0]["data"] == big


def test_int64_out_of_range_is_named_precisely(dtypes_server: Served) -> None:
    def body(value: int) -> bytes:
        inputs = [
            {"name": n, "shape": [1, 3], "datatype": v2, "data": [0, 0, 0] if v2 != "BOOL" else [False] * 3}
            for n, (v2, _, _) in DTYPE_CASES.items()
            if n not in ("s", "i64")
        ]
        inputs.append({"name": "s", "shape": [1, 3], "datatype": "BYTES", "data": ["a", "b", "c"]})
        inputs.append({"name": "i64", "shape": [1, 3], "datatype": "INT64", "data": [0, value, 1]})
        return json.dumps({"inputs": inputs}).encode()

    for value in (2**63, 2**64, 2**70, -(2**63) - 1, -(2**64)):
        r = _post(f"{dtypes_server.url}/v2/models/dtypes/infer", body(value))
        assert r.status_code == 400, (value, r.text)
        assert r.json()["error"] == (
            "input 'i64': a value is out of range for INT64 (-9223372036854775808..9223372036854775807)"
        ), value
    r = _post(f"{dtypes_server.url}/v2/models/dtypes/infer", body(2**63 - 1))
    assert r.status_code == 200, r.text


def test_large_and_compressed_bodies_are_decoded_off_the_loop(
    mlp_server: Served, mlp_package: Path, ort_run
) -> None:
    """Bodies over 1 MiB (and compressed ones) are parsed in a worker thread: same answers, same
    precise errors."""
    url = f"{mlp_server.url}/v2/models/mlp/infer"
    x = np.random.default_rng(5).standard_normal((4, 16)).astype(np.float32)
    doc = {"id": " " * 1_200_000, "inputs": [_x(shape=[4, 16], data=x.ravel().tolist())],
           "outputs": [{"name": "y", "parameters": {"binary_data": False}}]}
    big = json.dumps(doc).encode()
    assert len(big) > 1 << 20
    r = _post(url, big)
    assert r.status_code == 200, r.text[:200]
    expected = ort_run(mlp_package / "mlp.onnx", {"x": x})[0]
    np.testing.assert_allclose(np.array(r.json()["outputs"][0]["data"]), expected.ravel(), rtol=1e-5)
    r = _post(url, big[:-1])
    assert r.status_code == 400 and "request body is not valid JSON" in r.json()["error"]
    # a count mismatch in a large body is refused before numpy converts the data
    doc["inputs"] = [_x(data=[0.5] * 300_000)]
    r = _post(url, json.dumps(doc).encode())
    assert r.status_code == 400 and "needs 16 elements, got 300000" in r.json()["error"]
    r = _post(url, gzip.compress(big), {"Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [4, 4]


def _grid_request(shape: list[int], binary_in: bool, binary_out: bool, data: np.ndarray | None = None,
                  strings: list[str] | None = None) -> tuple[bytes, dict[str, str]]:
    """x (FP32, ``shape``) and s (BYTES, [shape[0], len(strings)]) for the grid model."""
    strings = [] if strings is None else strings
    x = np.zeros(shape, np.float32) if data is None else data
    s_blob = b"".join(len(v.encode()).to_bytes(4, "little") + v.encode() for v in strings)
    blobs = []
    inputs: list[dict[str, object]] = []
    for name, datatype, tshape, payload, blob in (
        ("x", "FP32", shape, x.ravel().tolist(), x.tobytes()),
        ("s", "BYTES", [shape[0] if shape else 1, len(strings)], strings, s_blob),
    ):
        tensor: dict[str, object] = {"name": name, "datatype": datatype, "shape": tshape}
        if binary_in:
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = payload
        inputs.append(tensor)
    doc = {"inputs": inputs, "parameters": {"binary_data_output": binary_out}}
    header = json.dumps(doc).encode()
    if not blobs:
        return header, {}
    return header + b"".join(blobs), {"Inference-Header-Content-Length": str(len(header))}


def _grid_outputs(r: httpx.Response) -> dict[str, tuple[list[int], object]]:
    """name -> (shape, data: a list (JSON) or raw bytes (binary))."""
    assert r.status_code == 200, r.text
    length = r.headers.get("inference-header-content-length")
    header = json.loads(r.content[: int(length)] if length else r.content)
    out, pos = {}, int(length or 0)
    for o in header["outputs"]:
        size = o.get("parameters", {}).get("binary_data_size")
        if size is None:
            out[o["name"]] = (o["shape"], o["data"])
        else:
            out[o["name"]] = (o["shape"], r.content[pos:pos + size])
            pos += size
    assert pos == len(r.content) or not length
    return out


@pytest.mark.parametrize("binary_in", [False, True])
@pytest.mark.parametrize("binary_out", [False, True])
def test_empty_tensors_are_answered_200(grid_server: Served, binary_in: bool, binary_out: bool) -> None:
    """Zero-size inputs and outputs are valid: an empty answer of the right shape (the binary
    extension with binary_data_size 0), in JSON and binary, in and out."""
    url = f"{grid_server.url}/v2/models/grid/infer"
    for shape in ([1, 0, 5], [2, 3, 0], [1, 0, 0]):
        out = _grid_outputs(_post(url, *_grid_request(shape, binary_in, binary_out)))
        assert out["y"] == (shape, b"" if binary_out else [])
        assert out["t"] == ([shape[0], 0], b"" if binary_out else [])
    # and a non-empty request on the same path is answered with its values
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    out = _grid_outputs(_post(url, *_grid_request([1, 2, 3], binary_in, binary_out, x, ["a", "bc"])))
    shape, data = out["y"]
    got = np.frombuffer(data, np.float32) if binary_out else np.asarray(data, np.float32)
    assert shape == [1, 2, 3] and got.tolist() == (x * 2).ravel().tolist()
    t_shape, t_data = out["t"]
    assert t_shape == [1, 2]
    assert t_data == (b"\x01\x00\x00\x00a\x02\x00\x00\x00bc" if binary_out else ["a", "bc"])


def test_empty_tensors_through_tritonclient(grid_server: Served) -> None:
    client = th.InferenceServerClient(grid_server.address)
    x = np.zeros((1, 0, 4), np.float32)
    s = np.empty((1, 0), dtype=object)
    result = _infer(client, "grid", {"x": x, "s": s}, {"x": "FP32", "s": "BYTES"}, True, True, ["y", "t"])
    assert result.as_numpy("y").shape == (1, 0, 4)
    assert result.as_numpy("t").shape == (1, 0)


@pytest.mark.parametrize("binary_in", [False, True])
def test_shapes_no_tensor_can_have_get_a_precise_400(grid_server: Served, binary_in: bool) -> None:
    url = f"{grid_server.url}/v2/models/grid/infer"
    big = 2**62
    cases = [
        ([1, 0, big], f"input 'x': shape [1, 0, {big}] is empty, but its other dimensions describe "
                      f"{big * 4} bytes of FP32 (at most 268435456)"),
        ([1, big, 0], "is empty, but its other dimensions describe"),
        ([1, 2**31, 2**31], "needs" if not binary_in else "binary_data_size is 0 bytes, but shape"),
        ([1, -1, 4], "'shape' must be an array of non-negative integers"),
        ([1, 2, 2**63], "needs" if not binary_in else "binary_data_size is 0 bytes, but shape"),
        ([1, 0, 2**64 - 1], "is empty, but its other dimensions describe"),
        ([0, 2, 2], "batch size (dim 0) must be at least 1"),
        ([9, 1, 1], "batch size 9 exceeds the model's max batch size 8"),
    ]
    for shape, message in cases:
        tensor: dict[str, object] = {"name": "x", "datatype": "FP32", "shape": shape}
        s = {"name": "s", "datatype": "BYTES", "shape": [1, 0], "data": []}
        if binary_in:
            tensor["parameters"] = {"binary_data_size": 0}
            header = json.dumps({"inputs": [tensor, s]}).encode()
            r = _post(url, header, {"Inference-Header-Content-Length": str(len(header))})
        else:
            tensor["data"] = []
            r = _post(url, {"inputs": [tensor, s]})
        assert r.status_code == 400, (shape, r.text)
        assert message in r.json()["error"], (shape, r.text)


def _kserve_health(url: str, model: str) -> tuple[object, object, object]:
    """(live, ready, model ready) as kserve's own v2 REST client reports them. Runs in a child
    process: importing kserve registers its gRPC messages (package ``inference``) in protobuf's
    default pool, which tritonclient.grpc (the gRPC tests) registers too; one process cannot hold
    both. A client error is raised as ``RuntimeError("<its type>: <its message>")``."""
    import json
    import subprocess
    import sys

    script = """
import asyncio, json, sys
from kserve import InferenceRESTClient, RESTConfig

async def ask():
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=10))
    try:
        return [await client.is_server_live(sys.argv[1]), await client.is_server_ready(sys.argv[1]),
                await client.is_model_ready(sys.argv[1], sys.argv[2])]
    finally:
        await client.close()

try:
    print(json.dumps({"ok": asyncio.run(ask())}))
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
"""
    out = subprocess.run([sys.executable, "-c", script, url, model], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if "error" in result:
        raise RuntimeError(result["error"])
    live, ready, model_ready = result["ok"]
    return live, ready, model_ready


def test_health_bodies_as_kserve_and_tritonclient_read_them(serve, mlp_package: Path) -> None:
    s = serve(mlp_package, "--drain-delay-s", "5")
    assert httpx.get(f"{s.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{s.url}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{s.url}/v2/models/mlp/ready").json() == {"name": "mlp", "ready": True}
    assert httpx.get(f"{s.url}/v2/models/mlp/versions/1/ready").json() == {"name": "mlp", "ready": True}
    assert _kserve_health(s.url, "mlp") == (True, True, True)
    triton = th.InferenceServerClient(s.address)
    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready("mlp")
    # SIGTERM with a drain delay: live, not ready (503 with the reason), as both clients see it
    s.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while httpx.get(f"{s.url}/v2/health/ready").status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    r = httpx.get(f"{s.url}/v2/health/ready")
    assert r.status_code == 503 and r.json() == {"error": "not ready: draining"}
    assert httpx.get(f"{s.url}/v2/models/mlp/ready").json() == {"error": "not ready: draining"}
    assert triton.is_server_live() and not triton.is_server_ready() and not triton.is_model_ready("mlp")
    with pytest.raises(RuntimeError, match="HTTPStatusError: .*not ready: draining"):
        _kserve_health(s.url, "mlp")
