"""``inferstack serve`` (and ``python -m inferstack.runtime``, the container's entrypoint).

Every flag has an environment variable ``INFERSTACK_<FLAG>``; PATH is ``INFERSTACK_MODEL``.
Imports of the server happen inside the command, so ``inferstack --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from inferstack.console import cli_errors


def _env(flag: str) -> str:
    return "INFERSTACK_" + flag.upper().replace("-", "_")


@cli_errors
def serve(
    model: Annotated[list[str] | None, typer.Argument(
        envvar="INFERSTACK_MODEL", show_default=False, metavar="PATH...",
        help="Model package directory (with manifest.json), a .onnx file, or a file://, s3:// or https:// "
        "URI; several PATHs serve several models (each with its own session and batcher; names must "
        "be unique).",
    )] = None,
    model_repository: Annotated[Path | None, typer.Option(
        envvar=_env("model-repository"), show_default=False,
        help="Directory with one model package per subfolder (Triton's repository layout), each served "
        "under its folder's name.",
    )] = None,
    model_control: Annotated[str, typer.Option(
        envvar=_env("model-control"),
        help="none, or explicit: the repository API may load, reload and unload models.",
    )] = "none",
    name: Annotated[str | None, typer.Option(
        envvar=_env("name"), help="Model name on the API. [default: the manifest's name or the file stem]",
    )] = None,
    host: Annotated[str, typer.Option(envvar=_env("host"), help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(
        envvar=_env("port"), help="Port to listen on (0: any free port).",
    )] = 8000,
    grpc_port: Annotated[int, typer.Option(
        envvar=_env("grpc-port"), help="Port of the gRPC front end (0: any free port).",
    )] = 8001,
    max_batch_size: Annotated[int | None, typer.Option(
        envvar=_env("max-batch-size"), show_default=False,
        help="Largest merged batch; 0 turns batching off. [default: the manifest's max_batch_size]",
    )] = None,
    batch_dim: Annotated[str, typer.Option(
        envvar=_env("batch-dim"),
        help="Name of the batch axis (ONNX dim_param); requests are merged only when it is the first "
        "dimension of every input and output and the model passes the batch-independence check.",
    )] = "batch",
    unsafe_force_batching: Annotated[bool, typer.Option(
        "--unsafe-force-batching", envvar=_env("unsafe-force-batching"),
        help="UNSAFE: merge requests along the first axis without the batch-axis rule or the "
        "batch-independence check; a model that mixes rows then answers with other requests' data.",
    )] = False,
    max_queue_delay_us: Annotated[int, typer.Option(
        envvar=_env("max-queue-delay-us"),
        help="Microseconds the batcher may wait for more requests; 0 takes whatever is queued.",
    )] = 0,
    follow_wait: Annotated[float, typer.Option(
        envvar=_env("follow-wait"),
        help="After a run of N rows, while fewer than N are queued, wait for the rest for up to this "
        "fraction of that run's compute time (clients under steady load come back); 0: never wait.",
    )] = 0.25,
    max_queue_size: Annotated[int, typer.Option(
        envvar=_env("max-queue-size"), help="Requests admitted at once; past it, 503 with Retry-After.",
    )] = 256,
    max_body_bytes: Annotated[int, typer.Option(
        envvar=_env("max-body-bytes"), help="Largest request body; past it, 413.",
    )] = 64 * 1024 * 1024,
    max_bytes_elements: Annotated[int, typer.Option(
        envvar=_env("max-bytes-elements"),
        help="BYTES (string) elements one request may carry, all inputs together; past it, 400.",
    )] = 1 << 19,
    request_timeout_s: Annotated[float, typer.Option(
        envvar=_env("request-timeout-s"), help="Seconds a request may wait and run; past it, 504.",
    )] = 30.0,
    header_timeout_s: Annotated[float, typer.Option(
        envvar=_env("header-timeout-s"),
        help="Seconds to receive a request line and headers; past it, 408 and close.",
    )] = 10.0,
    body_timeout_s: Annotated[float, typer.Option(
        envvar=_env("body-timeout-s"), help="Seconds a request body may stall; past it, 408 and close.",
    )] = 30.0,
    min_body_rate: Annotated[float, typer.Option(
        envvar=_env("min-body-rate"),
        help="Bytes/s a request body must bring over each --body-timeout-s window; below it, 408 and "
        "close (0: no minimum).",
    )] = 1024.0,
    idle_timeout_s: Annotated[float, typer.Option(
        envvar=_env("idle-timeout-s"), help="Seconds an idle keep-alive connection stays open.",
    )] = 75.0,
    max_buffered_bytes: Annotated[int, typer.Option(
        envvar=_env("max-buffered-bytes"),
        help="Request bytes all connections together may hold; past it, 503 with Retry-After.",
    )] = 256 * 1024 * 1024,
    max_client_buffered_bytes: Annotated[int | None, typer.Option(
        envvar=_env("max-client-buffered-bytes"), show_default=False,
        help="Request bytes the connections of one client address may hold; past it, 503 with "
        "Retry-After. [default: a quarter of --max-buffered-bytes, at least --max-body-bytes]",
    )] = None,
    max_connections: Annotated[int | None, typer.Option(
        envvar=_env("max-connections"), show_default=False,
        help="HTTP connections open at once; past it, 16 more are answered once (health checks served, "
        "anything else 503 with Retry-After) and closed, and the rest closed as soon as accepted. "
        "[default: 4096, less where the hard open-file limit leaves fewer descriptors]",
    )] = None,
    drain_delay_s: Annotated[float, typer.Option(
        envvar=_env("drain-delay-s"),
        help="After SIGTERM, seconds to keep accepting (readiness 503) before draining.",
    )] = 0.0,
    drain_timeout_s: Annotated[float, typer.Option(
        envvar=_env("drain-timeout-s"),
        help="While draining, seconds an idle keep-alive connection stays open for a last request.",
    )] = 10.0,
    providers: Annotated[str, typer.Option(
        envvar=_env("providers"),
        help="onnxruntime execution providers in priority order (those available are used).",
    )] = "CUDAExecutionProvider,CPUExecutionProvider",
    require_gpu: Annotated[bool, typer.Option(
        "--require-gpu", envvar=_env("require-gpu"),
        help="Fail the start when no GPU execution provider is active after load.",
    )] = False,
    intra_op_threads: Annotated[int, typer.Option(
        envvar=_env("intra-op-threads"), help="onnxruntime intra-op threads (0: onnxruntime's default).",
    )] = 0,
    sched_policy: Annotated[str, typer.Option(
        envvar=_env("sched-policy"),
        help="Linux scheduling policy of the server's threads: batch (SCHED_BATCH: a thread that wakes "
        "does not preempt the one running, fewer context switches per gRPC call), other (SCHED_OTHER), "
        "or auto: batch with one model, other with several or a repository.",
    )] = "auto",
    auth_token_file: Annotated[Path | None, typer.Option(
        envvar=_env("auth-token-file"), show_default=False,
        help="File holding a bearer token to require (else INFERSTACK_AUTH_TOKEN; unset: no auth). "
        "Health and /metrics stay open.",
    )] = None,
    cache_dir: Annotated[Path | None, typer.Option(
        envvar=_env("cache-dir"), show_default=False,
        help="Where remote models are downloaded. [default: <tmp>/inferstack-models]",
    )] = None,
    log_level: Annotated[str, typer.Option(
        envvar=_env("log-level"), help="critical, error, warning, info or debug.",
    )] = "info",
    log_format: Annotated[str, typer.Option(
        envvar=_env("log-format"), help="text, or json (one object per line).",
    )] = "text",
    access_log: Annotated[bool, typer.Option(
        "--access-log/--no-access-log", envvar=_env("access-log"),
        help="Log one line per request: method, path, model, status, bytes, duration (and a 4xx's reason).",
    )] = False,
) -> None:
    """Serve one or more models over the Open Inference Protocol (KServe v2) with onnxruntime."""

    import os

    from inferstack.runtime.config import (
        ServerConfig,
        default_cache_dir,
        parse_providers,
        read_token,
        set_grpc_environment,
    )

    set_grpc_environment(os.environ)  # (before grpc is imported: grpcio reads it once)
    from inferstack.runtime.logs import setup_logging
    from inferstack.runtime.server import run

    paths = list(model or [])
    config = ServerConfig(
        model=paths[0] if paths else "",
        extra_models=tuple(paths[1:]),
        model_repository=model_repository,
        model_control=model_control.lower(),
        access_log=access_log,
        log_format=log_format.lower(),
        name=name,
        host=host,
        port=port,
        grpc_port=grpc_port,
        max_batch_size=max_batch_size,
        batch_dim=batch_dim,
        unsafe_force_batching=unsafe_force_batching,
        max_queue_delay_us=max_queue_delay_us,
        follow_wait=follow_wait,
        max_queue_size=max_queue_size,
        max_body_bytes=max_body_bytes,
        max_bytes_elements=max_bytes_elements,
        request_timeout_s=request_timeout_s,
        header_timeout_s=header_timeout_s,
        body_timeout_s=body_timeout_s,
        idle_timeout_s=idle_timeout_s,
        max_buffered_bytes=max_buffered_bytes,
        max_client_buffered_bytes=max_client_buffered_bytes,
        min_body_rate=min_body_rate,
        max_connections=max_connections,
        drain_delay_s=drain_delay_s,
        drain_timeout_s=drain_timeout_s,
        providers=parse_providers(providers),
        require_gpu=require_gpu,
        intra_op_threads=intra_op_threads,
        sched_policy=sched_policy.lower(),
        auth_token=read_token(auth_token_file),
        cache_dir=cache_dir or default_cache_dir(),
        log_level=log_level,
    )
    setup_logging(config)
    run(config)


def main() -> None:
    """``python -m inferstack.runtime``: the same command on its own."""
    typer.run(serve)
