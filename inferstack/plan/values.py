"""Turn the property values a program sends to the engine into plain, stable JSON.

Secrets become ``"<secret>"``; file assets and archives become their path (relative to the
project) and a content hash; references to other resources become their URN; whole numbers stay
whole. Keys are sorted when the snapshot is written.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from google.protobuf import json_format, struct_pb2
from pulumi.runtime import rpc

SECRET = "<secret>"
UNKNOWN = "<unknown>"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tree_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(b"\0")
        digest.update(_file_sha256(path).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _mask(value: Any) -> Any:
    """Hide a secret's values but keep its shape (a Secret's ``stringData`` stays a map)."""
    if isinstance(value, dict) and rpc._special_sig_key not in value:
        return {str(k): _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return SECRET


class ValueConverter:
    """Converts engine property structs; paths are shown relative to ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _rel(self, path: str) -> tuple[str, Path]:
        p = Path(path)
        full = p if p.is_absolute() else self.root / p
        try:
            shown = full.resolve().relative_to(self.root).as_posix()
        except ValueError:
            shown = os.path.relpath(full.resolve(), self.root)
        return shown, full

    def _asset(self, value: dict[str, Any]) -> dict[str, Any]:
        if "path" in value:
            shown, full = self._rel(str(value["path"]))
            if full.is_file():
                return {"file": shown, "sha256": _file_sha256(full)}
            if full.is_dir():
                return {"folder": shown, "sha256": _tree_sha256(full)}
            return {"file": shown, "sha256": "<missing>"}
        if "text" in value:
            return {"text_sha256": hashlib.sha256(str(value["text"]).encode()).hexdigest()}
        if "uri" in value:
            return {"uri": value["uri"]}
        if "assets" in value:
            return {"assets": {k: self.plain(v) for k, v in sorted(value["assets"].items())}}
        return {"asset": "<unrecognised>"}

    def plain(self, value: Any) -> Any:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return UNKNOWN if value == rpc.UNKNOWN else value
        if isinstance(value, list):
            return [self.plain(v) for v in value]
        if isinstance(value, dict):
            sig = value.get(rpc._special_sig_key)
            if sig == rpc._special_secret_sig:
                return _mask(value.get("value"))
            if sig in (rpc._special_asset_sig, rpc._special_archive_sig):
                return self._asset(value)
            if sig == rpc._special_resource_sig:
                return str(value.get("urn", UNKNOWN))
            if sig == rpc._special_output_value_sig:
                if value.get("secret"):
                    return SECRET
                return self.plain(value["value"]) if "value" in value else UNKNOWN
            return {str(k): self.plain(v) for k, v in value.items()}
        return value

    def struct(self, message: struct_pb2.Struct) -> dict[str, Any]:
        result = self.plain(json_format.MessageToDict(message))
        assert isinstance(result, dict)
        return result
