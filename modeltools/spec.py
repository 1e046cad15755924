"""``--input NAME:DIMS:DTYPE``: the inputs a model is exported with.

DIMS is comma-separated. An integer is a fixed dimension; a name marks a dynamic one
(``batch,3,224,224``). A dynamic dimension may carry the size of the example input used for the
export (``seq=16``); by default a dynamic first dimension is exported with an example of 2 (the
dynamo exporter specialises dimensions of size 1) and any other dynamic dimension with 8. The same
name in two inputs means the same dimension (``batch`` of ``ids`` and ``mask``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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
        return f"{self.name}:{dims}:{self.datatype}"


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
    """Parse ``NAME:DIMS:DTYPE`` (``image:batch,3,224,224:FP32``); the error names the part."""
    where = f"--input {text!r}"
    parts = text.split(":")
    if len(parts) != 3:
        raise SpecError(f"{where}: expected NAME:DIMS:DTYPE, e.g. image:batch,3,224,224:FP32")
    name, dims_text, dtype_text = (p.strip() for p in parts)
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
    return InputSpec(name=name, dims=dims, datatype=datatype)


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
    """Random inputs of the spec's shapes (first dim set to ``batch`` when dynamic), reproducibly.

    Floats are standard normal, integers are drawn from 0..9 (valid for small vocabularies and
    class indices), booleans are fair coins.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays: dict[str, Any] = {}
    for s in specs:
        shape = s.example_shape if batch is None else s.shape_with_batch(batch)
        dtype = datatypes.by_v2(s.datatype).numpy
        if dtype.kind == "f":
            arrays[s.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[s.name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            arrays[s.name] = rng.integers(0, 10, shape).astype(dtype)
    return arrays
