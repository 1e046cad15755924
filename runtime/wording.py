"""Refusals that Triton's clients recognise by their text, worded as Triton words them (its
client examples check these phrases: ``simple_http_infer_client``, ``simple_grpc_model_control``,
``grpc_explicit_int8_content_client`` ...), each followed by what helps a user of this server.

The status codes stay those of the Open Inference Protocol's resources: an unknown model or
version is 404 / NOT_FOUND (the protocol asks only for an error status, "usually 400"; 404 is the
exact one, and KServe's own model server answers it; Triton answers 400 for some of these), a
malformed version string 400 / INVALID_ARGUMENT, as in Triton.
"""

from __future__ import annotations

from collections.abc import Iterable

from inferstack.runtime.errors import BadRequest, NotFound


def check_version(version: str) -> None:
    """A model version as a request names it (URL ``/versions/{v}`` or gRPC ``model_version``):
    a non-negative decimal integer. Else :class:`BadRequest` with Triton's text (which Triton
    writes after ``std::stol`` fails: ``failed to get model version from specified version string
    'x' (details: stol), ...``; a sign, spaces and trailing characters, which ``std::stol``
    would skip or accept, are refused here)."""
    if version.isascii() and version.isdigit():
        return
    if version.startswith("-") and version[1:].isascii() and version[1:].isdigit():
        raise BadRequest(
            f"invalid model version specified {version!r} , version should be an integral value > 0")
    raise BadRequest(
        f"failed to get model version from specified version string {version!r} (details: not a "
        "decimal integer), version should be an integral value > 0")


def unknown_model(name: str, served: Iterable[str]) -> NotFound:
    """Triton's ``Request for unknown model: 'x' is not found``, then the names served."""
    names = ", ".join(repr(n) for n in sorted(served)) or "none"
    return NotFound(f"Request for unknown model: {name!r} is not found; this server serves {names}")


def unknown_version(name: str, version: str, available: str) -> NotFound:
    """Triton's ``Request for unknown model: 'x' version 2 is not found``, then the version served."""
    return NotFound(
        f"Request for unknown model: {name!r} version {version} is not found; available: {available!r}")


def unknown_package(name: str, loadable: Iterable[str]) -> NotFound:
    """A load of a name the repository does not hold, with Triton's ``failed to load 'x', failed
    to poll from model repository``, then the names it holds."""
    names = ", ".join(repr(n) for n in sorted(loadable)) or "none"
    return NotFound(
        f"failed to load {name!r}, failed to poll from model repository: no model {name!r} in the "
        f"model repository; it holds {names}")


def mixed_contents(input_name: str, model_name: str) -> str:
    """A gRPC request with ``raw_input_contents`` and typed ``contents`` for an input (Triton's
    text, which ``grpc_explicit_int_content_client`` checks), then what to do."""
    return (f"contents field must not be specified when using raw_input_contents for {input_name!r} "
            f"for model {model_name!r}; send every input raw or every input as typed contents")


__all__ = ["check_version", "mixed_contents", "unknown_model", "unknown_package", "unknown_version"]
