"""The server against clients that misbehave at the HTTP level: stalled headers and bodies (408 and
close), idle keep-alive connections (closed), a server-wide budget for buffered request bytes,
counted as they arrive (503 with Retry-After), ``Expect: 100-continue`` (413 at once when too
large, 100 then the answer when allowed), and a Content-Length over the limit answered before the
body is sent."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from runtime_harness import Served, start_server

LIMIT = 1_000_000
BUDGET = 2_500_000
X16 = [0.5] * 16
BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": X16}]}).encode()


@pytest.fixture(scope="module")
def strict_server(mlp_package: Path) -> Iterator[Served]:
    s = start_server(
        mlp_package, "--header-timeout-s", "0.5", "--body-timeout-s", "0.5", "--idle-timeout-s", "1",
        "--max-body-bytes", str(LIMIT), "--max-buffered-bytes", str(BUDGET),
        "--max-client-buffered-bytes", str(BUDGET),
    )
    yield s
    s.stop()


def _head(length: int, expect: bool = False) -> bytes:
    extra = b"Expect: 100-continue\r\n" if expect else b""
    return (b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + extra + f"Content-Length: {length}\r\n\r\n".encode())


def _read_until_closed(sock: socket.socket, limit_s: float = 5) -> tuple[bytes, float]:
    """Everything the server sends until it closes; and how long that took."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.monotonic() - started


def _connect(s: Served) -> socket.socket:
    return socket.create_connection((s.host, s.port), timeout=5)


def test_stalled_headers_get_408_and_close(strict_server: Served) -> None:
    with _connect(strict_server) as sock:
        sock.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Le")
        data, took = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert b"headers not received within 0.5s (--header-timeout-s" in data
    assert took < 3


def test_trickled_headers_still_time_out(strict_server: Served) -> None:
    # slowloris: a header line now and then keeps bytes coming, but the headers never finish
    data = b""
    with _connect(strict_server) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\n")
        sock.settimeout(0.1)
        started = time.monotonic()
        while time.monotonic() - started < 5:
            try:
                sock.sendall(b"X-A: b\r\n")
            except OSError:
                break
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        took = time.monotonic() - started
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert took < 3


def test_silent_connection_is_closed(strict_server: Served) -> None:
    with _connect(strict_server) as sock:
        data, took = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408 ") and b"no request received within 0.5s" in data
    assert took < 3


def test_stalled_body_gets_408_and_frees_its_budget(strict_server: Served) -> None:
    socks = []
    for _ in range(2):  # 2 x 800 kB sent of 900 kB declared: within the 2.5 MB budget
        sock = _connect(strict_server)
        sock.sendall(_head(900_000) + b'{"inputs": [' + b" " * 800_000)
        socks.append(sock)
    time.sleep(0.1)
    try:
        # a third declared body does not fit beside them: 503 with Retry-After, before its body is sent
        with _connect(strict_server) as sock:
            sock.sendall(_head(900_000))
            data, _ = _read_until_closed(sock)
        assert data.startswith(b"HTTP/1.1 503 "), data
        assert b"retry-after: 1\r\n" in data.lower()
        assert b"--max-buffered-bytes / INFERSTACK_MAX_BUFFERED_BYTES is 2500000" in data
        for sock in socks:
            data, took = _read_until_closed(sock)
            assert data.startswith(b"HTTP/1.1 408 ") and b"request body stalled" in data, data
            assert took < 3
    finally:
        for sock in socks:
            sock.close()
    # the stalled bodies' bytes were released: a request fits again
    r = httpx.post(f"{strict_server.url}/v2/models/mlp/infer", content=BODY)
    assert r.status_code == 200, r.text


def test_idle_keep_alive_connection_is_closed(strict_server: Served) -> None:
    with _connect(strict_server) as sock:
        sock.sendall(_head(len(BODY)) + BODY)
        time.sleep(0.2)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        rest, took = _read_until_closed(sock)
    assert rest == b""  # closed quietly, no unsolicited answer
    assert 0.5 < took < 3


def test_expect_continue_over_the_limit_gets_413_without_the_body(strict_server: Served) -> None:
    with _connect(strict_server) as sock:
        sock.sendall(_head(LIMIT + 1, expect=True))
        data, took = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 413 "), data
    assert f"request body of {LIMIT + 1} bytes exceeds the limit of {LIMIT} bytes".encode() in data
    assert took < 0.4  # at once, not after a timeout


def test_content_length_over_the_limit_is_answered_before_the_body(strict_server: Served) -> None:
    with _connect(strict_server) as sock:
        sock.sendall(_head(50 * LIMIT) + b"x" * 1000)
        data, took = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 413 ") and b"connection: close" in data.lower()
    assert took < 0.4


def test_expect_continue_within_the_limit_gets_100_then_the_answer(strict_server: Served) -> None:
    with _connect(strict_server) as sock:
        sock.sendall(_head(len(BODY), expect=True))
        interim = sock.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(BODY)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["model_name"] == "mlp"


def test_pipelined_large_bodies_stay_within_the_budget(serve, mlp_package: Path) -> None:
    # the first request waits 0.3 s in the batcher, so the ones behind it queue up: five pipelined
    # 900 kB bodies declare 4.5 MB, with a budget of 1 MB (one body). A pipelined request's body is
    # read only when its turn comes, so the server never holds two: each is answered 200, in order
    # (a body read ahead beside another would pass the budget: 503)
    s = serve(mlp_package, "--max-queue-delay-us", "300000", "--max-body-bytes", str(LIMIT),
              "--max-buffered-bytes", str(LIMIT), "--max-client-buffered-bytes", str(LIMIT))
    big = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                                  "data": X16}], "id": " " * 899_000}).encode()
    with _connect(s) as sock:
        sock.settimeout(20)
        sock.sendall((_head(len(big)) + big) * 5)
        data = b""
        deadline = time.monotonic() + 20
        while data.count(b"HTTP/1.1 ") < 5 and time.monotonic() < deadline:
            data += sock.recv(65536)
    statuses = [part[:3] for part in data.split(b"HTTP/1.1 ")[1:]]
    assert statuses == [b"200"] * 5, data[:300]
    assert httpx.post(f"{s.url}/v2/models/mlp/infer", content=BODY).status_code == 200


def test_a_refusal_reaches_a_client_still_sending_its_body(strict_server: Served) -> None:
    # the 413 is answered at the headers while the client goes on sending its body: the server
    # half-closes after it and discards what still arrives, so the client, writing on, is not
    # reset (which would lose the answer before it is read)
    with _connect(strict_server) as sock:
        sock.sendall(_head(50 * LIMIT))
        time.sleep(0.1)  # the answer is out
        for _ in range(160):  # 10 MiB, far past what the kernel's buffers hold
            sock.sendall(b" " * 65536)
        data, _ = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 413 ") and b"connection: close" in data.lower(), data[:200]
