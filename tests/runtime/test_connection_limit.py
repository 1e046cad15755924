"""--max-connections: past the limit, a few connections (PROBE_RESERVE) are accepted for one
answer each (health checks served, anything else 503 + Retry-After), the rest closed as soon as
accepted; connections already open keep working, and places freed are taken again. The real
server on loopback, raw sockets."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

from inferstack.runtime.config import PROBE_RESERVE, ServerConfig
from inferstack.runtime.errors import ConfigError
from runtime_harness import Served, read_until_closed

LIMIT = 4


def _ask(sock: socket.socket, path: str) -> tuple[int, dict[str, str], bytes]:
    """One GET on a keep-alive connection and its answer."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed without an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _connect(s: Served) -> socket.socket:
    return socket.create_connection((s.host, s.port), timeout=5)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_connections_past_the_limit_are_refused_and_health_checks_still_answer(serve, mlp_package: Path,
                                                                             ) -> None:
    s = serve(mlp_package, "--max-connections", str(LIMIT))
    kept = [_connect(s) for _ in range(LIMIT)]
    for sock in kept:
        status, headers, _ = _ask(sock, "/v2/health/live")
        assert status == 200 and headers.get("connection") != "close"
    reserve = [_connect(s) for _ in range(PROBE_RESERVE)]
    time.sleep(0.3)  # (accepted by now)
    extra = [_connect(s) for _ in range(3)]
    for sock in extra:  # closed as soon as accepted: nothing is answered, nothing waits
        started = time.monotonic()
        assert read_until_closed(sock, 3) == b""
        assert time.monotonic() - started < 1
        sock.close()
    # the reserve: a health check (a new connection per probe, as the kubelet's) is served once,
    # anything else is told to retry; then each closes
    status, headers, body = _ask(reserve[0], "/v2/health/ready")
    assert status == 200 and headers.get("connection") == "close", (status, headers, body)
    status, headers, body = _ask(reserve[1], "/v2/models/mlp")
    assert status == 503 and headers.get("connection") == "close" and headers.get("retry-after") == "1"
    assert b"--max-connections" in body, body
    for sock in reserve[:2]:
        assert read_until_closed(sock, 3) == b""
    # connections already open keep working (keep-alive)
    for path in ("/v2/health/live", "/v2/models/mlp"):
        status, headers, _ = _ask(kept[0], path)
        assert status == 200 and headers.get("connection") != "close"
    # freed places are taken again by ordinary connections
    for sock in kept[:2]:
        sock.close()
    time.sleep(0.3)
    fresh = [_connect(s) for _ in range(2)]
    for sock in fresh:
        for _ in range(2):
            status, headers, _ = _ask(sock, "/v2/models/mlp")
            assert status == 200 and headers.get("connection") != "close"
    assert "refusing new connections: " in s.log() and "INFERSTACK_MAX_CONNECTIONS is 4" in s.log()
    for sock in kept[2:] + reserve[2:] + fresh:
        sock.close()


def test_a_flood_of_connections_that_never_read_holds_bounded_memory(serve, mlp_package: Path) -> None:
    """Connections past the limit and its reserve hold nothing: 1,000 clients that each send the
    head and 60 KB of a request body and then stall leave the server's RSS about where it was
    (accepted, they grew it by 73 MB in one run), and a keep-alive health check keeps answering."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 2000:  # (the client's sockets)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2000, hard), hard))
    s = serve(mlp_package, "--max-connections", str(LIMIT))
    probe = _connect(s)
    assert _ask(probe, "/v2/health/live")[0] == 200
    # the head of a 1 MB infer request and 60 KB of its body, the rest never sent
    partial = (b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: 1000000\r\n\r\n" + b" " * 60_000)

    def flood(n: int) -> list[socket.socket]:
        socks = []
        for _ in range(n):
            sock = socket.socket()
            sock.settimeout(5)
            sock.connect((s.host, s.port))
            with contextlib.suppress(OSError):  # (refused meanwhile)
                sock.sendall(partial)
            socks.append(sock)
        return socks

    warm = flood(100)  # (what the first refusals allocate once: the reserve, the log line)
    time.sleep(0.5)
    before = _rss(s.proc.pid)
    flooding = flood(1000)
    time.sleep(1)
    grown = _rss(s.proc.pid) - before
    assert _ask(probe, "/v2/health/live")[0] == 200
    assert grown < 16 * 1024 * 1024, grown
    for sock in warm + flooding:
        sock.close()
    probe.close()


def test_the_connection_limit_is_checked_against_the_open_file_limit() -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY:
        try:
            ServerConfig(model="m.onnx", max_connections=hard)
        except ConfigError as e:
            assert "--max-connections / INFERSTACK_MAX_CONNECTIONS" in str(e) and "RLIMIT_NOFILE" in str(e)
        else:
            raise AssertionError("a limit past the open-file limit was accepted")
        assert ServerConfig(model="m.onnx").connection_limit <= hard - PROBE_RESERVE
    for bad in (0, -1):
        try:
            ServerConfig(model="m.onnx", max_connections=bad)
        except ConfigError:
            continue
        raise AssertionError(bad)
    assert ServerConfig(model="m.onnx", max_connections=100).connection_limit == 100


def test_a_reserved_connection_that_sends_nothing_is_closed_soon(serve, mlp_package: Path) -> None:
    """The reserve is for probes, which write their request at once: a connection in it that
    sends nothing is answered 408 and closed after OVERFLOW_HEADER_TIMEOUT_S (not the whole
    --header-timeout-s), so silent connections cannot hold it for long."""
    s = serve(mlp_package, "--max-connections", "1")
    kept = _connect(s)
    assert _ask(kept, "/v2/health/live")[0] == 200
    silent = _connect(s)
    started = time.monotonic()
    data = read_until_closed(silent, 8)
    took = time.monotonic() - started
    assert data.startswith(b"HTTP/1.1 408 ") and took < 3, (data, took)
    assert _ask(kept, "/v2/health/live")[0] == 200  # (the connection within the limit stays)
    for sock in (kept, silent):
        sock.close()
