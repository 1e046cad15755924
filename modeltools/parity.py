"""Parity: does the ONNX model compute what the PyTorch model computes?

Both run on the same inputs (generated from the ``--input`` specs and their value ranges, or the
user's ``--example`` data) at several sizes of every dynamic dimension: the batch at 1, its example
size and a larger one; every other dynamic dimension (a sequence, an image side) at 1 and half its
base size as well as the base size itself, never above it, because the base size (``seq=N`` or the
example file's) may be the largest the model accepts (its positions). PyTorch runs in the calling process,
which holds the model already; onnxruntime runs in a subprocess (``python -m
inferstack.modeltools.parity``), because its sessions do not give memory back and a crash in it must
not take the command down. The parent writes the inputs and PyTorch's outputs to an ``.npz``, sends a
JSON request on stdin and reads one JSON result from the last line of stdout.

For each output: the largest absolute difference, and the largest relative difference over the
elements whose reference magnitude exceeds ``atol`` (relative error is meaningless near zero). A
batch passes when every element satisfies ``|onnx - torch| <= atol + rtol * |torch|``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from inferstack.modeltools._ort import session_options
from inferstack.modeltools._text import first_line
from inferstack.modeltools.spec import InputSpec, base_sizes, make_arrays

from inferstack.errors import InferstackError

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
_RESULT = "PARITY-RESULT "


class ParityError(InferstackError):
    """The ONNX model disagrees with PyTorch, or the check could not run."""


def batch_sizes(specs: list[InputSpec], max_batch_size: int) -> list[int | None]:
    """1, the example batch and a larger one when the batch axis is dynamic; else the fixed shape."""
    if not specs or not all(s.batch_dynamic for s in specs):
        return [None]
    example = specs[0].example_shape[0]
    larger = max(example * 4, 8)
    if max_batch_size:
        larger = min(larger, max_batch_size)
    return sorted({1, example, larger})


def _batch_dim(specs: list[InputSpec]) -> str | None:
    """The dimension ``batch_sizes`` varies: the dynamic first dimension shared by every input."""
    if not specs or not all(s.batch_dynamic for s in specs):
        return None
    names = {s.dims[0].name for s in specs}
    return names.pop() if len(names) == 1 else None


def cases(
    specs: list[InputSpec], batches: list[int | None], example: dict[str, Any] | None = None
) -> list[dict[str, int]]:
    """The dynamic dimension sizes parity runs at, ``{dim name: size}``: each of ``batches`` with the
    other dimensions at their base size, then each other dynamic dimension at 1 and half its base
    size (the batch at its base size)."""
    base = base_sizes(specs, example)
    lead = _batch_dim(specs)
    out: list[dict[str, int]] = []
    for b in batches:
        case = dict(base)
        if lead is not None and b is not None:
            case[lead] = b
        if case not in out:
            out.append(case)
    for name, size in base.items():
        if name == lead:
            continue
        for smaller in sorted({1, max(1, size // 2)} - {size}):
            case = {**base, name: smaller}
            if case not in out:
                out.append(case)
    return out


def case_text(case: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in case.items()) or "the fixed shape"


def torch_outputs(
    model: Any,
    specs: list[InputSpec],
    batches: list[int | None],
    seed: int,
    example: dict[str, Any] | None = None,
) -> tuple[list[dict[str, int]], dict[str, Any], list[dict[str, Any]]]:
    """The cases run (see :func:`cases`), their inputs and PyTorch's outputs keyed
    ``b{i}/in/{name}`` and ``b{i}/out/{k}``, and the cases skipped.

    A case that shrinks a dimension other than the batch is skipped when PyTorch itself refuses it
    (a convolution larger than a 1-pixel image): the model has no answer there to compare with.
    PyTorch failing at any batch size is an error.
    """
    import torch
    import torch.utils._pytree as pytree
    from inferstack.modeltools import loading

    fn = loading.runnable(model)
    arrays: dict[str, Any] = {}
    base = base_sizes(specs, example)
    lead = _batch_dim(specs)
    runs: list[dict[str, int]] = []
    skipped: list[dict[str, Any]] = []
    for j, case in enumerate(cases(specs, batches, example)):
        feeds = make_arrays(specs, case, seed=seed + j, example=example)
        try:
            with torch.no_grad():
                result = loading.call(fn, {s.name: torch.from_numpy(feeds[s.name]) for s in specs})
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]
            if any(case[k] != base[k] for k in case if k != lead):
                skipped.append(
                    {"dims": case, "reason": f"PyTorch refuses it: {type(e).__name__}: {first}"[:300]}
                )
                continue
            raise ParityError(f"PyTorch failed at {case_text(case)}: {type(e).__name__}: {first}") from e
        i = len(runs)
        runs.append(case)
        leaves = [t for t in pytree.tree_leaves(result) if isinstance(t, torch.Tensor)]
        for name, value in feeds.items():
            arrays[f"b{i}/in/{name}"] = value
        for k, t in enumerate(leaves):
            arrays[f"b{i}/out/{k}"] = t.detach().cpu().numpy()
    return runs, arrays, skipped


def run(
    model: Any,
    model_path: Path,
    specs: list[InputSpec],
    batches: list[int | None],
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    seed: int = 0,
    timeout: float = 1800,
    example: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compare ``model`` (PyTorch, in process) with the ONNX file (ORT, in a subprocess) at every
    case of :func:`cases`; ``example`` is :func:`spec.load_example`'s data, else data is generated."""
    import numpy as np

    runs, arrays, skipped = torch_outputs(model, specs, batches, seed, example)
    lead = _batch_dim(specs)
    with tempfile.TemporaryDirectory(prefix="inferstack-parity-") as tmp:
        npz = Path(tmp) / "parity.npz"
        np.savez(npz, **arrays)
        del arrays
        request = {
            "model": str(Path(model_path).resolve()),
            "data": str(npz),
            "inputs": [s.name for s in specs],
            "batches": [case.get(lead) if lead else None for case in runs],
            "dims": runs,
            "atol": atol,
            "rtol": rtol,
            "seed": seed,
        }
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "inferstack.modeltools.parity"],
                input=json.dumps(request),
                capture_output=True,
                text=True,
                timeout=timeout,
                env=dict(os.environ, PYTHONWARNINGS="ignore"),
            )
        except subprocess.TimeoutExpired:
            raise ParityError(f"parity check did not finish within {timeout:.0f} s") from None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT):
            result: dict[str, Any] = json.loads(line[len(_RESULT) :])
            if "error" in result:
                raise ParityError(f"parity check: {result['error']}")
            if skipped:
                result["skipped"] = skipped
            return result
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise ParityError(f"parity check process exited with code {proc.returncode}: {tail}")


def _spec_text(s: InputSpec) -> str:
    dims = ",".join(f"{d.name}={d.example}" if d.dynamic else str(d.size) for d in s.dims)
    return f"{s.name}:{dims}:{s.datatype}" + (f":{s.range_text}" if s.range_text else "")


def summary(record: dict[str, Any]) -> str:
    """The first failing batch/output in words, for the error line."""
    for b in record["batches"]:
        for name, o in b["outputs"].items():
            if not o["passed"]:
                if b.get("dims") is not None:
                    where = case_text(b["dims"])
                else:
                    where = f"batch {b['batch']}" if b["batch"] is not None else "the fixed shape"
                return (
                    f"output {name!r} at {where}: max abs diff {o['max_abs_diff']:.3g}, "
                    f"max rel diff {o['max_rel_diff']:.3g} exceed atol {record['atol']:g} + "
                    f"rtol {record['rtol']:g} (change with --atol/--rtol)"
                )
    return "passed"


# ---- the subprocess -----------------------------------------------------------------------------


def _compare(actual: Any, expected: Any, atol: float, rtol: float) -> dict[str, Any]:
    import numpy as np

    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        return {
            "passed": False,
            "max_abs_diff": float("inf"),
            "max_rel_diff": float("inf"),
            "shape": list(a.shape),
            "expected_shape": list(e.shape),
        }
    if a.size == 0:
        return {"passed": True, "max_abs_diff": 0.0, "max_rel_diff": 0.0}
    diff = np.abs(a - e)
    big = np.abs(e) > atol
    rel = float(np.max(diff[big] / np.abs(e[big]))) if big.any() else 0.0
    finite_match = bool(np.array_equal(np.isfinite(a), np.isfinite(e)))
    diff = np.where(np.isfinite(diff), diff, 0.0)
    return {
        "passed": finite_match and bool(np.all(diff <= atol + rtol * np.abs(np.nan_to_num(e)))),
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": rel,
    }


def _worker(request: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    options = session_options(1)
    session = ort.InferenceSession(request["model"], options, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in session.get_outputs()]
    atol, rtol = float(request["atol"]), float(request["rtol"])
    data = np.load(request["data"])
    batches = []
    for i, batch in enumerate(request["batches"]):
        feeds = {name: data[f"b{i}/in/{name}"] for name in request["inputs"]}
        expected = [
            data[f"b{i}/out/{k}"] for k in range(sum(1 for f in data.files if f.startswith(f"b{i}/out/")))
        ]
        actual = session.run(None, feeds)
        if len(expected) != len(actual):
            raise InferstackError(f"PyTorch returns {len(expected)} outputs, the ONNX model {len(actual)}")
        outputs = {
            name: _compare(a, e, atol, rtol) for name, a, e in zip(out_names, actual, expected, strict=True)
        }
        batches.append(
            {
                "batch": batch,
                "dims": request["dims"][i],
                "outputs": outputs,
                "passed": all(o["passed"] for o in outputs.values()),
            }
        )
    return {
        "atol": atol,
        "rtol": rtol,
        "seed": int(request["seed"]),
        "provider": "CPUExecutionProvider",
        "batches": batches,
        "max_abs_diff": max(o["max_abs_diff"] for b in batches for o in b["outputs"].values()),
        "max_rel_diff": max(o["max_rel_diff"] for b in batches for o in b["outputs"].values()),
        "passed": all(b["passed"] for b in batches),
    }


def main() -> None:
    request = json.loads(sys.stdin.read())
    try:
        result = _worker(request)
    except InferstackError as e:
        result = {"error": str(e)}
    except Exception as e:  # reported to the parent as one line; the parent decides
        result = {"error": first_line(e)}
    sys.stdout.write("\n" + _RESULT + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
