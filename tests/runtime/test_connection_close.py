"""After a final answer (``Connection: close``), bytes the client already sent in the same packet
are discarded: one answer, and nothing is written after the half-close (no asyncio traceback)."""

from __future__ import annotations

import socket
import time


def _exchange(host: str, port: int, payload: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=5) as c:
        c.sendall(payload)
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    return data


def test_bytes_after_a_connection_close_request_are_discarded_quietly(serve, fixed_onnx) -> None:
    s = serve(fixed_onnx)
    body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}]}'
    infer = (b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
             b"Content-Length: %d\r\n\r\n%s" % (s.name.encode(), len(body), body))
    get = b"GET /v2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    for first in (get, infer):  # answered at once; answered later, by the batcher
        for rest in (b"GET /v2 HTTP/1.1\r\n\r\n", b"xyz not http\r\n\r\n", b"POST /v2 HTTP/1.1\r\n"):
            answer = _exchange(s.host, s.port, first + rest)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.count(b"HTTP/1.1 ") == 1, answer
    time.sleep(0.3)  # the server logs asynchronously (its stderr is the captured log)
    log = s.log()
    assert "Traceback" not in log and "ERROR" not in log and "write_eof" not in log, log
