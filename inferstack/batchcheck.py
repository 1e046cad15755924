"""The batch-independence check: may requests be merged along the batch axis without changing
any answer?

Dynamic batching concatenates the rows of several requests along the batch axis, runs the model
once and hands each request its rows back. That is only right when

1. the batch axis is *named* (the dimension called ``batch``, or another given name) and is the
   first dimension of every input and output (:func:`batch_axis_problem`); a sequence-first
   model (``x: seq, batch, 32``) would otherwise be merged along its sequence, and
2. every output row depends on its own input row alone, with the same shape
   (:func:`check_batch_independence`): k distinct rows are run merged and each row alone, at
   several merged sizes and, for every other dynamic dimension, at two sizes (rows of one merged
   batch share those sizes, since the runtime only merges requests whose non-batch shapes agree).
   Output shapes (less the batch axis) must be equal, integer/bool/string values exactly equal,
   floating-point values within a small tolerance (NaN where NaN), for every row.

Both callers give the model as a ``run`` callable (feeds -> outputs, in the order of the
``outputs`` given), so this module needs neither onnxruntime nor torch: the model tools run it at
export/verify on the user's example rows, the runtime at warm-up on generated rows
(:func:`random_rows`). The result, :class:`BatchCheck`, is what ``manifest.json`` records under
``batch_check``.

Dimensions are given as onnxruntime reports them in ``NodeArg.shape``: an ``int`` for a fixed
dimension, a ``str`` (the ONNX ``dim_param``) for a named dynamic one, ``None`` for an unnamed
dynamic one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_BATCH_DIM",
    "BatchCheck",
    "batch_axis_problem",
    "check_batch_independence",
    "check_sizes",
    "combine",
    "dynamic_dims",
    "random_rows",
]

DEFAULT_BATCH_DIM = "batch"
#: merged batch sizes tried by default (see :func:`check_sizes`)
DEFAULT_SIZES = (2, 3, 5)
#: the magnitudes generated floating-point rows are scaled by, in turn (where the type holds them)
MAGNITUDES = (1.0, 1e-3, 1e3, 1e6)
#: sizes tried by default for every dynamic dimension other than the batch axis
DEFAULT_DIM_SIZES = (3, 7)

Dim = int | str | None
Dims = Sequence[Dim]
#: feeds (input name -> array, batch axis first) -> outputs, in the order of the outputs checked
Run = Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]]
#: make_rows(count, dim_sizes, seed) -> feeds with ``count`` distinct rows along the batch axis;
#: ``dim_sizes`` gives the size of every other dynamic dimension (keys from :func:`dynamic_dims`)
MakeRows = Callable[[int, Mapping[str, int], int], dict[str, np.ndarray]]

#: how many leading rows of a check must be distinct
_DISTINCT = 8
# (atol, rtol) per floating-point kind: merged and lone runs may take different kernels
_TOLERANCE = {2: (1e-2, 1e-2), 4: (1e-4, 1e-3), 8: (1e-8, 1e-6)}


@dataclass
class BatchCheck:
    """The outcome of the check, as ``manifest.json`` records it under ``batch_check``.

    ``reason`` is one line: why merging is unsafe (naming the tensor and the difference), or what
    was checked when it is safe. ``sizes`` are the merged batch sizes tried, ``dim_sizes`` the
    sizes of the other dynamic dimensions (one mapping per setting tried), ``max_abs_diff`` the
    largest difference seen between a merged and a lone row of a floating-point output (0.0 when
    there is none), ``data`` where the rows came from (``"example"``: the user's, ``"generated"``).
    """

    batchable: bool
    reason: str
    batch_dim: str = DEFAULT_BATCH_DIM
    sizes: list[int] = field(default_factory=list)
    dim_sizes: list[dict[str, int]] = field(default_factory=list)
    max_abs_diff: float = 0.0
    data: str = "generated"
    #: the static proof (:mod:`inferstack.batchproof`): passed, and its one-line reason
    proven: bool = False
    proof: str = ""
    #: sha256 of the model file the record was made on (a record binds to one model)
    model_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "batchable": self.batchable,
            "reason": self.reason,
            "batch_dim": self.batch_dim,
            "sizes": list(self.sizes),
            "dim_sizes": [dict(d) for d in self.dim_sizes],
            "max_abs_diff": self.max_abs_diff,
            "data": self.data,
            "proven": self.proven,
            "proof": self.proof,
            "model_sha256": self.model_sha256,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "batch_check") -> BatchCheck:
        """Read a record (e.g. from ``manifest.json``); ``ValueError`` names the bad field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: must be an object")

        def get(key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
            if key not in data:
                if default is ...:
                    raise ValueError(f"{where}: missing {key!r}")
                return default
            value = data[key]
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise ValueError(f"{where}: {key!r} has the wrong type ({type(value).__name__})")
            return value

        sizes = get("sizes", list, [])
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
            raise ValueError(f"{where}: 'sizes' must be positive integers")
        dim_sizes = get("dim_sizes", list, [])
        for d in dim_sizes:
            if not isinstance(d, Mapping) or not all(
                    isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                    for k, v in d.items()):
                raise ValueError(f"{where}: 'dim_sizes' must be objects of dimension name -> size")
        return cls(
            batchable=get("batchable", bool),
            reason=get("reason", str),
            batch_dim=get("batch_dim", str, DEFAULT_BATCH_DIM),
            sizes=list(sizes),
            dim_sizes=[dict(d) for d in dim_sizes],
            max_abs_diff=float(get("max_abs_diff", (int, float), 0.0)),
            data=get("data", str, "generated"),
            proven=get("proven", bool, False),
            proof=get("proof", str, ""),
            model_sha256=get("model_sha256", str, ""),
        )

    def trusted_for(self, model_sha256: str, batch_dim: str) -> bool:
        """May a runtime merge on this record alone? Only a passed record made on this very model
        (``model_sha256``, the verified sha256 of the served file) for this batch dimension, with
        a passed static proof and a dynamic check that ran at some merged size."""
        return (self.batchable and self.proven and bool(self.sizes) and bool(model_sha256)
                and self.model_sha256 == model_sha256 and self.batch_dim == batch_dim)


def check_sizes(max_batch_size: int) -> list[int]:
    """The merged sizes to try for a model merged up to ``max_batch_size`` rows: every size from
    2 to ``min(max_batch_size, 16)`` and ``max_batch_size`` itself (a model may mix rows only from
    some batch size on)."""
    top = max(2, int(max_batch_size))
    return sorted({*range(2, min(top, 16) + 1), top})


def _fmt_dims(dims: Dims) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def batch_axis_problem(inputs: Sequence[tuple[str, Dims]], outputs: Sequence[tuple[str, Dims]],
                       batch_dim: str = DEFAULT_BATCH_DIM) -> str | None:
    """None when the dimension named ``batch_dim`` is the first dimension of every input and
    output (and appears nowhere else); else a one-line reason naming the tensor, e.g.
    ``input 'x' has dims (seq, batch, 32): the batch dimension 'batch' is not first``.
    The batch axis is named, never guessed: an unnamed dynamic first dimension does not count."""
    for kind, tensors in (("input", inputs), ("output", outputs)):
        for name, dims in tensors:
            dims = list(dims)
            if not dims or dims[0] != batch_dim:
                if batch_dim in dims:
                    why = f"the batch dimension {batch_dim!r} is not first"
                elif not dims:
                    why = f"a scalar has no batch dimension {batch_dim!r}"
                else:
                    why = f"no dimension is named {batch_dim!r}"
                return f"{kind} {name!r} has dims {_fmt_dims(dims)}: {why}"
            if batch_dim in dims[1:]:
                return (f"{kind} {name!r} has dims {_fmt_dims(dims)}: the batch dimension "
                        f"{batch_dim!r} appears more than once")
    return None


def dynamic_dims(inputs: Sequence[tuple[str, Dims]], batch_dim: str = DEFAULT_BATCH_DIM) -> list[str]:
    """The inputs' dynamic dimensions other than the batch axis, as keys of ``dim_sizes``: the
    ``dim_param`` name, or ``"<input>[<axis>]"`` for an unnamed one. In order of appearance."""
    keys: dict[str, None] = {}
    for name, dims in inputs:
        for axis, d in enumerate(dims):
            key = dim_key(name, axis, d)
            if key is not None and key != batch_dim:
                keys[key] = None
    return list(keys)


def dim_key(tensor: str, axis: int, dim: Dim) -> str | None:
    """The ``dim_sizes`` key of one dimension; None for a fixed one."""
    if isinstance(dim, int) and dim >= 0:
        return None
    if isinstance(dim, str) and dim:
        return dim
    return f"{tensor}[{axis}]"


def random_rows(inputs: Sequence[tuple[str, Dims, Any]], batch_dim: str = DEFAULT_BATCH_DIM,
                int_high: int = 16) -> MakeRows:
    """A ``make_rows`` of generated data for inputs given as ``(name, dims, numpy dtype)``:
    floats from a standard normal, integers from ``0..int_high - 1``, random booleans, strings of
    digits. Small integers keep most index inputs (token ids, type ids) inside their tables."""

    # small integer or boolean rows repeat: draw 8x the rows and keep the first distinct ones
    # (floating-point rows are distinct as drawn; large images are not drawn 8x)
    over = 1 if all(np.dtype(dtype).kind == "f" for _, _, dtype in inputs) else 8

    def make(count: int, dim_sizes: Mapping[str, int], seed: int) -> dict[str, np.ndarray]:
        pool = generate(count * over, dim_sizes, seed)
        keep: dict[bytes, int] = {}
        for i in range(count * over):
            keep.setdefault(_row_key(pool, i), i)
        chosen = list(keep.values())[:count]
        chosen += [i for i in range(count * over) if i not in chosen][:count - len(chosen)]
        return {name: a[chosen] for name, a in pool.items()}

    def generate(count: int, dim_sizes: Mapping[str, int], seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        feeds: dict[str, np.ndarray] = {}
        for name, dims, dtype in inputs:
            shape = [count if d == batch_dim else d if isinstance(d, int) and d >= 0
                     else dim_sizes[str(dim_key(name, axis, d))] for axis, d in enumerate(dims)]
            kind = np.dtype(dtype)
            if kind.kind == "f":
                # rows of mixed magnitudes: a model that mixes rows by a tiny weight shows it
                # when one row is large
                scales = [m for m in MAGNITUDES if m < np.finfo(kind).max / 1e3]
                row_scale = np.asarray([scales[i % len(scales)] for i in range(count)])
                row_scale = row_scale.reshape([-1] + [1] * (len(shape) - 1)) if shape else row_scale
                feeds[name] = (rng.standard_normal(shape) * row_scale).astype(kind)
            elif kind.kind in "iu":
                feeds[name] = rng.integers(0, int_high, size=shape).astype(kind)
            elif kind.kind == "b":
                feeds[name] = rng.integers(0, 2, size=shape).astype(bool)
            elif kind.kind in "OSU":
                feeds[name] = rng.integers(0, 1000, size=shape).astype(str).astype(object)
            else:
                raise ValueError(f"input {name!r}: cannot generate data of type {kind}")
        return feeds

    return make


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip().rstrip(":")[:300]


def _setting(dim_sizes: Mapping[str, int]) -> str:
    return f" ({', '.join(f'{k}={v}' for k, v in dim_sizes.items())})" if dim_sizes else ""


def _tolerance(dtype: np.dtype) -> tuple[float, float]:
    return _TOLERANCE.get(dtype.itemsize, (1e-4, 1e-3))


def _compare(merged: np.ndarray, alone: np.ndarray) -> tuple[bool, float, str]:
    """(equal, max abs diff (floats), what differs). ``merged`` is the row taken from the merged
    run, ``alone`` the lone run's output; both keep a batch axis of 1."""
    if merged.shape != alone.shape:
        return False, 0.0, f"has shape {list(alone.shape[1:])} alone but {list(merged.shape[1:])} merged"
    if merged.dtype.kind == "f" or alone.dtype.kind == "f":
        a = merged.astype(np.float64)
        b = alone.astype(np.float64)
        nan_a, nan_b = np.isnan(a), np.isnan(b)
        if not np.array_equal(nan_a, nan_b):
            return False, 0.0, "has NaN at other positions merged vs alone"
        finite = ~nan_a
        a, b = a[finite], b[finite]
        if a.size == 0:
            return True, 0.0, ""
        inf = np.isinf(a) | np.isinf(b)
        if not np.array_equal(a[inf], b[inf]):
            return False, 0.0, "has inf at other positions merged vs alone"
        diff = np.abs(a[~inf] - b[~inf])
        worst = float(diff.max()) if diff.size else 0.0
        atol, rtol = _tolerance(merged.dtype if merged.dtype.kind == "f" else alone.dtype)
        # relative to the row's largest value: rows of very different magnitudes are compared
        scale = float(np.abs(b[~inf]).max()) if diff.size else 0.0
        if np.any(diff > atol + rtol * scale):
            return False, worst, f"differs merged vs alone by {worst:.3g}"
        return True, worst, ""
    if not np.array_equal(merged, alone):
        mismatched = int(np.count_nonzero(merged != alone)) if merged.dtype.kind != "O" else -1
        count = f" in {mismatched} of {merged.size} values" if mismatched >= 0 else ""
        return False, 0.0, f"differs merged vs alone{count}"
    return True, 0.0, ""


def _row_key(feeds: Mapping[str, np.ndarray], i: int) -> bytes:
    return b"\0".join(np.ascontiguousarray(a[i]).tobytes() if a.dtype.kind != "O"
                      else repr(a[i].tolist()).encode() for a in feeds.values())


def _distinct(feeds: Mapping[str, np.ndarray], count: int) -> tuple[int, int] | None:
    """The first pair of rows that are equal in every input, or None."""
    seen: dict[bytes, int] = {}
    for i in range(count):
        key = _row_key(feeds, i)
        if key in seen:
            return seen[key], i
        seen[key] = i
    return None


def check_batch_independence(
    run: Run,
    inputs: Sequence[tuple[str, Dims]],
    outputs: Sequence[tuple[str, Dims]],
    make_rows: MakeRows,
    *,
    batch_dim: str = DEFAULT_BATCH_DIM,
    sizes: Sequence[int] = DEFAULT_SIZES,
    dim_sizes: Sequence[int] = DEFAULT_DIM_SIZES,
    seed: int = 0,
    data: str = "generated",
) -> BatchCheck:
    """Decide whether merging rows along ``batch_dim`` can change an answer.

    For each size in ``dim_sizes`` (every other dynamic dimension of the inputs set to it; a
    single setting when there is none), ``make_rows(max(sizes), {dim: size}, seed)`` supplies
    distinct rows; the first k rows are run merged for every k in ``sizes`` and compared with each
    row run alone. Rows of example data may keep their own lengths (the record gives the sizes the
    rows had) and may be fewer than ``max(sizes)`` (only the sizes they fill are tried; fewer than
    ``min(sizes)`` rows cannot be checked). ``run`` returns the outputs in the order of
    ``outputs``. A ``run`` that raises, rows that are not distinct, or an axis problem
    (:func:`batch_axis_problem`) make the model not batchable, with the reason. Costs
    ``len(dim_sizes) * (max(sizes) + len(sizes))`` runs at most.
    """
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 2:
        raise ValueError(f"sizes must be merged batch sizes >= 2, got {list(sizes)}")
    record = BatchCheck(False, "", batch_dim, [], [], 0.0, data)
    problem = batch_axis_problem(inputs, outputs, batch_dim)
    if problem is not None:
        record.reason = problem
        return record
    others = dynamic_dims(inputs, batch_dim)
    settings = [{d: int(s) for d in others} for s in dict.fromkeys(dim_sizes)] if others else [{}]
    names = [name for name, _ in outputs]
    worst = 0.0
    tried_sizes: set[int] = set()
    tried_dims: list[dict[str, int]] = []
    for setting_index, setting in enumerate(settings):
        where = _setting(setting)
        try:
            rows = make_rows(max(sizes), setting, seed + setting_index)
        except Exception as e:
            record.reason = f"cannot be checked: no rows{where}: {_first_line(e)}"
            return record
        missing = [name for name, _ in inputs if name not in rows]
        if missing:
            record.reason = f"cannot be checked: no rows for input {missing[0]!r}{where}"
            return record
        rows = {name: np.asarray(rows[name]) for name, _ in inputs}
        have = min((a.shape[0] if a.ndim else 0) for a in rows.values()) if rows else 0
        usable = [k for k in sizes if k <= have]
        if not usable:
            record.reason = f"cannot be checked: {have} rows{where}; the check needs at least {sizes[0]}"
            return record
        count = max(usable)
        rows = {name: a[:count] for name, a in rows.items()}
        # the sizes the rows have (example rows may keep their own lengths)
        actual = {key: int(rows[name].shape[axis]) for name, dims in inputs
                  for axis, d in enumerate(dims)
                  if (key := dim_key(name, axis, d)) in others and axis < rows[name].ndim}
        where = _setting(actual)
        if actual and actual not in tried_dims:
            tried_dims.append(actual)
        record.dim_sizes = tried_dims
        # the first rows must differ (mixing must be able to show); past those, a small integer
        # input may run out of distinct rows, and repeats still compare merged vs alone
        pair = _distinct(rows, min(count, _DISTINCT))
        if pair is not None:
            record.reason = (f"cannot be checked: rows {pair[0]} and {pair[1]} are equal in every "
                             f"input{where}; the check needs distinct rows")
            return record
        alone: list[Sequence[np.ndarray]] = []
        for i in range(count):
            try:
                result = run({n: a[i:i + 1] for n, a in rows.items()})
            except Exception as e:
                record.reason = f"cannot be checked: row {i} alone fails{where}: {_first_line(e)}"
                return record
            for name, out in zip(names, result, strict=True):
                if np.ndim(out) == 0 or out.shape[0] != 1:
                    record.reason = (f"output {name!r} has shape {list(np.shape(out))} for one row"
                                     f"{where}: its first axis does not follow the batch")
                    return record
            alone.append(result)
        for k in usable:
            tried_sizes.add(k)
            record.sizes = sorted(tried_sizes)
            try:
                merged = run({n: a[:k] for n, a in rows.items()})
            except Exception as e:
                record.reason = f"cannot be checked: batch {k} fails{where}: {_first_line(e)}"
                return record
            for name, out in zip(names, merged, strict=True):
                if np.ndim(out) == 0 or out.shape[0] != k:
                    record.reason = (f"output {name!r} has shape {list(np.shape(out))} at batch {k}"
                                     f"{where}: its first axis does not follow the batch")
                    return record
            for i in range(k):
                for j, name in enumerate(names):
                    same, diff, what = _compare(np.asarray(merged[j][i:i + 1]), np.asarray(alone[i][j]))
                    worst = max(worst, diff)
                    if not same:
                        record.max_abs_diff = worst
                        record.reason = f"output {name!r} row {i} {what} at batch {k}{where}"
                        return record
    record.batchable = True
    record.max_abs_diff = worst
    tried = "; ".join(_setting(s).strip(" ()") for s in tried_dims)
    record.reason = (f"every output row equals its row run alone at batch "
                     f"{', '.join(map(str, record.sizes))}"
                     f"{f' ({tried})' if tried else ''}; max abs diff {worst:.3g}")
    return record


def combine(check: BatchCheck, proven: bool, proof: str, model_sha256: str = "") -> BatchCheck:
    """The decision: merging only when the graph is proven row-independent
    (:func:`inferstack.batchproof.prove_row_independence`: ``proven``, ``proof``) and the
    merged-vs-alone ``check`` agrees. Returns ``check`` with both recorded (and the model's
    sha256); when the proof fails, the record is not batchable and its reason is the proof's."""
    check.proven = proven
    check.proof = proof
    check.model_sha256 = model_sha256
    if not proven:
        check.batchable = False
        check.reason = f"not proven row-independent: {proof}"
    return check
