"""manifest.json: what a model package contains and how to check it.

A package is a directory::

    model.onnx            the graph (ONNX)
    model.onnx.data       external weights, when the model is large (optional)
    manifest.json         this module's subject

The manifest names every file with its sha256 and size, the input/output signature in v2
datatypes (``-1`` for dynamic dimensions), the largest batch the runtime may merge and the
batch-independence check that decided it (``batch_check``, see :mod:`inferstack.batchcheck`), and
the records of the tools that made it (the exporter, parity, optimization). ``digest`` is the hash
of the files alone. The manifest holds no time and no path of the machine that wrote it, so the same model
exported twice gives the same manifest.json, byte for byte; the stacks upload a package under the
sha256 of its manifest.json (see ``ModelArtifact``), which changes exactly when a file or a setting
the runtime reads changes. ``created`` is accepted in manifests written by older versions and never
written now.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from inferstack.errors import ChecksumMismatch, ManifestError

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
_CHUNK = 1 << 20
#: a manifest.json is a few KB; more is not a manifest (and is not read)
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
#: a manifest nests 5 levels; deeper is not a manifest (and would exhaust the parser's stack)
_MAX_MANIFEST_DEPTH = 32


#: an image input's layout (Triton's model configuration ``format``: ``FORMAT_NCHW`` ...)
INPUT_FORMATS = ("NCHW", "NHWC")


@dataclass
class TensorSpec:
    name: str
    datatype: str  # v2 name, e.g. "FP32"
    shape: list[int]  # -1 for a dynamic dimension
    format: str | None = None  # inputs only: "NCHW" or "NHWC" (INPUT_FORMATS); written only when set


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
    batch_check: dict[str, Any] | None = None  # inferstack.batchcheck.BatchCheck.to_dict()
    exporter: str | None = None  # "dynamo" | "torchscript": the torch.onnx exporter that wrote the graph
    producer: dict[str, str | None] = field(default_factory=dict)
    parity: dict[str, Any] | None = None
    optimization: dict[str, Any] | None = None
    source: dict[str, Any] | None = None
    created: str | None = None  # only in manifests of older versions: a time would make re-exports differ
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
            "inputs", "outputs", "max_batch_size", "batch_check", "opset", "exporter", "producer",
            "parity", "optimization", "source",
        ]
        # created (older manifests only), batch_check and exporter only when there is one: manifests
        # written without them stay byte-identical
        optional = ("created", "batch_check", "exporter")
        for key in ("inputs", "outputs"):  # an input's format only when it has one (same bytes as before)
            data[key] = [{k: v for k, v in t.items() if k != "format" or v is not None} for t in data[key]]
        return {k: data[k] for k in order if k not in optional or data[k] is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = MANIFEST_NAME) -> Manifest:
        validate(data, where)
        m = cls(
            name=data["name"],
            version=data["version"],
            created=data.get("created"),
            model_file=data["model_file"],
            files=[FileEntry(**f) for f in data["files"]],
            inputs=[TensorSpec(**t) for t in data["inputs"]],
            outputs=[TensorSpec(**t) for t in data["outputs"]],
            max_batch_size=data["max_batch_size"],
            opset=data.get("opset"),
            batch_check=data.get("batch_check"),
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
        check_listed_paths([f.path for f in m.files], where)
        check_formats(m, where)
        if m.model_file not in {f.path for f in m.files}:
            raise ManifestError(f"{where}: model_file {m.model_file!r} is not listed in files")
        return m

    def file(self, path: str) -> FileEntry:
        for f in self.files:
            if f.path == path:
                return f
        raise ManifestError(f"{MANIFEST_NAME}: no file {path!r} in the package")


def check_formats(m: Manifest, where: str = MANIFEST_NAME) -> None:
    """An input ``format`` (NCHW/NHWC) describes an image: three dimensions besides the batch
    axis (rank 4, or rank 3 for a model without batching); outputs have none."""
    for t in m.outputs:
        if t.format is not None:
            raise ManifestError(f"{where}: output {t.name!r} has a format; only inputs have one")
    for t in m.inputs:
        if t.format is not None and len(t.shape) not in (3, 4):
            raise ManifestError(
                f"{where}: input {t.name!r} has format {t.format} but shape {t.shape}: an image input "
                "has 3 dimensions besides the batch axis (C, H, W in some order)")


def plain_path_problem(path: str) -> str | None:
    """Why ``path`` is not a plain relative POSIX file path (None when it is one): a package path
    is read the same way on every platform and by every reader (onnxruntime opens an external data
    location literally, so ``sub\\w.bin`` on Linux is one file named with a backslash)."""
    if not path:
        return "is empty"
    if "\\" in path:
        return "contains a backslash (use '/')"
    if "\0" in path:
        return "contains a NUL byte"
    if path.startswith("/") or PureWindowsPath(path).drive:
        return "is outside the package"
    if path.endswith("/"):
        return "ends with '/' (a folder, not a file)"
    parts = path.split("/")
    if "" in parts:
        return "has an empty segment ('//')"
    if ".." in parts:
        return "is outside the package"
    if "." in parts:
        return "contains a '.' segment"
    return None


def check_listed_paths(paths: list[str], where: str = MANIFEST_NAME) -> None:
    """Refuse a files list with a path that is not a plain relative file path (see
    :func:`plain_path_problem`), a path listed twice, or one that is both a file and the folder of
    another (``a`` and ``a/b``): no reader could place both."""
    seen: set[str] = set()
    for path in paths:
        problem = plain_path_problem(path)
        if problem:
            raise ManifestError(f"{where}: file path {path!r} {problem}; refused")
        if path in seen:
            raise ManifestError(f"{where}: file path {path!r} is listed twice")
        seen.add(path)
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            if folder in seen:
                raise ManifestError(
                    f"{where}: {folder!r} is listed as a file and as the folder of {path!r}; refused"
                )


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


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON document (iterative: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def load_manifest(package_dir: str | os.PathLike[str]) -> Manifest:
    """Read and validate ``manifest.json``; every problem is a :class:`ManifestError` naming the
    file: missing, over ``MAX_MANIFEST_BYTES``, not UTF-8, not JSON, nested too deeply, invalid."""
    path = Path(package_dir) / MANIFEST_NAME
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise ManifestError(f"{path}: not found (is {package_dir} a model package?)") from None
    except OSError as e:
        raise ManifestError(f"{path}: cannot be read ({e.strerror or e})") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes; not a manifest")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON: {e}") from None
    except RecursionError:
        data = None  # nested past the parser's own limit
    if data is None or _depth(data) > _MAX_MANIFEST_DEPTH:
        raise ManifestError(f"{path}: nested more than {_MAX_MANIFEST_DEPTH} levels deep; not a manifest")
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


def external_data_locations(model_path: str | os.PathLike[str]) -> list[str]:
    """The files an ONNX model loads as external data: the ``location`` of every tensor whose
    ``data_location`` is EXTERNAL (initializers, sparse initializers, node attributes, subgraphs and
    functions), read from the graph without loading any weights. Sorted, without repeats.

    Raises :class:`ManifestError` when the file is not an ONNX model."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as e:
        raise ManifestError(f"{model_path}: not an ONNX model ({e})") from None
    locations: set[str] = set()

    def tensors_of(attributes: Any) -> Any:
        for a in attributes:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            for sparse in ([a.sparse_tensor] if a.HasField("sparse_tensor") else []) + list(a.sparse_tensors):
                yield from (sparse.values, sparse.indices)
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from tensors_of_graph(g)

    def tensors_of_graph(graph: Any) -> Any:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        for node in graph.node:
            yield from tensors_of(node.attribute)

    functions = [t for f in model.functions for node in f.node for t in tensors_of(node.attribute)]
    for tensor in [*tensors_of_graph(model.graph), *functions]:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in tensor.external_data}
            locations.add(entries.get("location", ""))
    return sorted(locations)


def check_external_data(package_dir: str | os.PathLike[str], manifest: Manifest) -> None:
    """Refuse a package whose model loads a file the manifest does not list (and so does not hash),
    or one outside the package (an absolute path, ``..``). Call after :func:`verify_files`: the
    graph it reads is then the hashed one."""
    base = Path(package_dir)
    model = base / manifest.model_file
    listed = {f.path for f in manifest.files}
    folder = PurePosixPath(manifest.model_file).parent
    try:
        locations = external_data_locations(model)
    except ManifestError:
        return  # a graph that does not parse loads nothing: the ONNX check (or onnxruntime) names it
    for location in locations:
        # onnxruntime opens the location as given (on Linux a backslash is part of a file name), so
        # only a plain relative POSIX path can be matched to a listed file
        problem = plain_path_problem(location)
        if problem:
            raise ManifestError(f"{model}: external data location {location!r} {problem}; refused")
        path = (folder / location).as_posix()
        if path not in listed:
            raise ManifestError(
                f"{model}: loads external data {path!r}, which {MANIFEST_NAME} does not list "
                "(every file the model reads must be listed with its sha256)"
            )
