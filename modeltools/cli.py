"""The model tools' commands: ``inferstack export``, ``verify`` and ``optimize``.

Heavy imports (torch, onnx, onnxruntime) happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from inferstack.console import cli_errors, fail

SourceArg = Annotated[
    str,
    typer.Argument(
        help="model.pt2 (torch.export program), package.module:factory, path/to/file.py:factory, "
        "or a pickled module (.pth/.pt, only with --trust-pickle).",
        show_default=False,
    ),
]


def _input_formats(values: list[str]) -> dict[str, str]:
    """``--input-format NAME=NCHW`` values as name -> layout (a malformed one is an exit 1)."""
    formats: dict[str, str] = {}
    for value in values:
        name, sep, layout = value.partition("=")
        if not sep or not name or not layout:
            raise fail(f"--input-format {value}: expected NAME=NCHW or NAME=NHWC")
        if name in formats:
            raise fail(f"--input-format: {name!r} is given twice")
        formats[name] = layout.upper()
    return formats


@cli_errors
def export(
    source: SourceArg,
    input: Annotated[
        list[str],
        typer.Option(
            "--input",
            "-i",
            help="NAME:DIMS:DTYPE[:LOW..HIGH], e.g. image:batch,3,224,224:FP32 or "
            "input_ids:batch,seq:INT64:0..30521 (a name marks a dynamic dimension; name=N sets its "
            "example size; LOW..HIGH bounds the generated check data). Without a range integers are "
            "0..9, except inputs named *mask*: padding masks (1s then 0s). Repeat per input.",
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Package directory to write.")],
    output: Annotated[
        list[str] | None, typer.Option("--output", help="Name of an output, in order. Repeat per output.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Model name (default: from the source).")] = None,
    version: Annotated[str, typer.Option(help="Model version recorded in the manifest.")] = "1",
    weights: Annotated[
        Path | None, typer.Option(help="State dict for a factory source (loaded with weights_only=True).")
    ] = None,
    trust_pickle: Annotated[
        bool, typer.Option("--trust-pickle", help="Allow a pickled whole module (unpickling runs code).")
    ] = False,
    opset: Annotated[
        int, typer.Option(help="ONNX opset: 18 up to the newest the installed onnx knows.")
    ] = 18,
    max_batch_size: Annotated[
        int | None,
        typer.Option(
            help="Largest batch the runtime merges (default 64 when the batch-independence check "
            "passes, else 0)."
        ),
    ] = None,
    batch_dim: Annotated[
        str,
        typer.Option(
            help="Name of the batch dimension in --input: it must be the first dimension of every "
            "input and output for requests to be merged."
        ),
    ] = "batch",
    external_data: Annotated[
        bool | None,
        typer.Option(
            "--external-data/--no-external-data",
            help="Store weights in model.onnx.data (default: when over 1 GiB; always over 2 GB).",
        ),
    ] = None,
    atol: Annotated[float, typer.Option(help="Parity: absolute tolerance.")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Parity: relative tolerance.")] = 1e-3,
    skip_parity: Annotated[bool, typer.Option("--skip-parity", help="Do not compare with PyTorch.")] = False,
    example: Annotated[
        Path | None,
        typer.Option(
            help=".npz with one array per input name: real inputs for the parity and batch-independence "
            "checks instead of generated ones (checked against --input: names, dtypes, ranks, fixed "
            "sizes, ranges)."
        ),
    ] = None,
    exporter: Annotated[
        str,
        typer.Option(
            help="auto: torch.onnx's dynamo exporter, and the TorchScript exporter (dynamo=False) when "
            "it fails on a module, said in the output and recorded in the manifest; dynamo or "
            "torchscript: that one only. Parity checks either.",
        ),
    ] = "auto",
    input_format: Annotated[
        list[str] | None,
        typer.Option(
            "--input-format",
            help="NAME=NCHW or NAME=NHWC: the layout of an image input (3 dimensions besides the batch "
            "axis), recorded in the manifest and reported as Triton's model configuration input "
            "format, which image clients read. Repeat per input.",
        ),
    ] = None,
) -> None:
    """Export a PyTorch model to a checked ONNX package (model.onnx + manifest.json)."""
    from inferstack.modeltools import report
    from inferstack.modeltools.export import ExportOptions
    from inferstack.modeltools.export import export as run_export
    from inferstack.modeltools.loading import Source
    from inferstack.modeltools.spec import parse_inputs

    opts = ExportOptions(
        source=Source(spec=source, weights=str(weights) if weights else None, trust_pickle=trust_pickle),
        inputs=parse_inputs(input),
        out=out_dir,
        outputs=output or [],
        name=name,
        version=version,
        opset=opset,
        max_batch_size=max_batch_size,
        external_data=external_data,
        atol=atol,
        rtol=rtol,
        skip_parity=skip_parity,
        batch_dim=batch_dim,
        example=example,
        exporter=exporter,
        input_formats=_input_formats(input_format or []),
    )
    with report.status("exporting") as progress:
        manifest, path = run_export(opts, progress)
    report.print_export(manifest, path)


@cli_errors
def verify(
    package: Annotated[
        Path, typer.Argument(help="Package directory (with manifest.json).", show_default=False)
    ],
    source: Annotated[
        str | None, typer.Option(help="Re-run parity against this source (as given to export).")
    ] = None,
    weights: Annotated[Path | None, typer.Option(help="State dict for a factory source.")] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow a pickled module.")] = False,
    atol: Annotated[
        float | None, typer.Option(help="Parity: absolute tolerance (default: export's).")
    ] = None,
    rtol: Annotated[
        float | None, typer.Option(help="Parity: relative tolerance (default: export's).")
    ] = None,
) -> None:
    """Re-check a package: manifest, file hashes, ONNX load, signature, batch independence, and
    parity when --source is given."""
    from inferstack.modeltools import report
    from inferstack.modeltools.loading import Source
    from inferstack.modeltools.verify import verify as run_verify

    src = None
    if source:
        src = Source(spec=source, weights=str(weights) if weights else None, trust_pickle=trust_pickle)
    checks = run_verify(package, src, atol=atol, rtol=rtol)
    report.print_checks(package, checks)
    failed = [c for c in checks if c.status == "fail"]
    if failed:
        raise fail(f"{package}: {failed[0].name} failed: {failed[0].detail}")


@cli_errors
def optimize(
    package: Annotated[Path, typer.Argument(help="Package directory made by export.", show_default=False)],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Package directory to write.")],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            "--example",
            help=".npz with one array per input name (or one array for a single input), plus optional "
            "'labels': the calibration and scoring data, checked like export's --example. Default: "
            "data generated from export's --input specs (their value ranges, padding masks).",
        ),
    ] = None,
    budget: Annotated[
        list[str] | None,
        typer.Option(
            help="Accuracy budget, e.g. 'top1>=0.99', 'cosine>=0.999', 'max_abs<=0.05'. Repeatable. "
            "Default: top1>=0.99 for classifiers, cosine>=0.999 otherwise."
        ),
    ] = None,
    providers: Annotated[
        list[str] | None,
        typer.Option(
            help="Target execution provider(s), in order, e.g. CUDAExecutionProvider "
            "(comma-separated or repeated). Default: CPU."
        ),
    ] = None,
    candidates: Annotated[
        list[str] | None,
        typer.Option("--candidate", help="Only these candidates (reference is always measured)."),
    ] = None,
    objective: Annotated[
        str, typer.Option(help="What 'fastest' means: latency (batch 1 p50) or throughput (large batch).")
    ] = "latency",
    batch: Annotated[int, typer.Option(help="Batch size of the throughput measurement.")] = 32,
    threads: Annotated[int, typer.Option(help="ORT intra-op threads while benchmarking.")] = 1,
    seconds: Annotated[float, typer.Option(help="Benchmark time per candidate and measurement.")] = 1.0,
    min_gain: Annotated[
        float, typer.Option(help="A variant must beat the fp32 reference by this fraction to be chosen.")
    ] = 0.05,
    samples: Annotated[int, typer.Option(help="Generated scoring samples when --data is not given.")] = 256,
    name: Annotated[
        str | None, typer.Option(help="Name of the optimized package (default: the source's).")
    ] = None,
) -> None:
    """Try optimized variants, score them against the fp32 model and package the fastest inside the budget."""
    from inferstack.modeltools import report
    from inferstack.modeltools.optimize import OptimizeOptions
    from inferstack.modeltools.optimize import optimize as run_optimize

    opts = OptimizeOptions(
        package=package,
        out=out_dir,
        data=data,
        budget=budget or [],
        providers=[p.strip() for v in providers or [] for p in v.split(",") if p.strip()],
        candidates=candidates or [],
        objective=objective,
        batch=batch,
        threads=threads,
        seconds=seconds,
        min_gain=min_gain,
        samples=samples,
        name=name,
    )
    with report.status("optimizing") as progress:
        result = run_optimize(opts, progress)
    report.print_optimize(result)
