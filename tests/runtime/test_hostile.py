"""The server against a hostile client, on real sockets: memory that comes back after rejected
bodies, a body budget reserved only after auth and only for bytes that arrived, a minimum body
rate, a per-client share of the budget, back-pressure on answers a client does not read, and a
model whose run time depends on its input (the request timeout holds, health checks answer)."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from runtime_harness import Served, package, read_until_closed, save_graph

X16 = [0.5] * 16
BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": X16}]}).encode()


def rss_bytes(s: Served) -> int:
    for line in Path(f"/proc/{s.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _head(length: int, token: str | None = None, path: str = "/v2/models/mlp/infer") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n".encode() if token else b""
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode() + auth
            + f"Content-Length: {length}\r\n\r\n".encode())


def _connect(s: Served, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect((s.host, s.port))
    return sock


def _health_latencies(s: Served, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(timeout=10) as client:
        client.get(f"{s.url}/v2/health/live")  # (the client's own first-request costs: not measured)
        while not stop.is_set():
            t0 = time.monotonic()
            r = client.get(f"{s.url}/v2/health/live")
            out.append(time.monotonic() - t0 if r.status_code == 200 else 99.0)
            time.sleep(0.05)


# -- memory ------------------------------------------------------------------------------------------
def test_rss_returns_to_baseline_after_100_rejected_compressed_bodies(serve, mlp_package: Path) -> None:
    limit = 4_000_000
    s = serve(mlp_package, "--max-body-bytes", str(limit))
    bomb = gzip.compress(b" " * (2 * limit))  # 8 MB of spaces: about 8 kB on the wire, 413 once inflated
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    with httpx.Client(timeout=30) as client:
        url = f"{s.url}/v2/models/mlp/infer"
        for _ in range(5):  # warm up: thread pool, allocator arenas
            assert client.post(url, content=bomb, headers=headers).status_code == 413
        baseline = rss_bytes(s)
        for _ in range(100):
            r = client.post(url, content=bomb, headers=headers)
            assert r.status_code == 413 and "decompressed request body exceeds" in r.json()["error"]
        time.sleep(0.3)
        grown = rss_bytes(s) - baseline
        assert client.post(url, content=BODY).status_code == 200
    # each rejected body inflates to 4 MB: kept alive, 100 of them would be 400 MB
    assert grown < 40 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB after 100 rejected bodies"


# -- the body budget -------------------------------------------------------------------------------------
def test_unauthenticated_body_is_refused_before_it_is_read(serve, mlp_package: Path, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret")
    s = serve(mlp_package, "--auth-token-file", str(token), "--max-body-bytes", "250000",
              "--max-buffered-bytes", "1000000")
    # four unauthenticated clients declare 250 kB each (the whole budget) and send nothing more
    socks = [_connect(s) for _ in range(4)]
    try:
        for sock in socks:
            sock.sendall(_head(250_000))
        for sock in socks:
            t0 = time.monotonic()
            data = read_until_closed(sock, 3)
            assert data.startswith(b"HTTP/1.1 401 "), data[:200]
            assert time.monotonic() - t0 < 1.5  # at the headers, not after a body timeout
        # the budget is untouched: an authenticated request is served
        r = httpx.post(f"{s.url}/v2/models/mlp/infer", content=BODY,
                       headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200, r.text
    finally:
        for sock in socks:
            sock.close()


def test_trickled_bodies_are_cut_off_and_real_requests_still_served(serve, mlp_package: Path) -> None:
    # six sockets declare bodies that together pass the budget and send one byte every 0.3 s:
    # never stalled for --body-timeout-s, far below --min-body-rate
    s = serve(mlp_package, "--max-body-bytes", "100000", "--max-buffered-bytes", "500000",
              "--body-timeout-s", "1", "--min-body-rate", "1000")
    socks = [_connect(s) for _ in range(6)]
    for sock in socks:
        sock.sendall(_head(100_000) + b"{")
    answers: dict[int, bytes] = {}
    stop = threading.Event()
    health: list[float] = []

    def trickle() -> None:
        while not stop.is_set() and len(answers) < len(socks):
            for i, sock in enumerate(socks):
                if i in answers:
                    continue
                try:
                    sock.sendall(b" ")
                    sock.settimeout(0.001)
                    data = sock.recv(65536)
                    answers[i] = data
                except (TimeoutError, BlockingIOError):
                    pass
                except OSError:
                    answers[i] = b"closed"
            time.sleep(0.3)

    threads = [threading.Thread(target=trickle),
               threading.Thread(target=_health_latencies, args=(s, stop, health))]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        # under the attack, real requests are served (the trickles hold only the bytes they sent)
        with httpx.Client(timeout=5) as client:
            codes = [client.post(f"{s.url}/v2/models/mlp/infer", content=BODY).status_code for _ in range(20)]
        assert codes == [200] * 20
        deadline = time.monotonic() + 8
        while len(answers) < len(socks) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join()
        for sock in socks:
            sock.close()
    assert len(answers) == len(socks), "trickled bodies were never cut off"
    for data in answers.values():
        assert data.startswith(b"HTTP/1.1 408 ") and b"--min-body-rate" in data, data[:300]
    assert health and max(health) < 0.5, health


def test_one_client_cannot_hold_more_than_its_share(serve, mlp_package: Path) -> None:
    s = serve(mlp_package, "--max-body-bytes", "900000", "--max-buffered-bytes", "4000000",
              "--max-client-buffered-bytes", "1000000")
    big = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": X16}],
                      "id": " " * 850_000}).encode()
    first = _connect(s)
    second = _connect(s)
    other = _connect(s, "127.0.0.2")  # another client (source address)
    try:
        first.sendall(_head(len(big)) + big[:800_000])
        time.sleep(0.2)
        # the same client's second body passes its 1 MB share: 503, while the server has room
        second.sendall(_head(len(big)) + big[:400_000])
        data = read_until_closed(second, 3)
        assert data.startswith(b"HTTP/1.1 503 "), data[:300]
        assert b"--max-client-buffered-bytes" in data and b"retry-after: 1" in data.lower()
        # another client is served meanwhile
        other.sendall(_head(len(big)) + big)
        answer = other.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
        # and the first body, completed, is answered
        first.sendall(big[800_000:])
        assert first.recv(65536).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in (first, second, other):
            sock.close()


# -- back-pressure -------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/metrics", "/v2/health/live"])
def test_pipelined_flood_without_reading_is_back_pressured(serve, mlp_package: Path, path: str) -> None:
    s = serve(mlp_package)
    answer_size = len(httpx.get(f"{s.url}{path}").content) + 100
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    n = max(200_000, (300 * 2**20) // answer_size)  # answers worth at least 300 MB if all were written
    baseline = rss_bytes(s)
    stop = threading.Event()
    health: list[float] = []
    checker = threading.Thread(target=_health_latencies, args=(s, stop, health))
    checker.start()
    sent = 0
    peak = baseline
    try:
        with _connect(s) as flood:
            flood.settimeout(0.5)
            chunk = request * 1000
            deadline = time.monotonic() + 4
            while sent < n and time.monotonic() < deadline:
                try:
                    flood.sendall(chunk)
                    sent += 1000
                except TimeoutError:  # the server stopped reading: what back-pressure looks like
                    pass
                peak = max(peak, rss_bytes(s))
    finally:
        stop.set()
        checker.join()
    peak = max(peak, rss_bytes(s))
    assert sent < n, "the server read every request of the flood"
    assert peak - baseline < 60 * 2**20, f"RSS grew by {(peak - baseline) / 2**20:.0f} MiB"
    assert health and max(health) < 0.5, [round(h, 3) for h in health]
    assert httpx.get(f"{s.url}/v2/health/live").status_code == 200


# -- a model whose cost depends on its input -----------------------------------------------------------------
@pytest.fixture(scope="module")
def gram_package(models_dir: Path) -> Path:
    """m = x @ x.T for x of shape [b, n], then squared four times (m16 = m^16), y = its row sums:
    about b*b*n + 4*b**3 multiply-adds, so its run time is whatever the client's shape asks for.
    No batching (rows interact)."""
    from onnx import TensorProto, helper

    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["t"]), helper.make_node("MatMul", ["x", "t"], ["m"]),
         helper.make_node("MatMul", ["m", "m"], ["m2"]), helper.make_node("MatMul", ["m2", "m2"], ["m4"]),
         helper.make_node("MatMul", ["m4", "m4"], ["m8"]), helper.make_node("MatMul", ["m8", "m8"], ["m16"]),
         helper.make_node("ReduceSum", ["m16", "axes"], ["y"], keepdims=0)],
        "gram",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b"])],
        initializer=[axes],
    )
    path = save_graph(graph, models_dir / "gram.onnx")
    return package(models_dir / "gram", [path], "gram", 0)


def _binary_infer(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                  "Content-Type": "application/octet-stream"}


def test_slow_input_times_out_and_health_answers_meanwhile(serve, gram_package: Path) -> None:
    s = serve(gram_package, "--request-timeout-s", "0.3")
    url = f"{s.url}/v2/models/gram/infer"
    with httpx.Client(timeout=30) as client:
        for _ in range(3):  # fast runs first: a lone request for a "fast" model
            body, headers = _binary_infer(np.ones((2, 2), np.float32))
            r = client.post(url, content=body, headers=headers)
            assert r.status_code == 200 and r.json()["outputs"][0]["data"] == pytest.approx([2.0**32] * 2)
    body, headers = _binary_infer(np.ones((2000, 2000), np.float32))  # about 4e10 multiply-adds
    result: dict[str, float | int] = {}

    def slow() -> None:
        t0 = time.monotonic()
        r = httpx.post(url, content=body, headers=headers, timeout=60)
        result.update(status=r.status_code, took=time.monotonic() - t0)

    stop = threading.Event()
    health: list[float] = []
    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    checker = threading.Thread(target=_health_latencies, args=(s, stop, health))
    checker.start()
    t.join()
    time.sleep(0.5)
    stop.set()
    checker.join()
    assert result["status"] == 504, result
    assert result["took"] < 1.5, result
    assert health and max(health) < 0.5, health
