"""The gRPC front end: the Open Inference Protocol's ``inference.GRPCInferenceService`` on grpcio's
threaded server (``grpc.server`` with a thread pool), a thin layer over the same :class:`DataPlane`
as HTTP (models, batchers, auth, limits, shedding, timeouts, metrics, statistics).

Why threads and not ``grpc.aio``: grpcio's asyncio server hands each call through several
completion-queue events to the event loop, one call at a time: more CPU per call than its threaded
server (a bare servicer answering a constant: 213 against 146 us per call on one core,
``bench/grpc_ceiling.py``), and the loop then sees one request per turn, so the batcher merged
~1.3 requests per run at 32 concurrent calls. Here each call is parsed, checked and decoded in its
own pool thread, which queues it on the batcher itself (:meth:`DataPlane.submit_direct`: the
queue limit is looked at and counted in one step under the batcher's lock) and waits; the batcher's
worker answers it directly (no event-loop turn on the way in or out), and the pool thread encodes
the answer. Calls queued while a run is going are merged into the next one.

ModelInfer, step by step: parse the message (its bytes count against --max-buffered-bytes until
the answer leaves, with what decoding makes: typed contents' arrays, BYTES elements), auth
(``authorization: Bearer <token>`` in the metadata), the model, a first look at its queue
(--max-queue-size; the authoritative check is made when it is queued), decode, queue on the
batcher, wait for the answer (until the request's deadline: then DEADLINE_EXCEEDED, unless the
worker answered first), encode. Counting (metrics, statistics) happens on the event loop
(:meth:`DataPlane.finish_later`, counted at its next sweep, scrape or statistics answer).

Each refusal is the HTTP one with the error's gRPC status (:mod:`errors`: 400 INVALID_ARGUMENT,
401 UNAUTHENTICATED, 404 NOT_FOUND, a full queue or request-bytes budget RESOURCE_EXHAUSTED, 503
UNAVAILABLE, 504 DEADLINE_EXCEEDED, 500 INTERNAL); the details are the HTTP ``{"error"}`` message.
ServerLive and ServerReady are open, as ``/v2/health/*`` are. Messages larger than
``--max-body-bytes`` are refused by grpcio (RESOURCE_EXHAUSTED) before they are parsed; at most
:data:`THREADS` messages are received at once (grpcio reads a call's message only once a pool
thread takes the call), and at most :data:`MAX_CALLS` calls are admitted at once (past it grpcio
answers RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.json_format import ParseDict
from google.protobuf.message import DecodeError
from inferstack.runtime.errors import BadRequest, ConfigError, HTTPError, InternalError, ServiceUnavailable
from inferstack.runtime.grpc_codec import decode_request, encode_response
from inferstack.runtime.grpc_unsupported import UnsupportedMethods
from inferstack.runtime.logs import log_access
from inferstack.runtime.proto import grpc_service_pb2 as pb

if TYPE_CHECKING:
    from inferstack.runtime.dataplane import DataPlane, ModelEntry

log = logging.getLogger("inferstack.runtime")
SERVICE = "inference.GRPCInferenceService"
_INFER_PATH = f"/{SERVICE}/ModelInfer"
#: pool threads answering calls: at most this many calls are parsed, decoded or waiting for the
#: batcher at once (calls past it wait for a thread, their message not yet read)
THREADS = 64
#: calls admitted at once (running and waiting for a thread); past it: RESOURCE_EXHAUSTED
MAX_CALLS = 1024
#: at the drain, new calls are refused UNAVAILABLE until none has come for this long (seconds)...
QUIET_S = 0.05
#: ... or for at most this long; then grpcio's server stops
REFUSE_MAX_S = 1.0


def grpc_status(error: HTTPError) -> grpc.StatusCode:
    """The gRPC status of a refusal (each error names its own, see :mod:`errors`)."""
    return grpc.StatusCode[error.grpc_code]


def _metadata_auth(context: Any) -> str | bytes | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value
    return None


_MAX_WAIT_S = 365 * 86400.0


def _acquire_by(lock: threading.Lock, deadline: float) -> bool:
    """``lock.acquire()`` until ``deadline`` (perf_counter seconds): True when acquired. Waits an
    hour at most at a time (a --request-timeout-s of years overflows the clock's range in one)."""
    while True:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return lock.acquire(blocking=False)
        if lock.acquire(timeout=min(remaining, 3600.0)):
            return True


class ClientLeft(HTTPError):
    """The client cancelled its call, or its deadline passed, before the answer (counted as
    ``disconnected``; the status is never seen)."""

    status_code = 499
    grpc_code = "CANCELLED"
    reason = "disconnected"


class _Waiter:
    """Where the batcher's worker puts one call's answer for the pool thread that waits on it."""

    __slots__ = ("lock", "outputs", "error", "left")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # released once: by done(), or by the client's leaving once it claimed the job (then
        # done() is never called); the waiting thread's acquire returns
        self.lock.acquire()
        self.outputs: dict[str, Any] | None = None
        self.error: HTTPError | None = None
        self.left = False  # the client left (cancelled, or its deadline passed) before the answer

    def done(self, outputs: dict[str, Any] | None, error: HTTPError | None) -> None:
        self.outputs, self.error = outputs, error
        self.lock.release()


class InferenceServicer:
    """The service's calls (pool threads), answered by the :class:`DataPlane` the HTTP front end
    shares on its event loop ``loop``."""

    def __init__(self, plane: DataPlane, loop: asyncio.AbstractEventLoop) -> None:
        self.plane = plane
        self.loop = loop
        self._access_log = plane.config.access_log
        #: the drain has begun: ModelInfer calls are refused UNAVAILABLE (see GrpcServer.stop)
        self.refusing = False
        #: (monotonic) when the last ModelInfer call was taken by a pool thread
        self.last_call = 0.0

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's methods for ``grpc.server`` (ModelInfer reads the message's bytes itself:
        their count is what it holds)."""
        def unary(behavior: Callable[[Any, Any], Any], request: Any, response: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                behavior, request_deserializer=request.FromString,
                response_serializer=response.SerializeToString)

        methods = {
            "ServerLive": unary(self.ServerLive, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": unary(self.ServerReady, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": unary(self.ModelReady, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": unary(self.ServerMetadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            "ModelMetadata": unary(self.ModelMetadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelConfig": unary(self.ModelConfig, pb.ModelConfigRequest, pb.ModelConfigResponse),
            "ModelStatistics": unary(self.ModelStatistics, pb.ModelStatisticsRequest,
                                     pb.ModelStatisticsResponse),
            "RepositoryIndex": unary(self.RepositoryIndex, pb.RepositoryIndexRequest,
                                     pb.RepositoryIndexResponse),
            "RepositoryModelLoad": unary(self.RepositoryModelLoad, pb.RepositoryModelLoadRequest,
                                         pb.RepositoryModelLoadResponse),
            "RepositoryModelUnload": unary(self.RepositoryModelUnload, pb.RepositoryModelUnloadRequest,
                                           pb.RepositoryModelUnloadResponse),
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                self.ModelInfer, request_deserializer=None,
                response_serializer=pb.ModelInferResponse.SerializeToString),
        }
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    # -- running on the event loop -------------------------------------------------------------
    def _on_loop(self, work: Callable[[], Any]) -> Any:
        """``work()`` on the event loop (awaited when it returns an awaitable); its result, or its
        HTTPError re-raised here."""
        async def run() -> Any:
            result = work()
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result()

    def _check_auth(self, context: Any) -> None:
        """With auth on: raises Unauthorized unless the call's metadata carries the token."""
        if self.plane.auth:
            refused = self.plane.check_auth(_metadata_auth(context))
            if refused is not None:
                raise refused

    def _call(self, context: Any, answer: Callable[[], Any]) -> Any:
        """Auth, then ``answer()`` on the event loop; an HTTPError becomes the call's status."""
        try:
            self._check_auth(context)
            return self._on_loop(answer)
        except HTTPError as e:
            e.__traceback__ = None
            context.abort(grpc_status(e), str(e))

    # -- health (open, as /v2/health/* are) and metadata ----------------------------------------
    def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=self.plane.server_live)

    def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.plane.server_ready)

    def ModelReady(self, request: Any, context: Any) -> Any:
        return self._call(context, lambda: pb.ModelReadyResponse(
            ready=self.plane.model_ready(request.name, request.version or None)))

    def ServerMetadata(self, request: Any, context: Any) -> Any:
        return self._call(context, lambda: ParseDict(self.plane.server_metadata(),
                                                     pb.ServerMetadataResponse()))

    def ModelMetadata(self, request: Any, context: Any) -> Any:
        plane = self.plane
        return self._call(context, lambda: ParseDict(
            plane.model_metadata(plane.entry(request.name, request.version or None)),
            pb.ModelMetadataResponse()))

    def ModelConfig(self, request: Any, context: Any) -> Any:
        # Triton's JSON shape, read into the message (fields Triton has and ours lacks: ignored)
        plane = self.plane
        return self._call(context, lambda: pb.ModelConfigResponse(config=ParseDict(
            plane.model_config(plane.entry(request.name, request.version or None)), pb.ModelConfig(),
            ignore_unknown_fields=True)))

    def ModelStatistics(self, request: Any, context: Any) -> Any:
        plane = self.plane
        return self._call(context, lambda: ParseDict(
            plane.statistics(request.name or None, request.version or None), pb.ModelStatisticsResponse(),
            ignore_unknown_fields=True))

    # -- the repository extension -------------------------------------------------------------
    def RepositoryIndex(self, request: Any, context: Any) -> Any:
        plane = self.plane
        return self._call(context, lambda: ParseDict(
            {"models": plane.repository_index(request.ready)}, pb.RepositoryIndexResponse()))

    def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        self._call(context, lambda: self.plane.load(request.model_name, request.parameters))
        return pb.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        self._call(context, lambda: self.plane.unload(request.model_name))
        return pb.RepositoryModelUnloadResponse()

    # -- inference ---------------------------------------------------------------------------
    def ModelInfer(self, message: bytes, context: Any) -> Any:
        plane = self.plane
        started = time.perf_counter()
        self.last_call = time.monotonic()
        entry = None
        name = ""
        held = 0
        try:
            if self.refusing:
                raise ServiceUnavailable("the server is stopping; retry on another replica")
            try:
                held = plane.hold(len(message))
                request = pb.ModelInferRequest.FromString(message)
            except DecodeError:
                raise BadRequest("the ModelInferRequest message cannot be parsed") from None
            name = request.model_name
            self._check_auth(context)
            entry = plane.entry(name, request.model_version or None)
            if entry.batcher.pending >= plane.config.max_queue_size:
                plane.admit(entry)  # (refuses before decoding; submit_direct checks again, under the lock)
            def hold(n: int) -> None:
                nonlocal held
                if n:
                    held += plane.hold(n, held)

            infer = decode_request(request, entry.model, plane.config.max_bytes_elements, hold)
            waiter = _Waiter()
            job = plane.submit_direct(entry, infer, started, waiter.done)
            queued = entry

            def left() -> None:
                # the call ended: a client that leaves (cancel, its deadline) gives its queue place
                # back at once, unless the worker answered it first (after an answer: a no-op)
                if plane.expire(queued, job) is not None:
                    waiter.left = True
                    waiter.lock.release()

            if not context.add_callback(left):
                left()  # (it ended already)
            if not _acquire_by(waiter.lock, job.deadline):
                expired = plane.expire(entry, job)
                if expired is not None:
                    raise expired
                waiter.lock.acquire()  # the worker answered it meanwhile: its done() is under way
            if waiter.left:
                raise ClientLeft("the client left before its answer (cancelled, or its deadline passed)")
            if waiter.error is not None:
                raise waiter.error
            if waiter.outputs is None:
                raise InternalError("no outputs")
            response = encode_response(entry.model, infer, waiter.outputs)
        except HTTPError as e:
            e.__traceback__ = None
            plane.release(held)
            self._finish(entry, started, e, not isinstance(e, ClientLeft), name, 0)
            context.abort(grpc_status(e), str(e))
        except Exception as e:  # a bug: INTERNAL, keep serving
            log.exception("error while answering a gRPC ModelInfer")
            plane.release(held)
            error = InternalError(f"internal error: {type(e).__name__}: {e}")
            self._finish(entry, started, error, True, name, 0)
            context.abort(grpc.StatusCode.INTERNAL, str(error))
        plane.release(held)
        # the client may have left (cancelled, or its deadline passed) while the call waited
        self._finish(entry, started, None, context.is_active(), name,
                     response.ByteSize() if self._access_log else 0)
        return response

    def _finish(self, entry: ModelEntry | None, started: float, error: HTTPError | None, written: bool,
                model: str, size: int) -> None:
        took = time.perf_counter() - started
        self.plane.finish_later(entry, started, error, written, took)
        if self._access_log:
            # as HTTP writes it (status: the HTTP status of the outcome; the path is the gRPC method)
            log_access("POST", _INFER_PATH, model or "-", 200 if error is None else error.status_code, size,
                       took, None if error is None else str(error))


class GrpcServer:
    """The running ``grpc.server`` (what :func:`start_grpc` returns)."""

    def __init__(self, server: grpc.Server, pool: ThreadPoolExecutor, servicer: InferenceServicer) -> None:
        self._server = server
        self._pool = pool
        self._servicer = servicer

    async def stop(self, grace: float | None) -> None:
        """No new calls; those in flight finish within ``grace`` seconds (then are cancelled).
        The event loop keeps running meanwhile: the calls need it for their answers.

        grpcio's shutdown answers CANCELLED (which clients do not retry) to the calls its core has
        received but not yet handed to the server (it takes them one at a time: under load, many
        are waiting). So with ``grace``, new ModelInfer calls are first refused UNAVAILABLE (the
        status a client may retry elsewhere) until none has come for :data:`QUIET_S` (at most
        :data:`REFUSE_MAX_S`): those waiting in grpcio are taken and refused, not cancelled."""
        servicer = self._servicer
        if grace and not servicer.refusing:
            servicer.refusing = True
            began = time.monotonic()
            while True:
                now = time.monotonic()
                if now - max(servicer.last_call, began) >= QUIET_S or now - began >= REFUSE_MAX_S:
                    break
                await asyncio.sleep(QUIET_S / 5)
        # (grpcio waits for the grace in one call: a year at most, past it the clock overflows)
        stopped = self._server.stop(min(grace or 0, _MAX_WAIT_S))
        await asyncio.get_running_loop().run_in_executor(None, stopped.wait)
        self._pool.shutdown(wait=False)


async def start_grpc(plane: DataPlane, host: str, port: int) -> tuple[GrpcServer, int]:
    """Listen on ``host:port`` (0: any free port) and start serving; returns (server, port).
    Raises :class:`ConfigError` naming --grpc-port when the port cannot be had."""
    pool = ThreadPoolExecutor(THREADS, thread_name_prefix="inferstack-grpc")
    server = grpc.server(pool, options=[
        ("grpc.max_receive_message_length", plane.config.max_body_bytes),
        ("grpc.so_reuseport", 0),  # a port in use is an error, not shared
    ], maximum_concurrent_rpcs=MAX_CALLS)
    servicer = InferenceServicer(plane, asyncio.get_running_loop())
    # (the calls not served: UNIMPLEMENTED)
    server.add_generic_rpc_handlers((servicer.handler(), UnsupportedMethods()))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as e:
        bound, why = 0, str(e)
    else:
        why = "address in use or not available"
    if not bound:
        server.stop(None)
        pool.shutdown(wait=False)
        raise ConfigError(f"--grpc-port / INFERSTACK_GRPC_PORT: cannot listen on {address}: {why}")
    server.start()
    return GrpcServer(server, pool, servicer), bound


__all__ = ["GrpcServer", "InferenceServicer", "grpc_status", "start_grpc"]
