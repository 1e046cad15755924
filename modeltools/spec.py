"""``--input NAME:DIMS:DTYPE[:LOW..HIGH]``: the inputs a model is exported with, and the data it is
checked on.

DIMS is comma-separated. An integer is a fixed dimension; a name marks a dynamic one
(``batch,3,224,224``). A dynamic dimension may carry the size of the example input used for the
export (``seq=16``); by default a dynamic first dimension is exported with an example of 2 (the
dynamo exporter specialises dimensions of size 1) and any other dynamic dimension with 8. The same
name in two inputs means the same dimension (``batch`` of ``ids`` and ``mask``).

``LOW..HIGH`` is the range of the values generated for the checks (parity, batch independence,
optimize's calibration and scoring), both ends included: ``input_ids:batch,seq:INT64:0..30521``,
``pixel:batch,3,8,8:FP32:0..1``. Without a range, floats are standard normal, integers 0..9 and
booleans fair coins, except an integer or boolean input whose name contains ``mask``: it is
generated as a padding mask, 1 for a prefix of each row along its last dimension (at least one
position) and 0 after, as a tokenizer pads. A mask given the range ``0..1`` is generated the same
way; any other range gives uniform values. Real data replaces generated data with ``--example
FILE.npz`` (:func:`load_example`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferstack import datatypes
from inferstack.errors import InferstackError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]*$")
_DIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FIRST_EXAMPLE = 2
OTHER_EXAMPLE = 8


class SpecError(InferstackError):
    """A malformed ``--input`` value."""


@dataclass(frozen=True)
class Dim:
    size: int | None  # None: dynamic
    name: str | None = None  # set for dynamic dimensions
    example: int = 0  # the size used for the example input

    @property
    def dynamic(self) -> bool:
        return self.size is None

    def __str__(self) -> str:
        return str(self.size) if self.size is not None else f"{self.name}={self.example}"


@dataclass(frozen=True)
class InputSpec:
    name: str
    dims: tuple[Dim, ...]
    datatype: str  # v2 name
    low: float | None = None  # the generated values' range, both ends included (None: the default)
    high: float | None = None

    @property
    def is_mask(self) -> bool:
        """An integer or boolean input named like a mask, generated as a padding mask (see module doc)."""
        kind = datatypes.by_v2(self.datatype).numpy.kind
        return (
            kind in "biu"
            and "mask" in self.name.lower()
            and (self.low is None or (self.low, self.high) == (0, 1))
        )

    @property
    def range_text(self) -> str:
        if self.low is None:
            return ""
        return f"{_num(self.low)}..{_num(self.high)}"

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(d.example for d in self.dims)

    @property
    def batch_dynamic(self) -> bool:
        return bool(self.dims) and self.dims[0].dynamic

    def shape_with_batch(self, batch: int) -> tuple[int, ...]:
        """The example shape with the first dimension replaced by ``batch`` (when it is dynamic)."""
        if not self.batch_dynamic:
            return self.example_shape
        return (batch, *self.example_shape[1:])

    def __str__(self) -> str:
        dims = ",".join(d.name if d.dynamic else str(d.size) for d in self.dims)  # type: ignore[misc]
        tail = f":{self.range_text}" if self.range_text else ""
        return f"{self.name}:{dims}:{self.datatype}{tail}"


def _num(v: float | None) -> str:
    return str(int(v)) if v is not None and float(v).is_integer() else str(v)


_RANGE = re.compile(r"^\s*([-+]?[0-9.eE+-]+)\s*\.\.\s*([-+]?[0-9.eE+-]+)\s*$")


def _parse_range(text: str, datatype: str, where: str) -> tuple[float, float]:
    """``LOW..HIGH`` for ``datatype``: integers within the type for integer inputs, finite floats."""
    import numpy as np

    m = _RANGE.match(text)
    if not m:
        raise SpecError(f"{where}: value range {text!r} must be LOW..HIGH, e.g. 0..30521 or -1.5..1.5")
    dtype = datatypes.by_v2(datatype).numpy
    try:
        low, high = float(m.group(1)), float(m.group(2))
    except ValueError:
        raise SpecError(f"{where}: value range {text!r} must be LOW..HIGH of numbers") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise SpecError(f"{where}: value range {text!r} must be finite")
    if low > high:
        raise SpecError(f"{where}: value range {text!r} is empty (LOW is above HIGH)")
    if dtype.kind in "biu":
        if not (low.is_integer() and high.is_integer()):
            raise SpecError(f"{where}: value range {text!r}: a {datatype} input takes integer bounds")
        info = (0, 1) if dtype.kind == "b" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
        if low < info[0] or high > info[1]:
            raise SpecError(f"{where}: value range {text!r} does not fit {datatype} ({info[0]}..{info[1]})")
        return int(low), int(high)
    if high > float(np.finfo(dtype).max) or low < float(np.finfo(dtype).min):
        raise SpecError(f"{where}: value range {text!r} does not fit {datatype}")
    return low, high


def _parse_dim(text: str, index: int, where: str) -> Dim:
    token = text.strip()
    if not token:
        raise SpecError(f"{where}: dimension {index + 1} is empty")
    if re.fullmatch(r"[0-9]+", token):
        size = int(token)
        if size < 1:
            raise SpecError(f"{where}: dimension {index + 1} is {size}; sizes must be 1 or more")
        return Dim(size=size, example=size)
    name, sep, example = token.partition("=")
    name = name.strip()
    if not _DIM_NAME.match(name):
        raise SpecError(
            f"{where}: dimension {index + 1} {token!r} is neither a size (224) nor a dynamic name (batch)"
        )
    if sep:
        if not re.fullmatch(r"\s*[0-9]+\s*", example) or int(example) < 2:
            raise SpecError(
                f"{where}: example size of dynamic dimension {name!r} must be an integer of 2 or more, "
                f"got {example.strip()!r}"
            )
        ex = int(example)
    else:
        ex = FIRST_EXAMPLE if index == 0 else OTHER_EXAMPLE
    return Dim(size=None, name=name, example=ex)


def parse_input(text: str) -> InputSpec:
    """Parse ``NAME:DIMS:DTYPE[:LOW..HIGH]`` (``image:batch,3,224,224:FP32``); the error names the part."""
    where = f"--input {text!r}"
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise SpecError(
            f"{where}: expected NAME:DIMS:DTYPE or NAME:DIMS:DTYPE:LOW..HIGH, e.g. image:batch,3,224,224:FP32"
        )
    name, dims_text, dtype_text = (p.strip() for p in parts[:3])
    if not _NAME.match(name):
        raise SpecError(f"{where}: input name {name!r} must start with a letter or _")
    try:
        datatype = datatypes.parse(dtype_text).v2
    except KeyError as e:
        raise SpecError(f"{where}: {e.args[0]}") from None
    if datatype == "BYTES":
        raise SpecError(f"{where}: BYTES inputs cannot be exported from PyTorch (no string tensors)")
    dims: tuple[Dim, ...] = ()
    if dims_text:  # an empty DIMS is a scalar
        dims = tuple(_parse_dim(t, i, where) for i, t in enumerate(dims_text.split(",")))
    seen: dict[str, int] = {}
    for d in dims:
        if d.name is not None:
            if d.name in seen:
                raise SpecError(f"{where}: dynamic dimension {d.name!r} appears twice")
            seen[d.name] = d.example
    low = high = None
    if len(parts) == 4:
        low, high = _parse_range(parts[3], datatype, where)
    return InputSpec(name=name, dims=dims, datatype=datatype, low=low, high=high)


def parse_inputs(texts: list[str]) -> list[InputSpec]:
    """Parse every ``--input``; names must be unique and a shared dim name must share its example."""
    if not texts:
        raise SpecError("at least one --input NAME:DIMS:DTYPE is required")
    specs = [parse_input(t) for t in texts]
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SpecError(f"--input: name {dup[0]!r} is given twice")
    examples: dict[str, int] = {}
    for s in specs:
        for d in s.dims:
            if d.name is None:
                continue
            if examples.setdefault(d.name, d.example) != d.example:
                raise SpecError(
                    f"--input {s.name}: dynamic dimension {d.name!r} has example size {d.example} here "
                    f"and {examples[d.name]} in another input"
                )
    return specs


def random_arrays(specs: list[InputSpec], batch: int | None, seed: int) -> dict[str, Any]:
    """Generated inputs of the spec's shapes, the first dimension set to ``batch`` when it is dynamic
    (``None``: the example shape); see :func:`make_arrays`."""
    sizes: dict[str, int] = {}
    if batch is not None:
        sizes = {s.dims[0].name: batch for s in specs if s.batch_dynamic and s.dims[0].name}
    return make_arrays(specs, sizes, seed)


def base_sizes(specs: list[InputSpec], example: Mapping[str, Any] | None = None) -> dict[str, int]:
    """The size of every dynamic dimension by name: the example file's, else the spec's example size."""
    sizes: dict[str, int] = {}
    for s in specs:
        for axis, d in enumerate(s.dims):
            if d.name is None:
                continue
            if example is not None and s.name in example:
                sizes.setdefault(d.name, int(example[s.name].shape[axis]))
            else:
                sizes.setdefault(d.name, d.example)
    return sizes


def _shape(spec: InputSpec, sizes: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(d.size if d.size is not None else int(sizes.get(d.name or "", d.example)) for d in spec.dims)


def _generate(spec: InputSpec, shape: tuple[int, ...], rng: Any) -> Any:
    import numpy as np

    dtype = datatypes.by_v2(spec.datatype).numpy
    if spec.is_mask:
        if not shape:
            return np.ones((), dtype)
        lengths = rng.integers(1, shape[-1] + 1, shape[:-1] + (1,))
        return (np.arange(shape[-1]) < lengths).astype(dtype)
    if dtype.kind == "f":
        if spec.low is None:
            return rng.standard_normal(shape).astype(dtype)
        return rng.uniform(spec.low, spec.high, shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    low, high = (0, 9) if spec.low is None else (int(spec.low), int(spec.high))  # type: ignore[arg-type]
    if dtype.kind == "u" and high >= 2**63:  # numpy draws int64; the top of uint64 needs its own dtype
        return rng.integers(low, high, shape, dtype=np.uint64, endpoint=True)
    return rng.integers(low, high, shape, endpoint=True).astype(dtype)


def make_arrays(
    specs: list[InputSpec],
    sizes: Mapping[str, int] | None,
    seed: int,
    example: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One set of inputs ``{name: numpy array}``, reproducible from ``seed``.

    ``sizes`` maps dynamic dimension names to sizes; a dimension not in it keeps its base size
    (:func:`base_sizes`). Without ``example`` the values are generated as the module docstring says.
    With ``example`` (from :func:`load_example`) they are the example's: along each dynamic
    dimension its first N entries, repeated from the start when N exceeds what the example holds
    (a prefix of a right-padded sequence is still a valid sequence; ``seed`` is then unused).
    """
    import numpy as np

    sizes = sizes or {}
    rng = np.random.default_rng(seed)
    arrays: dict[str, Any] = {}
    for s in specs:
        if example is None:
            arrays[s.name] = _generate(s, _shape(s, sizes), rng)
            continue
        a = example[s.name]
        for axis, d in enumerate(s.dims):
            if d.name is not None and d.name in sizes and sizes[d.name] != a.shape[axis]:
                a = np.take(a, np.arange(sizes[d.name]), axis=axis, mode="wrap")
        arrays[s.name] = np.ascontiguousarray(a)
    return arrays


def make_rows(
    specs: list[InputSpec],
    count: int,
    sizes: Mapping[str, int] | None,
    seed: int,
    example: Mapping[str, Any] | None = None,
    batch_dim: str = "batch",
) -> list[dict[str, Any]]:
    """``count`` single rows ``{name: array}``, each of size 1 along the dimension named
    ``batch_dim``, at the other dimensions' ``sizes``; for checks that run rows alone and merged.

    The rows are the rows of one :func:`make_arrays` batch of ``count``: generated rows differ
    from each other (each mask has its own length); example rows are the example's in order,
    repeated when ``count`` exceeds its rows. An input without ``batch_dim`` is the same in every row.
    """
    import numpy as np

    full = make_arrays(specs, {**(sizes or {}), batch_dim: count}, seed, example)
    rows: list[dict[str, Any]] = [{} for _ in range(count)]
    for s in specs:
        axis = next((i for i, d in enumerate(s.dims) if d.name == batch_dim), None)
        for i, row in enumerate(rows):
            a = full[s.name]
            row[s.name] = a if axis is None else np.ascontiguousarray(np.take(a, [i], axis=axis))
    return rows


def load_example(
    path: Path, specs: list[InputSpec], flag: str = "--example", extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Read ``FILE.npz``: one array per input name, checked against the specs.

    Every input needs an array of the spec's rank, its fixed dimensions, one size per dynamic
    dimension name across inputs, a dtype of the same kind (floats for FP, integers for INT/UINT,
    integers or booleans for BOOL) whose values fit the input's datatype and ``LOW..HIGH`` range.
    Arrays are returned cast to the input's datatype; names in ``extra`` (``labels``) pass unchecked.
    Errors (:class:`SpecError`) name the file, the array and what is wrong, in one line.
    """
    return check_example(read_npz(path, flag), specs, f"{flag} {path}", extra)


def read_npz(path: Path, flag: str = "--example") -> dict[str, Any]:
    """The arrays of ``FILE.npz`` by name (no pickled objects); :class:`SpecError` when unreadable."""
    import numpy as np

    where = f"{flag} {path}"
    if not path.is_file():
        raise SpecError(f"{where}: file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as e:
        raise SpecError(f"{where}: not a readable .npz file ({type(e).__name__}: {e})") from e


def check_example(
    arrays: dict[str, Any], specs: list[InputSpec], where: str, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """:func:`load_example`'s checks on arrays already read; ``where`` starts each error."""
    import numpy as np

    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise SpecError(
            f"{where}: no array for input {missing[0]!r} (arrays: {', '.join(sorted(arrays)) or 'none'})"
        )
    unknown = sorted(set(arrays) - set(names) - set(extra))
    if unknown:
        raise SpecError(f"{where}: array {unknown[0]!r} is not an input (inputs: {', '.join(names)})")
    out: dict[str, Any] = {k: v for k, v in arrays.items() if k in extra}
    seen: dict[str, tuple[str, int]] = {}
    for s in specs:
        a = arrays[s.name]
        want = datatypes.by_v2(s.datatype).numpy
        if a.ndim != len(s.dims):
            raise SpecError(
                f"{where}: array {s.name!r} has shape {list(a.shape)}, rank {a.ndim}; the input {s} has "
                f"rank {len(s.dims)}"
            )
        for axis, d in enumerate(s.dims):
            n = int(a.shape[axis])
            if d.size is not None and n != d.size:
                raise SpecError(
                    f"{where}: array {s.name!r} has shape {list(a.shape)}; "
                    f"dimension {axis + 1} of {s} is {d.size}"
                )
            if d.name is not None:
                if n < 1:
                    raise SpecError(f"{where}: array {s.name!r} is empty along dimension {d.name!r}")
                other, size = seen.setdefault(d.name, (s.name, n))
                if size != n:
                    raise SpecError(
                        f"{where}: dimension {d.name!r} is {n} in array {s.name!r} and {size} in {other!r}"
                    )
        kinds = {"f": "f", "i": "iu", "u": "iu", "b": "biu"}[want.kind]
        if a.dtype.kind not in kinds:
            raise SpecError(f"{where}: array {s.name!r} is {a.dtype}, the input {s.name!r} is {s.datatype}")
        if a.dtype.kind in "iu" and a.size:
            lo, hi = (0, 1) if want.kind == "b" else (np.iinfo(want).min, np.iinfo(want).max)
            if s.low is not None:
                lo, hi = max(lo, int(s.low)), min(hi, int(s.high))  # type: ignore[arg-type]
            if int(a.min()) < lo or int(a.max()) > hi:
                raise SpecError(
                    f"{where}: array {s.name!r} holds values {int(a.min())}..{int(a.max())}, outside "
                    f"{lo}..{hi} ({'--input range' if s.low is not None else s.datatype})"
                )
        elif a.dtype.kind == "f" and a.size:
            if not np.isfinite(a).all():
                raise SpecError(f"{where}: array {s.name!r} holds NaN or infinite values")
            if s.low is not None and (float(a.min()) < s.low or float(a.max()) > s.high):  # type: ignore[operator]
                raise SpecError(
                    f"{where}: array {s.name!r} holds values {float(a.min()):g}..{float(a.max()):g}, "
                    f"outside the --input range {s.range_text}"
                )
        out[s.name] = np.ascontiguousarray(a.astype(want))
    return out
