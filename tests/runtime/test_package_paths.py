"""Package paths are plain relative POSIX file paths, matched exactly: an external data location
with a backslash, ``..``, a drive or an empty segment is refused (serve and verify), and a files
list whose paths collide (``a`` and ``a/b``) or name a folder (``.``, ``sub/``) is one line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from runtime_harness import save_graph

from inferstack.errors import InferstackError
from inferstack.manifest import FileEntry, package_digest


def _package_with_location(pkg: Path, location: str) -> Path:
    """Add(x, w) with ``w`` read from external data at ``location``; the manifest lists and hashes
    ``sub/w.bin`` (ones), and a file literally named ``sub\\w.bin`` (1000s) is listed nowhere."""
    import onnx
    from onnx import TensorProto, helper

    from inferstack.manifest import Manifest, TensorSpec, file_entries, write_manifest

    (pkg / "sub").mkdir(parents=True)
    (pkg / "sub" / "w.bin").write_bytes(np.full(4, 1.0, np.float32).tobytes())
    (pkg / "sub\\w.bin").write_bytes(np.full(4, 1000.0, np.float32).tobytes())
    w = onnx.TensorProto()
    w.name, w.data_type = "w", TensorProto.FLOAT
    w.dims.extend([4])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        entry = w.external_data.add()
        entry.key, entry.value = k, v
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[w],
    )
    save_graph(graph, pkg / "model.onnx")
    write_manifest(
        pkg,
        Manifest(
            name="bs",
            version="1",
            model_file="model.onnx",
            files=file_entries(pkg, ["model.onnx", "sub/w.bin"]),
            inputs=[TensorSpec("x", "FP32", [-1, 4])],
            outputs=[TensorSpec("y", "FP32", [-1, 4])],
            max_batch_size=8,
        ),
    )
    return pkg


def test_a_backslash_location_is_refused_by_serve_and_verify(serve, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from inferstack.cli import app

    pkg = _package_with_location(tmp_path / "pkg", "sub\\w.bin")
    s = serve(pkg, wait_ready=False)
    assert s.wait_exit() == 1, s.log()
    assert "external data location 'sub\\\\w.bin' contains a backslash" in s.log(), s.log()
    assert "Traceback" not in s.log() and "ready:" not in s.log()
    r = CliRunner().invoke(app, ["verify", str(pkg)], env={"COLUMNS": "200"})
    assert r.exit_code == 1, r.stdout
    assert "backslash" in r.stdout + r.stderr and "Traceback" not in r.stdout + r.stderr


def test_the_same_package_with_a_plain_location_serves_the_hashed_weights(serve, tmp_path: Path) -> None:
    import httpx

    pkg = _package_with_location(tmp_path / "pkg", "sub/w.bin")
    s = serve(pkg)
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]}
    r = httpx.post(f"{s.url}/v2/models/bs/infer", json=doc)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [1.0] * 4, r.text


@pytest.mark.parametrize(
    ("location", "problem"),
    [
        ("C:/w.bin", "is outside the package"),
        ("sub//w.bin", "empty segment"),
        ("sub/./w.bin", "'.' segment"),
        ("sub/../sub/w.bin", "is outside the package"),
    ],
)
def test_other_unplain_locations_are_refused(tmp_path: Path, location: str, problem: str) -> None:
    from inferstack.runtime.errors import ModelLoadError
    from inferstack.runtime.source import resolve

    pkg = _package_with_location(tmp_path / "pkg", location)
    with pytest.raises(ModelLoadError, match=problem):
        resolve(str(pkg), tmp_path / "cache")


def _remote(tmp_path: Path, extra: dict[str, bytes]) -> Any:
    from inferstack.runtime import source

    objects = {"model.onnx": b"not onnx", **extra}
    files = [
        {"path": p, "sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)} for p, b in objects.items()
    ]
    manifest = {
        "schema_version": 1,
        "name": "m",
        "version": "1",
        "model_file": "model.onnx",
        "digest": package_digest([FileEntry(**f) for f in files]),
        "files": files,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 8]}],
        "max_batch_size": 8,
    }
    objects["manifest.json"] = json.dumps(manifest).encode()

    def fetch(rel: str, dest: Path, budget: Any) -> None:
        dest.write_bytes(objects[rel])

    return source._remote("s3://bucket/pkg", tmp_path / "cache", fetch)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"a": b"x", "a/b": b"x"}, "'a' is listed as a file and as the folder of 'a/b'"),
        ({"a/b": b"x", "a": b"x"}, "'a' is listed as a file and as the folder of 'a/b'"),
        ({".": b"x"}, "file path '.' contains a '.' segment"),
        ({"sub/": b"x"}, "file path 'sub/' ends with '/'"),
    ],
)
def test_remote_listed_paths_are_checked_once_with_one_line(
    tmp_path: Path, extra: dict[str, bytes], message: str
) -> None:
    with pytest.raises(InferstackError) as info:
        _remote(tmp_path, extra)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not list((tmp_path / "cache").rglob(".part-*"))  # nothing written into the cache root
