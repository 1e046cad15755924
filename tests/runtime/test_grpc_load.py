"""The gRPC front end under concurrency, with HTTP on the same batcher: many clients, each checked
against onnxruntime on its own rows; deadlines; queue places and counts exact afterwards."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from runtime_harness import Served, metric
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.timeout(180)


def _stats(s: Served) -> dict[str, Any]:
    return httpx.get(f"{s.url}/v2/models/mlp/stats").json()["model_stats"][0]["inference_stats"]


def test_mixed_protocols_each_get_their_own_rows(serve: Callable[..., Served], mlp_package: Path,
                                                   ort_run) -> None:
    s = serve(mlp_package)
    model = mlp_package / "mlp.onnx"
    wrong: list[str] = []
    sent = [0]
    refused = [0]
    lock = threading.Lock()

    def grpc_client(k: int) -> None:
        c = tg.InferenceServerClient(s.grpc_address)
        rng = np.random.default_rng(k)
        try:
            for i in range(12):
                n = int(rng.integers(1, 17))
                bad = i % 5 == 4
                x = rng.standard_normal((n, 15 if bad else 16)).astype(np.float32)
                inp = tg.InferInput("x", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                with lock:
                    sent[0] += 1
                try:
                    r = c.infer("mlp", [inp])
                except InferenceServerException as e:
                    with lock:
                        refused[0] += 1
                    if not bad or e.status() != "StatusCode.INVALID_ARGUMENT":
                        wrong.append(f"grpc {k}/{i}: {e.status()} {e.message()}")
                    continue
                if bad:
                    wrong.append(f"grpc {k}/{i}: bad request answered")
                    continue
                expected = ort_run(model, {"x": x})[0]
                if not np.allclose(r.as_numpy("y"), expected, rtol=1e-5, atol=1e-6):
                    wrong.append(f"grpc {k}/{i}: wrong rows")
        finally:
            c.close()

    def http_client(k: int) -> None:
        c = th.InferenceServerClient(s.address)
        rng = np.random.default_rng(1000 + k)
        try:
            for i in range(12):
                n = int(rng.integers(1, 17))
                x = rng.standard_normal((n, 16)).astype(np.float32)
                inp = th.InferInput("x", list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=True)
                with lock:
                    sent[0] += 1
                try:
                    r = c.infer("mlp", [inp])
                except InferenceServerException as e:
                    wrong.append(f"http {k}/{i}: {e.status()} {e.message()}")
                    continue
                if not np.allclose(r.as_numpy("y"), ort_run(model, {"x": x})[0], rtol=1e-5, atol=1e-6):
                    wrong.append(f"http {k}/{i}: wrong rows")
        finally:
            c.close()

    threads = [threading.Thread(target=grpc_client, args=(k,)) for k in range(96)]
    threads += [threading.Thread(target=http_client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    stats = _stats(s)
    text = httpx.get(f"{s.url}/metrics").text
    ok = metric(text, 'inferstack_requests_total{outcome="success"}')
    bad = metric(text, 'inferstack_requests_total{outcome="client_error"}')
    assert ok + bad == sent[0]
    assert bad == refused[0]
    assert int(stats["success"]["count"]) == ok
    assert int(stats["fail"]["count"]) == bad
    assert metric(text, "inferstack_queue_depth") == 0


@pytest.mark.parametrize("first", ["grpc", "http"])
def test_a_timed_out_request_gives_its_queue_place_back_at_once(serve: Callable[..., Served],
                                                                 mlp_package: Path, first: str) -> None:
    # the batcher holds the first request 0.8 s for company, past the 0.1 s request timeout: once
    # its client has DEADLINE_EXCEEDED / 504, its place in a queue of 1 is free at once (the next
    # request is not refused for a queue full of requests nobody waits for)
    s = serve(mlp_package, "--request-timeout-s", "0.1", "--max-queue-delay-us", "800000",
              "--max-queue-size", "1")
    x = np.ones((1, 16), np.float32)
    if first == "http":
        r = httpx.post(f"{s.url}/v2/models/mlp/infer", json={"inputs": [
            {"name": "x", "shape": [1, 16], "datatype": "FP32", "data": x.ravel().tolist()}]})
        assert r.status_code == 504
    for _ in range(2 if first == "grpc" else 1):
        c = tg.InferenceServerClient(s.grpc_address)
        inp = tg.InferInput("x", [1, 16], "FP32")
        inp.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as e:
            c.infer("mlp", [inp])
        c.close()
        assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED", e.value.message()
    text = httpx.get(f"{s.url}/metrics").text
    assert metric(text, 'inferstack_requests_total{outcome="timeout"}') == 2
    assert metric(text, 'inferstack_requests_total{outcome="rejected"}') == 0


def test_sigterm_under_closed_loop_load_cancels_no_call(serve: Callable[..., Served], mlp_package: Path,
                                                        ort_run) -> None:
    # 100 clients each sending its next call as soon as the last is answered: at SIGTERM every call
    # is answered, or refused UNAVAILABLE (which a client may retry elsewhere); none is CANCELLED
    # (grpcio's shutdown cancels the calls its core has received and not yet handed over)
    s = serve(mlp_package)
    model = mlp_package / "mlp.onnx"
    answered: list[int] = []
    refused: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        c = tg.InferenceServerClient(s.grpc_address)
        rng = np.random.default_rng(k)
        try:
            while True:
                x = rng.standard_normal((int(rng.integers(1, 5)), 16)).astype(np.float32)
                inp = tg.InferInput("x", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                try:
                    r = c.infer("mlp", [inp], client_timeout=20)
                except InferenceServerException as e:
                    with lock:
                        refused.append(str(e.status()))
                    return
                assert np.allclose(r.as_numpy("y"), ort_run(model, {"x": x})[0], rtol=1e-5, atol=1e-6)
                with lock:
                    answered.append(k)
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(100)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(answered) < 500 and time.monotonic() < deadline:
        time.sleep(0.01)
    s.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert s.wait_exit(30) == 0
    assert len(refused) == 100
    assert set(refused) == {"StatusCode.UNAVAILABLE"}, sorted(refused)


@pytest.mark.parametrize("leave", ["deadline", "cancel"])
def test_a_client_that_leaves_gives_its_queue_place_back(serve: Callable[..., Served], mlp_package: Path,
                                                         leave: str) -> None:
    # the batcher holds calls 1 s for company; 4 clients leave after 0.1 s (their deadline, or
    # future.cancel()): their places in a queue of 4 are free at once, so a 5th call is admitted
    # (not RESOURCE_EXHAUSTED for a queue full of calls nobody waits for), and each is counted once,
    # as disconnected
    from inferstack.runtime.proto import grpc_service_pb2 as pb
    from inferstack.runtime.proto import grpc_service_pb2_grpc as pb_grpc

    s = serve(mlp_package, "--max-queue-size", "4", "--max-queue-delay-us", "1000000",
              "--request-timeout-s", "10")
    channel = grpc.insecure_channel(s.grpc_address)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    x = np.ones((1, 16), np.float32)
    request = pb.ModelInferRequest(model_name="mlp", inputs=[
        pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 16])],
        raw_input_contents=[x.tobytes()])
    try:
        timeout = 0.1 if leave == "deadline" else 30
        calls = [stub.ModelInfer.future(request, timeout=timeout) for _ in range(4)]
        time.sleep(0.2)
        for call in calls:
            if leave == "cancel":
                assert call.cancel() and call.cancelled()
            else:
                assert call.exception().code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[union-attr]
        time.sleep(0.1)
        fifth = stub.ModelInfer.future(request, timeout=3)
        response = fifth.result()
        assert np.frombuffer(response.raw_output_contents[0], np.float32).shape == (4,)
    finally:
        channel.close()
    text = httpx.get(f"{s.url}/metrics").text
    assert metric(text, 'inferstack_requests_total{outcome="rejected"}') == 0
    assert metric(text, 'inferstack_requests_total{outcome="disconnected"}') == 4
    assert metric(text, 'inferstack_requests_total{outcome="success"}') == 1
    assert metric(text, "inferstack_queue_depth") == 0


def test_the_queue_limit_holds_for_requests_decoded_off_the_event_loop(serve: Callable[..., Served],
                                                                        mlp_package: Path) -> None:
    # large and gzip bodies are decoded in a thread after the first look at the queue: 24 (HTTP) and
    # 24 gRPC calls at once, with a queue of 4 held 1.5 s for company: at most 4 admitted, the rest
    # refused (503 / RESOURCE_EXHAUSTED), each answered once
    import gzip
    import json

    s = serve(mlp_package, "--max-queue-size", "4", "--max-queue-delay-us", "1500000")
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                                   "data": [0.5] * 16}]}).encode() + b" " * (2 << 20)
    bodies = [(body, {}), (gzip.compress(body), {"content-encoding": "gzip"})]
    statuses: list[str] = []
    lock = threading.Lock()

    def http_one(k: int) -> None:
        data, headers = bodies[k % 2]
        r = httpx.post(f"{s.url}/v2/models/mlp/infer", content=data, timeout=30,
                       headers={**headers, "content-type": "application/json"})
        with lock:
            statuses.append(str(r.status_code))

    def grpc_one() -> None:
        c = tg.InferenceServerClient(s.grpc_address)
        inp = tg.InferInput("x", [1, 16], "FP32")
        inp.set_data_from_numpy(np.full((1, 16), 0.5, np.float32))
        try:
            c.infer("mlp", [inp])
            out = "200"
        except InferenceServerException as e:
            out = str(e.status())
        finally:
            c.close()
        with lock:
            statuses.append(out)

    threads = [threading.Thread(target=http_one, args=(k,)) for k in range(24)]
    threads += [threading.Thread(target=grpc_one) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(statuses) == 48
    assert statuses.count("200") <= 4, sorted(statuses)
    assert set(statuses) <= {"200", "503", "StatusCode.RESOURCE_EXHAUSTED"}, sorted(statuses)


def test_one_request_bytes_budget_for_both_protocols(serve: Callable[..., Served], mlp_package: Path) -> None:
    # a budget of 1000 bytes: an HTTP request of 8 rows (~650 bytes, fewer rows than the max batch
    # of 16, so it waits the queue delay for company, held until answered), then a gRPC call of
    # ~560 bytes: each fits alone, not both together
    s = serve(mlp_package, "--max-buffered-bytes", "1000", "--max-body-bytes", "1000",
              "--max-queue-delay-us", "1500000")
    x = np.ones((8, 16), np.float32)
    answers: list[int] = []
    body = th.InferInput("x", [8, 16], "FP32")
    body.set_data_from_numpy(x, binary_data=True)
    http = threading.Thread(target=lambda: answers.append(
        th.InferenceServerClient(s.address).infer("mlp", [body]).as_numpy("y").shape[0]))
    http.start()
    deadline = time.monotonic() + 5
    while (metric(httpx.get(f"{s.url}/metrics").text, 'inferstack_inflight_requests{model="mlp"}') < 1
           and time.monotonic() < deadline):
        time.sleep(0.01)
    c = tg.InferenceServerClient(s.grpc_address)
    inp = tg.InferInput("x", [8, 16], "FP32")
    inp.set_data_from_numpy(x)
    try:
        with pytest.raises(InferenceServerException) as e:
            c.infer("mlp", [inp])
        assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    finally:
        c.close()
        http.join()
    assert answers == [8]


def test_a_request_timeout_longer_than_a_thread_can_wait(serve: Callable[..., Served], mlp_package: Path,
                                                         ort_run) -> None:
    # --request-timeout-s 1e10 (about 317 years, past threading.TIMEOUT_MAX): calls are answered,
    # not INTERNAL for an OverflowError in the wait
    s = serve(mlp_package, "--request-timeout-s", "1e10")
    x = np.random.default_rng(4).standard_normal((2, 16)).astype(np.float32)
    c = tg.InferenceServerClient(s.grpc_address)
    inp = tg.InferInput("x", [2, 16], "FP32")
    inp.set_data_from_numpy(x)
    try:
        got = c.infer("mlp", [inp]).as_numpy("y")
    finally:
        c.close()
    np.testing.assert_allclose(got, ort_run(mlp_package / "mlp.onnx", {"x": x})[0], rtol=1e-5, atol=1e-6)
    s.proc.send_signal(signal.SIGTERM)  # (grpcio's stop with a grace of 1e10 s)
    assert s.wait_exit(30) == 0
    assert "Traceback" not in s.log()
