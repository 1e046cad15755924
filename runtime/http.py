"""A lean HTTP/1.1 server protocol on asyncio and httptools: keep-alive, pipelining (answers in
order, bounded by count and bytes), ``Expect: 100-continue``, a body size limit and a server-wide
budget of buffered body bytes (both checked at the headers), header/body/idle timeouts (checked by
the application's periodic sweep, nothing per read but one attribute store) and graceful closing.

It parses a request into a :class:`Request` and hands it to the application's ``handle``; the
application answers (now or later) with :meth:`Connection.respond`. Nothing else: no routing, no
middleware; the per-request cost of a general-purpose framework would eat a large part of the
latency budget of a small model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable
from http import HTTPStatus
from typing import Protocol

import httptools
import orjson
from inferstack.runtime.errors import BadRequest, ClientTimeout, HTTPError, Overloaded, PayloadTooLarge

log = logging.getLogger("inferstack.runtime")

_WANTED = frozenset(
    {b"content-length", b"content-type", b"content-encoding", b"inference-header-content-length",
     b"authorization", b"expect", b"transfer-encoding"}
)
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_MAX_PIPELINED = 8  # requests read ahead of the answer in progress; past it, reading pauses
_MAX_QUEUED_BYTES = 4 * 1024 * 1024  # ... or past this many body bytes read ahead
_MAX_HEAD_BYTES = 256 * 1024
_LINGER_S = 2.0  # after a final answer, how long to read and discard before closing for good


class Handler(Protocol):
    max_body_bytes: int
    max_buffered_bytes: int
    buffered: int
    """request body bytes all connections hold now (declared bodies being read, queued, answered)"""
    now: float
    """a coarse clock (the event loop's time, refreshed by the periodic sweep)"""

    def handle(self, conn: Connection, request: Request) -> None: ...

    def connection_opened(self, conn: Connection) -> None: ...

    def connection_closed(self, conn: Connection) -> None: ...


class Request:
    __slots__ = ("method", "url", "headers", "body", "keep_alive", "error", "started", "size")

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


class Connection(asyncio.Protocol):
    def __init__(self, app: Handler) -> None:
        self.app = app
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a request of this connection is being answered
        self.closing = False  # close once the current answer is written (shutdown)
        self._queue: deque[Request] = deque()
        self._queued_bytes = 0
        self._paused = False
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
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._size = 0  # body bytes of a chunked request read so far
        self._reserved = 0  # body bytes of the request being read, counted in the budget
        self._chunked = False

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self._mark = self.app.now
        self.app.connection_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._queue.clear()
        self._body = []
        self.app.buffered -= self._held
        self._held = self._current = self._reserved = self._queued_bytes = 0
        self.app.connection_closed(self)

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # the answer is out and the connection is closing: discard the rest
            return
        self._mark = self.app.now
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail_protocol("protocol upgrades are not supported")
            return
        except httptools.HttpParserError as e:
            if not self._discard:
                self._fail_protocol(f"malformed HTTP request: {e}")
            return
        if self._in_head:  # a request line and headers that never end must not grow without bound
            self._head_bytes += len(data)
            if self._head_bytes > _MAX_HEAD_BYTES:
                self._fail_protocol(f"request line and headers exceed {_MAX_HEAD_BYTES} bytes")

    def _fail_protocol(self, message: str) -> None:
        if self.busy:  # answers must stay in order; drop the connection instead
            self.close()
            return
        self.respond_error(BadRequest(message), keep_alive=False)

    # -- timeouts (called by the application's periodic sweep) ---------------------------------
    def check_timeouts(self, now: float, header_s: float, body_s: float, idle_s: float) -> None:
        if self.closing or self._paused or self.transport is None:
            return
        if self._in_head:
            if now - self._head_since > header_s:
                self._expire(f"request line and headers not received within {header_s:g}s "
                             "(--header-timeout-s / INFERSTACK_HEADER_TIMEOUT_S)")
        elif self._in_body:
            if now - self._mark > body_s:
                self._expire(f"request body stalled: no bytes for {body_s:g}s "
                             "(--body-timeout-s / INFERSTACK_BODY_TIMEOUT_S)")
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
            self._headers[name] = value

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._head_bytes = 0
        if self._discard:
            return
        app = self.app
        limit = app.max_body_bytes
        length = self._headers.get(b"content-length")
        if length is None:
            self._chunked = b"transfer-encoding" in self._headers
        elif length.isdigit():  # (httptools has checked it)
            size = int(length)
            if size > limit:  # refuse before the body is sent (or read)
                self._refuse_early(self._payload_too_large(size, limit))
                return
            if size:
                if app.buffered + size > app.max_buffered_bytes:
                    self._refuse_early(self._overloaded())
                    return
                app.buffered += size
                self._held += size
                self._reserved = size
        if self._headers.get(b"expect", b"").lower() == b"100-continue" and not self.busy \
                and self.transport is not None:
            # (while an answer is in progress, a 100 would land in the middle of it: the client
            # sends the body after its own wait instead)
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._discard:
            return
        if self._chunked:  # no declared length: count as it comes
            app = self.app
            n = len(body)
            self._size += n
            if self._size > app.max_body_bytes:
                self._refuse_early(self._payload_too_large(self._size, app.max_body_bytes, at_least=True))
                return
            app.buffered += n
            self._held += n
            self._reserved += n
            if app.buffered > app.max_buffered_bytes:
                self._refuse_early(self._overloaded())
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

    def _drop_partial(self) -> None:
        if self._reserved:
            self.app.buffered -= self._reserved
            self._held -= self._reserved
            self._reserved = 0
        self._body = []

    def _refuse_early(self, error: HTTPError) -> None:
        """Answer ``error`` for the request being read (in order) and close: the rest of its body
        is neither waited for nor read."""
        self._drop_partial()
        self._discard = True
        self._in_body = False
        request = Request(self.parser.get_method(), self._url, self._headers, b"", False, error)
        if self.busy:
            self._queue.append(request)
            self.closing = True
            self._pause()
        else:
            self._dispatch(request)

    def on_message_complete(self) -> None:
        self._in_body = False
        if self._discard:
            return
        parts = self._body
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        self._body = []
        size = self._reserved
        self._reserved = 0
        request = Request(
            self.parser.get_method(), self._url, self._headers, body, self.parser.should_keep_alive(),
            None, size,
        )
        if self.busy:
            self._queue.append(request)
            self._queued_bytes += size
            if len(self._queue) >= _MAX_PIPELINED or self._queued_bytes >= _MAX_QUEUED_BYTES:
                self._pause()
        else:
            self._dispatch(request)

    def _pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    # -- answering ---------------------------------------------------------------------------
    def _dispatch(self, request: Request) -> None:
        self.busy = True
        self._current = request.size
        self.app.handle(self, request)

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
        if transport is None or transport.is_closing():
            self.busy = False
            return False
        if self._current:  # the request's bytes leave the budget
            self.app.buffered -= self._current
            self._held -= self._current
            self._current = 0
        # when shutting down, finish the requests already read, then close
        keep_alive = keep_alive and not (self.closing and not self._queue)
        extra = b"".join([f"{n}: {v}\r\n".encode("latin-1") for n, v in headers]) if headers else b""
        if not keep_alive:
            extra += b"connection: close\r\n"
        status_line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Status\r\n".encode()
        if isinstance(body, bytes):
            transport.write(b"%scontent-type: %s\r\ncontent-length: %d\r\n%s\r\n%s" % (
                status_line, content_type, len(body), extra, body))
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
        if not keep_alive:
            self._linger_close()
            return True
        if self._queue:
            request = self._queue.popleft()
            self._queued_bytes -= request.size
            self._dispatch(request)
        if self._paused and not self.closing and len(self._queue) < _MAX_PIPELINED // 2 \
                and self._queued_bytes < _MAX_QUEUED_BYTES // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
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
        """Close now when idle; otherwise after the answer in progress (no new requests read)."""
        self.closing = True
        if not self.busy and not self._queue:
            self.close()
