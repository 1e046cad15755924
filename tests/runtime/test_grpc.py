"""The gRPC front end, driven by tritonclient.grpc (sync and asyncio) against the real server: the
same answers, refusals, auth, shedding and drain as over HTTP."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
import tritonclient.http as th
from runtime_harness import DTYPE_CASES, Served, metric, save_graph
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.timeout(120)


def _metric(text: str, name: str) -> float:
    return metric(text, name)


def _infer(protocol: str, s: Served, model: str, arrays: dict[str, np.ndarray],
           headers: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """One inference with tritonclient over ``protocol``: the named outputs as numpy."""
    mod: Any = tg if protocol == "grpc" else th
    client = mod.InferenceServerClient(s.grpc_address if protocol == "grpc" else s.address)
    try:
        inputs = []
        for name, array in arrays.items():
            dtype = DTYPE_CASES[name][0] if name in DTYPE_CASES else "FP32"
            i = mod.InferInput(name, list(array.shape), dtype)
            if protocol == "http":
                i.set_data_from_numpy(array, binary_data=True)
            else:
                i.set_data_from_numpy(array)
            inputs.append(i)
        result = client.infer(model, inputs, headers=headers)
        response = result.get_response()
        names = [o["name"] for o in response["outputs"]] if protocol == "http" else \
            [o.name for o in response.outputs]
        return {n: result.as_numpy(n) for n in names}
    finally:
        client.close()


# -- health, metadata, config ---------------------------------------------------------------------
def test_health_metadata_and_config(mlp_server: Served) -> None:
    c = tg.InferenceServerClient(mlp_server.grpc_address)
    try:
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("mlp")
        meta = c.get_server_metadata(as_json=True)
        assert meta["name"] == "inferstack" and "binary_tensor_data" in meta["extensions"]
        model = c.get_model_metadata("mlp", as_json=True)
        assert model["name"] == "mlp" and model["versions"] == ["1"]
        assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "16"]}]
        assert model["outputs"] == [{"name": "y", "datatype": "FP32", "shape": ["-1", "4"]}]
        config = c.get_model_config("mlp", as_json=True)["config"]
        http_config = httpx.get(f"{mlp_server.url}/v2/models/mlp/config").json()
        assert config["max_batch_size"] == http_config["max_batch_size"] == 16
        assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": ["16"]}]
        assert config["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": ["4"]}]
        assert config["parameters"]["batch_check"]["string_value"] == \
            http_config["parameters"]["batch_check"]["string_value"]
        assert config["instance_group"][0]["kind"] == "KIND_CPU"
        with pytest.raises(InferenceServerException) as e:
            c.get_model_metadata("nope")
        assert e.value.status() == "StatusCode.NOT_FOUND"
        assert "Request for unknown model: 'nope' is not found" in e.value.message()
    finally:
        c.close()


# -- inference ------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_raw_inference_equals_onnxruntime(mlp_server: Served, mlp_package: Path, ort_run,
                                          protocol: str) -> None:
    x = np.random.default_rng(5).standard_normal((3, 16)).astype(np.float32)
    got = _infer(protocol, mlp_server, "mlp", {"x": x})
    np.testing.assert_allclose(got["y"], ort_run(mlp_package / "mlp.onnx", {"x": x})[0], rtol=1e-6)


def test_every_datatype_raw_round_trips(dtypes_server: Served) -> None:
    rng = np.random.default_rng(7)
    arrays: dict[str, np.ndarray] = {}
    for name, (_, np_dtype, _) in DTYPE_CASES.items():
        if np_dtype is np.object_:
            arrays[name] = np.array([["a", "bé", ""], ["x", "y", "zz"]], dtype=object)
        elif np_dtype is np.bool_:
            arrays[name] = rng.integers(0, 2, (2, 3)).astype(bool)
        else:
            arrays[name] = (rng.standard_normal((2, 3)) * 50).astype(np_dtype)
    got = _infer("grpc", dtypes_server, "dtypes", arrays)
    for name, array in arrays.items():
        out = got[f"{name}_out"]
        if array.dtype == object:
            assert [v.decode() for v in out.reshape(-1)] == list(array.reshape(-1))
        else:
            assert out.dtype == array.dtype and np.array_equal(out, array), name


@pytest.fixture(scope="module")
def typed_server(models_dir: Path):
    """Identity per datatype that has typed contents (all but FP16): one request can carry them all."""
    from onnx import helper
    from runtime_harness import package, start_server

    cases = {n: c for n, c in DTYPE_CASES.items() if n != "f16"}
    graph = helper.make_graph(
        [helper.make_node("Identity", [n], [f"{n}_out"]) for n in cases], "typed",
        [helper.make_tensor_value_info(n, c[2], ["batch", 3]) for n, c in cases.items()],
        [helper.make_tensor_value_info(f"{n}_out", c[2], ["batch", 3]) for n, c in cases.items()],
    )
    path = save_graph(graph, models_dir / "typed.onnx")
    s = start_server(package(models_dir / "typed", [path], "typed", 8))
    yield s
    s.stop()


TYPED = {  # input -> (contents field, values)
    "f32": ("fp32_contents", [1.5, -2.25, 3.0]),
    "f64": ("fp64_contents", [1e300, -2.5, 0.125]),
    "i8": ("int_contents", [-128, 0, 127]),
    "i32": ("int_contents", [-(2**31), 5, 2**31 - 1]),
    "i64": ("int64_contents", [-(2**63), 5, 2**63 - 1]),
    "u8": ("uint_contents", [0, 7, 255]),
    "u64": ("uint64_contents", [0, 7, 2**64 - 1]),
    "b": ("bool_contents", [True, False, True]),
    "s": ("bytes_contents", [b"a", "b\u00e9".encode(), b""]),
}


def _typed_request(model: str, changes: dict[str, tuple[str, list[Any]]] | None = None) -> Any:
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, (field, values) in {**TYPED, **(changes or {})}.items():
        t = request.inputs.add(name=name, datatype=DTYPE_CASES[name][0], shape=[1, len(values)])
        getattr(t.contents, field).extend(values)
    return request


@pytest.fixture
def typed_stub(typed_server: Served):
    channel = grpc.insecure_channel(typed_server.grpc_address)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def test_typed_contents_of_every_datatype_round_trip(typed_stub) -> None:
    response = typed_stub.ModelInfer(_typed_request("typed"))
    result = tg.InferResult(response)
    for name, (_field, values) in TYPED.items():
        got = result.as_numpy(f"{name}_out")
        np_dtype = DTYPE_CASES[name][1]
        if np_dtype is np.object_:
            assert list(got.reshape(-1)) == values
        else:
            assert got.dtype == np_dtype and got.reshape(-1).tolist() == values, name


@pytest.mark.parametrize(("changes", "message"), [
    ({"i8": ("int_contents", [0, 128, 0])}, "input 'i8': a value is out of range for INT8 (-128..127)"),
    ({"u8": ("uint_contents", [0, 256, 0])}, "input 'u8': a value is out of range for UINT8 (0..255)"),
    ({"f32": ("fp64_contents", [1.0, 2.0, 3.0])},
     "input 'f32': FP32 data goes in contents.fp32_contents, found contents.fp64_contents"),
    ({"s": ("bytes_contents", [b"\xff", b"", b""])}, "input 's': BYTES element 0 is not valid UTF-8"),
])
def test_bad_typed_contents_are_invalid_argument(typed_stub, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(grpc.RpcError) as e:
        typed_stub.ModelInfer(_typed_request("typed", changes))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == message


def test_fp16_needs_raw_contents(dtypes_server: Served) -> None:
    with grpc.insecure_channel(dtypes_server.grpc_address) as channel:
        request = service_pb2.ModelInferRequest(model_name="dtypes")
        request.inputs.add(name="f16", datatype="FP16", shape=[1, 3]).contents.fp32_contents.extend([1, 2, 3])
        with pytest.raises(grpc.RpcError) as e:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "input 'f16': FP16 has no typed contents; send it in raw_input_contents"


# -- the same refusals over both protocols -----------------------------------------------------
def _refusal(protocol: str, s: Served, arrays: dict[str, np.ndarray], datatype: str = "FP32",
             headers: dict[str, str] | None = None, model: str = "mlp") -> InferenceServerException:
    mod: Any = tg if protocol == "grpc" else th
    client = mod.InferenceServerClient(s.grpc_address if protocol == "grpc" else s.address)
    try:
        inputs = []
        for name, array in arrays.items():
            i = mod.InferInput(name, list(array.shape), datatype)
            i.set_data_from_numpy(array, **({"binary_data": True} if protocol == "http" else {}))
            inputs.append(i)
        with pytest.raises(InferenceServerException) as e:
            client.infer(model, inputs, headers=headers)
        return e.value
    finally:
        client.close()


BAD = [
    ({"x": np.ones((1, 15), np.float32)}, "FP32",
     "input 'x': shape [1, 15] does not match the model's [-1, 16] (dim 1 is 15, expected 16)"),
    ({"x": np.ones((1, 16), np.float64)}, "FP64",
     "input 'x': datatype 'FP64' does not match the model's FP32"),
    ({"z": np.ones((1, 16), np.float32)}, "FP32", "inputs[0]: unknown input 'z'; model 'mlp' has inputs 'x'"),
    ({"x": np.ones((17, 16), np.float32)}, "FP32",
     "input 'x': batch size 17 exceeds the model's max batch size 16"),
]


@pytest.mark.parametrize(("arrays", "datatype", "message"), BAD)
def test_bad_input_gets_the_same_message_on_both_protocols(mlp_server: Served, arrays, datatype: str,
                                                           message: str) -> None:
    over_grpc = _refusal("grpc", mlp_server, arrays, datatype)
    over_http = _refusal("http", mlp_server, arrays, datatype)
    assert over_grpc.status() == "StatusCode.INVALID_ARGUMENT"
    assert over_http.status() == "400"
    assert over_grpc.message() == over_http.message() == message


def test_raw_contents_of_the_wrong_size_are_refused(mlp_server: Served) -> None:
    with grpc.insecure_channel(mlp_server.grpc_address) as channel:
        request = service_pb2.ModelInferRequest(model_name="mlp")
        request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
        request.raw_input_contents.append(b"\0" * 60)
        with pytest.raises(grpc.RpcError) as e:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == ("input 'x': raw_input_contents[0] is 60 bytes, but shape [1, 16] of FP32 "
                                 "needs 64")


# -- concurrency, auth, shedding, drain -----------------------------------------------------------
def test_many_async_clients_get_their_own_rows(mlp_server: Served, mlp_package: Path, ort_run) -> None:
    rng = np.random.default_rng(11)
    rows = [rng.standard_normal((1, 16)).astype(np.float32) for _ in range(64)]

    async def main() -> list[np.ndarray]:
        clients = [tga.InferenceServerClient(mlp_server.grpc_address) for _ in range(16)]
        try:
            async def one(i: int) -> np.ndarray:
                inp = tga.InferInput("x", [1, 16], "FP32")
                inp.set_data_from_numpy(rows[i])
                result = await clients[i % 16].infer("mlp", [inp], request_id=str(i))
                assert result.get_response().id == str(i)
                return result.as_numpy("y")  # type: ignore[no-any-return]
            return await asyncio.gather(*(one(i) for i in range(len(rows))))
        finally:
            for c in clients:
                await c.close()

    got = asyncio.run(main())
    expected = ort_run(mlp_package / "mlp.onnx", {"x": np.concatenate(rows)})[0]
    np.testing.assert_allclose(np.concatenate(got), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_auth_over_both_protocols(serve: Callable[..., Served], mlp_package: Path, tmp_path: Path,
                                  protocol: str) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    s = serve(mlp_package, "--auth-token-file", str(token))
    x = {"x": np.ones((1, 16), np.float32)}
    for headers in (None, {"authorization": "Bearer wrong"}):
        e = _refusal(protocol, s, x, headers=headers)
        assert e.status() == ("StatusCode.UNAUTHENTICATED" if protocol == "grpc" else "401")
        assert "missing or wrong bearer token" in e.message()
        assert "s3cret" not in e.message()
    assert _infer(protocol, s, "mlp", x, headers={"authorization": "Bearer s3cret"})["y"].shape == (1, 4)
    if protocol == "grpc":  # health stays open, as /v2/health/* does; metadata does not
        c = tg.InferenceServerClient(s.grpc_address)
        assert c.is_server_live() and c.is_server_ready()
        with pytest.raises(InferenceServerException) as e2:
            c.get_model_metadata("mlp")
        assert e2.value.status() == "StatusCode.UNAUTHENTICATED"
        c.close()


def test_full_queue_is_resource_exhausted(serve: Callable[..., Served], mlp_package: Path) -> None:
    s = serve(mlp_package, "--max-queue-size", "2", "--max-queue-delay-us", "300000")

    async def main() -> list[Any]:
        client = tga.InferenceServerClient(s.grpc_address)
        try:
            async def one() -> Any:
                inp = tga.InferInput("x", [1, 16], "FP32")
                inp.set_data_from_numpy(np.ones((1, 16), np.float32))
                try:
                    return await client.infer("mlp", [inp])
                except InferenceServerException as e:
                    return e
            return await asyncio.gather(*(one() for _ in range(8)))
        finally:
            await client.close()

    results = asyncio.run(main())
    refused = [r for r in results if isinstance(r, InferenceServerException)]
    assert 1 <= len(refused) <= 6
    for e in refused:
        assert e.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "the queue is full" in e.message() and "--max-queue-size" in e.message()
    metrics = httpx.get(f"{s.url}/metrics").text
    assert _metric(metrics, 'inferstack_requests_total{outcome="rejected"}') == len(refused)
    assert _metric(metrics, 'inferstack_request_failures_total{reason="queue_full"}') == len(refused)
    assert _metric(metrics, 'inferstack_requests_total{outcome="success"}') == 8 - len(refused)


def test_call_past_the_request_timeout_is_deadline_exceeded(serve: Callable[..., Served],
                                                          mlp_package: Path) -> None:
    # the batcher waits 0.8 s for company, past the 0.1 s request timeout: the call's own thread
    # gives up at the deadline (DEADLINE_EXCEEDED, counted once as a timeout), the worker skips
    # the request and its queue place is given back (the next call is not RESOURCE_EXHAUSTED)
    s = serve(mlp_package, "--request-timeout-s", "0.1", "--max-queue-delay-us", "800000",
              "--max-queue-size", "1")
    x = np.arange(16, dtype=np.float32).reshape(1, 16) / 16
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as e:
        _infer("grpc", s, "mlp", {"x": x})
    assert time.monotonic() - started < 0.7  # answered at the deadline, not when the run ends
    assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert "no answer within 0.1s (--request-timeout-s" in e.value.message()
    deadline = time.monotonic() + 5
    while (_metric(httpx.get(f"{s.url}/metrics").text, "inferstack_queue_depth")
           and time.monotonic() < deadline):
        time.sleep(0.05)  # (the skipped request leaves the queue when the worker passes it)
    metrics = httpx.get(f"{s.url}/metrics").text
    assert _metric(metrics, 'inferstack_requests_total{outcome="timeout"}') == 1
    assert _metric(metrics, "inferstack_queue_depth") == 0
    with pytest.raises(InferenceServerException) as again:  # its queue place was given back
        _infer("grpc", s, "mlp", {"x": x})
    assert again.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    stats = httpx.get(f"{s.url}/v2/models/mlp/stats").json()["model_stats"][0]["inference_stats"]
    assert int(stats["fail"]["count"]) == 2 and int(stats["success"]["count"]) == 0


def test_sigterm_finishes_grpc_calls_in_flight(serve: Callable[..., Served], mlp_package: Path,
                                               ort_run) -> None:
    # calls wait up to 2 s in the batcher for company: SIGTERM arrives while all are in flight
    s = serve(mlp_package, "--max-queue-delay-us", "2000000")
    rng = np.random.default_rng(3)
    rows = [rng.standard_normal((1, 16)).astype(np.float32) for _ in range(12)]

    async def main() -> list[Any]:
        client = tga.InferenceServerClient(s.grpc_address)
        try:
            async def one(i: int) -> Any:
                inp = tga.InferInput("x", [1, 16], "FP32")
                inp.set_data_from_numpy(rows[i])
                return await client.infer("mlp", [inp], request_id=str(i))

            calls = [asyncio.ensure_future(one(i)) for i in range(12)]
            deadline = time.monotonic() + 1.5
            async with httpx.AsyncClient() as http:
                while time.monotonic() < deadline:
                    text = (await http.get(f"{s.url}/metrics")).text
                    if _metric(text, "inferstack_inflight_requests") == 12:
                        break
                    await asyncio.sleep(0.01)
                else:
                    pytest.fail("calls were not all admitted")
            s.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*calls)
        finally:
            await client.close()

    results = asyncio.run(main())
    for i, r in enumerate(results):
        assert r.get_response().id == str(i)
        np.testing.assert_allclose(r.as_numpy("y"), ort_run(mlp_package / "mlp.onnx", {"x": rows[i]})[0],
                                   rtol=1e-5)
    assert s.wait_exit(30) == 0
    assert "stopped" in s.log()


def test_grpc_port_in_use_is_a_clear_error(serve: Callable[..., Served], mlp_server: Served,
                                           mlp_package: Path) -> None:
    s = serve(mlp_package, "--grpc-port", str(mlp_server.grpc_port), wait_ready=False)
    assert s.wait_exit(30) == 1
    assert f"--grpc-port / INFERSTACK_GRPC_PORT: cannot listen on 127.0.0.1:{mlp_server.grpc_port}" in s.log()
    assert "Traceback" not in s.log()


def test_statistics_count_the_calls_of_both_protocols(serve: Callable[..., Served],
                                                     mlp_package: Path) -> None:
    s = serve(mlp_package)
    x = {"x": np.ones((2, 16), np.float32)}
    for protocol in ("grpc", "grpc", "http"):
        _infer(protocol, s, "mlp", x)
    _refusal("grpc", s, {"x": np.ones((1, 15), np.float32)})  # refused before the model: not counted
    c = tg.InferenceServerClient(s.grpc_address)
    try:
        stats = c.get_inference_statistics("mlp", as_json=True)["model_stats"]
        everything = c.get_inference_statistics(as_json=True)["model_stats"]
        with pytest.raises(InferenceServerException) as e:
            c.get_inference_statistics("nope")
    finally:
        c.close()
    assert e.value.status() == "StatusCode.NOT_FOUND"
    assert [m["name"] for m in stats] == [m["name"] for m in everything] == ["mlp"]
    infer = stats[0]["inference_stats"]
    assert int(infer["success"]["count"]) == 3
    assert int(stats[0]["inference_count"]) == 6  # rows
    assert int(infer["compute_infer"]["count"]) == 3


def test_two_models_and_the_repository_over_grpc(serve: Callable[..., Served], mlp_package: Path,
                                                 dtypes_package: Path, ort_run) -> None:
    s = serve(mlp_package, str(dtypes_package), "--model-control", "explicit")
    c = tg.InferenceServerClient(s.grpc_address)
    try:
        assert c.is_server_ready() and c.is_model_ready("mlp") and c.is_model_ready("dtypes")
        index = c.get_model_repository_index(as_json=True)["models"]
        assert {(m["name"], m["state"]) for m in index} == {("mlp", "READY"), ("dtypes", "READY")}
        x = np.random.default_rng(2).standard_normal((2, 16)).astype(np.float32)
        np.testing.assert_allclose(_infer("grpc", s, "mlp", {"x": x})["y"],
                                   ort_run(mlp_package / "mlp.onnx", {"x": x})[0], rtol=1e-6)
        assert c.get_model_metadata("dtypes", as_json=True)["name"] == "dtypes"

        c.unload_model("mlp")  # answered once its calls in flight are
        assert not c.is_model_ready("mlp") and c.is_model_ready("dtypes")
        with pytest.raises(InferenceServerException) as e:
            _infer("grpc", s, "mlp", {"x": x})
        assert e.value.status() == "StatusCode.NOT_FOUND"
        assert "Request for unknown model: 'mlp' is not found" in e.value.message()
        index = {m["name"]: m for m in c.get_model_repository_index(as_json=True)["models"]}
        assert index["mlp"]["state"] == "UNAVAILABLE"

        c.load_model("mlp")
        assert c.is_model_ready("mlp")
        np.testing.assert_allclose(_infer("grpc", s, "mlp", {"x": x})["y"],
                                   ort_run(mlp_package / "mlp.onnx", {"x": x})[0], rtol=1e-6)
        with pytest.raises(InferenceServerException) as e:
            c.load_model("nope")
        assert e.value.status() == "StatusCode.NOT_FOUND"
        # a configuration the server cannot honour, or files in the request: refused by the one
        # rule, on both protocols (the configuration override itself: test_client_compat.py)
        with pytest.raises(InferenceServerException) as e:
            c.load_model("mlp", config='{"backend": "tensorrt"}')
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "failed to load model 'mlp': the 'config' parameter sets 'backend'" in e.value.message()
        with pytest.raises(InferenceServerException) as e:
            c.load_model("mlp", files={"file:1/model.onnx": b"AAAA"})
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "loading with files in the request is not supported" in e.value.message()
        r = httpx.post(f"{s.url}/v2/repository/models/mlp/load",
                       json={"parameters": {"file:1/model.onnx": "AAAA"}}, timeout=10)
        assert r.status_code == 400 and "loading with files" in r.json()["error"], r.text
        assert c.is_model_ready("mlp")
    finally:
        c.close()


def test_load_and_unload_are_off_without_explicit_model_control(mlp_server: Served) -> None:
    c = tg.InferenceServerClient(mlp_server.grpc_address)
    try:
        for call in (c.load_model, c.unload_model):
            with pytest.raises(InferenceServerException) as e:
                call("mlp")
            assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert "start the server with --model-control explicit" in e.value.message()
        assert c.is_model_ready("mlp")
    finally:
        c.close()


def test_access_log_has_a_line_per_grpc_infer_call(serve: Callable[..., Served], mlp_package: Path) -> None:
    import json

    s = serve(mlp_package, "--access-log", "--log-format", "json")
    _infer("grpc", s, "mlp", {"x": np.ones((1, 16), np.float32)})
    refused = _refusal("grpc", s, {"x": np.ones((1, 15), np.float32)})
    s.stop()
    lines = [json.loads(line) for line in s.lines if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "inferstack.access"]
    assert len(access) == 2, s.log()
    ok, bad = access
    assert ok["method"] == "POST" and ok["path"] == "/inference.GRPCInferenceService/ModelInfer"
    assert ok["model"] == "mlp" and ok["status"] == 200 and ok["bytes"] > 16 and "reason" not in ok
    assert bad["status"] == 400 and bad["reason"] == refused.message()


# -- grpcio's settings ------------------------------------------------------------------------------
def _thread_cpu_ticks(pid: int) -> dict[str, int]:
    """CPU time (user + system, clock ticks) of the process's threads, summed by thread name."""
    ticks: dict[str, int] = {}
    for tid in Path(f"/proc/{pid}/task").iterdir():
        name = (tid / "comm").read_text().strip()
        fields = (tid / "stat").read_text().rsplit(")", 1)[1].split()
        ticks[name] = ticks.get(name, 0) + int(fields[11]) + int(fields[12])
    return ticks


def _event_engine_share(s: Served, calls: int = 600, threads: int = 4) -> float:
    """The share of the server's CPU spent by grpcio's EventEngine threads while ``threads`` clients
    make ``calls`` ModelInfer calls each."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(s.grpc_address))
    request = service_pb2.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.ones((1, 16), np.float32).tobytes())
    before = _thread_cpu_ticks(s.proc.pid)

    def client() -> None:
        for _ in range(calls):
            stub.ModelInfer(request, timeout=10)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(client) for _ in range(threads)]:
            f.result()
    after = _thread_cpu_ticks(s.proc.pid)
    spent = {n: after[n] - before.get(n, 0) for n in after}
    total = sum(spent.values())
    assert total > 0
    return sum(t for n, t in spent.items() if n.startswith("event_engine")) / total


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads per-thread CPU time from /proc")
def test_grpc_connections_are_served_by_the_polling_thread(serve: Callable[..., Served],
                                                           mlp_package: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The server turns grpcio's ``event_engine_listener`` experiment off (one thread hand-off less
    per call on the way in and out); an operator's own GRPC_EXPERIMENTS is kept."""
    monkeypatch.delenv("GRPC_EXPERIMENTS", raising=False)  # (the servers inherit the test's environment)
    default = _event_engine_share(serve(mlp_package))
    operator = _event_engine_share(serve(mlp_package, env={"GRPC_EXPERIMENTS": ""}))
    assert default < 0.03, f"EventEngine threads spent {default:.0%} of the server's CPU"
    assert operator > 0.03, f"with GRPC_EXPERIMENTS='' EventEngine threads spent only {operator:.0%}"
