"""The gRPC front end: the Open Inference Protocol's ``inference.GRPCInferenceService`` on grpcio's
asyncio server, on the HTTP server's event loop, answering from the same models, batchers, auth,
limits, shedding and metrics.

Each refusal is the HTTP one with its gRPC status (:func:`grpc_status`): 400 INVALID_ARGUMENT,
401 UNAUTHENTICATED, 404 NOT_FOUND, a full queue RESOURCE_EXHAUSTED, 503 UNAVAILABLE, 504
DEADLINE_EXCEEDED, 500 INTERNAL; the details are the HTTP ``{"error"}`` message. The bearer token
travels in the call's metadata (``authorization: Bearer <token>``); ServerLive and ServerReady are
open, as ``/v2/health/*`` are. Messages larger than ``--max-body-bytes`` are refused by grpcio
(RESOURCE_EXHAUSTED) before they are parsed.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import TYPE_CHECKING, Any

import grpc
from inferstack.runtime.batcher import Job
from inferstack.runtime.errors import (
    ConfigError,
    HTTPError,
    InternalError,
    Overloaded,
    QueueFull,
    RequestTimeout,
    ServiceUnavailable,
    Unauthorized,
)
from inferstack.runtime.grpc_codec import decode_request, encode_response
from inferstack.runtime.proto import grpc_service_pb2 as pb
from inferstack.runtime.proto import grpc_service_pb2_grpc as pb_grpc

from inferstack import __version__

if TYPE_CHECKING:
    from inferstack.runtime.server import App

log = logging.getLogger("inferstack.runtime")

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_status(error: HTTPError) -> grpc.StatusCode:
    """The gRPC status of a refusal: shedding (a full queue or buffer) is RESOURCE_EXHAUSTED, as
    Triton answers it; the rest follows the HTTP status."""
    if isinstance(error, (QueueFull, Overloaded)):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return _CODES.get(error.status_code, grpc.StatusCode.INTERNAL)


_NO_TOKEN = "missing or wrong bearer token (send metadata 'authorization: Bearer <token>')"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The service's calls, answered from an :class:`App` (the server's shared state)."""

    def __init__(self, app: App) -> None:
        self.app = app
        token = app.config.auth_token
        self._token = f"bearer {token}".encode() if token else None
        self._timeout = app.config.request_timeout_s

    # -- helpers -----------------------------------------------------------------------------
    def _authorized(self, context: Any) -> bool:
        if self._token is None:
            return True
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                raw = value.encode() if isinstance(value, str) else value
                scheme, _, token = raw.partition(b" ")
                return hmac.compare_digest(scheme.lower() + b" " + token.strip(), self._token)
        return False

    async def _refuse(self, context: Any, error: HTTPError) -> None:
        await context.abort(grpc_status(error), str(error))

    async def _call(self, context: Any, answer: Any) -> Any:
        """Auth, then ``answer()``; an HTTPError becomes the call's status."""
        try:
            if not self._authorized(context):
                raise Unauthorized(_NO_TOKEN)
            return answer()
        except HTTPError as e:
            await self._refuse(context, e)

    # -- health and metadata -----------------------------------------------------------------
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.app.serving_ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        def answer() -> Any:
            app = self.app
            if app.model is None:
                return pb.ModelReadyResponse(ready=False)
            app._model(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=app.serving_ready)
        return await self._call(context, answer)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        from inferstack.runtime.server import _EXTENSIONS

        return await self._call(context, lambda: pb.ServerMetadataResponse(
            name="inferstack", version=__version__, extensions=_EXTENSIONS))

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        def answer() -> Any:
            app = self.app
            meta = app._metadata(app._model(request.name, request.version or None))
            response = pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"],
                                                platform=meta["platform"])
            for side in ("inputs", "outputs"):
                for t in meta[side]:
                    getattr(response, side).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
            return response
        return await self._call(context, answer)

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        def answer() -> Any:
            app = self.app
            c = app._config(app._model(request.name, request.version or None))
            config = pb.ModelConfig(name=c["name"], platform=c["platform"], backend=c["backend"],
                                    max_batch_size=c["max_batch_size"])
            config.version_policy.latest.num_versions = c["version_policy"]["latest"]["num_versions"]
            for t in c["input"]:
                config.input.add(name=t["name"], data_type=t["data_type"], dims=t["dims"])
            for t in c["output"]:
                config.output.add(name=t["name"], data_type=t["data_type"], dims=t["dims"])
            for g in c["instance_group"]:
                config.instance_group.add(name=g["name"], count=g["count"], kind=g["kind"])
            for key, value in c["parameters"].items():
                config.parameters[key].string_value = value["string_value"]
            batching = c.get("dynamic_batching")
            if batching is not None:
                delay = batching["max_queue_delay_microseconds"]
                config.dynamic_batching.max_queue_delay_microseconds = delay
            return pb.ModelConfigResponse(config=config)
        return await self._call(context, answer)

    # -- inference ---------------------------------------------------------------------------
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        app = self.app
        started = time.perf_counter()
        outcomes = app.metrics.outcome
        try:
            if not self._authorized(context):
                raise Unauthorized(_NO_TOKEN)
            model = app._model(request.model_name, request.model_version or None)
            batcher = app.batcher
            if batcher is not None and batcher.has_finished:  # answers first, as over HTTP
                batcher.deliver_finished()
            if batcher is None or not app.ready:
                raise ServiceUnavailable("the model is still loading")
            if batcher.pending >= app.config.max_queue_size:
                raise QueueFull(
                    f"the queue is full ({batcher.pending} requests; --max-queue-size / "
                    f"INFERSTACK_MAX_QUEUE_SIZE is {app.config.max_queue_size}); retry later"
                )
            infer = decode_request(request, model)
            loop = asyncio.get_running_loop()
            answer: asyncio.Future[dict[str, Any]] = loop.create_future()

            def done(outputs: dict[str, Any] | None, error: HTTPError | None) -> None:
                if answer.done():
                    return
                if error is not None or outputs is None:
                    answer.set_exception(error or InternalError("no outputs"))
                else:
                    answer.set_result(outputs)

            job = Job(infer.inputs, infer.rows, infer.key, done)
            job.deadline = started + self._timeout
            batcher.submit(job)
            timer = loop.call_later(self._timeout, self._expire, job, answer)
            try:
                outputs = await answer
            except asyncio.CancelledError:  # the client went away: nobody waits for the rows
                job.cancelled = True
                outcomes["disconnected"].inc()
                app.metrics.failure("disconnected")
                raise
            finally:
                timer.cancel()
            response = encode_response(model, infer, outputs)
        except HTTPError as e:
            e.__traceback__ = None
            outcomes["rejected" if e.status_code == 503 else "timeout" if e.status_code == 504
                     else "client_error" if e.status_code < 500 else "error"].inc()
            app.metrics.failure(e.reason)
            app.metrics.request_seconds.observe(time.perf_counter() - started)
            await self._refuse(context, e)
            return None
        except Exception as e:  # a bug: INTERNAL, keep serving
            log.exception("error while answering a gRPC ModelInfer")
            outcomes["error"].inc()
            app.metrics.failure("internal")
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")
            return None
        outcomes["success"].inc()
        app.metrics.request_seconds.observe(time.perf_counter() - started)
        return response

    def _expire(self, job: Job, answer: asyncio.Future[Any]) -> None:
        if answer.done():
            return
        job.cancelled = True
        answer.set_exception(RequestTimeout(
            f"no answer within {self._timeout:g}s (--request-timeout-s / INFERSTACK_REQUEST_TIMEOUT_S)"))

    # -- statistics and repository: not served (yet) by this server --------------------------
    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the statistics extension is not served")

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the model repository extension is not served")

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the model repository extension is not served")

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the model repository extension is not served")


async def start_grpc(app: App, host: str, port: int) -> tuple[Any, int]:
    """Listen on ``host:port`` (0: any free port) and start serving; returns (server, port).
    Raises :class:`ConfigError` naming --grpc-port when the port cannot be had."""
    limit = app.config.max_body_bytes
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", limit),
        ("grpc.so_reuseport", 0),  # a port in use is an error, not shared
    ])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(app), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as e:
        bound, why = 0, str(e)
    else:
        why = "address in use or not available"
    if not bound:
        raise ConfigError(f"--grpc-port / INFERSTACK_GRPC_PORT: cannot listen on {address}: {why}")
    await server.start()
    return server, bound


__all__ = ["InferenceServicer", "grpc_status", "start_grpc"]
