"""HTTP/1.1 through uvicorn: its httptools protocol (on uvloop) parses requests and writes answers;
this module adds what uvicorn does not do and a serving runtime needs, and hands each request to the
application as a parsed :class:`Request`.

What sits on top of uvicorn (runtime/README.md, "The HTTP layer", says why):

- :class:`Front`, the ASGI callable (no framework): the request's headers are checked before any of
  its body is read (``receive`` is what makes uvicorn send ``100 Continue``): a repeated single
  header (400), a transfer coding other than chunked (400), CONNECT (405), auth (the application's
  ``admit``), the body size limit (413) and the server-wide budget of buffered body bytes and each
  client's share of it (503); the body is counted in that budget as it is received, with a stall
  timeout and a minimum rate (408, checked by the application's periodic sweep, which cancels the
  read), and released on every path once answered. A refusal before the whole body is read closes
  the connection. HEAD answers carry the length a GET would get and no body; a request with
  ``Upgrade`` is answered once, then the connection closes.
- :class:`Protocol`, a subclass of uvicorn's ``HttpToolsProtocol``: a header timeout (also for a
  new connection that sends nothing) and a bound on the bytes of a request line and headers
  (uvicorn has neither); reading stays paused while a few pipelined requests wait (uvicorn resumes
  it after every answer, however many are queued); an unparsable request answered 400 after the answers
  to the requests read before it, in order (uvicorn writes its 400 at once, ahead of them);
  closing after a final answer by half-closing and discarding what still arrives, so the answer is
  not lost to a reset; idle keep-alive connections closed by the same sweep as the timeouts (no
  timer per answer); and on shutdown, idle keep-alive connections kept open until the drain
  timeout, for the request their client may be writing (uvicorn closes them at once).

It relies on uvicorn's protocol internals (``HttpToolsProtocol``'s parser callbacks, its
``cycle``, ``pipeline`` and ``flow``), so pyproject.toml pins uvicorn below its next minor version.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from typing import Protocol as TypingProtocol

import httptools
import orjson
from inferstack.runtime.errors import (
    BadRequest,
    ClientTimeout,
    HTTPError,
    MethodNotAllowed,
    Overloaded,
    PayloadTooLarge,
    ServiceUnavailable,
)
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

_WANTED = frozenset(
    {b"content-length", b"content-type", b"content-encoding", b"inference-header-content-length",
     b"authorization", b"expect", b"transfer-encoding", b"host"}
)
#: headers whose second copy makes the request ambiguous (which one counts?): refused with 400
_SINGLE = frozenset(
    {b"content-type", b"content-encoding", b"inference-header-content-length", b"authorization", b"host"}
)
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_CLOSE = (b"connection", b"close")
_MAX_PIPELINED = 8  # reading stays paused while half this many pipelined requests wait
_MAX_HEAD_BYTES = 256 * 1024
_LINGER_S = 2.0  # after a final answer, how long to read and discard before closing for good
_JOIN_UP_TO = 65536  # an answer of several parts up to this size is sent as one write
#: scope keys this module's protocol adds for its ASGI callable
CONN_KEY = "inferstack.connection"
_UPGRADE_KEY = "inferstack.upgrade"
_TARGET_KEY = "inferstack.target"
_EXPIRED_KEY = "inferstack.expired"  # why the request's body read was cut off
#: what a connection accepted past --max-connections (in the reserve) is served: health checks
PROBE_PATHS = frozenset({b"/v2/health/live", b"/v2/health/ready"})
#: ... and how long such a connection may take to send its request line and headers
OVERFLOW_HEADER_TIMEOUT_S = 1.0


class Handler(TypingProtocol):
    max_body_bytes: int
    max_buffered_bytes: int
    max_client_buffered_bytes: int
    max_connections: int
    buffered: int
    """request bytes held now (bodies being read, requests being answered), all clients, both
    protocols"""
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

    def count_buffered(self, n: int) -> None:
        """Add ``n`` (negative: give back) to ``buffered``, unchecked (the caller checked)."""
        ...

    def handle(self, conn: Exchange, request: Request) -> None: ...

    def connection_opened(self, conn: Protocol) -> bool:
        """A new connection: False refuses it (it is closed at once, unread); True with
        ``conn.overflow`` set accepts it past the connection limit, for one answer."""
        ...

    def connection_closed(self, conn: Protocol) -> None: ...


class Request:
    __slots__ = ("method", "url", "headers", "body", "keep_alive", "error", "started", "size", "arrived")

    def __init__(self, method: bytes, url: bytes, headers: dict[bytes, bytes], body: bytes,
                 keep_alive: bool, error: HTTPError | None, size: int = 0) -> None:
        self.method = method
        self.url = url  # the raw path and query, as sent
        self.headers = headers  # lower-case names; only those the runtime reads
        self.body = body
        self.keep_alive = keep_alive  # False: the answer closes the connection
        self.error = error  # set when the request was refused at its headers
        self.started = 0.0
        self.size = size  # body bytes counted in the server's buffer budget
        self.arrived = 0.0  # (perf_counter) when it was handed to the application; access log only


class ExpectationFailed(BadRequest):
    """An ``Expect`` field value other than ``100-continue`` (RFC 9110 10.1.1: 417)."""

    status_code = 417


class URITooLong(BadRequest):
    """The request-target is longer than the URL parser takes (RFC 9112 3: 414)."""

    status_code = 414


def _payload_too_large(size: int, limit: int, at_least: bool = False) -> HTTPError:
    more = "more than " if at_least else ""
    return PayloadTooLarge(
        f"request body of {more}{size} bytes exceeds the limit of {limit} bytes "
        "(--max-body-bytes / INFERSTACK_MAX_BODY_BYTES)"
    )


def _overloaded(app: Handler) -> HTTPError:
    return Overloaded(
        f"the server holds {app.buffered} bytes of requests (--max-buffered-bytes / "
        f"INFERSTACK_MAX_BUFFERED_BYTES is {app.max_buffered_bytes}); retry later"
    )


def _over_share(app: Handler, client: str) -> HTTPError:
    return Overloaded(
        f"this client holds {app.held_by.get(client, 0)} bytes of requests "
        f"(--max-client-buffered-bytes / INFERSTACK_MAX_CLIENT_BUFFERED_BYTES is "
        f"{app.max_client_buffered_bytes}); retry later"
    )


# -- the connection: uvicorn's protocol, with what it lacks ----------------------------------------
class _Flow(FlowControl):
    """uvicorn's flow control, except that reading stays paused while enough pipelined requests
    are queued (uvicorn resumes it after every answer and every ``receive``), and once the
    connection has stopped parsing."""

    def __init__(self, transport: asyncio.Transport, conn: Protocol) -> None:
        super().__init__(transport)
        self._conn = conn

    def resume_reading(self) -> None:
        conn = self._conn
        if (self.read_paused and not conn.discarding and not conn.eof
                and len(conn.pipeline) < _MAX_PIPELINED // 2):
            self.read_paused = False
            self._transport.resume_reading()
            if conn._in_head:
                # headers begun before the pause waited unread: the client's header timeout
                # starts again now (a sweep may run before the next read)
                conn._head_since = conn.handler.now


class _Transport:
    """The transport uvicorn's protocol and its request cycles see: the real one, except that
    ``close`` after an answer half-closes and lingers (see :meth:`Protocol.linger_close`), and that
    an answer's head and body can be collected and written at once (:meth:`hold`, :meth:`flush`:
    one write, one segment, where uvicorn writes each ASGI message on its own). Otherwise bound
    methods of the real transport, not delegating wrappers: nothing is added per write."""

    def __init__(self, real: Any, conn: Protocol) -> None:
        self.write = self._write = real.write
        self._held: list[bytes] = []
        self.writelines = real.writelines
        self.get_extra_info = real.get_extra_info
        self.pause_reading = real.pause_reading
        self.resume_reading = real.resume_reading
        self.set_write_buffer_limits = real.set_write_buffer_limits
        self.close = conn.linger_close
        self._real = real
        self._conn = conn

    def is_closing(self) -> bool:
        return self._conn.lingering or bool(self._real.is_closing())

    def hold(self) -> None:
        """Collect what is written until :meth:`flush`."""
        self.write = self._held.append

    def flush(self) -> None:
        """Write what was collected, in one write; writes go straight through again."""
        self.write = self._write
        held = self._held
        if held:
            data = held[0] if len(held) == 1 else b"".join(held)
            held.clear()
            self._write(data)


class Protocol(HttpToolsProtocol):
    """One HTTP/1.1 connection: uvicorn's ``HttpToolsProtocol`` with a header timeout and bound,
    bounded pipelining, in-order answers to malformed requests, lingering close, idle and drain
    closing by the application's sweep (:meth:`check_timeouts`). Each request's scope carries the
    connection under ``"inferstack.connection"`` for :class:`Front`."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 handler: Handler, _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.access_log = False  # (the runtime writes its own access log)
        self.handler = handler
        self.real_transport: Any = None
        self.client_address = ""  # the peer's address: its share of the body budget
        self.gone = False  # connection lost
        self.refused = False  # past the connection limit and its reserve: closed as soon as accepted
        self.overflow = False  # accepted past the connection limit: one answer (health checks), then closed
        self.closing = False  # shutting down: close once idle after the drain timeout
        self.discarding = False  # parse no more: after an Upgrade, CONNECT, malformed request, final answer
        self.lingering = False  # half-closed after a final answer; reading and discarding until EOF
        self.eof = False  # the client half-closed: what it sent is answered, then the connection closes
        self.reading: dict[str, Any] | None = None  # the scope of the request whose body Front receives
        self.body_task: asyncio.Task[Any] | None = None  # ... in this task (cancelled on expiry)
        self.window_since = 0.0  # the body rate is measured over windows of --body-timeout-s
        self.window_bytes = 0
        self._final: HTTPError | None = None  # the connection's last answer, after those in progress
        self._in_head = False  # between on_message_begin and on_headers_complete
        self._fresh = True  # no request started yet on this connection
        self._head_bytes = 0
        self._head_since = 0.0
        self._mark = handler.now  # when bytes last arrived or the last answer was written

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.real_transport = transport
        self._mark = self.handler.now
        if not self.handler.connection_opened(self):
            # past --max-connections and its reserve: closed at once, nothing read or allocated
            # (the client sees the connection closed, or reset if it had sent a request already)
            self.refused = True
            self.gone = True
            transport.close()
            return
        super().connection_made(_Transport(transport, self))  # type: ignore[arg-type]
        self.flow = _Flow(self.transport, self)
        self.client_address = self.client[0] if self.client else ""

    def connection_lost(self, exc: Exception | None) -> None:
        if self.refused:
            return
        self.gone = True
        self.discarding = True
        super().connection_lost(exc)
        self.handler.connection_closed(self)

    def eof_received(self) -> bool | None:  # type: ignore[override]  # (asyncio.Protocol: True keeps it open)
        if self.refused:
            return None
        """The client has half-closed its side (``shutdown(SHUT_WR)``): it sends nothing more but
        may still read. Every request it sent is answered, in order, and then the connection
        closes; a request it left unfinished (headers or body) is answered 400 after them (RFC 9112
        9.6; uvicorn's ``eof_received`` lets the transport close at once, which drops every answer
        not yet written). True keeps the transport open for those answers."""
        self.eof = True
        if self.lingering or self.gone:  # after a final answer: the client has read it and left
            return None
        cycle = self.cycle
        if not self.discarding:
            if self._in_head:
                self._fail(BadRequest("the client half-closed the connection in the middle of a "
                                      "request's headers"))
            elif cycle is not None and not cycle.response_complete and cycle.more_body:
                self._fail(BadRequest("the client half-closed the connection before the end of the "
                                      "request body"))
        if self.busy() or self.lingering or self._final is not None:
            return True  # closed after the last answer (on_response_complete)
        return None  # idle: the transport closes now

    def resume_writing(self) -> None:
        self._mark = self.handler.now
        super().resume_writing()

    def data_received(self, data: bytes) -> None:
        if self.discarding:  # after a final answer, an Upgrade or a malformed request
            return
        self._mark = self.handler.now
        continued = self._in_head  # (the read continues a request line and headers)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request (with Upgrade, or a CONNECT) was complete and is answered once, with
            # Connection: close (Front); what follows it is not HTTP/1.1.
            self.discarding = True
            self.flow.pause_reading()
            return
        except httptools.HttpParserError as e:
            if not self.discarding:
                # an error raised in a parser callback (uvicorn's URL parsing) is the cause; the
                # parser's own says only "User callback error"
                cause = e.__context__ if isinstance(e, httptools.HttpParserCallbackError) else None
                if isinstance(cause, httptools.HttpParserInvalidURLError) and "too long" in str(cause):
                    self._fail(URITooLong(f"request target {cause}"))
                else:
                    self._fail(BadRequest(f"malformed HTTP request: {cause or e}"))
            return
        if self._in_head:  # a request line and headers that never end must not grow without bound
            if continued:
                self._head_bytes += len(data)
            else:
                # the request began in this read, after the end of the previous one (its body):
                # what is known to be its own so far (an unfinished header is counted from the
                # next read on, which continues it)
                self._head_bytes = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if self._head_bytes > _MAX_HEAD_BYTES:
                self._fail(BadRequest(f"request line and headers exceed {_MAX_HEAD_BYTES} bytes"))

    # -- httptools callbacks -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[CONN_KEY] = self  # type: ignore[literal-required]
        self._in_head = True
        self._fresh = False
        self._head_since = self.handler.now

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        if self.parser.should_upgrade():  # Upgrade is ignored (RFC 9110 7.8); CONNECT is refused
            self.scope[_UPGRADE_KEY] = True  # type: ignore[literal-required]
            if self.parser.get_method() == b"CONNECT":  # an authority, not a path: refused by Front
                self.scope[_TARGET_KEY] = self.url  # type: ignore[literal-required]
                self.url = b"/"
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # uvicorn's, without its per-answer keep-alive timer (the sweep closes idle connections)
        # and with reading resumed only while few pipelined requests wait
        self.server_state.total_requests += 1
        self._mark = self.handler.now
        if self.transport.is_closing():
            return
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._final is not None:
            self._write_final(self._final)
            return
        elif self.eof:  # the client sends nothing more: its last answer is written
            self.transport.flush()  # type: ignore[attr-defined]  # (an answer being collected goes first)
            self.close()
            return
        self.flow.resume_reading()

    # -- closing ------------------------------------------------------------------------------------
    def busy(self) -> bool:
        """A request of this connection is being answered or waits for its turn."""
        cycle = self.cycle
        return (cycle is not None and not cycle.response_complete) or bool(self.pipeline)

    def pending(self) -> bool:
        """The client has already sent (part of) another request after the one being answered."""
        return bool(self.pipeline) or self._in_head

    def _fail(self, error: HTTPError) -> None:
        """Answer ``error`` as the connection's last answer, after the answers to the requests read
        before it, in order; parse nothing more."""
        self.discarding = True
        self._in_head = False
        self.flow.pause_reading()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and cycle.more_body:
            # the request whose body was being read is the one that failed: it gets the error
            self.expire_body(cycle.scope, error)  # type: ignore[arg-type]
        elif self.busy():
            self._final = error
        else:
            self._write_final(error)

    def expire_body(self, scope: dict[str, Any], error: HTTPError) -> None:
        """Cut off the body of the request of ``scope``, being received or not yet: :class:`Front`
        answers ``error`` and closes."""
        scope[_EXPIRED_KEY] = error
        task = self.body_task
        if task is not None and self.reading is scope:
            task.cancel()

    def _write_final(self, error: HTTPError) -> None:
        transport = self.transport
        if self.gone or transport.is_closing():
            return
        body = orjson.dumps({"error": error.message})
        extra = b"".join([f"{n}: {v}\r\n".encode("latin-1") for n, v in error.headers])
        transport.write(b"%scontent-type: application/json\r\ncontent-length: %d\r\n%sconnection: close\r\n"
                        b"\r\n%s" % (_STATUS_LINES[error.status_code], len(body), extra, body))
        log_access = self.handler.log_access
        if log_access is not None:
            log_access(None, error.status_code, len(body), body)
        transport.close()

    def linger_close(self) -> None:
        """Close after a final answer without losing it: closing a socket that still has unread
        request bytes makes the kernel send a reset, which can discard the answer before the client
        reads it (a 413 or 503 sent while the client is still sending its body). So: send FIN after
        the answer (half-close), read and discard what still arrives, and close for good when the
        client closes or after ``_LINGER_S``."""
        real = self.real_transport
        if real is None or real.is_closing():
            return
        self.transport.flush()  # type: ignore[attr-defined]  # (an answer being collected goes first)
        if self.lingering or self.gone or not real.can_write_eof():
            real.close()
            return
        self.lingering = True
        self.discarding = True
        real.write_eof()
        with contextlib.suppress(Exception):  # reading may have been paused
            real.resume_reading()
        self.loop.call_later(_LINGER_S, real.close)

    def close(self) -> None:
        """Close now (idle, or the server is stopping)."""
        real = self.real_transport
        if real is not None and not real.is_closing():
            real.close()

    def shutdown(self) -> None:
        """Shutting down: the next answer on this connection is its last (``Connection: close``).
        An idle connection stays open for a request its client may be writing right now; the
        periodic sweep closes it once the drain timeout has passed. (uvicorn's own closes an idle
        connection at once.)"""
        self.closing = True

    # -- timeouts (called by the application's periodic sweep) -------------------------------------
    def check_timeouts(self, now: float, header_s: float, body_s: float, idle_s: float,
                       min_rate: float, drain_over: bool) -> None:
        if self.gone or self.lingering:
            return
        if self.flow.write_paused:  # a client that reads none of its answers for that long is gone
            if now - self._mark > idle_s:
                self.close()
            return
        reading = self.reading
        if reading is not None:
            if _EXPIRED_KEY in reading:
                return
            if now - self._mark > body_s:
                self.expire_body(reading, ClientTimeout(f"request body stalled: no bytes for {body_s:g}s "
                                               "(--body-timeout-s / INFERSTACK_BODY_TIMEOUT_S)"))
            elif now - self.window_since >= body_s:
                # bytes now and then are not enough: over each window, at least min_rate bytes/s
                took = now - self.window_since
                if self.window_bytes < min_rate * took:
                    self.expire_body(reading, ClientTimeout(
                        f"request body too slow: {self.window_bytes} bytes in {took:.1f}s, under "
                        f"{min_rate:g} bytes/s (--min-body-rate / INFERSTACK_MIN_BODY_RATE)"))
                else:
                    self.window_since = now
                    self.window_bytes = 0
            return
        if self.discarding:
            return
        if self._in_head:
            if not self.flow.read_paused and now - self._head_since > header_s:
                self._fail(ClientTimeout(f"request line and headers not received within {header_s:g}s "
                                         "(--header-timeout-s / INFERSTACK_HEADER_TIMEOUT_S)"))
            return
        if self.busy():
            return
        if self.closing:
            # Shutting down and idle: the client may be writing a request right now, so the
            # connection stays open for it (answered with Connection: close) until the drain
            # timeout; only then is it closed under a possible request.
            if drain_over:
                self.close()
        elif self._fresh:
            if self.overflow:  # (the reserve past --max-connections is for probes, which write at once)
                header_s = min(header_s, OVERFLOW_HEADER_TIMEOUT_S)
            if now - self._mark > header_s:
                self._fail(ClientTimeout(f"no request received within {header_s:g}s " + (
                    "(a connection past --max-connections)" if self.overflow else
                    "(--header-timeout-s / INFERSTACK_HEADER_TIMEOUT_S)")))
        elif now - self._mark > idle_s:
            self.close()  # an idle keep-alive connection: close quietly


def protocol_factory(handler: Handler) -> Callable[[], Protocol]:
    """A factory of :class:`Protocol` for ``loop.create_server``, answering through
    :class:`Front` (uvicorn's configuration: httptools, no WebSocket, no lifespan, no proxy
    headers, no ``server``/``date`` headers, no uvicorn access log)."""
    config = Config(Front(handler), http=Protocol, ws="none", lifespan="off", interface="asgi3",
                    proxy_headers=False, server_header=False, date_header=False, access_log=False,
                    log_config=None)
    config.load()
    state = ServerState()

    def make() -> Protocol:
        return Protocol(config, state, {}, handler)

    return make


# -- the request: the ASGI callable --------------------------------------------------------------
class Exchange:
    """Where the application answers one request (now, or later from a callback)."""

    __slots__ = ("conn", "app", "answer", "future", "held")

    def __init__(self, conn: Protocol, app: Handler) -> None:
        self.conn = conn
        self.app = app
        self.answer: tuple[int, bytes | Iterable[bytes | memoryview], bytes, tuple[tuple[str, str], ...],
                           bool] | None = None
        self.future: asyncio.Future[None] | None = None
        self.held = 0  # bytes this request holds in the budget (body, what it decodes into)

    def respond(
        self,
        status: int,
        body: bytes | Iterable[bytes | memoryview],
        content_type: bytes = b"application/json",
        headers: tuple[tuple[str, str], ...] = (),
        keep_alive: bool = True,
    ) -> bool:
        """Answer the request (once). False when the client has gone (nothing will be written)."""
        if self.answer is not None:
            return False
        self.answer = (status, body, content_type, headers, keep_alive)
        future = self.future
        if future is not None and not future.done():
            future.set_result(None)
        return not self.conn.gone

    def respond_error(self, error: HTTPError, keep_alive: bool = True) -> bool:
        return self.respond(error.status_code, orjson.dumps({"error": error.message}), headers=error.headers,
                            keep_alive=keep_alive)

    def hold(self, n: int) -> None:
        app = self.app
        app.count_buffered(n)
        self.held += n
        held_by = app.held_by
        client = self.conn.client_address
        held_by[client] = held_by.get(client, 0) + n

    def release(self) -> None:
        n = self.held
        if not n:
            return
        self.held = 0
        app = self.app
        app.count_buffered(-n)
        held_by = app.held_by
        client = self.conn.client_address
        left = held_by.get(client, 0) - n
        if left > 0:
            held_by[client] = left
        else:
            held_by.pop(client, None)

    def hold_decoded(self, n: int) -> bool:
        """Count ``n`` more bytes in the budget for this request (what its body decodes into),
        until its answer is written; False, and nothing counted, when they do not fit now."""
        if self.app.buffered + n > self.app.max_buffered_bytes:
            return False
        self.hold(n)
        return True


class Front:
    """The ASGI callable uvicorn runs for each request (see the module's docstring)."""

    def __init__(self, app: Handler) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Any],
                       send: Callable[[dict[str, Any]], Any]) -> None:
        if scope["type"] != "http":
            return
        app = self.app
        conn: Protocol = scope[CONN_KEY]
        headers: dict[bytes, bytes] = {}
        twice = None
        codings = None
        for name, value in scope["headers"]:
            if name in _WANTED:
                if name in _SINGLE and name in headers:
                    twice = name
                if name == b"transfer-encoding":  # (a list: every copy of the header counts)
                    codings = value if codings is None else codings + b"," + value
                headers[name] = value
        method = scope["method"].encode()
        url = scope.get(_TARGET_KEY) or scope["raw_path"]
        query = scope["query_string"]
        if query:
            url += b"?" + query
        upgrade = _UPGRADE_KEY in scope
        length = headers.get(b"content-length")
        size = int(length) if length is not None and length.isdigit() else 0  # (httptools checked it)
        has_body = size > 0 or (length is None and b"transfer-encoding" in headers)
        exchange = Exchange(conn, app)
        error: HTTPError | None
        if twice is not None:
            error = BadRequest(f"more than one {twice.decode('latin-1').title()} header: send it once")
        elif b"host" not in headers and scope["http_version"] == "1.1":
            # RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host (or with
            # more than one, above); HTTP/1.0 has no such rule
            error = BadRequest("an HTTP/1.1 request must carry a Host header (RFC 9112 3.2)")
        elif (expect := headers.get(b"expect")) is not None and expect.strip().lower() != b"100-continue":
            # RFC 9110 10.1.1: 100-continue is the only expectation defined
            error = ExpectationFailed(f"Expect {expect[:100].decode('latin-1')!r} is not supported: only "
                                      "100-continue is")
        elif codings is not None and codings.strip().lower() != b"chunked":
            # httptools decodes chunked (the last coding) and nothing else: a body in any other
            # transfer coding would be read as if it were not encoded (RFC 9112 6.1)
            error = BadRequest(f"Transfer-Encoding {codings.decode('latin-1')!r} is not supported: send "
                               "the body as is or chunked (and compress it with Content-Encoding)")
        elif conn.overflow and (url.partition(b"?")[0] not in PROBE_PATHS or method not in (b"GET", b"HEAD")):
            # accepted past --max-connections, for health checks only
            error = ServiceUnavailable(f"the server has as many connections open as it may "
                                       f"({app.max_connections}, --max-connections / "
                                       "INFERSTACK_MAX_CONNECTIONS); retry later")
        elif method == b"CONNECT":
            error = MethodNotAllowed("CONNECT: this server is not a proxy", "GET, HEAD, POST")
        else:
            error = app.admit(method, url, headers)  # auth: before any body byte is counted
            if error is None and upgrade and has_body:
                # httptools hands over no body for a request with Upgrade: refuse, not misread
                error = BadRequest("a request body with Upgrade is not supported")
        if error is None and size:
            limit = app.max_body_bytes
            if size > limit:  # refuse before the body is sent (or read)
                error = _payload_too_large(size, limit)
            elif app.buffered + size > app.max_buffered_bytes:  # it cannot fit now
                error = _overloaded(app)
            elif app.held_by.get(conn.client_address, 0) + size > app.max_client_buffered_bytes:
                error = _over_share(app, conn.client_address)
        try:
            body = b""
            keep_alive = not upgrade and not conn.overflow  # (past the connection limit: one answer)
            if error is not None:
                # with a body: not read, not waited for (answered, then closed); without one, the
                # connection stays usable
                keep_alive = keep_alive and not has_body
            elif has_body:
                read, error = await self._read_body(scope, conn, exchange, receive)
                if read is None:  # the client has gone
                    return
                body = read
                del read
                if error is not None:
                    keep_alive = False
            request = Request(method, url, headers, body, keep_alive, error, exchange.held)
            del body
            if app.log_access is not None:
                request.arrived = time.perf_counter()
            app.handle(exchange, request)
            if exchange.answer is None:  # answered later (the batcher, a worker thread)
                exchange.future = future = asyncio.get_running_loop().create_future()
                await future
            await self._send(send, conn, request, exchange)
        finally:
            exchange.release()

    async def _read_body(self, scope: dict[str, Any], conn: Protocol, exchange: Exchange,
                         receive: Callable[[], Any]) -> tuple[bytes | None, HTTPError | None]:
        """Receive the body, counting it in the budget as it arrives; the sweep cuts off a body
        that stalls or is too slow (:meth:`Protocol.check_timeouts`). An error: the body was not
        read in full (its counted bytes are released); None: the client has gone."""
        app = self.app
        limit = app.max_body_bytes
        parts: list[bytes] = []
        size = 0
        error: HTTPError | None = None
        conn.window_since = app.now
        conn.window_bytes = 0
        conn.body_task = task = asyncio.current_task()
        conn.reading = scope
        try:
            while True:
                error = scope.get(_EXPIRED_KEY)
                if error is not None:
                    break
                try:
                    message = await receive()
                except asyncio.CancelledError:
                    if _EXPIRED_KEY not in scope:  # not the sweep's: the task is being stopped
                        raise
                    if task is not None and hasattr(task, "uncancel"):
                        task.uncancel()
                    continue
                if message["type"] != "http.request":  # http.disconnect: nobody to answer
                    exchange.release()
                    return None, None
                chunk = message["body"]
                n = len(chunk)
                if n:
                    size += n
                    conn.window_bytes += n
                    if size > limit:  # (a chunked body: no declared length)
                        error = _payload_too_large(size, limit, at_least=True)
                        break
                    exchange.hold(n)
                    if app.buffered > app.max_buffered_bytes:
                        error = _overloaded(app)
                        break
                    if app.held_by[conn.client_address] > app.max_client_buffered_bytes:
                        error = _over_share(app, conn.client_address)
                        break
                    parts.append(chunk)
                if not message.get("more_body"):
                    break
        finally:
            conn.reading = None
            conn.body_task = None
        if error is not None:
            exchange.release()
            return b"", error
        return (parts[0] if len(parts) == 1 else b"".join(parts)), None

    async def _send(self, send: Callable[[dict[str, Any]], Any], conn: Protocol, request: Request,
                    exchange: Exchange) -> None:
        answer = exchange.answer
        assert answer is not None
        status, body, content_type, extra, keep_alive = answer
        exchange.answer = None  # (not kept alive by the exchange while the answer is written)
        exchange.release()  # the request's bytes leave the budget
        app = self.app
        chunks: list[bytes | memoryview] | None = None
        if isinstance(body, bytes):
            length = len(body)
        else:
            chunks = list(body)
            length = sum(len(c) for c in chunks)
        head = [(b"content-type", content_type), (b"content-length", b"%d" % length)]
        for n, v in extra:
            head.append((n.encode("latin-1"), v.encode("latin-1")))
        if not keep_alive or (app.shutting_down and not conn.pending()):
            # shutting down: this is the connection's last answer, unless the client has already
            # sent (part of) another request, which is read and answered first
            head.append(_CLOSE)
        start = {"type": "http.response.start", "status": status, "headers": head}
        if chunks is None or length <= _JOIN_UP_TO or request.method == b"HEAD":
            transport: _Transport = conn.transport  # type: ignore[assignment]
            transport.hold()
            try:
                await send(start)
                if request.method == b"HEAD":  # the length a GET would get, and no body (RFC 9110 9.3.2)
                    await send({"type": "http.response.body", "body": b""})
                else:
                    await send({"type": "http.response.body",
                                "body": body if chunks is None else b"".join(chunks)})
            finally:
                transport.flush()
        else:
            await send(start)
            last = len(chunks) - 1
            for i, chunk in enumerate(chunks):
                await send({"type": "http.response.body", "body": chunk, "more_body": i < last})
        log_access = app.log_access
        if log_access is not None:
            log_access(request, status, length, body if status >= 400 and isinstance(body, bytes) else None)
