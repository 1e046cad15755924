"""manifest.json: what a model package contains and how to check it.

A package is a directory::

    model.onnx            the graph (ONNX)
    model.onnx.data       external weights, when the model is large (optional)
    manifest.json         this module's subject

The manifest names every file with its sha256 and size, the input/output signature in v2
datatypes (``-1`` for dynamic dimensions), the largest batch the runtime may merge, and the
records of the tools that made it (parity, optimization). ``digest`` is the package's content
hash: a changed model has a new digest, so the stacks roll it out under a new object prefix.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from inferstack.errors import ChecksumMismatch, ManifestError

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
_CHUNK = 1 << 20


@dataclass
class TensorSpec:
    name: str
    datatype: str  # v2 name, e.g. "FP32"
    shape: list[int]  # -1 for a dynamic dimension


@dataclass
class FileEntry:
    path: str  # relative, forward slashes
    sha256: str
    bytes: int


@dataclass
class Manifest:
    name: str
    version: str
    model_file: str
    files: list[FileEntry]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int
    opset: int | None = None
    exporter: str | None = None  # "dynamo" | "torchscript": the torch.onnx exporter that wrote the graph
    producer: dict[str, str | None] = field(default_factory=dict)
    parity: dict[str, Any] | None = None
    optimization: dict[str, Any] | None = None
    source: dict[str, Any] | None = None
    created: str = field(default_factory=lambda: utc_now())
    digest: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.digest:
            self.digest = package_digest(self.files)

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        order = [
            "schema_version", "name", "version", "created", "model_file", "digest", "files",
            "inputs", "outputs", "max_batch_size", "opset", "exporter", "producer", "parity", "optimization",
            "source",
        ]
        return {k: data[k] for k in order}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = MANIFEST_NAME) -> Manifest:
        validate(data, where)
        m = cls(
            name=data["name"],
            version=data["version"],
            created=data["created"],
            model_file=data["model_file"],
            files=[FileEntry(**f) for f in data["files"]],
            inputs=[TensorSpec(**t) for t in data["inputs"]],
            outputs=[TensorSpec(**t) for t in data["outputs"]],
            max_batch_size=data["max_batch_size"],
            opset=data.get("opset"),
            exporter=data.get("exporter"),
            producer=data.get("producer") or {},
            parity=data.get("parity"),
            optimization=data.get("optimization"),
            source=data.get("source"),
            digest=data["digest"],
        )
        expected = package_digest(m.files)
        if m.digest != expected:
            raise ManifestError(
                f"{where}: digest {m.digest} does not match its files list (expected {expected})"
            )
        if m.model_file not in {f.path for f in m.files}:
            raise ManifestError(f"{where}: model_file {m.model_file!r} is not listed in files")
        return m

    def file(self, path: str) -> FileEntry:
        for f in self.files:
            if f.path == path:
                return f
        raise ManifestError(f"{MANIFEST_NAME}: no file {path!r} in the package")


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def package_digest(files: list[FileEntry]) -> str:
    """The content hash of a package: sha256 over its sorted ``path\\0sha256\\n`` lines."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.sha256}\n".encode())
    return h.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_entries(root: str | os.PathLike[str], paths: list[str]) -> list[FileEntry]:
    """Hash the given package-relative files under ``root``."""
    base = Path(root)
    return [
        FileEntry(path=p, sha256=sha256_file(base / p), bytes=(base / p).stat().st_size)
        for p in sorted(paths)
    ]


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    text = resources.files("inferstack").joinpath("manifest.schema.json").read_text()
    return json.loads(text)


def validate(data: Any, where: str = MANIFEST_NAME) -> None:
    """Check a manifest document against the JSON Schema; the error names the field."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        e = errors[0]
        # "null or an object like this" (anyOf): report what is wrong inside the object
        while e.context:
            e = max(e.context, key=lambda c: len(c.absolute_path))
        loc = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        message = e.message if len(e.message) <= 200 else e.message[:200] + "..."
        raise ManifestError(f"{where}: invalid at {loc}: {message}")


def load_manifest(package_dir: str | os.PathLike[str]) -> Manifest:
    path = Path(package_dir) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: not found (is {package_dir} a model package?)") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON: {e}") from None
    return Manifest.from_dict(data, where=str(path))


def write_manifest(package_dir: str | os.PathLike[str], manifest: Manifest) -> Path:
    """Write manifest.json atomically (temporary file, then rename)."""
    data = manifest.to_dict()
    validate(data)
    path = Path(package_dir) / MANIFEST_NAME
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the runtime and the uploader read it
    os.replace(tmp, path)
    return path


def verify_files(package_dir: str | os.PathLike[str], manifest: Manifest) -> None:
    """Check that every listed file exists with its size and sha256; raise on the first mismatch."""
    base = Path(package_dir)
    for f in manifest.files:
        p = base / f.path
        if not p.is_file():
            raise ManifestError(f"{p}: listed in {MANIFEST_NAME} but missing")
        size = p.stat().st_size
        if size != f.bytes:
            raise ManifestError(f"{p}: size {size} bytes, {MANIFEST_NAME} says {f.bytes}")
        actual = sha256_file(p)
        if actual != f.sha256:
            raise ChecksumMismatch(str(p), f.sha256, actual)
