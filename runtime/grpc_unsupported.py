"""The calls of Triton's ``inference.GRPCInferenceService`` this server does not serve, answered
``UNIMPLEMENTED`` with a message naming the extension (grpcio's own answer to a method it does
not know is ``UNIMPLEMENTED`` "Method not found!", which tells a user nothing):

=========================================================  ===================================
``SystemSharedMemory{Status,Register,Unregister}``          system shared memory extension
``CudaSharedMemory{Status,Register,Unregister}``            CUDA shared memory extension
``TraceSetting``                                            trace extension
``LogSettings``                                             logging extension
``ModelStreamInfer``                                        streaming (decoupled) inference
any other method                                            named as not part of the service
=========================================================  ===================================

A generic handler is asked only for methods the servicer does not implement, so the served calls
are untouched. The answer comes before any request message is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

SERVICE = "/inference.GRPCInferenceService/"
_WHAT = {
    "SystemSharedMemoryStatus": "the system shared memory extension",
    "SystemSharedMemoryRegister": "the system shared memory extension",
    "SystemSharedMemoryUnregister": "the system shared memory extension",
    "CudaSharedMemoryStatus": "the CUDA shared memory extension",
    "CudaSharedMemoryRegister": "the CUDA shared memory extension",
    "CudaSharedMemoryUnregister": "the CUDA shared memory extension",
    "TraceSetting": "the trace extension",
    "LogSettings": "the logging extension",
    "ModelStreamInfer": "streaming inference",
}
_INSTEAD = {
    "the system shared memory extension": "send tensors in the request (raw_input_contents)",
    "the CUDA shared memory extension": "send tensors in the request (raw_input_contents)",
    "streaming inference": "call ModelInfer once per request",
}


def unsupported_message(method: str) -> str:
    """The details of the answer to ``method`` (a full path, ``/package.Service/Method``)."""
    if method.startswith(SERVICE):
        name = method[len(SERVICE):]
        what = _WHAT.get(name)
        if what is not None:
            instead = _INSTEAD.get(what)
            return (f"{what} ({name}) is not supported by this server"
                    + (f"; {instead}" if instead else ""))
    return f"method {method} is not served (it is not a call of this server's inference.GRPCInferenceService)"


class UnsupportedMethods(grpc.GenericRpcHandler):
    """Answers every method the servicer lacks with ``UNIMPLEMENTED`` and
    :func:`unsupported_message`; a stream handler, so unary and streaming calls alike get it."""

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler:
        message = unsupported_message(handler_call_details.method)

        def refuse(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
            yield b""  # (never reached: abort raises; makes this a generator)

        return grpc.stream_stream_rpc_method_handler(refuse)


__all__ = ["UnsupportedMethods", "unsupported_message"]
