"""A lean HTTP/1.1 server protocol on asyncio and httptools: keep-alive, pipelining (answers in
order, bounded by count and bytes), back-pressure (a connection whose unsent answers pass the
transport's high-water mark is not read until they drain), ``Expect: 100-continue``, a body size
limit, a server-wide budget of buffered body bytes and a per-client share of it (counted as the
bytes arrive, after the application has admitted the request's headers), header/body/idle
timeouts and a minimum body rate (checked by the application's periodic sweep, nothing per read but
one attribute store), HEAD answers without a body, one answer per request (``Upgrade`` is ignored,
CONNECT refused), and graceful closing that never closes a keep-alive connection under a request.

It parses a request into a :class:`Request` and hands it to the application's ``handle``; the
application answers (now or later) with :meth:`Connection.respond`. Nothing else: no routing, no
middleware; the per-request cost of a general-purpose framework would eat a large part of the
latency budget of a small model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Protocol

import httptools
import orjson
from inferstack.runtime.errors import (
    BadRequest,
    ClientTimeout,
    HTTPError,
    MethodNotAllowed,
    Overloaded,
    PayloadTooLarge,
)

log = logging.getLogger("inferstack.runtime")

_WANTED = frozenset(
    {b"content-length", b"content-type", b"content-encoding", b"inference-header-content-length",
     b"authorization", b"expect", b"transfer-encoding"}
)
#: headers whose second copy makes the request ambiguous (which one counts?): refused with 400
_SINGLE = frozenset(
    {b"content-type", b"content-encoding", b"inference-header-content-length", b"authorization"}
)
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_MAX_PIPELINED = 8  # requests read ahead of the answer in progress; past it, reading pauses
_MAX_QUEUED_BYTES = 4 * 1024 * 1024  # ... or past this many body bytes read ahead
_MAX_HEAD_BYTES = 256 * 1024
_LINGER_S = 2.0  # after a final answer, how long to read and discard before closing for good
_HIGH_WATER = 256 * 1024  # unsent answer bytes past which a connection is not read


class Handler(Protocol):
    max_body_bytes: int
    max_buffered_bytes: int
    max_client_buffered_bytes: int
    buffered: int
    """request body bytes all connections hold now (bodies being read, queued, answered)"""
    held_by: dict[str, int]
    """... of which each client address holds (only addresses holding bytes are keys)"""
    now: float
    """a coarse clock (the event loop's time, refreshed by the periodic sweep)"""
    shutting_down: bool
    """SIGTERM seen: every answer closes its connection"""
    log_access: Callable[[Request | None, int, int, bytes | None], None] | None
    """None, or called after each answer: (the request or None for a malformed one, status,
    body bytes, the body of an error answer)"""

    def admit(self, method: bytes, url: bytes, headers: dict[bytes, bytes]) -> HTTPError | None:
        """Called at the end of a request's headers, before any of its body is read or counted:
        an error refuses the request (auth)."""
        ...

    def handle(self, conn: Connection, request: Request) -> None: ...

    def connection_opened(self, conn: Connection) -> None: ...

    def connection_closed(self, conn: Connection) -> None: ...


class Request:
    __slots__ = ("method", "url", "headers", "body", "keep_alive", "error", "started", "size", "arrived")

    def __init__(self, method: bytes, url: bytes, headers: dict[bytes, bytes], body: bytes,
                 keep_alive: bool, error: HTTPError | None, size: int = 0) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.error = error  # set when the request was refused while reading (e.g. body too large)
        self.started = 0.0
        self.size = size  # body bytes counted in the server's buffer budget
        self.arrived = 0.0  # (perf_counter) when it was handed to the application; access log only


class Connection(asyncio.Protocol):
    def __init__(self, app: Handler) -> None:
        self.app = app
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a request of this connection is being answered
        self.closing = False  # close after the answers to what was read (shutdown, errors)
        self._queue: deque[Request] = deque()
        self._queued_bytes = 0
        self._paused = False  # reading paused: too many pipelined requests, or closing
        self._write_paused = False  # reading paused: the transport holds too many unsent bytes
        self._reading_paused = False  # what the transport was told
        self._in_queue = False  # _run_queue is on the stack
        self._head_answer = False  # the request being answered is a HEAD: no body in its answer
        self._client = ""  # the peer's address: its share of the body budget
        self._request: Request | None = None  # the request being answered (for the access log)
        self._in_head = False  # between on_message_begin and on_headers_complete
        self._in_body = False  # between on_headers_complete and on_message_complete
        self._fresh = True  # no request started yet on this connection
        self._discard = False  # a request was refused while reading: ignore the rest, then close
        self._lingering = False  # half-closed after a final answer; reading and discarding until EOF
        self._head_bytes = 0
        self._head_since = 0.0
        self._mark = app.now  # when bytes last arrived or the last answer was written
        self._held = 0  # body bytes of this connection in the server's budget
        self._current = 0  # ... of which the request being answered
        self._window_since = 0.0  # the body rate is measured over windows of --body-timeout-s
        self._window_bytes = 0
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._size = 0  # body bytes of the request being read so far
        self._reserved = 0  # ... of them counted in the budget
        self._twice: bytes | None = None  # a header of _SINGLE sent more than once
        self._error: HTTPError | None = None  # refused at the headers, answered in order

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.set_write_buffer_limits(high=_HIGH_WATER)  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self._mark = self.app.now
        self.app.connection_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._queue.clear()
        self._body = []
        self._release(self._held)
        self._current = self._reserved = self._queued_bytes = 0
        self.app.connection_closed(self)

    def pause_writing(self) -> None:
        """The transport holds more than _HIGH_WATER unsent bytes: the client is not reading its
        answers. Read nothing more from it (and answer nothing more) until they drain."""
        self._write_paused = True
        self._sync_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._run_queue()
        self._sync_reading()

    def _sync_reading(self) -> None:
        transport = self.transport
        if transport is None or self._lingering:
            return
        pause = self._paused or self._write_paused
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    # -- the body budget -----------------------------------------------------------------------
    def _hold(self, n: int) -> None:
        app = self.app
        app.buffered += n
        self._held += n
        held_by = app.held_by
        held_by[self._client] = held_by.get(self._client, 0) + n

    def _release(self, n: int) -> None:
        if not n:
            return
        app = self.app
        app.buffered -= n
        self._held -= n
        held_by = app.held_by
        left = held_by.get(self._client, 0) - n
        if left > 0:
            held_by[self._client] = left
        else:
            held_by.pop(self._client, None)

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # the answer is out and the connection is closing: discard the rest
            return
        self._mark = self.app.now
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request (with Upgrade, or a CONNECT) was complete and is answered once, with
            # Connection: close (see on_message_complete); what follows it is not HTTP/1.1.
            self._discard = True
            self.closing = True
            self._paused = True
            self._sync_reading()
            return
        except httptools.HttpParserError as e:
            # (after a final answer, e.g. to Connection: close, the rest of the packet is discarded)
            if not self._discard and not self._lingering:
                self._fail_protocol(f"malformed HTTP request: {e}")
            return
        if self._in_head:  # a request line and headers that never end must not grow without bound
            self._head_bytes += len(data)
            if self._head_bytes > _MAX_HEAD_BYTES:
                self._fail_protocol(f"request line and headers exceed {_MAX_HEAD_BYTES} bytes")

    def _fail_protocol(self, message: str) -> None:
        """The bytes are not HTTP/1.1 (or not within its limits): answer 400 after what was read
        before them, in order, then close."""
        self._discard = True
        self._in_head = self._in_body = False
        self._drop_partial()
        self._final(BadRequest(message), b"")

    # -- timeouts (called by the application's periodic sweep) ---------------------------------
    def check_timeouts(self, now: float, header_s: float, body_s: float, idle_s: float,
                       min_rate: float, drain_over: bool) -> None:
        if self.transport is None or self._lingering:
            return
        if self._write_paused:  # a client that reads none of its answers for that long is gone
            if now - self._mark > idle_s:
                self.close()
            return
        if self._paused:
            return
        if self._in_head:
            if now - self._head_since > header_s:
                self._expire(f"request line and headers not received within {header_s:g}s "
                             "(--header-timeout-s / INFERSTACK_HEADER_TIMEOUT_S)")
        elif self._in_body:
            if now - self._mark > body_s:
                self._expire(f"request body stalled: no bytes for {body_s:g}s "
                             "(--body-timeout-s / INFERSTACK_BODY_TIMEOUT_S)")
            elif now - self._window_since >= body_s:
                # bytes now and then are not enough: over each window, at least min_rate bytes/s
                took = now - self._window_since
                if self._window_bytes < min_rate * took:
                    self._expire(f"request body too slow: {self._window_bytes} bytes in {took:.1f}s, "
                                 f"under {min_rate:g} bytes/s (--min-body-rate / INFERSTACK_MIN_BODY_RATE)")
                else:
                    self._window_since = now
                    self._window_bytes = 0
        elif self.closing:
            # Shutting down and idle: the client may be writing a request right now, so the
            # connection stays open for it (answered with Connection: close) until the drain
            # timeout; only then is it closed under a possible request.
            if drain_over and not self.busy and not self._queue:
                self.close()
        elif not self.busy and not self._queue:
            if self._fresh:
                if now - self._mark > header_s:
                    self._expire(f"no request received within {header_s:g}s "
                                 "(--header-timeout-s / INFERSTACK_HEADER_TIMEOUT_S)")
            elif now - self._mark > idle_s:
                self.close()  # an idle keep-alive connection: close quietly

    def _expire(self, message: str) -> None:
        self._drop_partial()
        self._discard = True
        self._in_head = self._in_body = False
        if self.busy or self._queue:  # answer what was read, in order, then close
            self.closing = True
            self._pause()
            return
        self.respond_error(ClientTimeout(message), keep_alive=False)

    # -- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()
        self._in_head = True
        self._fresh = False
        self._head_since = self.app.now

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _WANTED:
            headers = self._headers
            if name in headers and name in _SINGLE:
                self._twice = name
            headers[name] = value

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._head_bytes = 0
        if self._discard:
            return
        app = self.app
        headers = self._headers
        method = self.parser.get_method()
        length = headers.get(b"content-length")
        size = int(length) if length is not None and length.isdigit() else 0  # (httptools checked it)
        has_body = size > 0 or (length is None and b"transfer-encoding" in headers)
        if self._twice is not None:
            error: HTTPError | None = BadRequest(
                f"more than one {self._twice.decode('latin-1').title()} header: send it once")
        elif method == b"CONNECT":
            error = MethodNotAllowed("CONNECT: this server is not a proxy", "GET, HEAD, POST")
        else:
            error = app.admit(method, self._url, headers)  # auth: before any body byte is counted
        if error is None and size:
            limit = app.max_body_bytes
            if size > limit:  # refuse before the body is sent (or read)
                error = self._payload_too_large(size, limit)
            elif app.buffered + size > app.max_buffered_bytes:  # it cannot fit now
                error = self._overloaded()
            elif app.held_by.get(self._client, 0) + size > app.max_client_buffered_bytes:
                error = self._over_share()
        if error is not None:
            if has_body:  # not read, not waited for: answer, then close
                self._refuse_early(error)
            else:  # answered in order, the connection stays usable
                self._error = error
            return
        self._window_since = app.now
        self._window_bytes = 0
        if headers.get(b"expect", b"").lower() == b"100-continue" and not self.busy \
                and self.transport is not None:
            # (while an answer is in progress, a 100 would land in the middle of it: the client
            # sends the body after its own wait instead)
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._discard or self._error is not None:
            return
        # Counted in the budget as the bytes arrive (not as declared): a body that trickles in
        # holds only what it sent, and the minimum rate cuts it off.
        app = self.app
        n = len(body)
        self._size += n
        self._window_bytes += n
        if self._size > app.max_body_bytes:  # (a chunked body: no declared length)
            self._refuse_early(self._payload_too_large(self._size, app.max_body_bytes, at_least=True))
            return
        self._hold(n)
        self._reserved += n
        if app.buffered > app.max_buffered_bytes:
            self._refuse_early(self._overloaded())
            return
        if app.held_by[self._client] > app.max_client_buffered_bytes:
            self._refuse_early(self._over_share())
            return
        self._body.append(body)

    @staticmethod
    def _payload_too_large(size: int, limit: int, at_least: bool = False) -> HTTPError:
        more = "more than " if at_least else ""
        return PayloadTooLarge(
            f"request body of {more}{size} bytes exceeds the limit of {limit} bytes "
            "(--max-body-bytes / INFERSTACK_MAX_BODY_BYTES)"
        )

    def _overloaded(self) -> HTTPError:
        return Overloaded(
            f"the server holds {self.app.buffered} bytes of requests (--max-buffered-bytes / "
            f"INFERSTACK_MAX_BUFFERED_BYTES is {self.app.max_buffered_bytes}); retry later"
        )

    def _over_share(self) -> HTTPError:
        return Overloaded(
            f"this client holds {self.app.held_by.get(self._client, 0)} bytes of requests "
            f"(--max-client-buffered-bytes / INFERSTACK_MAX_CLIENT_BUFFERED_BYTES is "
            f"{self.app.max_client_buffered_bytes}); retry later"
        )

    def _drop_partial(self) -> None:
        if self._reserved:
            self._release(self._reserved)
            self._reserved = 0
        self._body = []

    def _refuse_early(self, error: HTTPError) -> None:
        """Answer ``error`` for the request being read (in order) and close: the rest of its body
        is neither waited for nor read."""
        self._drop_partial()
        self._discard = True
        self._in_body = False
        self._final(error, self.parser.get_method())

    def _final(self, error: HTTPError, method: bytes) -> None:
        """Queue ``error`` as the connection's last answer (after the ones before it), read no
        more, and close once it is written."""
        request = Request(method, self._url, self._headers, b"", False, error)
        self.closing = True
        self._paused = True
        self._sync_reading()
        self._queue.append(request)
        self._run_queue()

    def on_message_complete(self) -> None:
        self._in_body = False
        if self._discard:
            return
        parser = self.parser
        keep_alive = parser.should_keep_alive()
        if parser.should_upgrade():  # Upgrade is ignored (RFC 9110 7.8), but what follows is not HTTP/1.1
            keep_alive = False
            length = self._headers.get(b"content-length")
            if self._error is None and (length.strip(b"0") if length is not None
                                        else b"transfer-encoding" in self._headers):
                # httptools hands over no body for a request with Upgrade: refuse, not misread
                self._error = BadRequest("a request body with Upgrade is not supported")
        parts = self._body
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        self._body = []
        size = self._reserved
        self._reserved = 0
        request = Request(parser.get_method(), self._url, self._headers, body, keep_alive, self._error, size)
        if self.busy or self._write_paused or self._queue:
            self._queue.append(request)
            self._queued_bytes += size
            if len(self._queue) >= _MAX_PIPELINED or self._queued_bytes >= _MAX_QUEUED_BYTES:
                self._pause()
        else:
            self._dispatch(request)

    def _pause(self) -> None:
        self._paused = True
        self._sync_reading()

    # -- answering ---------------------------------------------------------------------------
    def _dispatch(self, request: Request) -> None:
        self.busy = True
        if self.app.log_access is not None:
            self._request = request
            request.arrived = time.perf_counter()
        self._current = request.size
        self._head_answer = request.method == b"HEAD"
        self.app.handle(self, request)

    def _run_queue(self) -> None:
        """Answer queued requests while nothing else is in progress (a loop, not a recursion:
        answers written at once come back here)."""
        if self._in_queue:
            return
        self._in_queue = True
        try:
            queue = self._queue
            while queue and not self.busy and not self._write_paused and not self._lingering \
                    and self.transport is not None:
                request = queue.popleft()
                self._queued_bytes -= request.size
                self._dispatch(request)
        finally:
            self._in_queue = False

    def respond(
        self,
        status: int,
        body: bytes | Iterable[bytes | memoryview],
        content_type: bytes = b"application/json",
        headers: tuple[tuple[str, str], ...] = (),
        keep_alive: bool = True,
    ) -> bool:
        """Write one answer; then go on with the next pipelined request, or close. False when the
        client has gone (nothing written)."""
        transport = self.transport
        if transport is None or transport.is_closing() or self._lingering:
            # gone, or the final answer is out (write_eof): nothing is ever written after it
            self.busy = False
            return False
        if self._current:  # the request's bytes leave the budget
            self._release(self._current)
            self._current = 0
        if keep_alive and (self.closing or self.app.shutting_down) and not (
                self._queue or self._in_head or self._in_body):
            # Shutting down: this is the connection's last answer, unless the client has already
            # sent (part of) another request, which is read and answered first.
            keep_alive = False
        extra = b"".join([f"{n}: {v}\r\n".encode("latin-1") for n, v in headers]) if headers else b""
        if not keep_alive:
            extra += b"connection: close\r\n"
        status_line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Status\r\n".encode()
        if self._head_answer:  # the length a GET would get, and no body (RFC 9110 9.3.2)
            length = len(body) if isinstance(body, bytes) else sum(len(c) for c in body)
            transport.write(b"%scontent-type: %s\r\ncontent-length: %d\r\n%s\r\n" % (
                status_line, content_type, length, extra))
        elif isinstance(body, bytes):
            length = len(body)
            transport.write(b"%scontent-type: %s\r\ncontent-length: %d\r\n%s\r\n%s" % (
                status_line, content_type, length, extra, body))
        else:
            chunks: list[bytes | memoryview] = list(body)
            length = sum(len(c) for c in chunks)
            head = b"%scontent-type: %s\r\ncontent-length: %d\r\n%s\r\n" % (
                status_line, content_type, length, extra)
            if length <= 65536:
                transport.write(b"".join([head, *chunks]))
            else:
                transport.writelines([head, *chunks])
        self.busy = False
        self._mark = self.app.now
        log_access = self.app.log_access
        if log_access is not None:
            error_body = body if status >= 400 and isinstance(body, bytes) else None
            log_access(self._request, status, length, error_body)
            self._request = None
        if not keep_alive:
            self._queue.clear()  # (only after an Upgrade: nothing after it was parsed)
            self._linger_close()
            return True
        self._run_queue()
        if self._paused and not self.closing and len(self._queue) < _MAX_PIPELINED // 2 \
                and self._queued_bytes < _MAX_QUEUED_BYTES // 2:
            self._paused = False
            self._sync_reading()
        return True

    def hold_decoded(self, n: int) -> bool:
        """Count ``n`` more bytes in the budget for the request being answered (what its body
        decodes into), until its answer is written; False, and nothing counted, when they do not
        fit now."""
        if self.app.buffered + n > self.app.max_buffered_bytes:
            return False
        self._hold(n)
        self._current += n
        return True

    def respond_error(self, error: HTTPError, keep_alive: bool = True) -> bool:
        body = orjson.dumps({"error": error.message})
        return self.respond(error.status_code, body, headers=error.headers, keep_alive=keep_alive)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _linger_close(self) -> None:
        """Close after a final answer without losing it: closing a socket that still has unread
        request bytes makes the kernel send a reset, which can discard the answer before the client
        reads it (a 413 or 503 sent while the client is still sending its body). So: send FIN after
        the answer (half-close), read and discard what still arrives, and close for good when the
        client closes or after ``_LINGER_S``."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        self._lingering = True
        transport.write_eof()
        with contextlib.suppress(Exception):  # reading may have been paused for back-pressure
            transport.resume_reading()
        asyncio.get_running_loop().call_later(_LINGER_S, self.close)

    def shutdown(self) -> None:
        """Shutting down: the next answer on this connection is its last (``Connection: close``).
        An idle connection stays open for a request its client may be writing right now; the
        periodic sweep closes it once the drain timeout has passed."""
        self.closing = True
