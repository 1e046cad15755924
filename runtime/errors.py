"""The runtime's errors. Each knows its HTTP status and its gRPC status code; the HTTP front end
turns any of them into ``{"error": "<message>"}`` with that status, the gRPC front end into that
code with the message as details, so a handler only ever raises.

The gRPC codes (names of ``grpc.StatusCode``, kept as strings so this module needs no grpcio)
follow the usual HTTP mapping: 400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 404 NOT_FOUND,
405 UNIMPLEMENTED, 408/504 DEADLINE_EXCEEDED, 413 RESOURCE_EXHAUSTED, 503 UNAVAILABLE (loading,
draining) or RESOURCE_EXHAUSTED (shedding: queue or buffer full), 500 INTERNAL."""

from __future__ import annotations

import re

from inferstack.errors import InferstackError


class HTTPError(InferstackError):
    """An error answered over HTTP with :attr:`status_code` and ``{"error": message}``."""

    status_code = 500
    #: the gRPC status code's name (``grpc.StatusCode[grpc_code]``)
    grpc_code = "INTERNAL"
    #: failure reason label for the metrics (``inferstack_request_failures_total{reason=...}``)
    reason = "internal"
    #: extra response headers
    headers: tuple[tuple[str, str], ...] = ()


class BadRequest(HTTPError):
    grpc_code = "INVALID_ARGUMENT"
    status_code = 400
    reason = "bad_request"


class Unauthorized(HTTPError):
    grpc_code = "UNAUTHENTICATED"
    status_code = 401
    reason = "unauthorized"
    headers = (("www-authenticate", 'Bearer realm="inferstack"'),)


class NotFound(HTTPError):
    grpc_code = "NOT_FOUND"
    status_code = 404
    reason = "not_found"


class MethodNotAllowed(HTTPError):
    grpc_code = "UNIMPLEMENTED"
    status_code = 405
    reason = "method_not_allowed"

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message)
        self.headers = (("allow", allow),)


class PayloadTooLarge(HTTPError):
    grpc_code = "RESOURCE_EXHAUSTED"
    status_code = 413
    reason = "too_large"


class ModelFailed(HTTPError):
    """onnxruntime rejected an input that passed the signature checks (e.g. an index out of range).
    The message keeps onnxruntime's meaningful text, without its internal source locations."""

    grpc_code = "INVALID_ARGUMENT"
    status_code = 400
    reason = "model_rejected_input"

    def __init__(self, message: str) -> None:
        super().__init__(ort_message(message))


#: ``[ONNXRuntimeError] : 1 : FAIL : `` before onnxruntime's text
_ORT_PREFIX = re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : ")
#: a source location (``/onnxruntime_src/.../reshape_helper.h:84``), the C++ function after it and
#: the failed internal condition (``... was false.``) that ORT_ENFORCE adds before the message
_ORT_SOURCE = re.compile(
    r"\S*/[\w.+/-]+\.(?:h|hpp|cc|cpp|c|cu|cuh):\d+ (?:[\w:~<>]+\([^()]*\)(?: const)? )?(?:.*? was false\. )?"
)


def ort_message(text: str) -> str:
    """onnxruntime's error text for a client: without the error-code prefix, its build's source
    paths, C++ function names and internal conditions; on one line."""
    text = _ORT_SOURCE.sub("", _ORT_PREFIX.sub("", text))
    return " ".join(text.split())


class ServiceUnavailable(HTTPError):
    grpc_code = "UNAVAILABLE"
    status_code = 503
    reason = "unavailable"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.headers = (("retry-after", str(retry_after_s)),)


class QueueFull(ServiceUnavailable):
    grpc_code = "RESOURCE_EXHAUSTED"
    reason = "queue_full"


class ClientTimeout(HTTPError):
    """The client stopped sending a request (headers or body) for too long."""

    grpc_code = "DEADLINE_EXCEEDED"
    status_code = 408
    reason = "client_timeout"


class Overloaded(ServiceUnavailable):
    """The server holds as many request bytes as it may (--max-buffered-bytes)."""

    grpc_code = "RESOURCE_EXHAUSTED"
    reason = "buffer_full"


class RequestTimeout(HTTPError):
    grpc_code = "DEADLINE_EXCEEDED"
    status_code = 504
    reason = "timeout"


class InternalError(HTTPError):
    status_code = 500
    reason = "internal"


class ConfigError(InferstackError):
    """A setting (flag or environment variable) has a value the server cannot use."""

    status_code = 500


class ModelLoadError(InferstackError):
    """The model could not be fetched, verified or loaded; the server refuses to start."""

    status_code = 500
