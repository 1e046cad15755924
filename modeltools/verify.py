"""``inferstack verify``: re-check a package the way the runtime will use it, and say what passed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferstack.modeltools import batching, loading, parity
from inferstack.modeltools._ort import session_options
from inferstack.modeltools._text import first_line
from inferstack.modeltools.loading import Source
from inferstack.modeltools.spec import parse_inputs

from inferstack import datatypes
from inferstack.errors import InferstackError
from inferstack.manifest import Manifest, check_external_data, load_manifest, verify_files

#: Variants whose numerics equal the exported graph's (graph rewrites only).
LOSSLESS = {"reference", "ort-basic", "ort-extended", "ort-all"}


@dataclass
class Check:
    name: str
    status: str  # pass | fail | skip
    detail: str


def _smoke_inputs(manifest: Manifest) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {}
    for t in manifest.inputs:
        shape = [1 if d == -1 else d for d in t.shape]
        dt = datatypes.by_v2(t.datatype).numpy
        arrays[t.name] = (
            rng.standard_normal(shape).astype(dt) if dt.kind == "f" else np.zeros(shape, dtype=dt)
        )
    return arrays


def _check_session(package: Path, manifest: Manifest) -> list[Check]:
    import onnx
    import onnxruntime as ort

    path = package / manifest.model_file
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:
        return [
            Check("onnx", "fail", f"{path}: not a valid ONNX model ({first_line(e, with_type=False)})"),
            Check("onnxruntime", "skip", "the ONNX check failed"),
        ]
    checks = [Check("onnx", "pass", f"onnx.checker accepts {manifest.model_file} (opset {manifest.opset})")]
    options = session_options(1)
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        return [
            *checks,
            Check(
                "onnxruntime",
                "fail",
                f"{path}: onnxruntime cannot load it ({first_line(e, with_type=False)})",
            ),
        ]
    problems = []
    for kind, declared, actual in (
        ("input", manifest.inputs, session.get_inputs()),
        ("output", manifest.outputs, session.get_outputs()),
    ):
        got = [(a.name, datatypes.by_ort(a.type).v2) for a in actual]
        want = [(t.name, t.datatype) for t in declared]
        if got != want:
            problems.append(f"{kind}s are {got}, manifest says {want}")
    if problems:
        return [*checks, Check("signature", "fail", "; ".join(problems))]
    try:
        results = session.run(None, _smoke_inputs(manifest))
    except Exception as e:
        detail = f"inference at batch 1 failed ({first_line(e, with_type=False)})"
        return [*checks, Check("onnxruntime", "fail", detail)]
    for spec, value in zip(manifest.outputs, results, strict=True):
        if len(spec.shape) != value.ndim or any(
            d not in (-1, v) for d, v in zip(spec.shape, value.shape, strict=True)
        ):
            return [
                *checks,
                Check(
                    "signature",
                    "fail",
                    f"output {spec.name} has shape {list(value.shape)}, manifest says {spec.shape}",
                ),
            ]
    return [
        *checks,
        Check(
            "signature",
            "pass",
            f"{len(manifest.inputs)} input(s), {len(manifest.outputs)} output(s) as declared",
        ),
        Check("onnxruntime", "pass", "loads on CPUExecutionProvider and runs at batch 1"),
    ]


def _check_batch(package: Path, manifest: Manifest) -> Check:
    """The batch-independence check again, on the package's model: a package that lets the runtime
    merge requests (``max_batch_size`` > 0) must pass it."""
    try:
        record = batching.check_package(package / manifest.model_file, manifest)
    except Exception as e:
        return Check("batch", "fail", f"the batch-independence check could not run: {first_line(e)}")
    if record.batchable:
        return Check("batch", "pass", f"max_batch_size {manifest.max_batch_size}: {record.reason}")
    if manifest.max_batch_size > 0:
        return Check(
            "batch",
            "fail",
            f"max_batch_size {manifest.max_batch_size} lets the runtime merge requests, but merging "
            f"changes answers: {record.reason}",
        )
    return Check("batch", "pass", f"max_batch_size 0, requests are never merged: {record.reason}")


def _check_parity(
    package: Path, manifest: Manifest, source: Source | None, atol: float | None, rtol: float | None
) -> Check:
    if source is None:
        return Check("parity", "skip", "no --source given")
    variant = (manifest.optimization or {}).get("chosen")
    if variant and variant not in LOSSLESS and atol is None and rtol is None:
        budget = (manifest.optimization or {}).get("budget", "")
        return Check(
            "parity",
            "skip",
            f"optimized variant {variant} is held to the optimize budget ({budget}), not to export "
            "tolerances (pass --atol/--rtol to compare anyway)",
        )
    specs_text = (manifest.source or {}).get("inputs")
    if not specs_text:
        return Check("parity", "fail", "the manifest records no export inputs (source.inputs)")
    specs = parse_inputs(list(specs_text))
    previous = manifest.parity or {}
    atol_ = atol if atol is not None else float(previous.get("atol", parity.DEFAULT_ATOL))
    rtol_ = rtol if rtol is not None else float(previous.get("rtol", parity.DEFAULT_RTOL))
    batches = parity.batch_sizes(specs, manifest.max_batch_size)
    try:
        model = loading.load(source)
        record = parity.run(model, package / manifest.model_file, specs, batches, atol_, rtol_)
    except InferstackError as e:
        return Check("parity", "fail", str(e))
    if not record["passed"]:
        return Check("parity", "fail", parity.summary(record))
    return Check(
        "parity",
        "pass",
        f"batches {batches}: max abs diff {record['max_abs_diff']:.2e}, "
        f"max rel diff {record['max_rel_diff']:.2e} "
        f"(atol {atol_:g}, rtol {rtol_:g})",
    )


def verify(
    package: Path, source: Source | None = None, atol: float | None = None, rtol: float | None = None
) -> list[Check]:
    """Every check in order; a failed step marks the ones that depend on it as skipped."""
    if not package.is_dir():
        raise InferstackError(f"{package}: no such package directory")
    try:
        manifest = load_manifest(package)
    except InferstackError as e:
        return [Check("manifest", "fail", str(e)), Check("files", "skip", "manifest unreadable")]
    checks = [
        Check(
            "manifest",
            "pass",
            f"{manifest.name} {manifest.version}, schema valid, digest {manifest.digest[:12]}",
        )
    ]
    try:
        verify_files(package, manifest)
        check_external_data(package, manifest)
    except InferstackError as e:
        return [*checks, Check("files", "fail", str(e)), Check("onnx", "skip", "file check failed")]
    total = sum(f.bytes for f in manifest.files)
    checks.append(Check("files", "pass", f"{len(manifest.files)} file(s), {total:,} bytes, sha256 match"))
    checks += _check_session(package, manifest)
    if any(c.status == "fail" for c in checks):
        return [
            *checks,
            Check("batch", "skip", "an earlier check failed"),
            Check("parity", "skip", "an earlier check failed"),
        ]
    checks.append(_check_batch(package, manifest))
    checks.append(_check_parity(package, manifest, source, atol, rtol))
    return checks
