"""A request's memory is bounded by more than its body size: BYTES elements are capped per request
(--max-bytes-elements) and checked from the shape before any is read, what a body decodes into is
counted in --max-buffered-bytes, and per-element work runs off the event loop, so health checks
answer promptly meanwhile. Measured on the real server: /proc/<pid>/status VmHWM."""

from __future__ import annotations

import json
import struct
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from runtime_harness import save_graph


def _vm(pid: int, key: str) -> int:
    """VmHWM / VmRSS of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} for {pid}")


@pytest.fixture(scope="module")
def strings_onnx(models_dir: Path) -> Path:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "strings",
        [helper.make_tensor_value_info("x", TensorProto.STRING, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, ["batch", "n"])],
    )
    return save_graph(graph, models_dir / "strings.onnx")


def _bytes_request(n: int) -> tuple[bytes, bytes]:
    header = json.dumps({
        "inputs": [{"name": "x", "datatype": "BYTES", "shape": [1, n],
                    "parameters": {"binary_data_size": 6 * n}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }).encode()
    return header, header + (struct.pack("<I", 2) + b"ab") * n


class _Prober:
    """``GET /v2/health/live`` in a loop while something else runs: the slowest answer."""

    def __init__(self, url: str) -> None:
        self.url, self.slowest, self._stop = url, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with httpx.Client() as c:
            while not self._stop.is_set():
                t = time.monotonic()
                assert c.get(f"{self.url}/v2/health/live", timeout=60).status_code == 200
                self.slowest = max(self.slowest, time.monotonic() - t)
                time.sleep(0.02)

    def __enter__(self) -> _Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def test_a_big_bytes_request_is_refused_before_its_elements_are_read(serve, strings_onnx: Path) -> None:
    s = serve(strings_onnx)
    baseline = _vm(s.proc.pid, "VmRSS")
    n = 16 * 2**20 // 6  # 2.8 million 2-byte strings in a 16 MiB body
    header, body = _bytes_request(n)
    with _Prober(s.url) as probe:
        r = httpx.post(f"{s.url}/v2/models/{s.name}/infer", content=body,
                       headers={"Inference-Header-Content-Length": str(len(header))}, timeout=120)
    assert r.status_code == 400, r.text[:300]
    assert "BYTES inputs hold more than 524288 elements (--max-bytes-elements" in r.json()["error"]
    # the body is held while read and joined: a small multiple of it, not one object per element
    assert _vm(s.proc.pid, "VmHWM") - baseline < 4 * len(body), (baseline, _vm(s.proc.pid, "VmHWM"))
    assert probe.slowest < 1.0, probe.slowest


def test_bytes_at_the_cap_round_trip_with_bounded_memory_and_prompt_health(serve, strings_onnx: Path) -> None:
    s = serve(strings_onnx, "--max-bytes-elements", "300000")
    baseline = _vm(s.proc.pid, "VmRSS")
    n = 300_000
    header, body = _bytes_request(n)
    with _Prober(s.url) as probe:
        r = httpx.post(f"{s.url}/v2/models/{s.name}/infer", content=body,
                       headers={"Inference-Header-Content-Length": str(len(header))}, timeout=120)
    assert r.status_code == 200, r.text[:300]
    length = int(r.headers["inference-header-content-length"])
    assert r.content[length:] == body[len(header):]  # every element back, in order
    # measured about 210 bytes per element, in and out (BYTES_DECODED_PER_ELEMENT counts 256)
    assert _vm(s.proc.pid, "VmHWM") - baseline < 256 * n, (baseline, _vm(s.proc.pid, "VmHWM"))
    assert probe.slowest < 1.0, probe.slowest
    over = _bytes_request(n + 1)
    r = httpx.post(f"{s.url}/v2/models/{s.name}/infer", content=over[1],
                   headers={"Inference-Header-Content-Length": str(len(over[0]))}, timeout=120)
    assert r.status_code == 400 and "more than 300000 elements" in r.json()["error"], r.text


def test_what_a_json_body_decodes_into_counts_in_the_buffered_budget(serve, fixed_onnx: Path) -> None:
    """A 2 MiB JSON body decodes into up to 16x its size (orjson's objects): with 16 MiB of budget
    it can never fit (413, saying to send binary data); with 64 MiB it is answered."""
    pad = " " * (2 * 2**20)
    doc = '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}]}'
    body = (doc[:-1] + pad + "}").encode()
    s = serve(fixed_onnx, "--max-body-bytes", str(4 * 2**20), "--max-buffered-bytes", str(16 * 2**20))
    r = httpx.post(f"{s.url}/v2/models/{s.name}/infer", content=body, timeout=60)
    assert r.status_code == 413, r.text
    assert "decodes into about" in r.json()["error"] and "binary data" in r.json()["error"]
    s2 = serve(fixed_onnx, "--max-body-bytes", str(4 * 2**20), "--max-buffered-bytes", str(64 * 2**20))
    r = httpx.post(f"{s2.url}/v2/models/{s2.name}/infer", content=body, timeout=60)
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(r.json()["outputs"][0]["data"], [3, 5, 7, 9, 11, 13])


def test_the_bytes_cap_is_a_setting(tmp_path: Path) -> None:
    from inferstack.runtime.config import ServerConfig
    from inferstack.runtime.errors import ConfigError

    assert ServerConfig(model="m.onnx").max_bytes_elements == 524288
    with pytest.raises(ConfigError, match="--max-bytes-elements / INFERSTACK_MAX_BYTES_ELEMENTS: must be"):
        ServerConfig(model="m.onnx", max_bytes_elements=0)


def test_grpc_enforces_max_bytes_elements_and_round_trips_strings(serve, strings_onnx: Path) -> None:
    """--max-bytes-elements holds over gRPC too (checked from the shape, INVALID_ARGUMENT), and
    BYTES calls under it are decoded and encoded (in the worker threads) to the same strings."""
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    s = serve(strings_onnx, "--max-bytes-elements", "1000")
    c = tg.InferenceServerClient(s.grpc_address)
    try:
        def call(n: int) -> np.ndarray:
            x = np.array([[f"s{i}".encode() for i in range(n)]], dtype=object)
            inp = tg.InferInput("x", [1, n], "BYTES")
            inp.set_data_from_numpy(x)
            return c.infer(s.name, [inp]).as_numpy("y")

        y = call(1000)
        assert y.shape == (1, 1000) and y[0, 0] == b"s0" and y[0, 999] == b"s999"
        with pytest.raises(InferenceServerException) as e:
            call(1001)
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "BYTES inputs hold more than 1000 elements (--max-bytes-elements" in e.value.message()
    finally:
        c.close()


@pytest.fixture(scope="module")
def floats_onnx(models_dir: Path) -> Path:
    """y = x, FP32 [batch, n]: any number of elements per row."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "floats",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])],
    )
    return save_graph(graph, models_dir / "floats.onnx")


def test_grpc_typed_contents_count_what_they_decode_into(serve, floats_onnx: Path) -> None:
    """A ModelInfer message of 1.5 million fp32_contents (6 MB, under --max-body-bytes) decodes into
    another 6 MB of numpy: with 8 MB of --max-buffered-bytes it can never fit (RESOURCE_EXHAUSTED,
    before anything is read into numpy); the same tensor in raw_input_contents is read in place and
    answered; the server keeps serving."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    s = serve(floats_onnx, "--max-body-bytes", "8000000", "--max-buffered-bytes", "8000000")
    x = np.random.default_rng(5).standard_normal((1, 1_500_000)).astype(np.float32)
    typed = service_pb2.ModelInferRequest(model_name=s.name)
    typed.inputs.add(name="x", datatype="FP32", shape=list(x.shape)).contents.fp32_contents.extend(x.ravel())
    raw = service_pb2.ModelInferRequest(model_name=s.name)
    raw.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    raw.raw_input_contents.append(x.tobytes())
    assert typed.ByteSize() < 8000000 and raw.ByteSize() < 8000000
    channel = grpc.insecure_channel(s.grpc_address, options=[("grpc.max_receive_message_length", -1)])
    try:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(typed, timeout=60)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-buffered-bytes" in e.value.details() and "raw contents" in e.value.details()
        answer = stub.ModelInfer(raw, timeout=60)
        y = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(tuple(answer.outputs[0].shape))
        np.testing.assert_array_equal(y, x)
        small = service_pb2.ModelInferRequest(model_name=s.name)
        small_x = small.inputs.add(name="x", datatype="FP32", shape=[1, 1000])
        small_x.contents.fp32_contents.extend(x[0, :1000])
        answer = stub.ModelInfer(small, timeout=30)
        np.testing.assert_array_equal(np.frombuffer(answer.raw_output_contents[0], np.float32), x[0, :1000])
    finally:
        channel.close()


def test_grpc_calls_together_past_the_buffered_budget_are_told_to_retry(serve, strings_onnx: Path) -> None:
    """Three 2 MB calls held together in the batcher (--max-queue-delay-us) need more than the 5 MB
    of --max-buffered-bytes: one is refused (RESOURCE_EXHAUSTED, retry later), the other two are
    answered; once they are, the budget is free again."""
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    s = serve(strings_onnx, "--max-body-bytes", "3000000", "--max-buffered-bytes", "5000000",
              "--max-queue-delay-us", "1500000")
    x = np.array([[(b"%04d" % i) * 500 for i in range(1000)]], dtype=object)  # 1000 x 2000 bytes

    def call(_: int) -> Any:
        c = tg.InferenceServerClient(s.grpc_address)
        try:
            inp = tg.InferInput("x", [1, 1000], "BYTES")
            inp.set_data_from_numpy(x)
            return c.infer(s.name, [inp], client_timeout=60).as_numpy("y")
        except InferenceServerException as e:
            return e
        finally:
            c.close()

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(call, range(3)))
    refused = [r for r in results if isinstance(r, InferenceServerException)]
    assert len(refused) == 1, results
    assert refused[0].status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "--max-buffered-bytes" in refused[0].message() and "retry later" in refused[0].message()
    for r in results:
        if not isinstance(r, InferenceServerException):
            assert r.shape == (1, 1000) and list(r[0]) == list(x[0])
    again = call(0)
    assert not isinstance(again, InferenceServerException), again


def test_grpc_messages_past_max_body_bytes_are_refused_unparsed(serve, floats_onnx: Path) -> None:
    """grpcio's receive limit is --max-body-bytes (its own default is 4 MiB): a 1.2 MB message is
    RESOURCE_EXHAUSTED with a 1 MB limit; a 0.8 MB one is answered."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    s = serve(floats_onnx, "--max-body-bytes", "1000000", "--max-buffered-bytes", "4000000")
    channel = grpc.insecure_channel(s.grpc_address, options=[("grpc.max_receive_message_length", -1)])
    try:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        def call(n: int) -> Any:
            request = service_pb2.ModelInferRequest(model_name=s.name)
            request.inputs.add(name="x", datatype="FP32", shape=[1, n])
            request.raw_input_contents.append(np.ones(n, np.float32).tobytes())
            return stub.ModelInfer(request, timeout=30)

        assert len(call(200_000).raw_output_contents[0]) == 800_000
        with pytest.raises(grpc.RpcError) as e:
            call(300_000)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in e.value.details()
        assert len(call(10).raw_output_contents[0]) == 40  # still serving
    finally:
        channel.close()
