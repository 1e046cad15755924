"""The periodic sweep over connections (header, body and idle timeouts, the drain) never holds the
event loop for long: with thousands of open connections it checks them a slice at a time, and
what arrives meanwhile (a health check, an answer) is handled between slices. Checking 8,000 idle
keep-alive connections in one callback held the loop for 13-17 ms once a second."""

from __future__ import annotations

import asyncio
from typing import Any

from inferstack.runtime.config import ServerConfig
from inferstack.runtime.http import protocol_factory
from inferstack.runtime.server import SWEEP_SLICE, App


def test_the_sweep_lets_the_event_loop_run_between_slices_of_connections() -> None:
    n = 4 * SWEEP_SLICE + 10

    async def main() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        app = App(ServerConfig(model="unused.onnx"))
        server = await loop.create_server(protocol_factory(app), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        streams = []
        for _ in range(n):  # keep-alive connections, each after one answered request: idle
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            streams.append((reader, writer))
        for reader, _ in streams:
            assert (await reader.readuntil(b"}")).startswith(b"HTTP/1.1 200 ")
        turns = 0  # event-loop turns so far: a callback that schedules itself again

        def spin() -> None:
            nonlocal turns
            turns += 1
            if spinning:
                loop.call_soon(spin)

        seen: list[int] = []  # the turn in which each connection was checked
        for conn in list(app.connections):
            check = conn.check_timeouts

            def checked(*args: Any, _check: Any = check) -> None:
                seen.append(turns)
                _check(*args)

            conn.check_timeouts = checked
        spinning = True
        spin()
        app.start_clock(loop)  # the first sweep runs after about a second
        while len(seen) < n:
            await asyncio.sleep(0.05)
        spinning = False
        for _, writer in streams:
            writer.close()
        server.close()
        return seen[:n], len(app.connections)

    seen, still_open = asyncio.run(main())
    # every connection was checked (and left open: idle for less than the idle timeout), in
    # slices of SWEEP_SLICE with event-loop turns between them
    assert still_open == n
    assert len(set(seen)) >= n // SWEEP_SLICE, sorted(set(seen))
    assert max(seen.count(t) for t in set(seen)) <= SWEEP_SLICE


def test_the_header_timeout_restarts_when_reading_resumes_after_a_pipelining_pause() -> None:
    """Headers begun in the read that filled the pipeline wait, unread, while reading is paused;
    once it resumes, the client gets a whole --header-timeout-s to finish them, even if a sweep
    runs before its next bytes are read (it was not the client that was slow)."""

    async def main() -> tuple[bool, bytes]:
        loop = asyncio.get_running_loop()
        app = App(ServerConfig(model="unused.onnx", header_timeout_s=0.5))
        real = app.handle
        held: list[Any] = []

        def handle(exchange: Any, request: Any) -> None:
            if request.url == b"/slow":  # answered later, by the test
                held.append(exchange)
            else:
                real(exchange, request)

        app.handle = handle  # type: ignore[method-assign]
        server = await loop.create_server(protocol_factory(app), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        get = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" + get + b"GET /v2/health/live HTTP/1.1\r\nHo")
        while not held or not app.connections:
            await asyncio.sleep(0.01)
        (conn,) = app.connections
        while not (conn.flow.read_paused and conn.pending()):
            await asyncio.sleep(0.01)
        c = app.config

        def sweep() -> None:  # (no periodic sweep runs: the clock is moved by hand)
            conn.check_timeouts(app.now, c.header_timeout_s, c.body_timeout_s, c.idle_timeout_s,
                                c.min_body_rate, False)

        app.now += 10 * c.header_timeout_s  # reading stays paused far longer than the header timeout
        sweep()
        held[0].respond(200, b"{}")
        while conn.flow.read_paused:  # both answers written; reading resumed, nothing read yet
            await asyncio.sleep(0)
        sweep()  # the sweep runs before the rest of the headers is read
        refused = conn.discarding
        writer.write(b"st: x\r\nConnection: close\r\n\r\n")
        data = await reader.read()
        writer.close()
        server.close()
        return refused, data

    refused, data = asyncio.run(main())
    assert not refused
    statuses = [part[:3] for part in data.split(b"HTTP/1.1 ")[1:]]
    assert statuses == [b"200"] * 3, data
