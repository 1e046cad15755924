"""``inferstack optimize``: every candidate built, scored and benchmarked; the choice is measured."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from inferstack.examples import data as example_data
from inferstack.modeltools import candidates as candidate_builders
from inferstack.modeltools.optimize import Candidate, choose
from modeltools_helpers import assert_nothing_written, assert_one_line_error, read_manifest, run_cli

from inferstack.manifest import load_manifest, sha256_file

FAST = ("--seconds", "0.3", "--samples", "64")


@pytest.fixture(scope="module")
def cnn_opt(tmp_path_factory: pytest.TempPathFactory, cnn_pkg: Path) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("cnnopt")
    npz = tmp / "data.npz"
    example_data.save_npz(str(npz), "cnn", 96)
    out = tmp / "opt"
    r = run_cli("optimize", cnn_pkg, "--out", out, "--data", npz, "--seconds", "0.5")
    assert r.exit_code == 0, r.stdout + r.stderr
    return out, r.stdout


def test_every_candidate_is_reported_with_measurements(cnn_opt: tuple[Path, str]) -> None:
    out, stdout = cnn_opt
    record = read_manifest(out)["optimization"]
    by_name = {c["name"]: c for c in record["candidates"]}
    assert list(by_name) == candidate_builders.ORDER
    assert by_name["fp16"]["status"] == "skipped" and "GPU" in by_name["fp16"]["note"]
    for name in ("reference", "ort-basic", "ort-extended", "ort-all", "int8-dynamic", "int8-static"):
        c = by_name[name]
        assert c["status"] in ("ok", "over budget"), c
        assert c["latency_ms"] > 0 and c["throughput"] > 0 and c["size_bytes"] > 0
        assert 0.0 <= c["metric"] <= 1.0 and c["max_abs_diff"] >= 0
        assert 0.0 <= c["accuracy"] <= 1.0  # the data carries labels
        assert name in stdout
    ref = by_name["reference"]
    assert ref["max_abs_diff"] == 0 and ref["metric"] == 1.0 and ref["speedup"] == 1.0
    # quantized weights are smaller and not bit-identical
    for name in ("int8-dynamic", "int8-static"):
        assert by_name[name]["size_bytes"] < ref["size_bytes"] / 2
        assert by_name[name]["max_abs_diff"] > 0
    assert record["metric"] == "top1" and record["budget"] == "top1>=0.99"
    assert "96 samples with labels" in record["data"]


def test_the_choice_is_the_fastest_inside_the_budget(cnn_opt: tuple[Path, str]) -> None:
    out, stdout = cnn_opt
    record = read_manifest(out)["optimization"]
    cands = record["candidates"]
    ok = [c for c in cands if c["status"] == "ok"]
    for c in cands:
        if c["status"] == "ok":
            assert c["metric"] >= 0.99
        if c["status"] == "over budget":
            assert c["metric"] < 0.99
    fastest = min(ok, key=lambda c: c["latency_ms"])
    ref = next(c for c in cands if c["name"] == "reference")
    if fastest["latency_ms"] <= ref["latency_ms"] / 1.05:
        assert record["chosen"] == fastest["name"]
    else:
        assert record["chosen"] == "reference"
    assert record["why"] and record["chosen"] in stdout and "chosen:" in stdout


def test_the_output_is_a_complete_verified_package(cnn_opt: tuple[Path, str], cnn_pkg: Path) -> None:
    out, _ = cnn_opt
    m = load_manifest(out)
    original = load_manifest(cnn_pkg)
    assert m.optimization is not None and m.optimization["reference_digest"] == original.digest
    assert [t.__dict__ for t in m.inputs] == [t.__dict__ for t in original.inputs]
    # a variant that mixes rows (int8-dynamic) is packaged without batching
    assert m.batch_check is not None
    assert m.max_batch_size == (original.max_batch_size if m.batch_check["batchable"] else 0)
    for f in m.files:
        assert f.sha256 == sha256_file(out / f.path)
    assert m.version == "1"  # a variant keeps the model's version; optimization.chosen names it
    s = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (y,) = s.run(None, {"image": np.zeros((3, 3, 32, 32), np.float32)})
    assert y.shape == (3, 10)
    png = out / "optimize.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    r = run_cli("verify", out)
    assert r.exit_code == 0, r.stdout


def test_non_classifier_is_scored_by_cosine_similarity(tmp_path: Path, encoder_pkg: Path) -> None:
    out = tmp_path / "enc-opt"
    r = run_cli(
        "optimize", encoder_pkg, "--out", out, "--candidate", "int8-dynamic", "--candidate", "fp16", *FAST
    )
    assert r.exit_code == 0, r.stdout + r.stderr
    record = read_manifest(out)["optimization"]
    assert record["metric"] == "cosine" and record["budget"] == "cosine>=0.999"
    by_name = {c["name"]: c for c in record["candidates"]}
    assert by_name["ort-all"]["status"] == "skipped"
    for name in ("int8-dynamic", "fp16"):  # fp16 forced on CPU by naming it
        assert by_name[name]["status"] in ("ok", "over budget")
        assert 0.9 < by_name[name]["metric"] <= 1.0 + 1e-9
    assert "generated: 64 random samples" in record["data"]
    assert "generated" in r.stdout


def test_a_budget_nothing_quantized_meets_keeps_a_lossless_variant(tmp_path: Path, tiny_pkg: Path) -> None:
    out = tmp_path / "strict"
    r = run_cli(
        "optimize",
        tiny_pkg,
        "--out",
        out,
        "--budget",
        "max_abs<=0",
        "--candidate",
        "int8-dynamic",
        "--candidate",
        "ort-basic",
        *FAST,
    )
    assert r.exit_code == 0, r.stdout + r.stderr
    record = read_manifest(out)["optimization"]
    by_name = {c["name"]: c for c in record["candidates"]}
    assert by_name["int8-dynamic"]["status"] == "over budget"
    assert "max_abs" in by_name["int8-dynamic"]["note"]
    assert record["chosen"] in ("reference", "ort-basic")
    assert "int8-dynamic" in record["why"]  # named among the over-budget ones


def test_a_failing_candidate_is_reported_not_hidden(
    tmp_path: Path, tiny_pkg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No builder fails on these models by itself; this one stands for a quantizer that raises.
    def broken(ctx: object, out: Path) -> Path:
        raise RuntimeError("quantizer crashed on node /fc1/Gemm")

    monkeypatch.setitem(candidate_builders.BUILDERS, "int8-static", broken)
    out = tmp_path / "f"
    r = run_cli("optimize", tiny_pkg, "--out", out, "--candidate", "int8-static", *FAST)
    assert r.exit_code == 0, r.stdout + r.stderr
    c = next(c for c in read_manifest(out)["optimization"]["candidates"] if c["name"] == "int8-static")
    assert c["status"] == "failed" and "quantizer crashed on node /fc1/Gemm" in c["note"]
    assert "failed" in r.stdout and "quantizer crashed" in r.stdout


def test_choose_follows_the_objective_and_the_minimum_gain() -> None:
    def cand(name: str, ms: float, ips: float, status: str = "ok") -> Candidate:
        c = Candidate(name, "", status=status, latency_ms=ms, throughput=ips, metric=1.0, max_abs_diff=0.0)
        return c

    cands = [
        cand("reference", 1.0, 1000),
        cand("int8-dynamic", 0.5, 900),
        cand("int8-static", 0.4, 3000, "over budget"),
    ]
    for c in cands:
        c.speedup = 1.0 / c.latency_ms  # type: ignore[operator]
    assert choose(cands, "latency", 0.05, "top1")[0] == "int8-dynamic"
    for c in cands:
        c.speedup = c.throughput / 1000  # type: ignore[operator]
    chosen, why = choose(cands, "throughput", 0.05, "top1")
    assert chosen == "reference" and "over budget: int8-static" in why
    cands[1].latency_ms, cands[1].speedup = 0.98, 1.02
    assert choose(cands, "latency", 0.05, "top1")[0] == "reference"


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--budget", "top1>0.99"], ["--budget 'top1>0.99'", "top1>=X"]),
        (["--providers", "CUDAExecutionProvider"], ["CUDAExecutionProvider: not available here"]),
        (["--candidate", "int4"], ["--candidate 'int4': unknown"]),
        (["--data", "{tmp}/absent.npz"], ["absent.npz: file not found"]),
        (["--data", "{tmp}/bad.npz"], ["array 'x' has shape [5, 3]", "dimension 2 of x:batch,16:FP32 is 16"]),
        (["--data", "{tmp}/other.npz"], ["no array for input 'x'"]),
        (["--name", "a b"], ["--name 'a b': must start with a letter or digit"]),
    ],
)
def test_bad_options_are_one_line_and_write_nothing(
    tmp_path: Path, tiny_pkg: Path, args: list[str], needles: list[str]
) -> None:
    np.savez(tmp_path / "bad.npz", x=np.zeros((5, 3), np.float32))
    np.savez(tmp_path / "other.npz", a=np.zeros((5, 16), np.float32), b=np.zeros((5, 16), np.float32))
    before = {p.name for p in tmp_path.iterdir()}
    r = run_cli("optimize", tiny_pkg, "--out", tmp_path / "o", *[a.format(tmp=tmp_path) for a in args], *FAST)
    assert_one_line_error(r, *needles)
    assert_nothing_written(tmp_path, before)


def test_a_damaged_package_is_refused_before_any_work(tmp_path: Path, tiny_pkg: Path, copy_pkg) -> None:
    pkg = copy_pkg(tiny_pkg)
    (pkg / "model.onnx").write_bytes(b"not onnx")
    before = {p.name for p in tmp_path.iterdir()}
    r = run_cli("optimize", pkg, "--out", tmp_path / "o", *FAST)
    assert_one_line_error(r, "model.onnx: size 8 bytes, manifest.json says")
    assert_nothing_written(tmp_path, before)

    # a corrupted graph whose manifest was rewritten to match it
    from inferstack.manifest import Manifest, file_entries, load_manifest, write_manifest

    m = load_manifest(tiny_pkg)
    write_manifest(pkg, Manifest(**{**m.__dict__, "files": file_entries(pkg, ["model.onnx"]), "digest": ""}))
    r = run_cli("optimize", pkg, "--out", tmp_path / "o", *FAST)
    assert_one_line_error(r, "model.onnx: not a valid ONNX model")
    assert_nothing_written(tmp_path, before)

    data = read_manifest(tiny_pkg)
    bad = tmp_path / "copy"
    (bad / "manifest.json").write_text(json.dumps({**data, "digest": "0" * 64}))
    r = run_cli("optimize", bad, "--out", tmp_path / "o", *FAST)
    assert_one_line_error(r, "digest", "does not match its files list")


def test_variants_of_an_external_data_model_are_self_contained(tmp_path: Path, models_file: Path) -> None:
    import shutil

    pkg = tmp_path / "ext"
    r = run_cli(
        "export",
        f"{models_file}:tiny",
        "-i",
        "x:batch,16:FP32",
        "-o",
        pkg,
        "--external-data",
        "--skip-parity",
    )
    assert r.exit_code == 0, r.stderr
    original = {p.name: p.read_bytes() for p in pkg.iterdir()}
    feeds = [{"x": np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32)} for i in range(4)]
    ctx = candidate_builders.BuildContext(
        pkg / "model.onnx", tmp_path / "work", ["CPUExecutionProvider"], feeds, True
    )
    ctx.work.mkdir()
    x = np.ones((2, 16), np.float32)
    (expected,) = ort.InferenceSession(str(pkg / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    for name in ("ort-basic", "ort-extended", "ort-all", "int8-dynamic", "int8-static", "fp16"):
        model = candidate_builders.build(name, ctx)
        files = candidate_builders.model_files(model)
        # small quantized tensors may be stored inline; large ones go to the .data file beside the graph
        assert files[0].name == "model.onnx" and {f.name for f in files[1:]} <= {"model.onnx.data"}, name
        if name.startswith("ort-"):
            assert len(files) == 2, name
        # copied alone into a fresh directory (as optimize packages it), the variant still loads
        alone = tmp_path / f"alone-{name}"
        alone.mkdir()
        for f in files:
            shutil.copyfile(f, alone / f.name)
        (y,) = ort.InferenceSession(str(alone / "model.onnx"), providers=["CPUExecutionProvider"]).run(
            None, {"x": x}
        )
        assert y.shape == (2, 4) and np.abs(y - expected).max() < 0.5, name
    assert {p.name: p.read_bytes() for p in pkg.iterdir()} == original  # the source package is untouched


def test_data_the_model_rejects_is_one_line_without_onnxruntime_log(
    tmp_path: Path, models_file: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    pkg = tmp_path / "embed"
    r = run_cli("export", f"{models_file}:embed", "-i", "ids:batch,6:INT64", "-o", pkg, "--skip-parity")
    assert r.exit_code == 0, r.stderr
    npz = tmp_path / "ids.npz"
    np.savez(npz, ids=np.full((4, 6), 5000, np.int64))  # the embedding has 100 rows
    capfd.readouterr()
    r = run_cli("optimize", pkg, "--out", tmp_path / "o", "--data", npz, *FAST)
    assert_one_line_error(r, "the reference model does not run on --data", "ids.npz", "idx=5000")
    # onnxruntime writes its own log to file descriptor 2, past the CLI's stderr
    native = capfd.readouterr()
    assert "onnxruntime" not in native.err and "onnxruntime" not in native.out, native.err
    assert not (tmp_path / "o").exists()


def test_an_unwritable_out_is_named_before_any_work(tmp_path: Path, tiny_pkg: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    r = run_cli("optimize", tiny_pkg, "--out", tmp_path / "a-file" / "o", *FAST)
    assert_one_line_error(r, f"--out {tmp_path}/a-file/o", "a-file is not a directory")
    if Path("/proc/self").is_dir():
        r = run_cli("optimize", tiny_pkg, "--out", "/proc/nope/o", *FAST)
        assert_one_line_error(r, "--out /proc/nope/o: cannot create a directory in /proc")
