"""The HTTP front end of the inference server: routes of the Open Inference Protocol over the
:class:`~inferstack.runtime.dataplane.DataPlane` (models, auth, shedding, timeouts, metrics,
statistics), and the lifecycle (listen, load and warm up, ready, drain on SIGTERM, exit 0).

Routes (every model route works for each model served)::

    GET  /v2                                   server metadata
    GET  /v2/health/live | /v2/health/ready    open even with auth
    GET  /metrics                              Prometheus text format, open even with auth
    GET  /v2/models/{name}[/versions/{v}]      model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready
    GET  /v2/models/{name}[/versions/{v}]/config   the Triton model configuration extension
    POST /v2/models/{name}[/versions/{v}]/infer
    GET  /v2/models/stats                      Triton's statistics extension, every model
    GET  /v2/models/{name}[/versions/{v}]/stats
    POST /v2/repository/index                  Triton's model repository extension
    POST /v2/repository/models/{name}/load     (load and unload: --model-control explicit only)
    POST /v2/repository/models/{name}/unload
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any
from urllib.parse import unquote

import orjson
from inferstack.runtime.batcher import Batcher
from inferstack.runtime.config import FD_HEADROOM, PROBE_RESERVE, ServerConfig, open_file_limit
from inferstack.runtime.dataplane import DataPlane, ModelEntry
from inferstack.runtime.errors import (
    BadRequest,
    ConfigError,
    HTTPError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ServiceUnavailable,
)
from inferstack.runtime.grpc_server import start_grpc
from inferstack.runtime.http import Exchange, Protocol, Request, protocol_factory
from inferstack.runtime.logs import log_access
from inferstack.runtime.metrics import CONTENT_TYPE, Metrics
from inferstack.runtime.model import Model
from inferstack.runtime.protocol import BINARY_CONTENT_TYPE, InferRequest, decode, dumps, encode

log = logging.getLogger("inferstack.runtime")

_OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
_OPEN_RAW = frozenset(p.encode() for p in _OPEN_PATHS)
#: memory a JSON body's decoding may take per byte of JSON (orjson's Python objects, then the numpy
#: arrays: a 64 MiB body of FP32 "0," values peaks at 16x), counted in --max-buffered-bytes
JSON_DECODED_PER_BYTE = 16
#: connections the periodic sweep checks in one event-loop callback (about 2 us each): with
#: thousands of connections open it runs as several callbacks, so nothing waits for all of them
SWEEP_SLICE = 256
#: ... per BYTES element (a Python string, its slot in an object array and onnxruntime's copy, in
#: and out: 1,048,576 two-byte elements peak at about 210 bytes each)
BYTES_DECODED_PER_ELEMENT = 256


class App:
    """The HTTP front end: answers parsed requests from the :class:`DataPlane`'s models."""

    @property
    def buffered(self) -> int:
        """Request bytes all requests hold now, over both protocols (HTTP bodies as they arrive and
        what they decode into, gRPC messages): the data plane's one total for --max-buffered-bytes."""
        return self.plane.buffered

    def count_buffered(self, n: int) -> None:
        self.plane.count(n)

    def __init__(self, config: ServerConfig, metrics: Metrics | None = None,
                 plane: DataPlane | None = None) -> None:
        self.config = config
        self.plane = plane or DataPlane(config, metrics)
        self.metrics = self.plane.metrics
        self.max_body_bytes = config.max_body_bytes
        self.max_buffered_bytes = config.max_buffered_bytes
        self.max_client_buffered_bytes = config.client_buffered_bytes
        self.held_by: dict[str, int] = {}  # request body bytes each client address holds now
        self.shutting_down = False  # SIGTERM seen: every answer carries Connection: close
        self.drain_deadline = 0.0  # (monotonic) idle connections are closed from then on
        self.now = time.monotonic()  # coarse clock for the connections, refreshed by _tick
        self.draining = False
        self.connections: set[Protocol] = set()
        self.max_connections = config.connection_limit
        self.overflowing = 0  # connections of self.connections accepted past max_connections
        self.refused_connections = 0  # closed as soon as accepted (past the limit and its reserve)
        self._refused_logged = -1e9  # (monotonic) when a refusal was last logged
        self._loop: asyncio.AbstractEventLoop | None = None
        self._infer_paths: dict[str, ModelEntry] = {}
        self.plane.on_change.append(self._routes)
        self._clock_loop: asyncio.AbstractEventLoop | None = None
        timeouts = (config.header_timeout_s, config.body_timeout_s, config.idle_timeout_s)
        self._tick_every = max(0.05, min(1.0, min(timeouts) / 4))
        self.log_access: Callable[[Request | None, int, int, bytes | None], None] | None = (
            self._log_access if config.access_log else None)

    def _log_access(self, request: Request | None, status: int, size: int, error_body: bytes | None) -> None:
        """One access line (see :mod:`inferstack.runtime.logs`)."""
        reason = None
        if error_body is not None:
            try:
                reason = str(orjson.loads(error_body).get("error"))
            except (orjson.JSONDecodeError, AttributeError):
                reason = "-"
        if request is None:  # a malformed request: nothing of it is known
            log_access("-", "-", "-", status, size, 0.0, reason)
            return
        raw = request.url
        q = raw.find(b"?")
        path = (raw if q < 0 else raw[:q]).decode("latin-1")
        parts = path.split("/")
        model = "-"
        if len(parts) > 3 and parts[1] == "v2" and parts[2] in ("models", "repository") and parts[3]:
            if parts[2] == "models" and parts[3] != "stats":
                model = unquote(parts[3])
            elif parts[2] == "repository" and len(parts) > 4 and parts[3] == "models":
                model = unquote(parts[4])
        took = time.perf_counter() - request.arrived if request.arrived else 0.0
        log_access(request.method.decode("latin-1"), path, model, status, size, took, reason)

    def start_clock(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the periodic sweep over connections (header, body and idle timeouts): one timer
        for all of them, instead of one per connection or per read."""
        self._clock_loop = loop
        self.now = time.monotonic()
        loop.call_later(self._tick_every, self._tick)

    def _tick(self) -> None:
        self.now = time.monotonic()
        self._sweep(list(self.connections), 0)

    def _sweep(self, conns: list[Protocol], start: int) -> None:
        """Check ``conns[start:start + SWEEP_SLICE]``; the rest in a later turn of the event loop
        (what arrived meanwhile is handled first), then schedule the next tick."""
        now = self.now
        c = self.config
        drain_over = self.draining and now >= self.drain_deadline
        end = start + SWEEP_SLICE
        for conn in conns[start:end]:  # (one closed meanwhile returns at once: gone)
            conn.check_timeouts(now, c.header_timeout_s, c.body_timeout_s, c.idle_timeout_s, c.min_body_rate,
                                drain_over)
        loop = self._clock_loop
        if loop is None or loop.is_closed():
            return
        if end < len(conns):
            loop.call_soon(self._sweep, conns, end)
        else:
            loop.call_later(self._tick_every, self._tick)

    def _routes(self) -> None:
        self._infer_paths = {p: e for e in self.plane.models.values() for p in e.infer_paths}

    # -- lifecycle hooks ---------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the event loop every call comes from (before models are added)."""
        self._loop = loop
        self.plane.start(loop)

    def attach(self, model: Model, loop: asyncio.AbstractEventLoop, source: str = "") -> None:
        """Serve ``model`` and turn ready (one model loaded outside :class:`Server`)."""
        if self._loop is None:
            self.start(loop)
        self.plane.add(model, source)
        self.plane.loaded = True

    @property
    def batcher(self) -> Batcher | None:
        """The batcher of the only model (None when none or several are served)."""
        models = list(self.plane.models.values())
        return models[0].batcher if len(models) == 1 else None

    def connection_opened(self, conn: Protocol) -> bool:
        """Count a new connection against --max-connections. Past it, ``PROBE_RESERVE`` more are
        accepted for one answer each (health checks; anything else 503 + Retry-After), and the
        rest refused: False (the connection is closed at once)."""
        if len(self.connections) - self.overflowing >= self.max_connections:
            if self.overflowing >= PROBE_RESERVE:
                self.refused_connections += 1
                if self.now - self._refused_logged >= 10:  # (a line per 10 s at most)
                    self._refused_logged = self.now
                    log.warning("refusing new connections: %d open (--max-connections / "
                                "INFERSTACK_MAX_CONNECTIONS is %d); %d refused so far",
                                len(self.connections), self.max_connections, self.refused_connections)
                return False
            conn.overflow = True
            self.overflowing += 1
        self.connections.add(conn)
        if self.draining:
            conn.shutdown()
        return True

    def connection_closed(self, conn: Protocol) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            if conn.overflow:
                self.overflowing -= 1

    def admit(self, method: bytes, url: bytes, headers: dict[bytes, bytes]) -> HTTPError | None:
        """At the end of a request's headers, before its body is read: auth (all but the open
        paths). An error refuses the request without reading its body."""
        plane = self.plane
        if not plane.auth:
            return None
        q = url.find(b"?")
        if (url if q < 0 else url[:q]) in _OPEN_RAW:
            return None
        return plane.check_auth(headers.get(b"authorization"))

    # -- dispatch ----------------------------------------------------------------------------
    def handle(self, conn: Exchange, request: Request) -> None:
        self.plane.deliver_finished()  # answers first: they free queue places
        try:
            raw = request.url
            q = raw.find(b"?")
            path = (raw if q < 0 else raw[:q]).decode("latin-1")
            if path.endswith("/infer"):  # counted in the request metrics, whatever the outcome
                request.started = time.perf_counter()
            if request.error is not None:  # refused at the headers (auth, limits, protocol)
                # (answered, not raised: a raised error's traceback would hold this frame, and so
                # the request, in a reference cycle)
                self._refuse(conn, request.error, request)
                return
            entry = self._infer_paths.get(path)
            if entry is not None:  # the hot path first (auth: admit, at the headers)
                if request.method != b"POST":
                    raise MethodNotAllowed(f"{request.method.decode('latin-1')} {path}: use POST", "POST")
                self._infer(conn, request, entry)
                return
            self._route(conn, request, path)
        except HTTPError as e:
            self._refuse(conn, e, request)
        except Exception as e:  # a bug: answer 500 and keep serving
            log.exception("error while answering %r", request.url)
            self._refuse(conn, InternalError(f"internal error: {type(e).__name__}: {e}"), request)

    def _refuse(self, conn: Exchange, error: HTTPError, request: Request,
                entry: ModelEntry | None = None) -> None:
        written = conn.respond_error(error, keep_alive=request.keep_alive)
        if request.started:  # an infer request: count it
            self.plane.finish(entry, request.started, error, written)

    def _route(self, conn: Exchange, request: Request, path: str) -> None:
        method = request.method
        plane = self.plane
        if path in _OPEN_PATHS:
            self._require_get(method, path)
            if path == "/metrics":
                conn.respond(200, self.metrics.render(), content_type=CONTENT_TYPE.encode(),
                             keep_alive=request.keep_alive)
                return
            # the Open Inference Protocol's bodies: kserve's client reads "live" and "ready"
            if path == "/v2/health/live":
                conn.respond(200, b'{"live":true}', keep_alive=request.keep_alive)
                return
            ok = plane.server_ready
            conn.respond(200 if ok else 503, b'{"ready":true}' if ok else self._not_ready(),
                         keep_alive=request.keep_alive)
            return
        if path in ("/v2", "/v2/"):
            self._require_get(method, path)
            conn.respond(200, dumps(plane.server_metadata()), keep_alive=request.keep_alive)
            return
        if path == "/v2/models/stats":
            self._require_get(method, path)
            conn.respond(200, dumps(plane.statistics()), keep_alive=request.keep_alive)
            return
        if path.startswith("/v2/repository/"):
            self._repository(conn, request, path)
            return
        parts = path.split("/")
        # ["", "v2", "models", name, ("versions", v,)? (action)?]
        if len(parts) < 4 or parts[1] != "v2" or parts[2] != "models" or not parts[3]:
            raise NotFound(f"no route for {method.decode('latin-1')} {path}")
        name = unquote(parts[3])
        rest = parts[4:]
        version = None
        if len(rest) >= 2 and rest[0] == "versions":
            version = unquote(rest[1])
            rest = rest[2:]
        action = rest[0] if rest else ""
        if len(rest) > 1 or action not in ("", "ready", "config", "infer", "stats"):
            raise NotFound(f"no route for {method.decode('latin-1')} {path}")
        entry = plane.entry(name, version)
        if action == "infer":
            if method != b"POST":
                raise MethodNotAllowed(f"{method.decode('latin-1')} {path}: use POST", "POST")
            self._infer(conn, request, entry)
            return
        self._require_get(method, path)
        if action == "ready":
            ok = plane.model_ready(name, version)
            conn.respond(200 if ok else 503, dumps({"name": entry.name, "ready": True}) if ok
                         else self._not_ready(), keep_alive=request.keep_alive)
        elif action == "config":
            conn.respond(200, dumps(plane.model_config(entry)), keep_alive=request.keep_alive)
        elif action == "stats":
            conn.respond(200, dumps(plane.statistics(name, version)), keep_alive=request.keep_alive)
        else:
            conn.respond(200, dumps(plane.model_metadata(entry)), keep_alive=request.keep_alive)

    def _repository(self, conn: Exchange, request: Request, path: str) -> None:
        """POST /v2/repository/index, /v2/repository/models/{name}/load and .../unload."""
        method = request.method
        parts = path.split("/")  # ["", "v2", "repository", ...]
        if method != b"POST":
            raise MethodNotAllowed(f"{method.decode('latin-1')} {path}: use POST", "POST")
        options = _json_object(request.body, path)
        plane = self.plane
        if parts[3:] == ["index"]:
            ready = options.get("ready", False)
            if not isinstance(ready, bool):
                raise BadRequest(f"{path}: 'ready' must be true or false")
            conn.respond(200, dumps(plane.repository_index(ready)), keep_alive=request.keep_alive)
            return
        if len(parts) != 6 or parts[3] != "models" or not parts[4] or parts[5] not in ("load", "unload"):
            raise NotFound(f"no route for POST {path}")
        plane.require_model_control()
        name = unquote(parts[4])
        params = options.get("parameters") or {}
        if not isinstance(params, dict):
            raise BadRequest(f"{path}: 'parameters' must be a JSON object")
        work = plane.load(name, params) if parts[5] == "load" else plane.unload(name)
        keep_alive = request.keep_alive
        task = asyncio.get_running_loop().create_task(work)

        def answered(t: asyncio.Task[None]) -> None:
            if t.cancelled():
                conn.respond_error(ServiceUnavailable("the server is stopping"), keep_alive=keep_alive)
                return
            error = t.exception()
            if error is None:
                conn.respond(200, b"{}", keep_alive=keep_alive)
            elif isinstance(error, HTTPError):
                conn.respond_error(error, keep_alive=keep_alive)
            else:
                log.error("error in %s", path, exc_info=error)
                conn.respond_error(InternalError(f"internal error: {type(error).__name__}: {error}"),
                                   keep_alive=keep_alive)

        task.add_done_callback(answered)

    def _not_ready(self) -> bytes:
        return dumps({"error": f"not ready: {self.plane.not_ready_reason()}"})

    @staticmethod
    def _require_get(method: bytes, path: str) -> None:
        if method != b"GET" and method != b"HEAD":  # HEAD: the GET answer's headers (http.Front)
            raise MethodNotAllowed(f"{method.decode('latin-1')} {path}: use GET", "GET, HEAD")

    # -- inference ---------------------------------------------------------------------------
    def _infer(self, conn: Exchange, request: Request, entry: ModelEntry) -> None:
        try:
            self.plane.admit(entry)
            header_length = _header_length(request.headers)
            encoding = request.headers.get(b"content-encoding")
            if (encoding is None or encoding == b"identity") and not entry.decode_off_loop(len(request.body)):
                infer = decode(request.body, header_length, entry.model, self.config.max_bytes_elements)
                self._submit(conn, request, entry, infer)
                return
            self._hold_decoded(conn, request, header_length, entry)
        except HTTPError as e:
            self._refuse(conn, e, request, entry)
            return
        # a large or compressed body, or BYTES elements: parse it in a thread, so the event loop
        # keeps answering (health checks, small requests) meanwhile
        future = self.plane.worker().submit(self._decode_body, request, header_length, entry.model)
        loop = self._loop
        assert loop is not None
        future.add_done_callback(
            lambda f: loop.call_soon_threadsafe(self._decoded, f, conn, request, entry)
        )

    def _hold_decoded(self, conn: Exchange, request: Request, header_length: int | None,
                      entry: ModelEntry) -> None:
        """Count what the body will decode into in --max-buffered-bytes, beyond the body itself:
        JSON_DECODED_PER_BYTE per byte of JSON, BYTES_DECODED_PER_ELEMENT per BYTES element the
        binary part can hold (one per 4 bytes, at most --max-bytes-elements). A compressed body is
        counted at its compressed size (its decompressed size is bounded by --max-body-bytes)."""
        size = len(request.body)
        json_bytes = size if header_length is None else min(header_length, size)
        elements = min((size - json_bytes) // 4, self.config.max_bytes_elements) if entry.bytes_in else 0
        need = json_bytes * JSON_DECODED_PER_BYTE + elements * BYTES_DECODED_PER_ELEMENT
        budget = self.max_buffered_bytes
        if need > budget - size:
            raise PayloadTooLarge(
                f"this request decodes into about {need} bytes, more than --max-buffered-bytes / "
                f"INFERSTACK_MAX_BUFFERED_BYTES ({budget}) allows; send tensors as binary data (the "
                "binary tensor data extension) or fewer per request"
            )
        if not conn.hold_decoded(need):
            raise Overloaded(
                f"the server holds {self.buffered} bytes of requests and their decoded data "
                f"(--max-buffered-bytes / INFERSTACK_MAX_BUFFERED_BYTES is {budget}); retry later"
            )

    def _decode_body(self, request: Request, header_length: int | None, model: Model) -> InferRequest:
        return decode(self._body(request), header_length, model, self.config.max_bytes_elements)

    def _decoded(self, future: Future[InferRequest], conn: Exchange, request: Request,
                 entry: ModelEntry) -> None:
        # The error is taken, not raised again: raising it here would add this frame (which holds
        # the future, which holds the error) to its traceback, a reference cycle that keeps the
        # request and the decoder's frames (a decompressed body) alive until the collector runs.
        error = future.exception()
        if error is None:
            self._submit(conn, request, entry, future.result())
            return
        if isinstance(error, HTTPError):
            error.__traceback__ = None  # the decoder's frames go now
            self._refuse(conn, error, request, entry)
            return
        log.error("error while decoding %r", request.url, exc_info=error)
        error.__traceback__ = None
        self._refuse(conn, InternalError(f"internal error: {type(error).__name__}: {error}"), request, entry)

    def _submit(self, conn: Exchange, request: Request, entry: ModelEntry, infer: InferRequest) -> None:
        keep_alive = request.keep_alive
        plane = self.plane

        def done(outputs: dict[str, Any] | None, error: HTTPError | None) -> None:
            if error is not None or outputs is None:
                self._refuse(conn, error or InternalError("no outputs"), request, entry)
                return
            model = entry.model
            if entry.encode_off_loop(outputs):
                # per-element work (strings, a large JSON answer) in a thread; written on the loop
                loop = self._loop
                assert loop is not None
                future = plane.worker().submit(encode, model, infer, outputs)
                future.add_done_callback(lambda f: loop.call_soon_threadsafe(encoded, f))
                return
            try:
                answer = encode(model, infer, outputs)
            except Exception as e:
                failed(e)
                return
            write(answer)

        def encoded(future: Future[tuple[bytes, list[bytes | memoryview], int | None]]) -> None:
            if future.cancelled():  # the process is stopping
                self._refuse(conn, ServiceUnavailable("the server is shutting down"), request, entry)
                return
            error = future.exception()  # taken, not raised: no cycle through this frame
            if error is not None:
                error.__traceback__ = None
                failed(error)
                return
            write(future.result())

        def failed(e: BaseException) -> None:
            if isinstance(e, HTTPError):  # an answer the protocol cannot carry (inf in JSON)
                self._refuse(conn, e, request, entry)
                return
            log.error("error while encoding a response: %s: %s", type(e).__name__, e)
            self._refuse(conn, InternalError(f"internal error: {type(e).__name__}: {e}"), request, entry)

        def write(answer: tuple[bytes, list[bytes | memoryview], int | None]) -> None:
            written = self._write(conn, *answer, keep_alive)  # False: the client left before its answer
            plane.finish(entry, request.started, None, written)

        plane.submit(entry, infer, request.started, done)

    def _body(self, request: Request) -> bytes:
        body = request.body
        encoding = request.headers.get(b"content-encoding")
        if encoding is None or encoding.lower() == b"identity":
            return body
        encoding = encoding.lower()
        if encoding not in (b"gzip", b"deflate"):
            raise BadRequest(
                f"unsupported Content-Encoding {encoding.decode('latin-1')!r}; use gzip or deflate"
            )
        limit = self.max_body_bytes
        try:
            d = zlib.decompressobj(wbits=31 if encoding == b"gzip" else 15)
            out = d.decompress(body, limit + 1)
        except zlib.error as e:
            raise BadRequest(f"request body is not valid {encoding.decode()}: {e}") from None
        if len(out) > limit:
            del out, d  # not kept alive by the error's traceback
            raise PayloadTooLarge(
                f"decompressed request body exceeds the limit of {limit} bytes (--max-body-bytes / "
                "INFERSTACK_MAX_BODY_BYTES)"
            )
        if not d.eof:  # the stream stopped before its end marker (and checksum)
            raise BadRequest(f"{encoding.decode()} body is truncated or corrupt")
        return out

    @staticmethod
    def _write(conn: Exchange, header: bytes, blobs: list[bytes | memoryview], header_length: int | None,
               keep_alive: bool) -> bool:
        if header_length is None:
            return conn.respond(200, header, keep_alive=keep_alive)
        return conn.respond(200, [header, *blobs], content_type=BINARY_CONTENT_TYPE,
                            headers=(("inference-header-content-length", str(header_length)),),
                            keep_alive=keep_alive)

    # -- shutdown ----------------------------------------------------------------------------
    def begin_drain(self) -> None:
        """Stop reading new connections (the listener is closed): each connection's next answer
        is its last; idle ones stay open for the request their client may be writing now, until
        --drain-timeout-s (closed by _tick)."""
        self.shutting_down = True
        self.draining = True
        self.plane.begin_drain()
        self.drain_deadline = time.monotonic() + self.config.drain_timeout_s
        for conn in list(self.connections):
            conn.shutdown()

    def stop_decoding(self) -> None:
        self.plane.stop_worker()

    def idle(self) -> bool:
        return self.plane.idle() and not self.connections


def _json_object(body: bytes, where: str) -> dict[str, Any]:
    """An optional JSON object body (empty: ``{}``)."""
    if not body.strip():
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"{where}: request body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"{where}: request body must be a JSON object")
    return doc


def _header_length(headers: dict[bytes, bytes]) -> int | None:
    raw = headers.get(b"inference-header-content-length")
    if raw is None:
        return None
    if not raw.isdigit():  # ASCII digits only (not int()'s "+16", "1_6", " 16")
        raise BadRequest(
            f"Inference-Header-Content-Length must be a non-negative integer, got {raw.decode('latin-1')!r}"
        )
    return int(raw)


class Server:
    """Runs an :class:`App`: listen, load, ready, and drain on SIGTERM/SIGINT."""

    def __init__(self, config: ServerConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.app = App(config, metrics)
        self.port: int | None = None
        self.grpc_port: int | None = None
        self._stop: asyncio.Event | None = None

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: with --drain-delay-s, first turn not ready and keep serving (new
        connections included) for that long, so that load balancers stop routing here; then stop
        accepting and finish what was read. A second signal skips the rest of the delay."""
        if self._stop is None or self._stop.is_set():
            return
        app = self.app
        app.shutting_down = True  # from now on every answer carries Connection: close
        delay = self.config.drain_delay_s
        plane = app.plane
        if delay > 0 and plane.loaded and not plane.stopping:
            plane.stopping = True
            log.info("stopping: not ready; still serving for %gs (--drain-delay-s), then draining", delay)
            asyncio.get_running_loop().call_later(delay, self._stop_now)
            return
        self._stop_now()

    def _stop_now(self) -> None:
        if self._stop is not None and not self._stop.is_set():
            log.info("stopping: no new connections; finishing requests in flight")
            self._stop.set()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        config = self.config
        _fit_open_file_limit(self.app.max_connections + PROBE_RESERVE + FD_HEADROOM)
        try:
            listener = await loop.create_server(
                protocol_factory(self.app), config.host, config.port, backlog=2048, reuse_address=True
            )
        except OSError as e:
            raise ConfigError(
                f"--host / --port: cannot listen on {config.host}:{config.port}: {e.strerror or e}"
            ) from None
        self.port = listener.sockets[0].getsockname()[1]
        try:
            grpc_server, self.grpc_port = await start_grpc(self.app.plane, config.host, config.grpc_port)
        except ConfigError:
            listener.close()
            raise
        self.app.start_clock(loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
                loop.add_signal_handler(sig, self.request_stop)
        plane = self.app.plane
        try:
            sources = plane.startup_sources()
            log.info("listening on http://%s:%d and grpc %s:%d; loading %s", config.host, self.port,
                     config.host, self.grpc_port,
                     ", ".join(uri for uri, _ in sources) or "no model (--model-control explicit)")
            self.app.start(loop)
            loaded = await self._load(loop, sources)
            if loaded is None:  # stopped while loading
                return
            for model, uri in loaded:
                plane.known[model.name] = uri
                plane.add(model, uri)
            plane.loaded = True
            # Everything loaded so far lives as long as the process: keep it out of the cyclic
            # garbage collector's scans, and collect young objects less often (requests make few cycles).
            gc.collect()
            gc.freeze()
            gc.set_threshold(10_000, 10, 10)
            for model, _ in loaded:
                where = ", ".join(model.providers)
                batching = f"max batch {model.max_batch_size}" if model.batching else "no batching"
                log.info("ready: model %s on http://%s:%d and grpc %s:%d (%s; %s)", model.name, config.host,
                         self.port, config.host, self.grpc_port, batching, where)
            if not loaded:
                log.info("ready: no model loaded yet on http://%s:%d and grpc %s:%d (load one through the "
                         "repository API)", config.host, self.port, config.host, self.grpc_port)
            await self._stop.wait()
            # Closing a listening socket resets the connections the kernel has completed but the
            # server not yet accepted, whose clients may have written a request already. So first
            # new connection attempts are dropped (they never get to write), what is queued is
            # accepted and drained like the rest, and only then is the socket closed.
            sock = listener.sockets[0]
            if _drop_new_connections(sock):
                await asyncio.sleep(0.05)  # handshakes under way complete
                deadline = time.monotonic() + 2
                while _accept_queue_length(sock) and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)  # (a busy event loop accepts later)
            listener.close()
            # gRPC: no new calls; those in flight finish (within the request timeout)
            grpc_stopped = asyncio.ensure_future(grpc_server.stop(self._grace()))
            await self._drain()
            await grpc_stopped
        finally:
            listener.close()
            await grpc_server.stop(0)
            plane.stop()
            self.app.stop_decoding()
            for conn in list(self.app.connections):
                conn.close()
        log.info("stopped")

    async def _load(self, loop: asyncio.AbstractEventLoop,
                    sources: list[tuple[str, str | None]]) -> list[tuple[Model, str]] | None:
        """Resolve, verify, load and warm up in a daemon thread, so that /v2/health/live answers
        meanwhile and a SIGTERM during a long download still exits at once."""
        done: asyncio.Future[list[tuple[Model, str]]] = loop.create_future()

        def work() -> None:
            try:
                result = self.app.plane.load_all_blocking(sources)
            except BaseException as e:  # handed to the event loop, raised there
                loop.call_soon_threadsafe(_settle, done, None, e)
                return
            loop.call_soon_threadsafe(_settle, done, result, None)

        threading.Thread(target=work, name="inferstack-load", daemon=True).start()
        assert self._stop is not None
        stop = asyncio.ensure_future(self._stop.wait())
        waiters: list[asyncio.Future[Any]] = [done, stop]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not done.done():
            return None
        stop.cancel()
        return done.result()

    def _grace(self) -> float:
        return max(self.config.drain_timeout_s, self.config.request_timeout_s) + 5

    async def _drain(self) -> None:
        app = self.app
        app.begin_drain()
        # every connection closes: after its last answer (and the linger after it), or idle at
        # the drain timeout; requests in flight get their --request-timeout-s
        config = self.config
        deadline = time.monotonic() + max(config.drain_timeout_s, config.request_timeout_s) + 5
        while not app.idle() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        # let the last answers reach the sockets
        await asyncio.sleep(0.05)


def _fit_open_file_limit(needed: int) -> None:
    """Raise the soft open-file limit (RLIMIT_NOFILE) to ``needed`` descriptors where it is lower,
    up to the hard limit (config checks that the hard limit fits --max-connections)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return
    soft, hard = open_file_limit()
    if soft < needed:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), resource.getrlimit(
                resource.RLIMIT_NOFILE)[1]))
            log.info("open-file limit raised from %d to %d for --max-connections %d", soft,
                     min(needed, hard), needed - PROBE_RESERVE - FD_HEADROOM)


def _drop_new_connections(sock: Any) -> bool:
    """Linux: attach a classic BPF filter to the listening socket that drops TCP segments with SYN
    set and ACK clear (new connection attempts; their clients retry, then see the port closed),
    while handshakes already under way complete. False where that is not possible."""
    import ctypes
    import socket
    import struct
    import sys

    # A = tcp[13] (flags) & (SYN | ACK); if A == SYN: drop; else: keep
    program = [(0x30, 0, 0, 13), (0x54, 0, 0, 0x12), (0x15, 0, 1, 0x02), (0x06, 0, 0, 0),
               (0x06, 0, 0, 0xFFFFFFFF)]
    if not sys.platform.startswith("linux"):
        return False

    class SockFprog(ctypes.Structure):  # struct sock_fprog
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in program))
    fprog = bytes(SockFprog(len(program), ctypes.addressof(code)))
    try:
        dup = socket.socket(fileno=os.dup(sock.fileno()))
    except (OSError, AttributeError, ValueError):
        return False
    try:
        dup.setsockopt(socket.SOL_SOCKET, 26, fprog)  # SO_ATTACH_FILTER (copied by the kernel)
    except OSError:
        return False
    finally:
        dup.close()
    return True


def _accept_queue_length(sock: Any) -> int:
    """Linux: connections the kernel has completed on the listening socket ``sock`` that the
    server has not accepted yet (``tcpi_unacked`` of a listening socket's TCP_INFO); 0 elsewhere."""
    import socket
    import struct

    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        return int(struct.unpack_from("8B6I", info)[12])
    except (OSError, AttributeError, struct.error):
        return 0


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def set_sched_policy(policy: str) -> dict[int, int]:
    """Give every thread of this process the Linux scheduling policy ``policy`` (``batch``:
    SCHED_BATCH, ``other``: SCHED_OTHER; threads started later inherit it); returns the policy each
    changed thread had (thread id -> policy), for :func:`restore_sched_policies`.

    Why SCHED_BATCH: a thread that wakes another (a lock released, a condition notified) while it
    holds the GIL is preempted by the thread it woke when both share a core; that one finds the GIL
    taken and sleeps again: two context switches for nothing. grpcio's threaded server wakes a
    pool thread several times per call; SCHED_BATCH threads do not preempt on wake-up (sched(7)),
    so the waker runs on to its next release of the GIL (runtime/README.md, "gRPC", has the
    numbers). A platform without the call, or a refusal, leaves the policy as it is (logged).

    A thread the operator put under another policy (``chrt``, systemd's ``CPUSchedulingPolicy=``:
    SCHED_FIFO, SCHED_RR, SCHED_IDLE) keeps it: only SCHED_OTHER and SCHED_BATCH are changed."""
    setter = getattr(os, "sched_setscheduler", None)
    if setter is None:  # pragma: no cover - not Linux
        log.debug("no sched_setscheduler on this platform: --sched-policy %s not applied", policy)
        return {}
    wanted = os.SCHED_BATCH if policy == "batch" else os.SCHED_OTHER
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # pragma: no cover - no /proc: this thread only
        threads = [0]
    reset_on_fork = getattr(os, "SCHED_RESET_ON_FORK", 0)
    kept = 0
    before: dict[int, int] = {}
    for tid in threads:
        try:
            current = os.sched_getscheduler(tid) & ~reset_on_fork
            if current not in (os.SCHED_OTHER, os.SCHED_BATCH):
                kept += 1
                continue
            setter(tid, wanted, os.sched_param(0))
            before[tid] = current
        except ProcessLookupError:  # (the thread ended meanwhile)
            continue
        except OSError as e:  # pragma: no cover - refused (a seccomp profile)
            log.warning("--sched-policy %s: the scheduling policy cannot be set (%s); serving with the "
                        "current one", policy, e.strerror or e)
            return before
    if kept:
        log.info("--sched-policy %s: %d thread(s) keep the real-time or idle policy they were started with",
                 policy, kept)
    return before


def restore_sched_policies(before: dict[int, int]) -> None:
    """Give the threads :func:`set_sched_policy` changed (and that still run) their policy back."""
    for tid, policy in before.items():
        with contextlib.suppress(OSError):  # (the thread ended meanwhile)
            os.sched_setscheduler(tid, policy, os.sched_param(0))


def run(config: ServerConfig) -> None:
    """Serve until SIGTERM/SIGINT; raise :class:`InferstackError` when the start fails.

    The caller's threads run under ``config.effective_sched_policy`` meanwhile and get their own
    back on the way out (a process that runs the server in-process, as a test does, is left as it
    was)."""
    caller_policies = set_sched_policy(config.effective_sched_policy)
    try:
        _serve(config)
    finally:
        restore_sched_policies(caller_policies)


def _serve(config: ServerConfig) -> None:
    server = Server(config)
    try:
        import uvloop

        have_uvloop = True
    except ImportError:  # pragma: no cover - uvloop is in the runtime extra; not on Windows
        have_uvloop = False
    try:
        if have_uvloop:
            uvloop.run(server.serve())
        else:  # pragma: no cover
            asyncio.run(server.serve())
    except KeyboardInterrupt:  # pragma: no cover - SIGINT before the handler was installed
        pass
