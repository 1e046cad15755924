"""The gRPC front end: the Open Inference Protocol's ``inference.GRPCInferenceService`` on grpcio's
asyncio server, on the HTTP server's event loop, a thin layer over the same :class:`DataPlane`
(models, batchers, auth, limits, shedding, timeouts, metrics, statistics).

Each refusal is the HTTP one with the error's gRPC status (:mod:`errors`: 400 INVALID_ARGUMENT,
401 UNAUTHENTICATED, 404 NOT_FOUND, a full queue RESOURCE_EXHAUSTED, 503 UNAVAILABLE, 504
DEADLINE_EXCEEDED, 500 INTERNAL); the details are the HTTP ``{"error"}`` message. The bearer token
travels in the call's metadata (``authorization: Bearer <token>``); ServerLive and ServerReady are
open, as ``/v2/health/*`` are. Messages larger than ``--max-body-bytes`` are refused by grpcio
(RESOURCE_EXHAUSTED) before they are parsed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.json_format import ParseDict
from inferstack.runtime.errors import ConfigError, HTTPError, InternalError
from inferstack.runtime.grpc_codec import decode_request, encode_response
from inferstack.runtime.grpc_unsupported import UnsupportedMethods
from inferstack.runtime.logs import log_access
from inferstack.runtime.proto import grpc_service_pb2 as pb
from inferstack.runtime.proto import grpc_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from inferstack.runtime.dataplane import DataPlane

log = logging.getLogger("inferstack.runtime")
_INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"


def grpc_status(error: HTTPError) -> grpc.StatusCode:
    """The gRPC status of a refusal (each error names its own, see :mod:`errors`)."""
    return grpc.StatusCode[error.grpc_code]


def _metadata_auth(context: Any) -> str | bytes | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value
    return None


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The service's calls, answered by the :class:`DataPlane` the HTTP front end shares."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self._access_log = plane.config.access_log

    def _log_call(self, model: str, started: float, error: HTTPError | None, size: int) -> None:
        """The access line of a ModelInfer call, as HTTP writes it (status: the HTTP status of
        the outcome, 200 for OK; the path is the gRPC method)."""
        log_access("POST", _INFER_PATH, model or "-", 200 if error is None else error.status_code, size,
                   time.perf_counter() - started, None if error is None else str(error))

    async def _call(self, context: Any, answer: Any) -> Any:
        """Auth, then ``answer()``; an HTTPError becomes the call's status and details."""
        try:
            refused = self.plane.check_auth(_metadata_auth(context)) if self.plane.auth else None
            if refused is not None:
                raise refused
            return answer()
        except HTTPError as e:
            e.__traceback__ = None
            await context.abort(grpc_status(e), str(e))

    # -- health (open, as /v2/health/* are) and metadata ----------------------------------------
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=self.plane.server_live)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.plane.server_ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return await self._call(context, lambda: pb.ModelReadyResponse(
            ready=self.plane.model_ready(request.name, request.version or None)))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return await self._call(context, lambda: ParseDict(
            self.plane.server_metadata(), pb.ServerMetadataResponse()))

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        plane = self.plane
        return await self._call(context, lambda: ParseDict(
            plane.model_metadata(plane.entry(request.name, request.version or None)),
            pb.ModelMetadataResponse()))

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        # Triton's JSON shape, read into the message (fields Triton has and ours lacks: ignored)
        plane = self.plane
        return await self._call(context, lambda: pb.ModelConfigResponse(config=ParseDict(
            plane.model_config(plane.entry(request.name, request.version or None)), pb.ModelConfig(),
            ignore_unknown_fields=True)))

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        plane = self.plane
        return await self._call(context, lambda: ParseDict(
            plane.statistics(request.name or None, request.version or None), pb.ModelStatisticsResponse(),
            ignore_unknown_fields=True))

    # -- inference ---------------------------------------------------------------------------
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        plane = self.plane
        started = time.perf_counter()
        plane.deliver_finished()  # answers first: they free queue places (as over HTTP)
        entry = None
        try:
            if plane.auth:
                refused = plane.check_auth(_metadata_auth(context))
                if refused is not None:
                    raise refused
            entry = plane.entry(request.model_name, request.model_version or None)
            plane.admit(entry)
            loop = asyncio.get_running_loop()
            max_elements = plane.config.max_bytes_elements
            if entry.decode_off_loop(request.ByteSize()):  # BYTES elements, or a large message
                infer = await loop.run_in_executor(plane.worker(), decode_request, request, entry.model,
                                                   max_elements)
            else:
                infer = decode_request(request, entry.model, max_elements)
            answer: asyncio.Future[dict[str, Any]] = loop.create_future()

            def done(outputs: dict[str, Any] | None, error: HTTPError | None) -> None:
                if answer.done():  # the client left
                    return
                if error is not None or outputs is None:
                    answer.set_exception(error or InternalError("no outputs"))
                else:
                    answer.set_result(outputs)

            plane.submit(entry, infer, started, done)
            outputs = await answer
            if entry.encode_off_loop(outputs):  # per-element work (strings, a large answer)
                response = await loop.run_in_executor(plane.worker(), encode_response, entry.model, infer,
                                                      outputs)
            else:
                response = encode_response(entry.model, infer, outputs)
        except asyncio.CancelledError:  # the client went away (or its deadline passed)
            plane.finish(entry, started, None, written=False)
            raise
        except HTTPError as e:
            e.__traceback__ = None
            plane.finish(entry, started, e)
            if self._access_log:
                self._log_call(request.model_name, started, e, 0)
            await context.abort(grpc_status(e), str(e))
            return None
        except Exception as e:  # a bug: INTERNAL, keep serving
            log.exception("error while answering a gRPC ModelInfer")
            error = InternalError(f"internal error: {type(e).__name__}: {e}")
            plane.finish(entry, started, error)
            if self._access_log:
                self._log_call(request.model_name, started, error, 0)
            await context.abort(grpc.StatusCode.INTERNAL, str(error))
            return None
        plane.finish(entry, started, None)
        if self._access_log:
            self._log_call(request.model_name, started, None, response.ByteSize())
        return response

    # -- the repository extension -------------------------------------------------------------
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        plane = self.plane
        return await self._call(context, lambda: ParseDict(
            {"models": plane.repository_index(request.ready)}, pb.RepositoryIndexResponse()))

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        return await self._repository(context, self.plane.require_model_control,
                                      lambda: self.plane.load(request.model_name, request.parameters),
                                      pb.RepositoryModelLoadResponse())

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        return await self._repository(context, self.plane.require_model_control,
                                      lambda: self.plane.unload(request.model_name),
                                      pb.RepositoryModelUnloadResponse())

    async def _repository(self, context: Any, check: Any, work: Any, response: Any) -> Any:
        """Auth and ``check()``, then await ``work()``; an HTTPError becomes the call's status."""
        await self._call(context, check)  # a refusal aborts the call here (grpc.aio raises)
        try:
            await work()
        except HTTPError as e:
            e.__traceback__ = None
            await context.abort(grpc_status(e), str(e))
        return response


async def start_grpc(plane: DataPlane, host: str, port: int) -> tuple[Any, int]:
    """Listen on ``host:port`` (0: any free port) and start serving; returns (server, port).
    Raises :class:`ConfigError` naming --grpc-port when the port cannot be had."""
    limit = plane.config.max_body_bytes
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", limit),
        ("grpc.so_reuseport", 0),  # a port in use is an error, not shared
    ])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane), server)
    server.add_generic_rpc_handlers((UnsupportedMethods(),))  # the calls not served: UNIMPLEMENTED
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
