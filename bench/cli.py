"""``inferstack bench`` / ``make bench``: run the benchmark and write results, table and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from inferstack.console import cli_errors, out


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _counts(value: str) -> list[int]:
    from inferstack.errors import InferstackError

    counts = _csv(value)
    if not counts or not all(c.isdigit() and int(c) > 0 for c in counts):
        raise InferstackError(
            f"--concurrency: expected positive whole numbers separated by commas, got {value!r}"
        )
    return [int(c) for c in counts]


@cli_errors
def bench(
    models: Annotated[
        str, typer.Option(help="Comma-separated models: mlp, transformer, cnn.")
    ] = "mlp,transformer",
    setups: Annotated[
        str,
        typer.Option(
            help="Comma-separated setups: inferstack-json, inferstack-binary, plain-json, triton-json, "
            "triton-binary, kserve-json, ceiling; 'all' for every one; uvicorn-binary and granian-binary "
            "(the runtime behind those servers) only when named."
        ),
    ] = "all",
    concurrency: Annotated[str, typer.Option(help="Comma-separated connection counts.")] = "1,8,32,128",
    duration: Annotated[float, typer.Option(help="Seconds measured per point.")] = 10.0,
    warmup: Annotated[float, typer.Option(help="Seconds of warm-up load before each point.")] = 2.0,
    repeats: Annotated[int, typer.Option(help="Measured runs per point (the table shows the median).")] = 1,
    full: Annotated[
        bool, typer.Option("--full", help="The full run: every model, 3 repeats, overload and cold start.")
    ] = False,
    overload: Annotated[
        bool, typer.Option(help="Add the overload point (512 connections, queue 64).")
    ] = False,
    cold_start: Annotated[
        bool, typer.Option(help="Add the cold-start measurement (process start to ready, 100 MB model).")
    ] = False,
    overload_duration: Annotated[float, typer.Option(help="Seconds of the overload point.")] = 60.0,
    max_batch_size: Annotated[int, typer.Option(help="Max batch of the batching servers.")] = 32,
    max_queue_delay_us: Annotated[int, typer.Option(help="Max queue delay of the batching servers.")] = 0,
    out_dir: Annotated[Path, typer.Option(help="Where results, table and plots go.")] = Path("bench/results"),
    work_dir: Annotated[Path, typer.Option(help="Model packages, request bodies and server logs.")] = Path(
        "build/bench"
    ),
    venvs_dir: Annotated[Path, typer.Option(help="The peers' virtual environments.")] = Path(".bench-venvs"),
    name: Annotated[str, typer.Option(help="File stem of the results.")] = "latest",
) -> None:
    """Benchmark the serving runtime against its peers (server on core 0, wrk on core 1)."""
    from inferstack.bench import report
    from inferstack.bench.run import Config, run
    from inferstack.bench.setups import DEFAULT_SETUPS, ServerConfig

    cfg = Config(
        models=["mlp", "transformer", "cnn"] if full else _csv(models),
        setups=list(DEFAULT_SETUPS) if setups == "all" else _csv(setups),
        concurrency=_counts(concurrency),
        duration_s=duration,
        warmup_s=warmup,
        repeats=3 if full else repeats,
        server=ServerConfig(max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us),
        overload=overload or full,
        cold_start=cold_start or full,
        overload_duration_s=overload_duration,
        work_dir=work_dir,
        out_dir=out_dir,
        venvs_dir=venvs_dir,
        name=name,
    )
    results = run(cfg, log=lambda line: out.print(line, highlight=False, soft_wrap=True))
    for path in report.write(results, out_dir, name):
        out.print(f"wrote {path}", soft_wrap=True)
    out.print(report.markdown(results).split("## Targets", 1)[-1].strip(), highlight=False, soft_wrap=True)


def main() -> None:
    typer.run(bench)
