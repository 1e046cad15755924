"""``inferstack verify``: hashes, ONNX, onnxruntime, signature and parity, as a pass/fail table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from modeltools_helpers import assert_one_line_error, read_manifest, run_cli

from inferstack.manifest import Manifest, file_entries, load_manifest, write_manifest


def test_a_fresh_package_passes_every_check(tiny_pkg: Path, models_file: Path) -> None:
    r = run_cli("verify", tiny_pkg, "--source", f"{models_file}:tiny")
    assert r.exit_code == 0, r.stdout + r.stderr
    for check in ("manifest", "files", "onnx", "signature", "onnxruntime", "parity"):
        row = next(ln for ln in r.stdout.splitlines() if f" {check} " in ln)
        assert "pass" in row, row
    assert "batches [1, 2, 8]" in r.stdout
    assert "all checks passed" in r.stdout


def test_without_source_parity_is_skipped_not_passed(tiny_pkg: Path) -> None:
    r = run_cli("verify", tiny_pkg)
    assert r.exit_code == 0
    row = next(ln for ln in r.stdout.splitlines() if " parity " in ln)
    assert "skip" in row and "no --source" in row


def test_parity_against_a_different_model_fails(tiny_pkg: Path, models_file: Path) -> None:
    # the same architecture with other weights: loads fine, computes something else
    r = run_cli("verify", tiny_pkg, "--source", f"{models_file}:diverges")
    assert r.exit_code == 1
    assert "FAIL" in r.stdout
    assert_one_line_error(r, "parity failed")


def test_wrong_hash_is_named_with_both_hashes(tiny_pkg: Path, copy_pkg) -> None:
    pkg = copy_pkg(tiny_pkg)
    model = pkg / "model.onnx"
    raw = bytearray(model.read_bytes())
    raw[-1] ^= 0xFF
    model.write_bytes(bytes(raw))
    recorded = read_manifest(pkg)["files"][0]["sha256"]
    r = run_cli("verify", pkg)
    line = assert_one_line_error(r, "files failed", "checksum mismatch for", "model.onnx", recorded)
    assert line
    row = next(ln for ln in r.stdout.splitlines() if " files " in ln)
    assert "FAIL" in row


def test_corrupted_onnx_with_a_matching_manifest_is_caught(tiny_pkg: Path, copy_pkg) -> None:
    pkg = copy_pkg(tiny_pkg)
    (pkg / "model.onnx").write_bytes(b"\x08\x07garbage that is not a protobuf graph" * 3)
    m = load_manifest(pkg)
    fixed = Manifest(**{**m.__dict__, "files": file_entries(pkg, ["model.onnx"]), "digest": ""})
    write_manifest(pkg, fixed)
    r = run_cli("verify", pkg)
    assert_one_line_error(r, "onnx failed", "not a valid ONNX model")


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda d: d.update(max_batch_size=-3), "invalid at max_batch_size"),
        (lambda d: d["parity"].pop("passed"), "invalid at parity"),
        (lambda d: d["parity"].update(batches=[]), "invalid at parity/batches"),
        (lambda d: d["inputs"][0].update(datatype="FLOAT"), "invalid at inputs/0/datatype"),
        (lambda d: d.update(optimization={"chosen": "int8-static"}), "invalid at optimization"),
        (lambda d: d["inputs"][0].update(format="CHW"), "invalid at inputs/0/format"),
        (lambda d: d["inputs"][0].update(format="NCHW"), "input 'x' has format NCHW but shape [-1, 16]"),
        (lambda d: d["outputs"][0].update(format="NHWC"), "output 'logits' has a format; only inputs"),
    ],
)
def test_manifest_that_breaks_the_schema_names_the_field(
    tiny_pkg: Path, copy_pkg, damage, needle: str
) -> None:
    pkg = copy_pkg(tiny_pkg)
    data = read_manifest(pkg)
    damage(data)
    (pkg / "manifest.json").write_text(json.dumps(data))
    r = run_cli("verify", pkg)
    assert_one_line_error(r, "manifest failed", needle)


def test_missing_package_is_one_line(tmp_path: Path) -> None:
    r = run_cli("verify", tmp_path / "nope")
    assert_one_line_error(r, "nope: no such package directory")
