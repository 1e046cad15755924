"""A lean HTTP/1.1 server protocol on asyncio and httptools: keep-alive, pipelining (answers in
order), ``Expect: 100-continue``, a body size limit and graceful closing.

It parses a request into a :class:`Request` and hands it to the application's ``handle``; the
application answers (now or later) with :meth:`Connection.respond`. Nothing else: no routing, no
middleware; the per-request cost of a general-purpose framework would eat a large part of the
latency budget of a small model.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from http import HTTPStatus
from typing import Protocol

import httptools
import orjson
from inferstack.runtime.errors import BadRequest, HTTPError, PayloadTooLarge

log = logging.getLogger("inferstack.runtime")

_WANTED = frozenset(
    {b"content-length", b"content-type", b"content-encoding", b"inference-header-content-length",
     b"authorization", b"expect", b"transfer-encoding"}
)
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_MAX_PIPELINED = 16
_MAX_HEAD_BYTES = 256 * 1024


class Handler(Protocol):
    max_body_bytes: int

    def handle(self, conn: Connection, request: Request) -> None: ...

    def connection_opened(self, conn: Connection) -> None: ...

    def connection_closed(self, conn: Connection) -> None: ...


class Request:
    __slots__ = ("method", "url", "headers", "body", "keep_alive", "error", "started")

    def __init__(self, method: bytes, url: bytes, headers: dict[bytes, bytes], body: bytes,
                 keep_alive: bool, error: HTTPError | None) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.error = error  # set when the request was refused while reading (e.g. body too large)
        self.started = 0.0


class Connection(asyncio.Protocol):
    def __init__(self, app: Handler) -> None:
        self.app = app
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a request of this connection is being answered
        self.closing = False  # close once the current answer is written (shutdown)
        self._queue: deque[Request] = deque()
        self._paused = False
        self._in_head = False  # between on_message_begin and on_headers_complete
        self._head_bytes = 0
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._too_large: HTTPError | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.app.connection_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._queue.clear()
        self.app.connection_closed(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail_protocol("protocol upgrades are not supported")
            return
        except httptools.HttpParserError as e:
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

    # -- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _WANTED:
            self._headers[name] = value

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        limit = self.app.max_body_bytes
        length = self._headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            self._too_large = self._payload_too_large(int(length), limit)
        elif self._headers.get(b"expect", b"").lower() == b"100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._too_large is not None:
            if self._size > 8 * self.app.max_body_bytes + (1 << 20):  # do not read an endless stream
                self.close()
            return
        if self._size > self.app.max_body_bytes:
            self._too_large = self._payload_too_large(self._size, self.app.max_body_bytes, at_least=True)
            self._body.clear()
            return
        self._body.append(body)

    @staticmethod
    def _payload_too_large(size: int, limit: int, at_least: bool = False) -> HTTPError:
        more = "more than " if at_least else ""
        return PayloadTooLarge(
            f"request body of {more}{size} bytes exceeds the limit of {limit} bytes "
            "(--max-body-bytes / INFERSTACK_MAX_BODY_BYTES)"
        )

    def on_message_complete(self) -> None:
        parts = self._body
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        keep_alive = self.parser.should_keep_alive() and self._too_large is None
        request = Request(
            self.parser.get_method(), self._url, self._headers, body, keep_alive, self._too_large
        )
        if self.busy:
            self._queue.append(request)
            if len(self._queue) >= _MAX_PIPELINED and self.transport is not None and not self._paused:
                self._paused = True
                self.transport.pause_reading()
        else:
            self._dispatch(request)

    # -- answering ---------------------------------------------------------------------------
    def _dispatch(self, request: Request) -> None:
        self.busy = True
        self.app.handle(self, request)

    def respond(
        self,
        status: int,
        body: bytes | Iterable[bytes | memoryview],
        content_type: bytes = b"application/json",
        headers: tuple[tuple[str, str], ...] = (),
        keep_alive: bool = True,
    ) -> None:
        """Write one answer; then go on with the next pipelined request, or close."""
        transport = self.transport
        if transport is None or transport.is_closing():
            self.busy = False
            return
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
        if not keep_alive:
            self.close()
            return
        if self._queue:
            self._dispatch(self._queue.popleft())
        if self._paused and len(self._queue) < _MAX_PIPELINED // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def respond_error(self, error: HTTPError, keep_alive: bool = True) -> None:
        body = orjson.dumps({"error": error.message})
        self.respond(error.status_code, body, headers=error.headers,
                     keep_alive=keep_alive)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def shutdown(self) -> None:
        """Close now when idle; otherwise after the answer in progress (no new requests read)."""
        self.closing = True
        if not self.busy and not self._queue:
            self.close()
