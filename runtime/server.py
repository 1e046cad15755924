"""The inference server: routes of the Open Inference Protocol, auth, load shedding, timeouts,
and the lifecycle (listen, load and warm up, ready, drain on SIGTERM, exit 0).

Routes::

    GET  /v2                                   server metadata
    GET  /v2/health/live | /v2/health/ready    open even with auth
    GET  /metrics                              Prometheus text format, open even with auth
    GET  /v2/models/{name}[/versions/{v}]      model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready
    GET  /v2/models/{name}[/versions/{v}]/config   the Triton model configuration extension
    POST /v2/models/{name}[/versions/{v}]/infer
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import os
import signal
import threading
import time
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

from inferstack.runtime.batcher import Batcher, Job
from inferstack.runtime.config import ServerConfig
from inferstack.runtime.errors import (
    BadRequest,
    ConfigError,
    HTTPError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    QueueFull,
    RequestTimeout,
    ServiceUnavailable,
    Unauthorized,
)
from inferstack.runtime.http import Connection, Request
from inferstack.runtime.metrics import CONTENT_TYPE, Metrics
from inferstack.runtime.model import Model, load_model
from inferstack.runtime.protocol import BINARY_CONTENT_TYPE, InferRequest, decode, dumps, encode
from inferstack.runtime.source import resolve

from inferstack import __version__

log = logging.getLogger("inferstack.runtime")

_OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
_OPEN_RAW = frozenset(p.encode() for p in _OPEN_PATHS)
_EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics_none"]
_TRITON_TYPES = {"BYTES": "TYPE_STRING"}
#: memory a JSON body's decoding may take per byte of JSON (orjson's Python objects, then the numpy
#: arrays: a 64 MiB body of FP32 "0," values peaks at 16x), counted in --max-buffered-bytes
JSON_DECODED_PER_BYTE = 16
#: ... per BYTES element (a Python string, its slot in an object array and onnxruntime's copy, in
#: and out: 1,048,576 two-byte elements peak at about 210 bytes each)
BYTES_DECODED_PER_ELEMENT = 256
#: bodies larger than this (and every compressed body, and every body of a model with a BYTES
#: input) are decoded off the event loop; answers larger than this (and every answer with a BYTES
#: output) are encoded off it: per-element work must not stall health checks
_INLINE_DECODE_BYTES = 1 << 20


def _status_outcome(status: int) -> str:
    if status < 400:
        return "success"
    if status == 503:
        return "rejected"
    if status == 504:
        return "timeout"
    if status < 500:
        return "client_error"
    return "error"


class App:
    """Answers parsed requests for one model. ``model`` is None until loaded."""

    def __init__(self, config: ServerConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.max_body_bytes = config.max_body_bytes
        self.max_buffered_bytes = config.max_buffered_bytes
        self.max_client_buffered_bytes = config.client_buffered_bytes
        self.buffered = 0  # request body bytes the connections hold (see http.Connection)
        self.held_by: dict[str, int] = {}  # ... of which each client address holds
        self.shutting_down = False  # SIGTERM seen: every answer carries Connection: close
        self.drain_deadline = 0.0  # (monotonic) idle connections are closed from then on
        self.now = time.monotonic()  # coarse clock for the connections, refreshed by _tick
        self.model: Model | None = None
        self.batcher: Batcher | None = None
        self.ready = False
        self.stopping = False  # SIGTERM seen: not ready, still serving (--drain-delay-s)
        self.draining = False
        self.connections: set[Connection] = set()
        self._token = config.auth_token.encode() if config.auth_token else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._infer_paths: dict[str, str] = {}
        self._watch: deque[tuple[Job, Connection, Request]] = deque()
        self._sweep_every = max(0.005, min(0.1, config.request_timeout_s / 10))
        self._outcomes = self.metrics.outcome
        self._observe_request = self.metrics.request_seconds.observe
        self._decoder: ThreadPoolExecutor | None = None
        self._bytes_in = self._bytes_out = False  # the model has a BYTES input / output
        self._clock_loop: asyncio.AbstractEventLoop | None = None
        timeouts = (config.header_timeout_s, config.body_timeout_s, config.idle_timeout_s)
        self._tick_every = max(0.05, min(1.0, min(timeouts) / 4))

    def start_clock(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the periodic sweep over connections (header, body and idle timeouts): one timer
        for all of them, instead of one per connection or per read."""
        self._clock_loop = loop
        self.now = time.monotonic()
        loop.call_later(self._tick_every, self._tick)

    def _tick(self) -> None:
        self.now = now = time.monotonic()
        c = self.config
        drain_over = self.draining and now >= self.drain_deadline
        for conn in list(self.connections):
            conn.check_timeouts(now, c.header_timeout_s, c.body_timeout_s, c.idle_timeout_s, c.min_body_rate,
                                drain_over)
        loop = self._clock_loop
        if loop is not None and not loop.is_closed():
            loop.call_later(self._tick_every, self._tick)

    @property
    def serving_ready(self) -> bool:
        return self.ready and not self.stopping and not self.draining

    # -- lifecycle hooks ---------------------------------------------------------------------
    def attach(self, model: Model, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.model = model
        self.batcher = Batcher(model, self.metrics, self.config.max_queue_delay_s, self.config.follow_wait)
        self.batcher.start(loop)
        loop.call_later(self._sweep_every, self._sweep)
        base = f"/v2/models/{model.name}"
        versioned = f"{base}/versions/{model.version}"
        self._infer_paths = {f"{base}/infer": model.name, f"{versioned}/infer": model.name}
        self._bytes_in = any(t.dtype.v2 == "BYTES" for t in model.inputs)
        self._bytes_out = any(t.dtype.v2 == "BYTES" for t in model.outputs)
        self.ready = True

    def connection_opened(self, conn: Connection) -> None:
        self.connections.add(conn)
        if self.draining:
            conn.shutdown()

    def connection_closed(self, conn: Connection) -> None:
        self.connections.discard(conn)

    def admit(self, method: bytes, url: bytes, headers: dict[bytes, bytes]) -> HTTPError | None:
        """At the end of a request's headers, before its body is read: auth (all but the open
        paths). An error refuses the request without reading its body."""
        if self._token is None:
            return None
        q = url.find(b"?")
        if (url if q < 0 else url[:q]) in _OPEN_RAW:
            return None
        header = headers.get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self._token):
            return Unauthorized("missing or wrong bearer token (send 'Authorization: Bearer <token>')")
        return None

    # -- dispatch ----------------------------------------------------------------------------
    def handle(self, conn: Connection, request: Request) -> None:
        batcher = self.batcher
        if batcher is not None and batcher.has_finished:  # answers first: they free queue places
            batcher.deliver_finished()
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
            if path in self._infer_paths:  # the hot path first (auth: admit, at the headers)
                if request.method != b"POST":
                    raise MethodNotAllowed(f"{request.method.decode('latin-1')} {path}: use POST", "POST")
                self._infer(conn, request)
                return
            self._route(conn, request, path)
        except HTTPError as e:
            self._refuse(conn, e, request)
        except Exception as e:  # a bug: answer 500 and keep serving
            log.exception("error while answering %r", request.url)
            self._refuse(conn, InternalError(f"internal error: {type(e).__name__}: {e}"), request)

    def _refuse(self, conn: Connection, error: HTTPError, request: Request) -> None:
        written = conn.respond_error(error, keep_alive=request.keep_alive)
        if request.started:  # an infer request: count it
            self._outcomes[_status_outcome(error.status_code) if written else "disconnected"].inc()
            self.metrics.failure(error.reason)
            self._observe_request(time.perf_counter() - request.started)

    def _route(self, conn: Connection, request: Request, path: str) -> None:
        method = request.method
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
            ok = self.serving_ready
            conn.respond(200 if ok else 503, b'{"ready":true}' if ok else self._not_ready(),
                         keep_alive=request.keep_alive)
            return
        if path in ("/v2", "/v2/"):
            self._require_get(method, path)
            body = {"name": "inferstack", "version": __version__, "extensions": _EXTENSIONS}
            conn.respond(200, dumps(body), keep_alive=request.keep_alive)
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
        if len(rest) > 1 or action not in ("", "ready", "config", "infer"):
            raise NotFound(f"no route for {method.decode('latin-1')} {path}")
        model = self._model(name, version)
        if action == "infer":
            if method != b"POST":
                raise MethodNotAllowed(f"{method.decode('latin-1')} {path}: use POST", "POST")
            self._infer(conn, request)
            return
        self._require_get(method, path)
        if action == "ready":
            ok = self.serving_ready
            conn.respond(200 if ok else 503, dumps({"name": model.name, "ready": True}) if ok
                         else self._not_ready(), keep_alive=request.keep_alive)
        elif action == "config":
            conn.respond(200, dumps(self._config(model)), keep_alive=request.keep_alive)
        else:
            conn.respond(200, dumps(self._metadata(model)), keep_alive=request.keep_alive)

    def _not_ready(self) -> bytes:
        why = "draining" if self.stopping or self.draining else "the model is still loading"
        return dumps({"error": f"not ready: {why}"})

    @staticmethod
    def _require_get(method: bytes, path: str) -> None:
        if method != b"GET" and method != b"HEAD":  # HEAD: the GET answer's headers (http.Connection)
            raise MethodNotAllowed(f"{method.decode('latin-1')} {path}: use GET", "GET, HEAD")

    def _model(self, name: str, version: str | None) -> Model:
        model = self.model
        if model is None:
            raise ServiceUnavailable("the model is still loading")
        if name != model.name:
            raise NotFound(f"unknown model {name!r}; this server serves {model.name!r}")
        if version is not None and version != model.version:
            raise NotFound(f"model {name!r} has no version {version!r}; available: {model.version!r}")
        return model

    # -- metadata ----------------------------------------------------------------------------
    @staticmethod
    def _metadata(model: Model) -> dict[str, Any]:
        return {
            "name": model.name,
            "versions": [model.version],
            "platform": "onnxruntime_onnx",
            "inputs": [t.as_metadata() for t in model.inputs],
            "outputs": [t.as_metadata() for t in model.outputs],
        }

    def _config(self, model: Model) -> dict[str, Any]:
        """The model's configuration in Triton's JSON shape (what tritonclient/perf_analyzer read):
        with batching, ``dims`` leave out the batch axis."""

        def tensors(infos: list[Any]) -> list[dict[str, Any]]:
            return [
                {
                    "name": t.name,
                    "data_type": _TRITON_TYPES.get(t.dtype.v2, f"TYPE_{t.dtype.v2}"),
                    "dims": list(t.shape[1:] if model.batching else t.shape),
                }
                for t in infos
            ]

        config: dict[str, Any] = {
            "name": model.name,
            "platform": "onnxruntime_onnx",
            "backend": "onnxruntime",
            "version_policy": {"latest": {"num_versions": 1}},
            "max_batch_size": model.max_batch_size,
            "input": tensors(model.inputs),
            "output": tensors(model.outputs),
            "instance_group": [
                {"name": model.name, "count": 1, "kind": "KIND_GPU" if model.on_gpu else "KIND_CPU"}
            ],
            "parameters": {
                "execution_providers": {"string_value": ",".join(model.providers)},
                # why requests are merged or not: "passed (...)", "off: ...", "forced: ..."
                "batch_check": {"string_value": model.batch_decision},
                "batch_dim": {"string_value": self.config.batch_dim},
            },
        }
        if model.batching:
            config["dynamic_batching"] = {
                "max_queue_delay_microseconds": self.config.max_queue_delay_us,
                "preferred_batch_size": [],
            }
        return config

    # -- inference ---------------------------------------------------------------------------
    def _infer(self, conn: Connection, request: Request) -> None:
        model = self.model
        batcher = self.batcher
        if model is None or batcher is None or not self.ready:
            raise ServiceUnavailable("the model is still loading")
        if batcher.pending >= self.config.max_queue_size:
            raise QueueFull(
                f"the queue is full ({batcher.pending} requests; --max-queue-size / "
                f"INFERSTACK_MAX_QUEUE_SIZE is {self.config.max_queue_size}); retry later"
            )
        header_length = _header_length(request.headers)
        encoding = request.headers.get(b"content-encoding")
        if len(request.body) <= _INLINE_DECODE_BYTES and (encoding is None or encoding == b"identity") \
                and not self._bytes_in:
            self._submit(conn, request, model, batcher,
                         decode(request.body, header_length, model, self.config.max_bytes_elements))
            return
        self._hold_decoded(conn, request, header_length)
        # a large or compressed body, or BYTES elements: parse it in a thread, so the event loop
        # keeps answering (health checks, small requests) meanwhile
        future = self._worker().submit(self._decode_body, request, header_length, model)
        loop = self._loop
        assert loop is not None
        future.add_done_callback(
            lambda f: loop.call_soon_threadsafe(self._decoded, f, conn, request, model, batcher)
        )

    def _hold_decoded(self, conn: Connection, request: Request, header_length: int | None) -> None:
        """Count what the body will decode into in --max-buffered-bytes, beyond the body itself:
        JSON_DECODED_PER_BYTE per byte of JSON, BYTES_DECODED_PER_ELEMENT per BYTES element the
        binary part can hold (one per 4 bytes, at most --max-bytes-elements). A compressed body is
        counted at its compressed size (its decompressed size is bounded by --max-body-bytes)."""
        size = len(request.body)
        json_bytes = size if header_length is None else min(header_length, size)
        elements = min((size - json_bytes) // 4, self.config.max_bytes_elements) if self._bytes_in else 0
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

    def _worker(self) -> ThreadPoolExecutor:
        if self._decoder is None:
            self._decoder = ThreadPoolExecutor(2, thread_name_prefix="inferstack-decode")
        return self._decoder

    def _decode_body(self, request: Request, header_length: int | None, model: Model) -> InferRequest:
        return decode(self._body(request), header_length, model, self.config.max_bytes_elements)

    def _decoded(self, future: Future[InferRequest], conn: Connection, request: Request, model: Model,
                 batcher: Batcher) -> None:
        # The error is taken, not raised again: raising it here would add this frame (which holds
        # the future, which holds the error) to its traceback, a reference cycle that keeps the
        # request and the decoder's frames (a decompressed body) alive until the collector runs.
        error = future.exception()
        if error is None:
            self._submit(conn, request, model, batcher, future.result())
            return
        if isinstance(error, HTTPError):
            error.__traceback__ = None  # the decoder's frames go now
            self._refuse(conn, error, request)
            return
        log.error("error while decoding %r", request.url, exc_info=error)
        error.__traceback__ = None
        self._refuse(conn, InternalError(f"internal error: {type(error).__name__}: {error}"), request)

    def _submit(self, conn: Connection, request: Request, model: Model, batcher: Batcher,
                infer: InferRequest) -> None:
        keep_alive = request.keep_alive

        def done(outputs: dict[str, Any] | None, error: HTTPError | None) -> None:
            if error is not None or outputs is None:
                self._refuse(conn, error or InternalError("no outputs"), request)
                return
            if self._bytes_out or sum(o.nbytes for o in outputs.values()) > _INLINE_DECODE_BYTES:
                # per-element work (strings, a large JSON answer) in a thread; written on the loop
                loop = self._loop
                assert loop is not None
                future = self._worker().submit(encode, model, infer, outputs)
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
                self._refuse(conn, ServiceUnavailable("the server is shutting down"), request)
                return
            error = future.exception()  # taken, not raised: no cycle through this frame
            if error is not None:
                error.__traceback__ = None
                failed(error)
                return
            write(future.result())

        def failed(e: BaseException) -> None:
            if isinstance(e, HTTPError):  # an answer the protocol cannot carry (inf in JSON)
                self._refuse(conn, e, request)
                return
            log.error("error while encoding a response: %s: %s", type(e).__name__, e)
            self._refuse(conn, InternalError(f"internal error: {type(e).__name__}: {e}"), request)

        def write(answer: tuple[bytes, list[bytes | memoryview], int | None]) -> None:
            if self._write(conn, *answer, keep_alive):
                self._outcomes["success"].inc()
            else:  # the client left before its answer
                self._outcomes["disconnected"].inc()
                self.metrics.failure("disconnected")
            self._observe_request(time.perf_counter() - request.started)

        job = Job(infer.inputs, infer.rows, infer.key, done)
        job.deadline = request.started + self.config.request_timeout_s
        self._watch.append((job, conn, request))
        batcher.submit(job)

    def _sweep(self) -> None:
        """Answer 504 for requests past their deadline. All requests share one timeout, so the
        deadlines are in arrival order: a deque and a periodic look at its head suffice (cheaper
        than one timer per request)."""
        watch = self._watch
        now = time.perf_counter()
        while watch:
            job, conn, request = watch[0]
            if job.answered:
                watch.popleft()
                continue
            if job.deadline > now:
                break
            watch.popleft()
            job.cancelled = True
            self._refuse(conn, RequestTimeout(
                f"no answer within {self.config.request_timeout_s:g}s (--request-timeout-s / "
                "INFERSTACK_REQUEST_TIMEOUT_S)"), request)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_later(self._sweep_every, self._sweep)

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
    def _write(conn: Connection, header: bytes, blobs: list[bytes | memoryview], header_length: int | None,
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
        self.drain_deadline = time.monotonic() + self.config.drain_timeout_s
        for conn in list(self.connections):
            conn.shutdown()

    def stop_decoding(self) -> None:
        if self._decoder is not None:
            self._decoder.shutdown(wait=False, cancel_futures=True)

    def idle(self) -> bool:
        pending = self.batcher.pending if self.batcher else 0
        return pending == 0 and not self.connections


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
        if delay > 0 and app.ready and not app.stopping:
            app.stopping = True
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
        try:
            listener = await loop.create_server(
                lambda: Connection(self.app), config.host, config.port, backlog=2048, reuse_address=True
            )
        except OSError as e:
            raise ConfigError(
                f"--host / --port: cannot listen on {config.host}:{config.port}: {e.strerror or e}"
            ) from None
        self.port = listener.sockets[0].getsockname()[1]
        self.app.start_clock(loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
                loop.add_signal_handler(sig, self.request_stop)
        log.info("listening on http://%s:%d; loading %s", config.host, self.port, config.model)
        try:
            model = await self._load(loop)
            if model is None:  # stopped while loading
                return
            self.app.attach(model, loop)
            # Everything loaded so far lives as long as the process: keep it out of the cyclic
            # garbage collector's scans, and collect young objects less often (requests make few cycles).
            gc.collect()
            gc.freeze()
            gc.set_threshold(10_000, 10, 10)
            where = ", ".join(model.providers)
            batching = f"max batch {model.max_batch_size}" if model.batching else "no batching"
            log.info("ready: model %s on http://%s:%d (%s; %s)", model.name, config.host, self.port,
                     batching, where)
            await self._stop.wait()
            # Closing a listening socket resets the connections the kernel has completed but the
            # server not yet accepted, whose clients may have written a request already. So first
            # new connection attempts are dropped (they never get to write), what is queued is
            # accepted and drained like the rest, and only then is the socket closed.
            if _drop_new_connections(listener.sockets[0]):
                await asyncio.sleep(0.05)
            listener.close()
            await self._drain()
        finally:
            listener.close()
            if self.app.batcher is not None:
                self.app.batcher.stop()
            self.app.stop_decoding()
            for conn in list(self.app.connections):
                conn.close()
        log.info("stopped")

    async def _load(self, loop: asyncio.AbstractEventLoop) -> Model | None:
        """Resolve, verify, load and warm up in a daemon thread, so that /v2/health/live answers
        meanwhile and a SIGTERM during a long download still exits at once."""
        done: asyncio.Future[Model] = loop.create_future()

        def work() -> None:
            try:
                source = resolve(self.config.model, self.config.cache_dir)
                result = load_model(source, self.config)
            except BaseException as e:  # handed to the event loop, raised there
                loop.call_soon_threadsafe(_settle, done, None, e)
                return
            loop.call_soon_threadsafe(_settle, done, result, None)

        threading.Thread(target=work, name="inferstack-load", daemon=True).start()
        assert self._stop is not None
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait([done, stop], return_when=asyncio.FIRST_COMPLETED)
        if not done.done():
            return None
        stop.cancel()
        return done.result()

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


def _settle(future: asyncio.Future[Model], result: Model | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def run(config: ServerConfig) -> None:
    """Serve until SIGTERM/SIGINT; raise :class:`InferstackError` when the start fails."""
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
