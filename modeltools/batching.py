"""The batch-independence check of ``export`` and ``verify``, on the exported ONNX model.

The runtime merges requests along the batch axis only when the package says it may
(``max_batch_size`` > 0). That is decided here, by :mod:`inferstack.batchcheck` on onnxruntime with
the exported graph: the axis named ``--batch-dim`` (default ``batch``) must be the first dimension
of every input and output, the graph must be proven row-independent
(:func:`inferstack.batchproof.prove_row_independence`), and k distinct rows (of mixed magnitudes)
run merged must give what each row gives alone, at every merged size from 2 to
``min(max_batch_size, 16)`` and ``max_batch_size`` (:func:`inferstack.batchcheck.check_sizes`) and
at two sizes of every other dynamic dimension. The record carries the sha256 of the model file it
was made on: the runtime trusts it for that file only. The rows come from the same source as the
parity check's inputs (:func:`inferstack.modeltools.spec.make_arrays`: the user's ``--example``
when given, else data generated from the ``--input`` specs), so both checks see the same data.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inferstack.modeltools import signature
from inferstack.modeltools._ort import session_options
from inferstack.modeltools.spec import InputSpec, base_sizes, make_arrays

from inferstack import datatypes
from inferstack.batchcheck import (
    DEFAULT_BATCH_DIM,
    BatchCheck,
    MakeRows,
    batch_axis_problem,
    check_batch_independence,
    check_sizes,
    combine,
    random_rows,
)
from inferstack.batchproof import prove_row_independence
from inferstack.manifest import Manifest, sha256_file

#: the merged sizes are checked up to this many rows when the package merges none yet
CHECK_MAX_BATCH = 64


def rows_from_specs(
    specs: list[InputSpec], batch_dim: str = DEFAULT_BATCH_DIM, example: Mapping[str, Any] | None = None
) -> MakeRows:
    """A ``make_rows`` giving ``count`` rows of the data the parity check runs on
    (:func:`inferstack.modeltools.spec.make_arrays`: the ``--input`` ranges and padding masks).

    Generated rows: every other dynamic dimension is its base size plus the size the check asks for
    (3, then 7): sizes that differ from each other and from the example, and no smaller than the
    example the export ran on (a convolution stack may refuse a 3-pixel image). Rows of ``example``
    (:func:`inferstack.modeltools.spec.load_example`) are the example's own rows at their own
    lengths, never repeated (a repeated row cannot show that rows mix), so the check tries the batch
    sizes the example fills. The check records the sizes the rows had."""
    base = base_sizes(specs, example)

    def make(count: int, dim_sizes: Mapping[str, int], seed: int) -> dict[str, Any]:
        if example is not None:
            held = [
                int(example[s.name].shape[axis])
                for s in specs
                for axis, d in enumerate(s.dims)
                if d.name == batch_dim
            ]
            rows = min(held, default=count)
            return make_arrays(specs, {batch_dim: min(count, rows)}, seed, example)
        sizes = {name: size + int(dim_sizes.get(name, 0)) for name, size in base.items() if name != batch_dim}
        return make_arrays(specs, {**sizes, batch_dim: count}, seed)

    return make


def check(model_path: Path, batch_dim: str, make_rows: MakeRows, data: str = "generated",
          max_batch_size: int = CHECK_MAX_BATCH) -> BatchCheck:
    """The static proof on the ONNX file at ``model_path`` and, when it holds, the merged-vs-alone
    check with onnxruntime (CPU, one thread) at :func:`check_sizes` of ``max_batch_size``. The
    record says both and carries the file's sha256."""
    import onnxruntime as ort

    digest = sha256_file(model_path)
    inputs, outputs = signature.named_dims(signature.load_graph(model_path))
    problem = batch_axis_problem(inputs, outputs, batch_dim)
    if problem is not None:
        return BatchCheck(False, problem, batch_dim, data=data, proof=f"not attempted: {problem}",
                          model_sha256=digest)
    proof = prove_row_independence(model_path, batch_dim)
    if not proof.proven:
        return combine(BatchCheck(False, "", batch_dim, data=data), False, proof.reason, digest)

    session = ort.InferenceSession(str(model_path), session_options(1), providers=["CPUExecutionProvider"])
    names = [name for name, _ in outputs]

    def run(feeds: dict[str, Any]) -> list[Any]:
        return list(session.run(names, feeds))

    record = check_batch_independence(run, inputs, outputs, make_rows, batch_dim=batch_dim, data=data,
                                      sizes=check_sizes(max_batch_size))
    return combine(record, True, proof.reason, digest)


def check_package(model_path: Path, manifest: Manifest) -> BatchCheck:
    """The check on ``model_path`` (the package's model, or a variant of it) with the manifest's
    batch dimension and the export's example data (``source.inputs``); generated rows when the
    manifest does not record them."""
    from inferstack.modeltools.spec import parse_inputs

    batch_dim = str((manifest.batch_check or {}).get("batch_dim") or DEFAULT_BATCH_DIM)
    specs_text = (manifest.source or {}).get("inputs")
    make_rows: MakeRows
    if specs_text:
        make_rows = rows_from_specs(parse_inputs(list(specs_text)), batch_dim)
    else:
        graph_inputs, _ = signature.named_dims(signature.load_graph(model_path))
        dtypes = {t.name: datatypes.by_v2(t.datatype).numpy for t in manifest.inputs}
        make_rows = random_rows([(n, d, dtypes[n]) for n, d in graph_inputs], batch_dim)
    return check(model_path, batch_dim, make_rows,
                 max_batch_size=manifest.max_batch_size if manifest.max_batch_size > 0 else CHECK_MAX_BATCH)
