"""The server under load and at its limits: concurrent clients get their own rows back from merged
batches, a full queue answers 503 with Retry-After, slow answers time out with 504, a too-large
body gets 413, SIGTERM loses no accepted request and exits 0, and bearer-token auth."""

from __future__ import annotations

import json
import signal
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as th
from runtime_harness import Served, metric, package, save_graph


def _metric(text: str, name: str) -> float:
    return metric(text, name)


def _infer_body(x: np.ndarray, request_id: str = "") -> bytes:
    doc = {
        "id": request_id,
        "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
        "outputs": [{"name": "y", "parameters": {"binary_data": False}}],
    }
    return json.dumps(doc).encode()


def test_concurrent_clients_get_their_own_rows(serve, mlp_package: Path, ort_run) -> None:
    # a queue delay makes the merging certain: concurrent requests land in shared batches
    s = serve(mlp_package, "--max-queue-delay-us", "20000")
    rng = np.random.default_rng(7)
    # requests of 1..3 rows each, every one with distinct values
    inputs = [rng.standard_normal((1 + i % 3, 16)).astype(np.float32) for i in range(48)]
    expected = [ort_run(mlp_package / "mlp.onnx", {"x": x})[0] for x in inputs]

    def call(i: int) -> np.ndarray:
        client = th.InferenceServerClient(s.address)
        inp = th.InferInput("x", list(inputs[i].shape), "FP32")
        inp.set_data_from_numpy(inputs[i], binary_data=i % 2 == 0)
        result = client.infer("mlp", [inp], outputs=[th.InferRequestedOutput("y", binary_data=i % 3 == 0)])
        return result.as_numpy("y")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(len(inputs))))
    for i, (got, want) in enumerate(zip(results, expected, strict=True)):
        assert got.shape == want.shape, i
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"request {i}")
    metrics = httpx.get(f"{s.url}/metrics").text
    runs = _metric(metrics, "inferstack_batch_size_count")
    merged = _metric(metrics, "inferstack_batch_size_sum")
    assert merged >= len(inputs)  # the warm-up does not count
    assert runs < merged, "no batch merged more than one request"
    assert _metric(metrics, 'inferstack_requests_total{outcome="success"}') == len(inputs)
    assert _metric(metrics, "inferstack_queue_depth") == 0
    assert _metric(metrics, "inferstack_queue_seconds_count") == len(inputs)
    assert _metric(metrics, "inferstack_compute_seconds_count") == runs
    assert _metric(metrics, "inferstack_request_seconds_count") == len(inputs)


def test_full_queue_answers_503_with_retry_after(serve, mlp_package: Path) -> None:
    # requests wait 300 ms for company; only 2 may be admitted at once
    s = serve(mlp_package, "--max-queue-size", "2", "--max-queue-delay-us", "300000")
    body = _infer_body(np.ones((1, 16), np.float32))

    def call(_: int) -> httpx.Response:
        return httpx.post(f"{s.url}/v2/models/mlp/infer", content=body, timeout=10)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(call, range(8)))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 503}, codes
    assert codes.count(200) >= 2
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1"
            assert "the queue is full" in r.json()["error"] and "--max-queue-size" in r.json()["error"]
    metrics = httpx.get(f"{s.url}/metrics").text
    assert _metric(metrics, 'inferstack_requests_total{outcome="rejected"}') == codes.count(503)
    assert _metric(metrics, 'inferstack_request_failures_total{reason="queue_full"}') == codes.count(503)


def test_slow_answers_time_out_with_504(serve, mlp_package: Path) -> None:
    s = serve(mlp_package, "--request-timeout-s", "0.1", "--max-queue-delay-us", "800000")
    started = time.monotonic()
    r = httpx.post(
        f"{s.url}/v2/models/mlp/infer", content=_infer_body(np.ones((1, 16), np.float32)), timeout=10
    )
    assert r.status_code == 504
    assert "no answer within 0.1s (--request-timeout-s" in r.json()["error"]
    assert time.monotonic() - started < 1.0
    # the server stays healthy, and the late result is not written onto the connection
    assert httpx.get(f"{s.url}/v2/health/ready").status_code == 200
    time.sleep(0.9)
    metrics = httpx.get(f"{s.url}/metrics").text
    assert _metric(metrics, 'inferstack_requests_total{outcome="timeout"}') == 1
    assert _metric(metrics, "inferstack_inflight_requests") == 0


def test_too_large_body_gets_413(serve, mlp_package: Path) -> None:
    s = serve(mlp_package, "--max-body-bytes", "2048")
    big = _infer_body(np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32))
    assert len(big) > 2048
    r = httpx.post(f"{s.url}/v2/models/mlp/infer", content=big)
    assert r.status_code == 413
    assert r.json()["error"].startswith(f"request body of {len(big)} bytes exceeds the limit of 2048 bytes")
    # chunked (no Content-Length): counted while reading
    r = httpx.post(f"{s.url}/v2/models/mlp/infer", content=iter([big[:1000], big[1000:]]))
    assert r.status_code == 413 and "exceeds the limit of 2048 bytes" in r.json()["error"]
    small = _infer_body(np.ones((1, 16), np.float32))
    assert httpx.post(f"{s.url}/v2/models/mlp/infer", content=small).status_code == 200
    metrics = httpx.get(f"{s.url}/metrics").text
    assert _metric(metrics, 'inferstack_request_failures_total{reason="too_large"}') == 2
    assert _metric(metrics, 'inferstack_requests_total{outcome="client_error"}') == 2
    assert _metric(metrics, 'inferstack_requests_total{outcome="success"}') == 1


def test_sigterm_finishes_accepted_requests_and_exits_0(serve, mlp_package: Path, ort_run) -> None:
    # requests wait up to 2 s in the batcher for company: SIGTERM arrives while all are in flight
    s = serve(mlp_package, "--max-queue-delay-us", "2000000")
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((1, 16)).astype(np.float32) for _ in range(12)]

    def call(i: int) -> httpx.Response:
        return httpx.post(f"{s.url}/v2/models/mlp/infer", content=_infer_body(inputs[i], str(i)), timeout=20)

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(call, i) for i in range(12)]
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            text = httpx.get(f"{s.url}/metrics").text
            if _metric(text, "inferstack_inflight_requests") == 12:
                break
            time.sleep(0.01)
        else:
            pytest.fail("requests were not all admitted")
        s.proc.send_signal(signal.SIGTERM)
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * 12
    for i, r in enumerate(responses):
        assert r.json()["id"] == str(i)
        got = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(1, 4)
        np.testing.assert_allclose(got, ort_run(mlp_package / "mlp.onnx", {"x": inputs[i]})[0], rtol=1e-5)
    assert s.wait_exit(20) == 0
    assert "stopped" in s.log()
    with pytest.raises(OSError):
        socket.create_connection((s.host, s.port), timeout=1).close()


def test_bearer_token_auth(serve, mlp_package: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    s = serve(mlp_package, "--auth-token-file", str(token_file))
    body = _infer_body(np.ones((1, 16), np.float32))
    url = f"{s.url}/v2/models/mlp/infer"
    r = httpx.post(url, content=body)
    assert r.status_code == 401 and "bearer token" in r.json()["error"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert httpx.post(url, content=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{s.url}/v2/models/mlp").status_code == 401
    assert httpx.post(url, content=body, headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    client = th.InferenceServerClient(s.address)
    assert client.is_server_live() and client.is_server_ready()  # health stays open
    assert httpx.get(f"{s.url}/metrics").status_code == 200
    meta = th.InferenceServerClient(s.address).get_model_metadata(
        "mlp", headers={"Authorization": "Bearer s3cret-token"}
    )
    assert meta["name"] == "mlp"


def test_token_from_environment(serve, mlp_package: Path) -> None:
    s = serve(mlp_package, env={"INFERSTACK_AUTH_TOKEN": "from-env"})
    assert httpx.get(f"{s.url}/v2").status_code == 401
    assert httpx.get(f"{s.url}/v2", headers={"Authorization": "Bearer from-env"}).status_code == 200


def test_ready_follows_the_lifecycle(mlp_server: Served) -> None:
    s = mlp_server
    assert httpx.get(f"{s.url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{s.url}/v2/models/mlp/ready").status_code == 200
    lines = s.log().splitlines()
    listening = next(i for i, line in enumerate(lines) if "listening on" in line)
    ready = next(i for i, line in enumerate(lines) if "ready: model mlp" in line)
    assert listening < ready


def test_values_the_model_rejects_get_400_and_fail_only_their_request(serve, models_dir: Path) -> None:
    from onnx import TensorProto, helper

    table = helper.make_tensor("table", TensorProto.FLOAT, [5, 2], [float(v) for v in range(10)])
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["out"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 2])],
        initializer=[table],
    )
    path = save_graph(graph, models_dir / "lookup.onnx")
    # generated rows (0..15) index past the 5-row table, and one index per row drawn from 0..1
    # cannot make 5 distinct rows, so the server cannot check it itself: the package carries the
    # check made on example rows (as export does with example data)
    import onnxruntime as ort

    from inferstack.batchcheck import check_batch_independence, combine
    from inferstack.batchproof import prove_row_independence
    from inferstack.manifest import load_manifest, sha256_file, write_manifest

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    record = check_batch_independence(
        lambda feeds: session.run(["out"], feeds), [("idx", ["batch"])], [("out", ["batch", 2])],
        lambda count, dims, seed: {"idx": np.arange(count, dtype=np.int64) % 5}, data="example")
    assert record.batchable, record.reason
    proof = prove_row_independence(path)
    assert proof.proven, proof.reason
    combine(record, proof.proven, proof.reason, sha256_file(path))  # a record tied to this model
    lookup = package(models_dir / "lookup", [path], "lookup", 64)
    manifest = load_manifest(lookup)
    manifest.batch_check = record.to_dict()
    write_manifest(lookup, manifest)
    # the bad index shares a merged batch with good ones: only its own request fails
    s = serve(lookup, "--max-queue-delay-us", "300000")
    indices = [1, 4, 7, 0, 2]

    def call(i: int) -> httpx.Response:
        doc = {
            "inputs": [{"name": "idx", "shape": [1], "datatype": "INT64", "data": [i]}],
            "outputs": [{"name": "out", "parameters": {"binary_data": False}}],
        }
        return httpx.post(f"{s.url}/v2/models/lookup/infer", json=doc, timeout=10)

    with ThreadPoolExecutor(5) as pool:
        responses = list(pool.map(call, indices))
    for i, r in zip(indices, responses, strict=True):
        if i < 5:
            assert r.status_code == 200, r.text
            assert r.json()["outputs"][0]["data"] == [2.0 * i, 2.0 * i + 1]
        else:
            assert r.status_code == 400
            assert "could not run on this input" in r.json()["error"]
            assert "out of data bounds" in r.json()["error"]
    metrics = httpx.get(f"{s.url}/metrics").text
    assert _metric(metrics, "inferstack_batch_size_sum") > _metric(metrics, "inferstack_batch_size_count")
    assert _metric(metrics, 'inferstack_request_failures_total{reason="model_rejected_input"}') == 1
    assert "Traceback" not in s.log()


def test_requests_merge_only_with_equal_non_batch_shapes(serve, models_dir: Path) -> None:
    from onnx import TensorProto, helper

    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])],
        initializer=[two],
    )
    path = save_graph(graph, models_dir / "double.onnx")
    s = serve(path, "--max-queue-delay-us", "100000", "--max-batch-size", "4")
    # sequence lengths 2 and 3 interleaved, 1 or 2 rows each: merges must respect both
    cases = [np.full((1 + i % 2, 2 + i % 3 % 2), float(i), np.float32) for i in range(24)]

    def call(i: int) -> np.ndarray:
        client = th.InferenceServerClient(s.address)
        inp = th.InferInput("x", list(cases[i].shape), "FP32")
        inp.set_data_from_numpy(cases[i])
        return client.infer("double", [inp]).as_numpy("y")

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(call, range(len(cases))))
    for x, got in zip(cases, results, strict=True):
        np.testing.assert_array_equal(got, x * 2)
    metrics = httpx.get(f"{s.url}/metrics").text
    assert _metric(metrics, "inferstack_batch_size_sum") == len(cases)
    assert _metric(metrics, "inferstack_batch_size_count") < len(cases)
    rows = _metric(metrics, "inferstack_batch_rows_sum")
    assert rows == sum(x.shape[0] for x in cases)
    # never more rows in one run than --max-batch-size: the 4-row bucket holds every run
    assert _metric(metrics, 'inferstack_batch_rows_bucket{le="4.0"}') == _metric(
        metrics, "inferstack_batch_rows_count"
    )


def test_sigterm_with_drain_delay_keeps_serving_while_not_ready(serve, mlp_package: Path) -> None:
    s = serve(mlp_package, "--drain-delay-s", "1")
    body = _infer_body(np.ones((1, 16), np.float32))
    assert httpx.get(f"{s.url}/v2/health/ready").status_code == 200
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    # during the delay: not ready, but new connections are accepted and served
    assert httpx.get(f"{s.url}/v2/health/ready").status_code == 503
    assert httpx.get(f"{s.url}/v2/models/mlp/ready").status_code == 503
    assert httpx.get(f"{s.url}/v2/health/live").status_code == 200
    r = httpx.post(f"{s.url}/v2/models/mlp/infer", content=body)
    assert r.status_code == 200 and len(r.json()["outputs"][0]["data"]) == 4
    assert s.proc.poll() is None
    assert s.wait_exit(10) == 0
    assert "still serving for 1s (--drain-delay-s)" in s.log()
    with pytest.raises(OSError):
        socket.create_connection((s.host, s.port), timeout=1).close()


def test_outputs_off_the_batch_axis_turn_batching_off(serve, models_dir: Path) -> None:
    """Concat(x, x) along axis 0 doubles the rows: merged batches would hand requests each
    other's rows, so the warm-up check serves it without batching."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Concat", ["x", "x"], ["y"], axis=0)],
        "twice",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 4])],
    )
    path = save_graph(graph, models_dir / "twice.onnx")
    s = serve(path, "--max-batch-size", "8", "--max-queue-delay-us", "100000")
    assert "output 'y' has dims (rows, 4): no dimension is named 'batch'" in s.log()
    assert httpx.get(f"{s.url}/v2/models/twice/config").json()["max_batch_size"] == 0

    def call(i: int) -> httpx.Response:
        doc = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [float(i)] * 4}],
               "outputs": [{"name": "y", "parameters": {"binary_data": False}}]}
        return httpx.post(f"{s.url}/v2/models/twice/infer", json=doc, timeout=10)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(call, range(16)))
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["shape"] == [2, 4]
        assert r.json()["outputs"][0]["data"] == [float(i)] * 8


def test_clients_that_leave_early_are_not_counted_as_success(serve, mlp_package: Path) -> None:
    # the batcher waits 0.5 s for company: the client is gone before its answer
    s = serve(mlp_package, "--max-queue-delay-us", "500000")
    body = _infer_body(np.ones((1, 16), np.float32))
    with socket.create_connection((s.host, s.port), timeout=5) as sock:
        sock.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.1)
        # gone for good: a reset (a FIN alone may be a half-close, after which the client still
        # reads its answer: test_http_semantics.py)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.8)
    # a refused request is timed too (end to end, whatever the outcome)
    assert httpx.post(f"{s.url}/v2/models/mlp/infer", content=b"{").status_code == 400
    metrics = httpx.get(f"{s.url}/metrics").text
    assert _metric(metrics, 'inferstack_requests_total{outcome="disconnected"}') == 1
    assert _metric(metrics, 'inferstack_requests_total{outcome="success"}') == 0
    assert _metric(metrics, 'inferstack_request_failures_total{reason="disconnected"}') == 1
    assert _metric(metrics, "inferstack_request_seconds_count") == 2
