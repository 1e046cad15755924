"""``inferstack export``: PyTorch to a checked ONNX model package.

The steps, each of which stops the export with one clear message:

1. load the source (see :mod:`loading`) and run it once on the example inputs, so that a shape
   the module does not accept is reported in PyTorch's words before the exporter's;
2. ``torch.onnx.export(..., dynamo=True)`` with a ``torch.export.Dim`` per named dimension; when
   that exporter fails on a module (transformers' attention code in T5 and Swin, for one), the
   TorchScript exporter (``dynamo=False``) is tried instead, said in the output and recorded in the
   manifest (``exporter``), and the parity check holds it to the same bar. Data-dependent control
   flow and a dynamic dimension the module fixes are never handed to it: TorchScript would record
   one branch or one size without a word;
3. save, with the weights as external data when the model is large, and ``onnx.checker`` on the path
   (the only form that works past 2 GB);
4. read the signature back from the ONNX graph, run the parity check in a subprocess;
5. write ``manifest.json`` and move the package into place.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferstack.modeltools import batching, loading, naming, parity, signature
from inferstack.modeltools._text import first_line
from inferstack.modeltools.flags import check_field
from inferstack.modeltools.loading import Source
from inferstack.modeltools.spec import InputSpec, load_example, random_arrays
from inferstack.modeltools.staging import check_destination, staged_dir

from inferstack.batchcheck import DEFAULT_BATCH_DIM
from inferstack.errors import InferstackError
from inferstack.manifest import (
    INPUT_FORMATS,
    MANIFEST_NAME,
    Manifest,
    TensorSpec,
    file_entries,
    sha256_file,
    write_manifest,
)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
MIN_OPSET = 18
DEFAULT_OPSET = 18
DEFAULT_MAX_BATCH = 64
#: Weights above this size go to ``model.onnx.data`` (protobuf cannot hold more than 2 GB).
EXTERNAL_DATA_BYTES = 1 << 30
MODEL_FILE = "model.onnx"
EXPORTERS = ("auto", "dynamo", "torchscript")


class ExportError(InferstackError):
    """The model cannot be exported as asked."""


class _UseTorchScript(Exception):
    """--exporter torchscript: skip the dynamo exporter."""


@dataclass
class ExportOptions:
    source: Source
    inputs: list[InputSpec]
    out: Path
    outputs: list[str] = field(default_factory=list)
    name: str | None = None
    version: str = "1"
    opset: int = DEFAULT_OPSET
    max_batch_size: int | None = None  # None: DEFAULT_MAX_BATCH when there is a batch axis, else 0
    external_data: bool | None = None  # None: when the weights exceed EXTERNAL_DATA_BYTES
    atol: float = parity.DEFAULT_ATOL
    rtol: float = parity.DEFAULT_RTOL
    skip_parity: bool = False

    batch_dim: str = DEFAULT_BATCH_DIM  # the dimension requests are merged along (--batch-dim)
    example: Path | None = None  # --example FILE.npz: real inputs for the checks (spec.load_example)
    exporter: str = "auto"  # auto (dynamo, TorchScript when dynamo fails) | dynamo | torchscript
    #: input name -> "NCHW" | "NHWC" (--input-format): an image input's layout, in the manifest
    input_formats: dict[str, str] = field(default_factory=dict)


Progress = Callable[[str], None]


def max_opset() -> int:
    """The newest default-domain opset the installed onnx knows (and so can check)."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


def _opset_range() -> str:
    return f"supported opsets are {MIN_OPSET} (the dynamo exporter's oldest) to {max_opset()} (onnx's newest)"


def default_name(source: Source) -> str:
    """A package name from the source: the file stem, or module and factory names."""
    spec = source.spec
    if ":" in Path(spec).name and source.kind == "factory":
        target, _, attr = spec.rpartition(":")
        base = Path(target).stem if target.endswith(".py") else target.rsplit(".", 1)[-1]
        base = base if attr in ("build", "create", "model", "make_model", "factory") else f"{base}-{attr}"
    else:
        base = Path(spec).stem
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.") or "model"
    return name[:128] if name[0].isalnum() else f"m{name}"[:128]


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[io.StringIO]:
    """The exporter prints progress and warnings; keep them for --verbose, not for the user's screen."""
    buf = io.StringIO()
    # "torch" covers its children without a level of their own (torch.fx's symbolic shapes log
    # "Unable to find user code" on data-dependent control flow) through torch's own handler,
    # which writes to the real stderr past the redirect below.
    names = ("torch", "torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    import warnings

    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _torch_inputs(specs: list[InputSpec]) -> dict[str, Any]:
    import torch

    arrays = random_arrays(specs, batch=None, seed=0)
    return {s.name: torch.from_numpy(arrays[s.name]) for s in specs}


def _dynamic_shapes(
    specs: list[InputSpec], binding: loading.Binding
) -> dict[str, dict[int, Any]] | tuple[dict[int, Any], ...] | None:
    """``torch.export`` dynamic shapes: by position when every input is passed by position (a lone
    input may have another name than its parameter), else keyed by ``forward()`` parameter name."""
    import torch

    dims: dict[str, Any] = {}
    shapes: dict[str, dict[int, Any]] = {}
    for s in specs:
        shape: dict[int, Any] = {}
        for i, d in enumerate(s.dims):
            if d.name is not None:
                shape[i] = dims.setdefault(d.name, torch.export.Dim(d.name, min=1))
        shapes[s.name] = shape
    if not dims:
        return None
    if not binding.keyword:
        return tuple(shapes[n] for n in binding.positional)
    return shapes


def _shapes_text(specs: list[InputSpec]) -> str:
    return ", ".join(f"{s.name}:{list(s.example_shape)} {s.datatype}" for s in specs)


def _check_forward(model: Any, feeds: dict[str, Any], specs: list[InputSpec]) -> Any:
    """Run the model once on the example inputs (bound by name); return what forward returned."""
    import torch

    model = loading.runnable(model)
    args, kwargs = loading.bind_inputs(model, list(feeds)).split(feeds)
    try:
        with torch.no_grad():
            return model(*args, **kwargs)
    except SystemExit as e:
        raise ExportError(
            f"the model's forward called sys.exit({e.code}); it must return its outputs"
        ) from None
    except Exception as e:
        raise ExportError(
            f"the model does not accept the inputs {_shapes_text(specs)}: {first_line(e)} "
            "(check --input against the module's forward)"
        ) from e


def _explain_export_failure(e: BaseException, opset: int) -> str:
    text = str(e)
    m = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>", text)
    if m:
        return (
            f"unsupported operator {m.group(1)}.{m.group(2)}: the ONNX exporter has no translation for it "
            f"at opset {opset} (replace it in the module, or register a custom translation)"
        )
    m = re.search(r"No ONNX function found for ([^\s.]+(?:\.[^\s.]+)*)", text)
    if m:
        return (
            f"unsupported operator {m.group(1)}: the ONNX exporter has no translation for it at opset {opset}"
        )
    if _data_dependent(e):
        m = re.search(r'File "([^"]+)", line (\d+), in \S+\n\s*(.+)', text)
        where = f" at {Path(m.group(1)).name}:{m.group(2)} ({m.group(3).strip()!r})" if m else ""
        return (
            f"forward branches on the values of a tensor{where}, which the dynamo exporter cannot "
            "record (data-dependent control flow); write the branch with torch.cond or torch.where, "
            "or pass --exporter torchscript if every input takes the same branch (TorchScript records "
            "the one branch the example input takes)"
        )
    m = re.search(r"Constraints violated \(([^)]*)\)", text)
    if m:
        return (
            f"the module fixes dynamic dimension(s) {m.group(1)} to the example size; "
            "give that dimension a number in --input, or make the module accept any size"
        )
    summary = re.search(r"## Exception summary\s+(.*?)(?:\n\n|$)", text, re.S)
    detail = summary.group(1).strip().splitlines()[0] if summary else first_line(e)
    return "ONNX export failed: " + _ANSI.sub("", detail)


def _portable(spec: str) -> str:
    """The source as recorded in the manifest: a file path reduced to its file name (``model.py:build``,
    ``model.pt2``), so that no path of the build machine is in the package and the manifest does not
    depend on where the export ran; a module path (``package.module:factory``) as given."""
    target, sep, attr = spec.rpartition(":")
    if sep and not (target.endswith(".py") or "/" in target or "\\" in target):
        return spec
    return f"{Path(target).name}{sep}{attr}" if sep else Path(spec).name


def _check_dynamic_dims(specs: list[InputSpec], inputs: list[TensorSpec]) -> None:
    """A dimension declared dynamic in --input must be dynamic in the graph, not specialized."""
    declared = {s.name: s for s in specs}
    for t in inputs:
        spec = declared[t.name]
        if len(spec.dims) != len(t.shape):
            raise ExportError(
                f"--input {t.name}: the exported graph takes {len(t.shape)} dimension(s), "
                f"not {len(spec.dims)}"
            )
        for i, (d, size) in enumerate(zip(spec.dims, t.shape, strict=True)):
            if d.dynamic and size != -1:
                raise ExportError(
                    f"--input {t.name}: dimension {i + 1} ({d.name!r}) was declared dynamic, but the "
                    f"exporter fixed it to {size} (the module specializes it); give that dimension "
                    "its number in --input, or make the module accept any size"
                )


def _explain_checker_failure(e: BaseException, outputs: list[str]) -> str:
    m = re.search(r"'([^']+)' has been used as output names multiple times", str(e))
    if m and m.group(1) in outputs:
        return (
            f"--output {m.group(1)!r} is also the name of a value inside the exported graph "
            "(onnx.checker: not in SSA form); choose another --output name"
        )
    return f"the exported model fails onnx.checker: {first_line(e)}"


def _data_dependent(e: BaseException) -> bool:
    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and len(chain) < 10:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    return any("GuardOnDataDependent" in type(x).__name__ or "data-dependent" in str(x) for x in chain)


def _may_fall_back(e: BaseException, model: Any) -> bool:
    """Whether the TorchScript exporter may stand in for a failed dynamo export: a module (not a
    torch.export program), and not a failure TorchScript would hide (a branch on tensor values, a
    declared dynamic dimension the module fixes)."""
    import torch

    return (
        isinstance(model, torch.nn.Module) and not _data_dependent(e) and "Constraints violated" not in str(e)
    )


def _torchscript_export(
    model: Any,
    feeds: dict[str, Any],
    binding: loading.Binding,
    path: Path,
    specs: list[InputSpec],
    outputs: list[str],
    opset: int,
) -> None:
    """``torch.onnx.export(..., dynamo=False)``: traces the module on ``feeds``, each passed to the
    ``forward()`` parameter of its name (``binding``; the traced graph takes them in ``forward()``'s
    order, which is ``binding.order``); every named dimension is a dynamic axis. ``outputs`` are the
    names :func:`naming.output_names` gave; :func:`naming.normalize` sets them on the saved graph."""
    import torch

    args, kwargs = binding.split(feeds)
    axes: dict[str, dict[int, str]] = {
        s.name: {i: d.name for i, d in enumerate(s.dims) if d.name is not None} for s in specs
    }
    torch.onnx.export(
        model,
        args,
        str(path),
        kwargs=kwargs or None,
        dynamo=False,
        opset_version=opset,
        input_names=list(binding.order),
        output_names=list(outputs),
        dynamic_axes={k: v for k, v in axes.items() if v} or None,
    )


def _param_bytes(model: Any) -> int:
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        tensors = list(model.state_dict.values()) + list(model.constants.values())
    else:
        tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _producer() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for pkg in ("inferstack", "torch", "onnx", "onnxscript", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _check_flags(opts: ExportOptions, name: str) -> None:
    """Flags the manifest would reject, refused before any work, each by its flag."""
    check_field("--name", "name", name)
    check_field("--version", "version", opts.version)
    if opts.max_batch_size is not None and opts.max_batch_size < 0:
        raise ExportError(
            f"--max-batch-size {opts.max_batch_size}: must be 0 (no batching) or a positive batch size"
        )

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", opts.batch_dim):
        raise ExportError(f"--batch-dim {opts.batch_dim!r}: must be a dimension name as in --input (batch)")
    if opts.exporter not in EXPORTERS:
        raise ExportError(f"--exporter {opts.exporter!r}: choose {', '.join(EXPORTERS)}")
    for flag, tol in (("--atol", opts.atol), ("--rtol", opts.rtol)):
        if not tol >= 0:  # also refuses NaN
            raise ExportError(f"{flag} {tol}: a tolerance must be 0 or more")
    specs = {s.name: s for s in opts.inputs}
    for input_name, layout in opts.input_formats.items():
        where = f"--input-format {input_name}={layout}"
        if input_name not in specs:
            raise ExportError(f"{where}: no --input named {input_name!r} ({', '.join(specs)})")
        if layout not in INPUT_FORMATS:
            raise ExportError(f"{where}: choose {' or '.join(INPUT_FORMATS)}")
        dims = specs[input_name].dims
        image = [d for i, d in enumerate(dims) if i or d.name != opts.batch_dim]  # all but the batch axis
        if len(image) != 3:
            raise ExportError(f"{where}: an image input has 3 dimensions besides the batch axis "
                              f"{opts.batch_dim!r} (C, H, W in some order); {input_name!r} has {len(image)}")


def export(opts: ExportOptions, progress: Progress = lambda _msg: None) -> tuple[Manifest, Path]:
    """Export, check and package; return the manifest and the package directory."""
    import onnx
    import torch

    if not MIN_OPSET <= opts.opset <= max_opset():
        raise ExportError(f"--opset {opts.opset}: {_opset_range()}")
    names = [s.name for s in opts.inputs]
    if len(set(opts.outputs)) != len(opts.outputs):
        raise ExportError(f"--output: names must be unique, got {', '.join(opts.outputs)}")
    if set(opts.outputs) & set(names):
        raise ExportError("--output: an output cannot have the name of an input")
    name = opts.name or default_name(opts.source)
    _check_flags(opts, name)
    check_destination(opts.out)
    example = load_example(opts.example, opts.inputs) if opts.example else None

    progress(f"loading {opts.source.spec}")
    model = loading.load(opts.source)
    feeds = _torch_inputs(opts.inputs)
    binding = loading.bind_inputs(model, names)
    result = _check_forward(model, feeds, opts.inputs)
    out_names = naming.output_names(result, opts.outputs)
    del result
    if set(out_names) & set(names):
        raise ExportError(f"output names {', '.join(out_names)}: an output cannot have the name of an input")
    args, kwargs = binding.split(feeds)
    is_program = isinstance(model, torch.export.ExportedProgram)
    if is_program and opts.exporter == "torchscript":
        raise ExportError(
            f"--exporter torchscript: {opts.source.spec} is a torch.export program; the TorchScript "
            "exporter takes a module (a factory or a pickled module)"
        )

    with staged_dir(opts.out) as stage:
        model_path = stage / MODEL_FILE
        progress(f"exporting to ONNX (opset {opts.opset})")
        exporter, fallback_reason = "dynamo", None
        with _quiet_exporter() as log:
            try:
                if opts.exporter == "torchscript":
                    raise _UseTorchScript
                program = torch.onnx.export(
                    model,
                    args,
                    None,
                    kwargs=kwargs,
                    dynamo=True,
                    opset_version=opts.opset,
                    dynamic_shapes=None if is_program else _dynamic_shapes(opts.inputs, binding),
                    optimize=True,
                )
            except Exception as e:
                program = None
                if isinstance(e, _UseTorchScript):
                    fallback_reason = "--exporter torchscript"
                else:
                    fallback_reason = _explain_export_failure(e, opts.opset)
                    if opts.exporter == "dynamo" or not _may_fall_back(e, model):
                        raise ExportError(fallback_reason) from e
                    progress("the dynamo exporter failed; trying the TorchScript exporter")
                exporter = "torchscript"
                try:
                    _torchscript_export(model, feeds, binding, model_path, opts.inputs, out_names, opts.opset)
                except Exception as e2:
                    if isinstance(e, _UseTorchScript):
                        raise ExportError(f"the TorchScript exporter failed: {first_line(e2)}") from e2
                    raise ExportError(
                        f"{fallback_reason}; the TorchScript exporter failed too: {first_line(e2)}"
                    ) from e
            external = opts.external_data
            if external is None:
                external = _param_bytes(model) > EXTERNAL_DATA_BYTES
            progress("saving" + (" with external data" if external else ""))
            try:
                if program is not None:
                    program.save(model_path, external_data=external)
                elif external:
                    onnx.save_model(
                        onnx.load(str(model_path)),
                        str(model_path),
                        save_as_external_data=True,
                        all_tensors_to_one_file=True,
                        location=model_path.name + ".data",
                    )
            except Exception as e:
                raise ExportError(f"saving the ONNX model failed: {first_line(e)}") from e
        if log.getvalue():
            logging.getLogger(__name__).debug(log.getvalue())
        del program
        # Names by binding (inputs) and by what forward returned (outputs), set on the saved graph;
        # build-machine metadata (paths, module names, stack traces) dropped.
        dim_names = {s.name: [d.name for d in s.dims] for s in opts.inputs}
        naming.normalize(model_path, list(binding.order), out_names, dim_names)

        progress("checking the ONNX model")
        try:
            onnx.checker.check_model(str(model_path))
        except Exception as e:
            raise ExportError(_explain_checker_failure(e, opts.outputs)) from e
        graph = signature.load_graph(model_path)
        inputs, outputs = signature.signature(graph, model_path)
        for spec in inputs:
            spec.format = opts.input_formats.get(spec.name)
        opset = signature.opset(graph)
        del graph
        if opset != opts.opset:
            raise ExportError(
                f"--opset {opts.opset}: the exporter could not convert the model to it and wrote opset "
                f"{opset}; {_opset_range()}, but some operators may not convert (try another --opset)"
            )
        _check_dynamic_dims(opts.inputs, inputs)

        progress(f"batch-independence check on the {opts.batch_dim!r} axis")
        batch_record = batching.check(
            model_path,
            opts.batch_dim,
            batching.rows_from_specs(opts.inputs, opts.batch_dim, example),
            data="example" if example is not None else "generated",
            max_batch_size=opts.max_batch_size or DEFAULT_MAX_BATCH,
        )
        max_batch = DEFAULT_MAX_BATCH if batch_record.batchable else 0
        if opts.max_batch_size is not None:
            if opts.max_batch_size and not batch_record.batchable:
                raise ExportError(
                    f"--max-batch-size {opts.max_batch_size}: merging requests could change answers: "
                    f"{batch_record.reason}"
                )
            max_batch = opts.max_batch_size
        parity_record = None
        if not opts.skip_parity:
            batches = parity.batch_sizes(opts.inputs, max_batch)
            progress(f"parity check against PyTorch at batch sizes {batches} and every dynamic dimension")
            parity_record = parity.run(
                model, model_path, opts.inputs, batches, opts.atol, opts.rtol, example=example
            )
            if not parity_record["passed"]:
                raise parity.ParityError(f"parity check failed: {parity.summary(parity_record)}")

        del model
        files = [p.name for p in sorted(stage.iterdir()) if p.is_file() and p.name != MANIFEST_NAME]
        source_record: dict[str, Any] = {
            "kind": opts.source.kind,
            "spec": _portable(opts.source.spec),
            "inputs": [parity._spec_text(s) for s in opts.inputs],
            "weights": Path(opts.source.weights).name if opts.source.weights else None,
            "weights_sha256": sha256_file(opts.source.weights) if opts.source.weights else None,
            "trust_pickle": opts.source.trust_pickle,
            "example_sha256": sha256_file(opts.example) if opts.example else None,
            "external_data": external,
        }
        if fallback_reason is not None:
            source_record["exporter_reason"] = fallback_reason
        manifest = Manifest(
            name=name,
            version=opts.version,
            model_file=MODEL_FILE,
            files=file_entries(stage, files),
            inputs=inputs,
            outputs=outputs,
            max_batch_size=max_batch,
            batch_check=batch_record.to_dict(),
            opset=opset,
            exporter=exporter,
            producer=_producer(),
            parity=parity_record,
            source=source_record,
        )
        progress("writing manifest")
        write_manifest(stage, manifest)
    return manifest, opts.out
