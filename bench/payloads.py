"""Request bodies for one inference of batch 1: the v2 JSON form and the binary tensor extension."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Body:
    path: Path
    content_type: str
    header_length: int | None  # Inference-Header-Content-Length; None for a JSON body


def json_body(input_name: str, array: np.ndarray, output_name: str) -> bytes:
    doc = {
        "inputs": [
            {
                "name": input_name,
                "shape": list(array.shape),
                "datatype": "FP32",
                # each float32 value printed as the double it equals: every server parses exactly
                # the numbers of the binary body
                "data": array.astype(np.float32).ravel().tolist(),
            }
        ],
        "outputs": [{"name": output_name}],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def binary_body(input_name: str, array: np.ndarray, output_name: str) -> tuple[bytes, int]:
    raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
    header = {
        "inputs": [
            {
                "name": input_name,
                "shape": list(array.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "outputs": [{"name": output_name, "parameters": {"binary_data": True}}],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + raw, len(head)


def write_bodies(directory: Path, input_name: str, array: np.ndarray, output_name: str) -> dict[str, Body]:
    directory.mkdir(parents=True, exist_ok=True)
    j = directory / "request.json"
    j.write_bytes(json_body(input_name, array, output_name))
    data, head_len = binary_body(input_name, array, output_name)
    b = directory / "request.bin"
    b.write_bytes(data)
    return {
        "json": Body(j, "application/json", None),
        "binary": Body(b, "application/octet-stream", head_len),
    }


def decode_response(body: bytes, header_length: int | None, output_name: str) -> np.ndarray:
    """The named output of a v2 infer response (JSON or binary extension) as float32."""
    head = body if header_length is None else body[:header_length]
    doc = json.loads(head)
    offset = header_length or 0
    for out in doc["outputs"]:
        params = out.get("parameters") or {}
        size = params.get("binary_data_size")
        if out["name"] == output_name:
            if size is not None:
                raw = body[offset : offset + size]
                return np.frombuffer(raw, dtype="<f4").reshape(out["shape"])
            return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
        if size is not None:
            offset += size
    raise ValueError(f"response has no output {output_name!r}: {head[:200]!r}")
