"""``inferstack export``: real modules, real dynamo exports, real onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from modeltools_helpers import (
    assert_nothing_written,
    assert_one_line_error,
    load_models,
    read_manifest,
    run_cli,
)

from inferstack.manifest import load_manifest, sha256_file, validate


def _session(pkg: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(pkg / "model.onnx"), providers=["CPUExecutionProvider"])


def test_cnn_package_has_the_documented_manifest(cnn_pkg: Path) -> None:
    data = read_manifest(cnn_pkg)
    validate(data)  # the JSON Schema in the repository
    m = load_manifest(cnn_pkg)
    assert m.name == "cnn" and m.version == "1" and m.model_file == "model.onnx"
    assert [(t.name, t.datatype, t.shape) for t in m.inputs] == [("image", "FP32", [-1, 3, 32, 32])]
    # --input-format image=NCHW: Triton's input format, what image clients read from /config
    assert data["inputs"][0]["format"] == "NCHW" and "format" not in data["outputs"][0]
    assert [(t.name, t.datatype, t.shape) for t in m.outputs] == [("logits", "FP32", [-1, 10])]
    assert m.max_batch_size == 64
    assert m.opset is not None and m.opset >= 18
    assert set(m.producer) >= {"torch", "onnx", "onnxruntime"} and m.producer["torch"] == torch.__version__
    assert "created" not in data  # no time in a package: the same model gives the same package
    (entry,) = m.files
    assert entry.path == "model.onnx"
    assert entry.sha256 == sha256_file(cnn_pkg / "model.onnx")
    assert entry.bytes == (cnn_pkg / "model.onnx").stat().st_size
    assert m.source is not None and m.source["spec"] == "inferstack.examples.cnn:build"


def test_cnn_parity_ran_at_three_batch_sizes_within_tolerance(cnn_pkg: Path) -> None:
    p = read_manifest(cnn_pkg)["parity"]
    assert p["passed"] is True
    assert [b["batch"] for b in p["batches"]] == [1, 2, 8]
    assert p["atol"] == 1e-4 and p["rtol"] == 1e-3
    assert 0 <= p["max_abs_diff"] < 1e-4
    assert all(b["outputs"]["logits"]["passed"] for b in p["batches"])


def test_exported_batch_axis_is_dynamic_and_matches_pytorch(cnn_pkg: Path) -> None:
    from inferstack.examples import cnn

    model = cnn.build()
    s = _session(cnn_pkg)
    x = np.random.default_rng(5).standard_normal((5, 3, 32, 32)).astype(np.float32)
    (logits,) = s.run(None, {"image": x})
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert logits.shape == (5, 10)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-3)


def test_graph_passes_onnx_checker_and_uses_opset_18(cnn_pkg: Path) -> None:
    onnx.checker.check_model(str(cnn_pkg / "model.onnx"))
    model = onnx.load(str(cnn_pkg / "model.onnx"))
    assert {o.domain: o.version for o in model.opset_import}[""] >= 18


def test_fixed_dims_mean_no_batch_axis_and_options_are_recorded(tmp_path: Path, models_file: Path) -> None:
    out = tmp_path / "fixed"
    r = run_cli(
        "export",
        f"{models_file}:tiny",
        "--input",
        "x:3,16:float32",
        "--out",
        out,
        "--name",
        "tiny-fixed",
        "--version",
        "2.1",
        "--opset",
        "20",
    )
    assert r.exit_code == 0, r.stderr
    m = load_manifest(out)
    assert m.inputs[0].shape == [3, 16] and m.outputs[0].shape == [3, 4]
    assert m.max_batch_size == 0
    assert (m.name, m.version, m.opset) == ("tiny-fixed", "2.1", 20)
    assert [b["batch"] for b in m.parity["batches"]] == [None]  # type: ignore[index]
    assert "tiny-fixed 2.1" in r.stdout and "[3, 16]" in r.stdout

    r = run_cli(
        "export",
        f"{models_file}:tiny",
        "--input",
        "x:3,16:FP32",
        "--out",
        tmp_path / "o2",
        "--max-batch-size",
        "8",
    )
    assert_one_line_error(r, "--max-batch-size 8", "no dimension is named 'batch'")


@pytest.mark.parametrize("opset", ["17", "99"])
def test_an_opset_outside_the_supported_range_is_refused(
    tmp_path: Path, models_file: Path, opset: str
) -> None:
    newest = str(onnx.defs.onnx_opset_version())
    before = {p.name for p in tmp_path.iterdir()}
    r = run_cli(
        "export", f"{models_file}:tiny", "-i", "x:batch,16:FP32", "-o", tmp_path / "o", "--opset", opset
    )
    assert_one_line_error(r, f"--opset {opset}", "supported opsets are 18", f"to {newest}")
    assert_nothing_written(tmp_path, before)


def test_an_opset_the_exporter_cannot_reach_is_not_silently_lowered(
    tmp_path: Path, models_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An onnx release that knows opsets beyond what the exporter converts to: the exporter then
    # saves its base opset (18) instead; the saved model's opset is what is checked.
    from inferstack.modeltools import export as export_module

    monkeypatch.setattr(export_module, "max_opset", lambda: 99)
    before = {p.name for p in tmp_path.iterdir()}
    r = run_cli(
        "export", f"{models_file}:tiny", "-i", "x:batch,16:FP32", "-o", tmp_path / "o", "--opset", "99"
    )
    assert_one_line_error(r, "--opset 99", "wrote opset 18", "supported opsets are 18")
    assert_nothing_written(tmp_path, before)


def test_max_batch_size_flag_and_the_larger_parity_batch_follow_it(tmp_path: Path, models_file: Path) -> None:
    out = tmp_path / "mb"
    r = run_cli("export", f"{models_file}:tiny", "-i", "x:batch,16:FP32", "-o", out, "--max-batch-size", "4")
    assert r.exit_code == 0, r.stderr
    m = load_manifest(out)
    assert m.max_batch_size == 4
    assert [b["batch"] for b in m.parity["batches"]] == [1, 2, 4]  # type: ignore[index]


def test_state_dict_weights_are_what_gets_exported(tmp_path: Path, models_file: Path, tiny_pkg: Path) -> None:
    mod = load_models(models_file)
    model = mod.Tiny()
    torch.manual_seed(42)
    for p in model.parameters():
        torch.nn.init.normal_(p)
    weights = tmp_path / "weights.pt"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "w"
    r = run_cli("export", f"{models_file}:tiny", "-i", "x:batch,16:FP32", "-o", out, "--weights", weights)
    assert r.exit_code == 0, r.stderr
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    (got,) = _session(out).run(None, {"x": x})
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)
    (untrained,) = _session(tiny_pkg).run(None, {"x": x})
    assert not np.allclose(got, untrained)  # the weights, not the factory's init, were exported
    src = load_manifest(out).source
    assert src is not None and src["weights_sha256"] == sha256_file(weights)

    wrong = tmp_path / "wrong.pt"
    torch.save({"fc1.weight": torch.zeros(2, 2)}, wrong)
    before = {p.name for p in tmp_path.iterdir()}
    r = run_cli(
        "export", f"{models_file}:tiny", "-i", "x:batch,16:FP32", "-o", tmp_path / "bad", "--weights", wrong
    )
    assert_one_line_error(r, "wrong.pt: does not fit the module")
    assert_nothing_written(tmp_path, before)


def test_torch_export_program_source(tmp_path: Path, models_file: Path) -> None:
    mod = load_models(models_file)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(mod.tiny(), (torch.randn(2, 16),), dynamic_shapes=({0: batch},))
    pt2 = tmp_path / "tiny.pt2"
    torch.export.save(program, pt2)
    out = tmp_path / "from-pt2"
    r = run_cli("export", pt2, "-i", "x:batch,16:FP32", "-o", out)
    assert r.exit_code == 0, r.stderr
    m = load_manifest(out)
    assert m.name == "tiny" and m.inputs[0].shape == [-1, 16] and m.max_batch_size == 64
    assert m.source is not None and m.source["kind"] == "exported-program"
    assert m.parity is not None and m.parity["passed"]


def test_pickled_module_needs_trust(tmp_path: Path, models_file: Path) -> None:
    mod = load_models(models_file)
    pth = tmp_path / "whole.pth"
    torch.save(mod.tiny(), pth)
    before = {p.name for p in tmp_path.iterdir()}
    r = run_cli("export", pth, "-i", "x:batch,16:FP32", "-o", tmp_path / "p")
    line = assert_one_line_error(r, "whole.pth", "--trust-pickle", "unpickling runs code", "state_dict()")
    assert "--weights" in " ".join(r.stderr.split())
    assert_nothing_written(tmp_path, before)
    assert line.startswith("error:")

    r = run_cli(
        "export", pth, "-i", "x:batch,16:FP32", "-o", tmp_path / "p", "--trust-pickle", "--skip-parity"
    )
    assert r.exit_code == 0, r.stderr
    m = load_manifest(tmp_path / "p")
    assert m.source is not None and m.source["trust_pickle"] is True and m.parity is None


def test_external_data_is_listed_hashed_and_loadable(tmp_path: Path, models_file: Path) -> None:
    out = tmp_path / "ext"
    r = run_cli("export", f"{models_file}:tiny", "-i", "x:batch,16:FP32", "-o", out, "--external-data")
    assert r.exit_code == 0, r.stderr
    m = load_manifest(out)
    paths = {f.path: f for f in m.files}
    assert set(paths) == {"model.onnx", "model.onnx.data"}
    for f in m.files:
        assert f.sha256 == sha256_file(out / f.path) and f.bytes == (out / f.path).stat().st_size
    assert paths["model.onnx.data"].bytes >= (16 * 32 + 32 * 4) * 4  # both weight matrices
    assert m.source is not None and m.source["external_data"] is True
    (y,) = _session(out).run(None, {"x": np.ones((2, 16), np.float32)})
    assert y.shape == (2, 4)


def test_replacing_an_existing_package_is_atomic(tmp_path: Path, models_file: Path) -> None:
    out = tmp_path / "pkg"
    for version in ("1", "2"):
        r = run_cli(
            "export",
            f"{models_file}:tiny",
            "-i",
            "x:batch,16:FP32",
            "-o",
            out,
            "--version",
            version,
            "--skip-parity",
        )
        assert r.exit_code == 0, r.stderr
    assert load_manifest(out).version == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]
    # an export that fails after its files were staged (parity runs on the staged model) leaves the
    # previous package untouched and no staging directory behind
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = run_cli("export", f"{models_file}:diverges", "-i", "x:batch,16:FP32", "-o", out, "--version", "3")
    assert_one_line_error(r, "parity check failed")
    assert load_manifest(out).version == "2"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]

    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "todo.txt").write_text("mine")
    r = run_cli("export", f"{models_file}:tiny", "-i", "x:batch,16:FP32", "-o", keep)
    assert_one_line_error(r, "not empty and holds no manifest.json")
    assert (keep / "todo.txt").read_text() == "mine"


# ---- bad input: one line, exit 1, nothing written -------------------------------------------------


@pytest.mark.parametrize(
    ("source", "spec", "needles"),
    [
        ("missing.pt2", "x:batch,16:FP32", ["missing.pt2: file not found"]),
        ("nowhere/model.py:build", "x:batch,16:FP32", ["nowhere/model.py: file not found"]),
        (
            "no_such_package.models:build",
            "x:batch,16:FP32",
            ["no_such_package.models: no such Python module"],
        ),
        (
            "{models}:raises",
            "x:batch,16:FP32",
            ["the factory raised ValueError: checkpoint directory is empty"],
        ),
        ("{models}:absent", "x:batch,16:FP32", ["has no attribute 'absent'"]),
        ("{models}:not_a_module", "x:batch,16:FP32", ["returned dict, not a torch.nn.Module"]),
        ("{models}:tiny", "x:batch,12:FP32", ["does not accept the inputs x:[2, 12] FP32", "RuntimeError"]),
        ("{custom}:custom", "x:batch,4:FP32", ["unsupported operator inferstack_test.scramble.default"]),
        ("{models}:diverges", "x:batch,16:FP32", ["parity check failed", "output", "--atol"]),
        ("{models}:tiny", "x:batch,16", ["expected NAME:DIMS:DTYPE"]),
        ("{garbage}", "x:batch,16:FP32", ["broken.pt2: not a torch.export program"]),
    ],
)
def test_bad_input_is_one_line_exit_1_and_writes_nothing(
    tmp_path: Path, models_file: Path, source: str, spec: str, needles: list[str]
) -> None:
    garbage = tmp_path / "broken.pt2"
    garbage.write_bytes(b"PK\x03\x04 truncated archive")
    src = source.format(models=models_file, custom=models_file.parent / "custom_op.py", garbage=garbage)
    before = {p.name for p in tmp_path.iterdir()}
    r = run_cli("export", src, "--input", spec, "--out", tmp_path / "out")
    assert_one_line_error(r, *needles)
    assert_nothing_written(tmp_path, before)


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--max-batch-size", "-1"], ["--max-batch-size -1: must be 0"]),
        (["--name", "my model"], ["--name 'my model': must start with a letter or digit"]),
        (["--version", "v 2"], ["--version 'v 2'"]),
        (["--atol", "-1"], ["--atol -1.0: a tolerance must be 0 or more"]),
        (["--out", "{tmp}/a-file/pkg"], ["--out {tmp}/a-file/pkg", "a-file is not a directory"]),
        (["--out", "/proc/nope/pkg"], ["--out /proc/nope/pkg: cannot create a directory in /proc"]),
        (["--input-format", "x"], ["--input-format x: expected NAME=NCHW or NAME=NHWC"]),
        (["--input-format", "y=NCHW"], ["--input-format y=NCHW: no --input named 'y' (x)"]),
        (["--input-format", "x=CHW"], ["--input-format x=CHW: choose NCHW or NHWC"]),
        (["--input-format", "x=nchw"], ["--input-format x=NCHW: an image input has 3 dimensions besides",
                                        "'x' has 1"]),
    ],
)
def test_bad_flags_are_named_before_any_work(
    tmp_path: Path, models_file: Path, flags: list[str], needles: list[str]
) -> None:
    if "/proc/nope/pkg" in flags and not Path("/proc/self").is_dir():
        pytest.skip("needs a /proc file system, where no directory can be created")
    (tmp_path / "a-file").write_text("not a directory")
    before = {p.name for p in tmp_path.iterdir()}
    # the factory raises when called: an error about the flag proves the flag was checked first
    args = ["export", f"{models_file}:raises", "-i", "x:batch,16:FP32", "-o", tmp_path / "out"]
    r = run_cli(*args, *[f.format(tmp=tmp_path) for f in flags])
    assert_one_line_error(r, *[n.format(tmp=tmp_path) for n in needles])
    assert "checkpoint directory is empty" not in r.stderr
    assert_nothing_written(tmp_path, before)


def test_verbose_shows_the_traceback(tmp_path: Path, models_file: Path) -> None:
    r = run_cli("--verbose", "export", f"{models_file}:raises", "-i", "x:batch,16:FP32", "-o", tmp_path / "o")
    assert r.exit_code == 1
    assert "Traceback" in r.stderr and "checkpoint directory is empty" in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_over_2gb_model_exports_with_external_data(tmp_path: Path) -> None:
    """Weights of about 2.4 GB: protobuf cannot hold them, so they must go to model.onnx.data."""
    models = tmp_path / "big.py"
    models.write_text(
        "import torch\n"
        "from torch import nn\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    with torch.no_grad():\n"
        "        layers = [nn.Linear(12288, 12288, bias=False) for _ in range(4)]\n"
        "        for layer in layers:\n"
        "            layer.weight.normal_(0, 12288 ** -0.5)\n"
        "    return nn.Sequential(*layers).eval()\n"
    )
    out = tmp_path / "big"
    r = run_cli("export", f"{models}:build", "-i", "x:batch,12288:FP32", "-o", out, "--atol", "1e-3")
    assert r.exit_code == 0, r.stderr
    m = load_manifest(out)
    files = {f.path: f for f in m.files}
    assert set(files) == {"model.onnx", "model.onnx.data"}
    assert files["model.onnx.data"].bytes > 2 * 1024**3
    assert files["model.onnx"].bytes < 10 * 1024**2
    for f in m.files:
        assert f.sha256 == sha256_file(out / f.path)
    assert m.parity is not None and m.parity["passed"]
    onnx.checker.check_model(str(out / "model.onnx"))
    r = run_cli("verify", out)
    assert r.exit_code == 0, r.stdout + r.stderr


def test_no_input_format_writes_no_format_field(tiny_pkg: Path) -> None:
    """A package exported without --input-format has the manifest it had before the field
    existed (byte-identical re-exports), and loads with no format."""
    data = read_manifest(tiny_pkg)
    assert all("format" not in t for t in [*data["inputs"], *data["outputs"]])
    assert load_manifest(tiny_pkg).inputs[0].format is None
