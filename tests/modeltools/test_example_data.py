"""Checks on data that looks like the user's: value ranges in ``--input``, padding masks, real
example inputs (``--example FILE.npz``), and parity over every dynamic dimension."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from inferstack.modeltools.spec import (
    SpecError,
    load_example,
    make_arrays,
    make_rows,
    parse_input,
    parse_inputs,
)
from modeltools_helpers import (
    assert_nothing_written,
    assert_one_line_error,
    read_manifest,
    run_cli,
    write_source,
)

#: Modules whose exported graph differs from eager PyTorch only on some data: parity passes on the
#: wrong data and must fail on the right data.
SOURCE = textwrap.dedent(
    '''
    import torch
    from torch import nn


    class MeanOverSeq(nn.Module):
        """Exported as sum/8: equal to the eager mean only at seq 8 (the example size)."""

        def forward(self, x):
            if torch.onnx.is_in_onnx_export():
                return x.sum(1) / 8
            return x.mean(1)


    def mean_over_seq():
        return MeanOverSeq().eval()


    class HighIds(nn.Module):
        """Exported with an error that only ids of 50 or more reach."""

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.embedding = nn.Embedding(100, 4)

        def forward(self, ids):
            y = self.embedding(ids).sum(1)
            if torch.onnx.is_in_onnx_export():
                y = y + (ids >= 50).any(1, keepdim=True).float()
            return y


    def high_ids():
        return HighIds().eval()


    class Conv(nn.Module):
        """A 3x3 convolution without padding: PyTorch refuses images smaller than 3 pixels."""

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(1, 2, kernel_size=3)

        def forward(self, x):
            return self.conv(x).mean((2, 3))


    def conv():
        return Conv().eval()
    '''
)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_source(tmp_path_factory, "src", "data_models.py", SOURCE)


# ---- ranges ---------------------------------------------------------------------------------------


def test_a_range_parses_prints_back_and_bounds_generated_values() -> None:
    spec = parse_input("input_ids:batch,seq:INT64:0..30521")
    assert (spec.low, spec.high) == (0, 30521)
    assert str(spec) == "input_ids:batch,seq:INT64:0..30521" and parse_input(str(spec)) == spec
    ids = make_arrays([spec], {"batch": 64, "seq": 32}, seed=1)["input_ids"]
    assert ids.shape == (64, 32) and ids.dtype == np.int64
    assert ids.min() >= 0 and ids.max() <= 30521 and ids.max() > 1000  # the whole vocabulary, not 0..9
    x = make_arrays([parse_input("x:batch,4:FP32:-0.5..0.25")], {"batch": 100}, seed=1)["x"]
    assert x.dtype == np.float32 and x.min() >= -0.5 and x.max() <= 0.25


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("ids:batch:INT64:5..1", "value range '5..1' is empty"),
        ("ids:batch:INT64:0..1.5", "a INT64 input takes integer bounds"),
        ("ids:batch:UINT8:0..300", "does not fit UINT8 (0..255)"),
        ("ids:batch:INT8:-200..0", "does not fit INT8 (-128..127)"),
        ("x:batch:FP16:0..1e6", "does not fit FP16"),
        ("x:batch:FP32:0..1e999", "must be finite"),
        ("x:batch:FP32:0-1", "value range '0-1' must be LOW..HIGH"),
        ("m:batch:BOOL:0..2", "does not fit BOOL (0..1)"),
    ],
)
def test_a_bad_range_names_the_input_and_what_is_wrong(text: str, needle: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_input(text)
    assert f"--input {text!r}" in str(e.value) and needle in str(e.value)


def test_a_mask_is_generated_as_padding_unless_given_another_range() -> None:
    specs = parse_inputs(["input_ids:batch,seq:INT64", "attention_mask:batch,seq:INT64"])
    mask = make_arrays(specs, {"batch": 200, "seq": 16}, seed=0)["attention_mask"]
    assert set(np.unique(mask)) == {0, 1}
    assert (mask[:, 0] == 1).all()  # every row keeps its first token
    assert (np.diff(mask, axis=1) <= 0).all()  # ones, then zeros: right padding
    assert len(set(mask.sum(1).tolist())) > 8  # many lengths, the full one included
    assert (mask.sum(1) == 16).any()
    # 0..1 is the mask's own range; another range is taken at its word
    same = make_arrays([parse_input("attention_mask:batch,seq:INT64:0..1")], {"batch": 200, "seq": 16}, 0)
    assert (np.diff(same["attention_mask"], axis=1) <= 0).all()
    wide = make_arrays([parse_input("attention_mask:batch,seq:INT64:0..9")], {"batch": 50, "seq": 16}, 0)
    assert wide["attention_mask"].max() > 1
    # not a mask by name: integers 0..9 as before
    ids = make_arrays(specs, {"batch": 50, "seq": 16}, seed=0)["input_ids"]
    assert ids.min() >= 0 and ids.max() == 9


def test_make_rows_gives_distinct_single_rows_from_generated_or_example_data() -> None:
    specs = parse_inputs(["input_ids:batch,seq:INT64:0..999", "attention_mask:batch,seq:INT64"])
    rows = make_rows(specs, 5, {"seq": 12}, seed=3)
    assert len(rows) == 5
    assert all(r["input_ids"].shape == (1, 12) and r["attention_mask"].shape == (1, 12) for r in rows)
    assert len({r["input_ids"].tobytes() for r in rows}) == 5
    assert make_rows(specs, 5, {"seq": 12}, seed=3)[2]["input_ids"].tolist() == rows[2]["input_ids"].tolist()
    example = {
        "input_ids": np.arange(30, dtype=np.int64).reshape(3, 10),
        "attention_mask": np.ones((3, 10), np.int64),
    }
    rows = make_rows(specs, 4, {"seq": 6}, seed=0, example=example)
    assert [r["input_ids"].tolist() for r in rows] == [
        [list(range(0, 6))],
        [list(range(10, 16))],
        [list(range(20, 26))],
        [list(range(0, 6))],  # the example has 3 rows: the 4th repeats the first
    ]


def test_load_example_checks_names_dtypes_ranks_sizes_and_ranges(tmp_path: Path) -> None:
    specs = parse_inputs(["input_ids:batch,seq:INT64:0..999", "attention_mask:batch,seq:INT64"])
    ok = tmp_path / "ok.npz"
    np.savez(ok, input_ids=np.zeros((3, 7), np.int32), attention_mask=np.ones((3, 7), np.int64))
    data = load_example(ok, specs)
    assert data["input_ids"].dtype == np.int64 and data["input_ids"].shape == (3, 7)
    cases = {
        "name": (
            {"input_ids": np.zeros((3, 7)), "mask": np.ones((3, 7))},
            "no array for input 'attention_mask'",
        ),
        "extra": (
            {"input_ids": np.zeros((3, 7), np.int64), "attention_mask": np.ones((3, 7), np.int64), "x": 1},
            "array 'x' is not an input",
        ),
        "dtype": (
            {"input_ids": np.zeros((3, 7), np.float32), "attention_mask": np.ones((3, 7), np.int64)},
            "array 'input_ids' is float32, the input 'input_ids' is INT64",
        ),
        "rank": (
            {"input_ids": np.zeros((3,), np.int64), "attention_mask": np.ones((3, 7), np.int64)},
            "rank 1; the input input_ids:batch,seq:INT64:0..999 has rank 2",
        ),
        "sizes": (
            {"input_ids": np.zeros((3, 7), np.int64), "attention_mask": np.ones((3, 6), np.int64)},
            "dimension 'seq' is 6 in array 'attention_mask' and 7 in 'input_ids'",
        ),
        "range": (
            {"input_ids": np.full((3, 7), 1000, np.int64), "attention_mask": np.ones((3, 7), np.int64)},
            "holds values 1000..1000, outside 0..999",
        ),
    }
    for label, (arrays, needle) in cases.items():
        path = tmp_path / f"{label}.npz"
        np.savez(path, **arrays)
        with pytest.raises(SpecError) as e:
            load_example(path, specs)
        assert f"--example {path}" in str(e.value) and needle in str(e.value), label


# ---- through the CLI ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arrays", "needles"),
    [
        ({"tokens": np.zeros((2, 5), np.int64)}, ["no array for input 'ids'", "arrays: tokens"]),
        ({"ids": np.zeros((2, 5), np.float32)}, ["array 'ids' is float32, the input 'ids' is INT64"]),
    ],
)
def test_an_example_with_a_wrong_name_or_dtype_is_one_line_exit_1(
    tmp_path: Path, source: Path, arrays: dict, needles: list[str]
) -> None:
    npz = tmp_path / "example.npz"
    np.savez(npz, **arrays)
    before = {p.name for p in tmp_path.iterdir()}
    r = run_cli(
        "export", f"{source}:high_ids", "-i", "ids:batch,seq:INT64", "-o", tmp_path / "pkg", "--example", npz
    )
    assert_one_line_error(r, f"--example {npz}", *needles)
    assert_nothing_written(tmp_path, before)


def test_parity_varies_every_dynamic_dimension_not_only_the_batch(tmp_path: Path, source: Path) -> None:
    r = run_cli("export", f"{source}:mean_over_seq", "-i", "x:batch,seq,4:FP32", "-o", tmp_path / "pkg")
    assert_one_line_error(r, "parity check failed", "seq=1")


def test_a_size_pytorch_refuses_is_skipped_and_recorded_not_an_error(tmp_path: Path, source: Path) -> None:
    r = run_cli("export", f"{source}:conv", "-i", "x:batch,1,h,w:FP32", "-o", tmp_path / "pkg")
    assert r.exit_code == 0, r.stderr
    record = read_manifest(tmp_path / "pkg")["parity"]
    assert {(b["dims"]["h"], b["dims"]["w"]) for b in record["batches"]} == {(8, 8), (4, 8), (8, 4)}
    assert [s["dims"] for s in record["skipped"]] == [
        {"batch": 2, "h": 1, "w": 8},
        {"batch": 2, "h": 8, "w": 1},
    ]
    assert "Kernel size can't be greater" in record["skipped"][0]["reason"]
    assert "skipped, PyTorch refuses them: batch=2, h=1, w=8" in " ".join(r.stdout.split())


def test_parity_runs_on_the_example_file_and_on_the_range(tmp_path: Path, source: Path) -> None:
    # generated ids (0..9) never reach the exported graph's error ...
    r = run_cli("export", f"{source}:high_ids", "-i", "ids:batch,seq:INT64", "-o", tmp_path / "a")
    assert r.exit_code == 0, r.stderr
    record = read_manifest(tmp_path / "a")["parity"]
    assert {b["dims"]["seq"] for b in record["batches"]} == {1, 4, 8}
    assert {b["dims"]["batch"] for b in record["batches"]} >= {1, 2, 8}
    # ... the user's data does, and so does the declared range
    npz = tmp_path / "ids.npz"
    np.savez(npz, ids=np.arange(60, 100, dtype=np.int64).reshape(4, 10))
    r = run_cli(
        "export", f"{source}:high_ids", "-i", "ids:batch,seq:INT64", "-o", tmp_path / "b", "--example", npz
    )
    assert_one_line_error(r, "parity check failed", "seq=10")  # the example's length
    r = run_cli("export", f"{source}:high_ids", "-i", "ids:batch,seq:INT64:0..99", "-o", tmp_path / "c")
    assert_one_line_error(r, "parity check failed")


def test_optimize_generates_its_data_from_the_export_ranges(tmp_path: Path, source: Path) -> None:
    from inferstack.modeltools.optimize import load_data

    from inferstack.manifest import load_manifest

    pkg = tmp_path / "pkg"
    r = run_cli(
        "export", f"{source}:high_ids", "-i", "ids:batch,seq:INT64:50..99", "-o", pkg, "--skip-parity"
    )
    assert r.exit_code == 0, r.stderr
    assert read_manifest(pkg)["source"]["inputs"] == ["ids:batch=2,seq=8:INT64:50..99"]
    data, labels, note = load_data(None, load_manifest(pkg), samples=128)
    assert data["ids"].shape == (128, 8) and labels is None
    assert data["ids"].min() >= 50 and data["ids"].max() <= 99, note
    # --example is optimize's other name for --data, checked like export's --example
    npz = tmp_path / "bad.npz"
    np.savez(npz, ids=np.zeros((4, 6), np.float64))
    before = {p.name for p in tmp_path.iterdir()}
    r = run_cli("optimize", pkg, "--out", tmp_path / "o", "--example", npz)
    assert_one_line_error(r, f"--data {npz}", "array 'ids' is float64, the input 'ids' is INT64")
    assert_nothing_written(tmp_path, before)
