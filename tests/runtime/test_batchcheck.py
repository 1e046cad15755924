"""inferstack.batchcheck on real ONNX models exported from PyTorch: a per-row model may be
merged; models that mix rows, whose output shape depends on the whole batch, or whose batch axis
is not first may not."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferstack import datatypes
from inferstack.batchcheck import (
    BatchCheck,
    batch_axis_problem,
    check_batch_independence,
    dynamic_dims,
    random_rows,
)


def _session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _check(path: Path, **kwargs: Any) -> BatchCheck:
    s = _session(path)
    inputs = [(a.name, a.shape) for a in s.get_inputs()]
    outputs = [(a.name, a.shape) for a in s.get_outputs()]
    make = random_rows([(a.name, a.shape, datatypes.by_ort(a.type).numpy) for a in s.get_inputs()],
                       kwargs.get("batch_dim", "batch"))

    def run(feeds: dict[str, np.ndarray]) -> Sequence[np.ndarray]:
        return s.run([n for n, _ in outputs], feeds)  # type: ignore[no-any-return]

    return check_batch_independence(run, inputs, outputs, kwargs.pop("make_rows", make), **kwargs)


def test_per_row_models_pass(batch_models: dict[str, Path]) -> None:
    mlp = _check(batch_models["rowwise"])
    assert mlp.batchable, mlp.reason
    assert mlp.sizes == [2, 3, 5] and mlp.dim_sizes == []
    assert mlp.max_abs_diff < 1e-4
    seq = _check(batch_models["rowseq"])
    assert seq.batchable, seq.reason
    assert seq.dim_sizes == [{"seq": 3}, {"seq": 7}]
    assert "seq=3" in seq.reason and "seq=7" in seq.reason


@pytest.mark.parametrize("name", ["mixing", "cumsum"])
def test_row_mixing_models_fail(batch_models: dict[str, Path], name: str) -> None:
    result = _check(batch_models[name])
    assert not result.batchable
    assert result.reason.startswith("output 'y' row ")
    assert "differs merged vs alone by" in result.reason and "at batch 2" in result.reason
    assert result.max_abs_diff > 0.01


def test_data_dependent_output_width_fails(batch_models: dict[str, Path]) -> None:
    result = _check(batch_models["width"])
    assert not result.batchable
    assert result.reason.startswith("output 'y' row ")
    assert " alone but " in result.reason and "merged at batch" in result.reason


def test_sequence_first_model_is_refused_by_its_axis(batch_models: dict[str, Path]) -> None:
    s = _session(batch_models["seqfirst"])
    inputs = [(a.name, a.shape) for a in s.get_inputs()]
    outputs = [(a.name, a.shape) for a in s.get_outputs()]
    expected = "input 'x' has dims (seq, batch, 32): the batch dimension 'batch' is not first"
    assert batch_axis_problem(inputs, outputs) == expected
    result = _check(batch_models["seqfirst"])
    assert not result.batchable and result.reason == expected
    # named another way, the same model's first axis is its batch axis: the check then runs
    # (and the rows, merged along the sequence, see each other in attention)
    as_seq = _check(batch_models["seqfirst"], batch_dim="seq")
    assert not as_seq.batchable
    assert as_seq.reason.startswith("output 'y' row "), as_seq.reason


def test_batch_axis_is_named_never_guessed() -> None:
    assert batch_axis_problem([("x", ["batch", 4])], [("y", ["batch"])]) is None
    assert batch_axis_problem([("x", [None, 4])], [("y", ["batch"])]) == (
        "input 'x' has dims (?, 4): no dimension is named 'batch'")
    assert batch_axis_problem([("x", ["batch", 4])], [("y", ["n", 4])]) == (
        "output 'y' has dims (n, 4): no dimension is named 'batch'")
    assert batch_axis_problem([("x", [])], [("y", ["batch"])]) == (
        "input 'x' has dims (): a scalar has no batch dimension 'batch'")
    twice = batch_axis_problem([("x", ["batch", "batch"])], [("y", ["batch"])])
    assert twice is not None and "appears more than once" in twice
    assert batch_axis_problem([("x", ["b", 4])], [("y", ["b"])], batch_dim="b") is None
    assert dynamic_dims([("x", ["batch", "seq", None, 3]), ("m", ["batch", "seq"])]) == ["seq", "x[2]"]


def test_example_rows_are_used(batch_models: dict[str, Path]) -> None:
    """The model tools pass the user's rows; the check runs on exactly those."""
    example = np.random.default_rng(5).standard_normal((5, 16)).astype(np.float32)
    seen: list[Mapping[str, int]] = []

    def rows(count: int, dim_sizes: Mapping[str, int], seed: int) -> dict[str, np.ndarray]:
        seen.append(dim_sizes)
        return {"x": example[:count]}

    result = _check(batch_models["rowwise"], make_rows=rows, data="example")
    assert result.batchable and result.data == "example" and seen == [{}]
    # fewer example rows than the largest size: the sizes they fill; one row: nothing to compare
    three = _check(batch_models["mixing"], make_rows=lambda count, dims, seed: {"x": example[:3, :8]})
    assert not three.batchable and three.sizes == [2] and "at batch 2" in three.reason
    fits = _check(batch_models["rowwise"], make_rows=lambda count, dims, seed: {"x": example[:3]})
    assert fits.batchable and fits.sizes == [2, 3] and "at batch 2, 3;" in fits.reason
    one = _check(batch_models["rowwise"], make_rows=lambda count, dims, seed: {"x": example[:1]})
    assert not one.batchable and one.reason == "cannot be checked: 1 rows; the check needs at least 2"
    # example rows keep their own sequence length: the record says which lengths were checked
    seq4 = np.random.default_rng(6).standard_normal((5, 4, 8)).astype(np.float32)
    own = _check(batch_models["rowseq"], make_rows=lambda count, dims, seed: {"x": seq4[:count]})
    assert own.batchable and own.dim_sizes == [{"seq": 4}] and "(seq=4)" in own.reason


def test_rows_that_cannot_be_checked(batch_models: dict[str, Path]) -> None:
    same = _check(batch_models["mixing"],
                  make_rows=lambda count, dims, seed: {"x": np.ones((count, 8), np.float32)})
    assert not same.batchable
    assert same.reason.startswith("cannot be checked: rows 0 and 1 are equal in every input")

    def failing(feeds: dict[str, np.ndarray]) -> Sequence[np.ndarray]:
        raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : bad index\nstack trace")

    result = check_batch_independence(failing, [("x", ["batch", 2])], [("y", ["batch", 2])],
                                      random_rows([("x", ["batch", 2], np.float32)]))
    assert not result.batchable
    assert result.reason == ("cannot be checked: row 0 alone fails: RuntimeError: [ONNXRuntimeError] : 2 : "
                             "INVALID_ARGUMENT : bad index")
    with pytest.raises(ValueError, match="sizes"):
        check_batch_independence(failing, [], [], random_rows([]), sizes=[1])


def test_output_that_drops_the_batch_axis_fails() -> None:
    def total(feeds: dict[str, np.ndarray]) -> Sequence[np.ndarray]:
        return [feeds["x"].sum(0, keepdims=True)]  # always one row

    result = check_batch_independence(total, [("x", ["batch", 3])], [("y", ["batch", 3])],
                                      random_rows([("x", ["batch", 3], np.float32)]))
    assert not result.batchable
    assert result.reason == "output 'y' has shape [1, 3] at batch 2: its first axis does not follow the batch"


def test_integer_and_nan_outputs_compare_exactly() -> None:
    def run_with(f: Callable[[np.ndarray], np.ndarray]) -> BatchCheck:
        return check_batch_independence(lambda feeds: [f(feeds["x"])], [("x", ["batch", 4])],
                                        [("y", ["batch", 4])], random_rows([("x", ["batch", 4], np.int64)]))

    assert run_with(lambda x: x * 3).batchable
    off_by_one = run_with(lambda x: x + (len(x) > 1))
    assert not off_by_one.batchable and "differs merged vs alone in 4 of 4 values" in off_by_one.reason
    nan_rows = run_with(lambda x: np.where(x > 7, np.nan, x.astype(np.float32)))
    assert nan_rows.batchable, nan_rows.reason
    moved = run_with(lambda x: np.where(x > 7 if len(x) > 1 else x < 0, np.nan, x.astype(np.float32)))
    assert not moved.batchable and "NaN at other positions" in moved.reason


def test_record_round_trip() -> None:
    record = BatchCheck(True, "ok", "batch", [2, 3, 5], [{"seq": 3}], 1e-7, "example")
    assert BatchCheck.from_dict(record.to_dict()) == record
    import jsonschema

    from inferstack.manifest import schema

    # the record is what manifest.json's schema accepts under batch_check
    record_schema = {"$defs": schema()["$defs"], "$ref": "#/$defs/batch_check"}
    jsonschema.validate(record.to_dict(), record_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"batchable": True}, record_schema)
    with pytest.raises(ValueError, match="'batchable' has the wrong type"):
        BatchCheck.from_dict({"batchable": "yes", "reason": "x"})
    with pytest.raises(ValueError, match="missing 'reason'"):
        BatchCheck.from_dict({"batchable": True})
    with pytest.raises(ValueError, match="'sizes' must be positive integers"):
        BatchCheck.from_dict({"batchable": True, "reason": "", "sizes": [0]})
