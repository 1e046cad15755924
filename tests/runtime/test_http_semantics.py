"""One correct answer per request (RFC 9110 / RFC 9112), on raw sockets: HEAD answers carry no body,
a request with ``Upgrade`` and a CONNECT get exactly one answer, and a request with two
``Authorization`` headers is refused, not decided by whichever comes last."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
from runtime_harness import Served, read_until_closed


def _exchange(s: Served, raw: bytes) -> bytes:
    with socket.create_connection((s.host, s.port), timeout=5) as sock:
        sock.sendall(raw)
        return read_until_closed(sock, 5)


def _split(data: bytes, head_first: bool) -> list[tuple[int, dict[str, str], bytes]]:
    answers = []
    first = True
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"a partial answer: {data[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 "), f"not an answer: {data[:200]!r}"
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = 0 if (head_first and first) else int(headers.get("content-length", "0"))
        answers.append((int(lines[0].split()[1]), headers, rest[:length]))
        data = rest[length:]
        first = False
    return answers


def test_head_answers_carry_no_body(mlp_server: Served) -> None:
    for path in ("/v2/health/live", "/v2/models/mlp", "/metrics", "/v2/models/mlp/infer"):
        raw = (f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n"
               "GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").encode()
        answers = _split(_exchange(mlp_server, raw), head_first=True)
        # the HEAD answer's headers, then directly the GET's answer: no body in between
        assert len(answers) == 2, (path, answers)
        (head_status, head_headers, _), (get_status, _, get_body) = answers
        assert get_status == 200 and get_body.startswith(b"{"), (path, answers)
        if path == "/v2/models/mlp/infer":
            assert head_status == 405 and head_headers["allow"] == "POST"
        else:
            assert head_status == 200
            # the length GET would send
            assert int(head_headers["content-length"]) == len(httpx.get(f"{mlp_server.url}{path}").content) \
                or path == "/metrics"


def test_upgrade_request_gets_one_answer(mlp_server: Served) -> None:
    raw = (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    answers = _split(_exchange(mlp_server, raw), head_first=False)
    assert [a[0] for a in answers] == [200], answers
    assert answers[0][1].get("connection") == "close"


def test_connect_gets_one_answer(mlp_server: Served) -> None:
    raw = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    answers = _split(_exchange(mlp_server, raw), head_first=False)
    assert len(answers) == 1, answers
    assert answers[0][0] == 405 and b"CONNECT" in answers[0][2]


def test_two_authorization_headers_are_refused(serve, mlp_package: Path, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("right")
    s = serve(mlp_package, "--auth-token-file", str(token))
    body = b'{"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [' \
        + b",".join([b"1"] * 16) + b"]}]}"
    for first, second in (("wrong", "right"), ("right", "wrong"), ("right", "right")):
        raw = (f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {first}\r\n"
               f"Authorization: Bearer {second}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        answers = _split(_exchange(s, raw), head_first=False)
        assert [a[0] for a in answers] == [400], answers
        assert b"more than one Authorization header" in answers[0][2]
    ok = httpx.post(f"{s.url}/v2/models/mlp/infer", content=body, headers={"Authorization": "Bearer right"})
    assert ok.status_code == 200


def test_garbage_after_a_pipelined_request_gets_its_answer_after_that_one(mlp_server: Served) -> None:
    body = b'{"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [' \
        + b",".join([b"1"] * 16) + b"]}]}"
    raw = (f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
           + body + b"NOT HTTP AT ALL\r\n\r\n")
    answers = _split(_exchange(mlp_server, raw), head_first=False)
    # the request read before the garbage is answered (in order), then the 400, then the close
    assert [a[0] for a in answers] == [200, 400], answers
    assert answers[1][1].get("connection") == "close"


def _infer_raw(x, extra: str = "") -> bytes:
    body = orjson.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                     "data": x.ravel().tolist()}]})
    return (f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
            .encode() + body)


def test_a_client_that_half_closes_after_its_requests_gets_every_answer(
        mlp_server: Served, mlp_package: Path, ort_run) -> None:
    """shutdown(SHUT_WR) after the last request (what ``curl``-like one-shot clients and ``nc -N``
    do) ends the client's sending, not the exchange: every request it sent is answered, in order,
    then the server closes (RFC 9112 9.6)."""
    rng = np.random.default_rng(11)
    xs = [rng.standard_normal((n, 16)).astype(np.float32) for n in (1, 3, 2)]
    for requests in ([_infer_raw(xs[0])],
                     [_infer_raw(xs[0]), b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n",
                      _infer_raw(xs[1]), _infer_raw(xs[2])]):
        with socket.create_connection((mlp_server.host, mlp_server.port), timeout=5) as sock:
            sock.sendall(b"".join(requests))
            sock.shutdown(socket.SHUT_WR)
            answers = _split(read_until_closed(sock, 5), head_first=False)
        assert [a[0] for a in answers] == [200] * len(requests), answers
        got = [np.array(orjson.loads(a[2])["outputs"][0]["data"], np.float32) for a in answers
               if b"outputs" in a[2]]
        want = [ort_run(mlp_package / "mlp.onnx", {"x": x})[0].ravel() for x in xs[:len(got)]]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def test_a_client_that_half_closes_in_the_middle_of_a_request_gets_a_400(mlp_server: Served) -> None:
    """A request that can never be completed (the client half-closed in its body or its headers)
    is answered 400 after the answers due before it, then the connection closes: no hang until a
    timeout, no silent close."""
    x = np.ones((1, 16), np.float32)
    whole = _infer_raw(x)
    for cut in (whole[:-10], whole[:20]):  # in the body; in the headers
        with socket.create_connection((mlp_server.host, mlp_server.port), timeout=5) as sock:
            sock.sendall(_infer_raw(x) + cut)
            sock.shutdown(socket.SHUT_WR)
            start = time.monotonic()
            answers = _split(read_until_closed(sock, 5), head_first=False)
            took = time.monotonic() - start
        assert [a[0] for a in answers] == [200, 400], (cut, answers)
        assert answers[1][1].get("connection") == "close" and took < 2, (answers, took)


def test_a_transfer_coding_other_than_chunked_is_refused(mlp_server: Served) -> None:
    """Only ``chunked`` is decoded; a request with any other transfer coding (``gzip, chunked``, in
    one header or two) is refused with a 400 naming it, not read as if it were not encoded (RFC
    9112 6.1: a server must not process a transfer coding it does not understand)."""
    body = _infer_raw(np.ones((1, 16), np.float32)).partition(b"\r\n\r\n")[2]
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    for codings in ([b"gzip, chunked"], [b"gzip", b"chunked"], [b"x-custom,chunked"],
                    [b"identity, chunked"], [b"deflate;level=1, chunked"]):
        te = b"".join(b"Transfer-Encoding: %s\r\n" % c for c in codings)
        answers = _split(_exchange(mlp_server, b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\n" + te
                                   + b"\r\n" + chunked), head_first=False)
        assert [a[0] for a in answers] == [400], (codings, answers)
        assert b"Transfer-Encoding" in answers[0][2] and answers[0][1].get("connection") == "close"
    for coding in (b"chunked", b"Chunked"):  # what is decoded is served
        raw = (b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: %s\r\n"
               b"Connection: close\r\n\r\n%s" % (coding, chunked))
        answers = _split(_exchange(mlp_server, raw), head_first=False)
        assert [a[0] for a in answers] == [200], answers


def test_a_request_target_too_long_to_parse_gets_a_414(mlp_server: Served) -> None:
    """A request-target longer than the URL parser takes (64 KiB) is answered 414 URI Too Long
    (RFC 9112 3: a MUST), naming the limit, not a 400 "User callback error"; a long one under it
    is served."""
    for length, want in ((70_000, 414), (60_000, 200)):
        raw = b"GET /v2/health/live?q=%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (b"a" * length)
        answers = _split(_exchange(mlp_server, raw), head_first=False)
        assert [a[0] for a in answers] == [want], answers
        if want == 414:
            assert b"65535" in answers[0][2] and answers[0][1].get("connection") == "close", answers


def test_an_http11_request_without_host_or_with_two_is_refused(mlp_server: Served) -> None:
    """RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request that lacks a Host header or
    has more than one; the answer names the reason. The connection stays usable after a refused
    request without a body. HTTP/1.0 has no such rule: served without Host."""
    for raw, why in (
        (b"GET /v2/health/live HTTP/1.1\r\n\r\n", b"must carry a Host header"),
        (b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b"more than one Host header"),
        (_infer_raw(np.ones((1, 16), np.float32)).replace(b"Host: x\r\n", b""), b"must carry a Host header"),
    ):
        answers = _split(_exchange(mlp_server, raw + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"
                                   b"Connection: close\r\n\r\n"), head_first=False)
        assert answers[0][0] == 400 and why in answers[0][2], answers
        if not raw.startswith(b"POST"):  # no body: the next request is served
            assert [a[0] for a in answers] == [400, 200], answers
    answers = _split(_exchange(mlp_server, b"GET /v2/health/live HTTP/1.0\r\n\r\n"), head_first=False)
    assert [a[0] for a in answers] == [200], answers
    # every client the runtime is used with sends Host (httpx here; tritonclient, kserve's client,
    # wrk and h2load in test_client_compat and the benchmark)
    assert httpx.get(f"{mlp_server.url}/v2/health/live").status_code == 200


def test_an_expectation_other_than_100_continue_gets_a_417(mlp_server: Served) -> None:
    """RFC 9110 10.1.1: 100-continue is the only expectation defined; a request with any other
    Expect value is answered 417 Expectation Failed naming the value, before its body is read
    (and the connection closes, as for every refusal of a request with a body)."""
    body = _infer_raw(np.ones((1, 16), np.float32)).partition(b"\r\n\r\n")[2]
    for value in (b"200-ok", b"100-continue-please"):
        raw = (b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\nExpect: %s\r\n\r\n" % (len(body), value))
        answers = _split(_exchange(mlp_server, raw), head_first=False)
        assert [a[0] for a in answers] == [417], answers
        assert value in answers[0][2] and answers[0][1].get("connection") == "close", answers
    answers = _split(_exchange(mlp_server, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nExpect: x\r\n"
                               b"Connection: close\r\n\r\n"), head_first=False)
    assert [a[0] for a in answers] == [417], answers
    raw = (b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\nExpect: 100-Continue\r\nConnection: close\r\n\r\n" % len(body))
    answers = _split(_exchange(mlp_server, raw + body), head_first=True)  # (100 Continue first)
    assert [a[0] for a in answers] == [100, 200], answers
