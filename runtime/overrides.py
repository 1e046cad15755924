"""A load with a configuration (Triton's repository extension: the load request's ``config``
parameter, a model configuration in JSON, as ``tritonclient``'s ``load_model(name,
config='{"max_batch_size": 4}')`` sends it).

What this server can honour is the subset that changes how requests are merged, within what the
package was exported and checked for:

- ``max_batch_size``: 0 turns merging off; a positive value up to the package's own
  ``max_batch_size`` (or ``--max-batch-size`` when the operator set a larger one) is taken as
  ``--max-batch-size`` would be, so the batch-independence rules decide it as at the start; a
  larger one is refused (the warm-up and the checks run at that size: a client must not choose
  how much memory they take). Triton's JSON mapping of protobuf is accepted (``"16"`` for 16).
- every other field of Triton's model configuration that this server reports (``name``,
  ``platform``, ``backend``, ``input``, ``output``, ...) may be sent (a configuration read with
  ``get_model_config`` and sent back), but must equal what the newly loaded model reports;
  anything else is refused naming the field.

A configuration that is not a JSON object of Triton's model-configuration fields is refused
before anything is loaded; one that cannot be honoured is refused before the new model replaces
the old, which keeps serving. Each refusal is a :class:`BadRequest` (400 / INVALID_ARGUMENT); the
data plane prefixes it with ``failed to load 'name'``, Triton's wording, which its
``simple_{http,grpc}_model_control`` examples check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from google.protobuf.json_format import MessageToDict, ParseDict, ParseError
from inferstack.runtime.errors import BadRequest
from inferstack.runtime.proto import grpc_service_pb2 as pb

#: the ``config`` text may be at most this long (a whole model configuration is a few KiB)
MAX_CONFIG_CHARS = 1 << 20


@dataclass(frozen=True)
class Override:
    """A parsed ``config`` parameter: its fields (protobuf's JSON names) and the max batch size
    it asks for (None: not given)."""

    fields: dict[str, Any]
    max_batch_size: int | None


def parameter_text(value: Any) -> str:
    """A load parameter's value as text: a JSON string over HTTP; over gRPC a
    ``ModelRepositoryParameter`` (``string_param``, or ``bytes_param`` holding UTF-8)."""
    if isinstance(value, str):
        return value
    which = value.WhichOneof("parameter_choice") if hasattr(value, "WhichOneof") else None
    raw = getattr(value, which) if which else value
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the 'config' parameter is not UTF-8 text") from None
    if isinstance(raw, str):
        return raw
    raise BadRequest("the 'config' parameter must be a string holding a model configuration in JSON")


def parse_override(text: str, name: str) -> Override:
    """Check the ``config`` parameter's text for model ``name``; BadRequest naming what is wrong."""
    if len(text) > MAX_CONFIG_CHARS:
        raise BadRequest(f"the 'config' parameter is longer than {MAX_CONFIG_CHARS} characters")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"the 'config' parameter is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequest("the 'config' parameter must be a JSON object (a model configuration)")
    try:
        message = ParseDict(doc, pb.ModelConfig())
    except (ParseError, ValueError, TypeError, RecursionError) as e:
        detail = " ".join(str(e).split())  # (protobuf's text spans lines)
        raise BadRequest(
            f"the 'config' parameter is not a model configuration this server can honour: {detail}; "
            f"it may set 'max_batch_size' and repeat the fields GET /v2/models/{name}/config reports"
        ) from None
    fields = _as_dict(message, doc)
    if "name" in fields and fields["name"] != name:
        raise BadRequest(f"the 'config' parameter names model {fields['name']!r}, the load is of {name!r}")
    batch = fields.get("max_batch_size")
    return Override(fields, int(batch) if batch is not None else None)


def _as_dict(message: Any, given: dict[str, Any]) -> dict[str, Any]:
    """The fields ``given`` names, normalised through the message (``"16"`` -> 16, enum names)."""
    full = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return {key: _normal(full.get(key, _default(key))) for key in given}


def _default(key: str) -> Any:
    return 0 if key == "max_batch_size" else ""


def _normal(value: Any) -> Any:
    """Protobuf's JSON writes 64-bit integers as strings; compare them as numbers."""
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


def batch_limit(package_max: int, flag: int | None) -> int:
    """The largest ``max_batch_size`` an override may ask for: the package's, or ``--max-batch-size``
    when the operator set a larger one."""
    return max(package_max, flag or 0)


def check_limit(override: Override, package_max: int, flag: int | None) -> None:
    """Before loading: the asked ``max_batch_size`` is within :func:`batch_limit`."""
    wanted = override.max_batch_size
    if wanted is None:
        return
    limit = batch_limit(package_max, flag)
    if wanted < 0 or wanted > limit:
        raise BadRequest(
            f"the 'config' parameter's max_batch_size {wanted} is outside 0..{limit} (the package's "
            "max_batch_size, or --max-batch-size): an override may lower it or turn merging off "
            "(0); export the package with a larger --max-batch-size to raise it")


def check_honoured(override: Override, config: dict[str, Any], batch_decision: str) -> None:
    """After loading, before serving: every field the override sets equals what the new model's
    configuration (``config``, Triton's JSON shape) reports."""
    reported = _as_dict(ParseDict(config, pb.ModelConfig(), ignore_unknown_fields=True), override.fields)
    for key, value in override.fields.items():
        if reported[key] == value:
            continue
        if key == "max_batch_size":
            raise BadRequest(
                f"max_batch_size {value} cannot be honoured: merging is {batch_decision}")
        raise BadRequest(
            f"the 'config' parameter sets {key!r} to {json.dumps(value)}, which this server cannot "
            f"change (it serves {json.dumps(reported[key])}); only 'max_batch_size' may differ from "
            "the model's configuration")


__all__ = ["Override", "batch_limit", "check_honoured", "check_limit", "parameter_text", "parse_override"]
