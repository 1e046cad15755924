"""The setups a benchmark compares: how to start each server on a model, and which request
bodies it is driven with."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from inferstack.bench import envs
from inferstack.bench.procs import free_port, pinned

PEERS_DIR = Path(__file__).resolve().parent / "peers"

#: every (server, body) row of the default run, in table order; "ceiling" is the in-process loop
DEFAULT_SETUPS: tuple[str, ...] = (
    "inferstack-json",
    "inferstack-binary",
    "plain-json",
    "triton-json",
    "triton-binary",
    "inferstack-grpc",
    "triton-grpc",
    "kserve-json",
    "ceiling",
)
#: the runtime's request handling and batcher behind a bare ASGI callable on stock uvicorn and on
#: granian (``peers/asgi_server.py``), without the runtime's additions on top of uvicorn: the
#: HTTP-layer comparison; measured only when named in ``--setups``
HTTP_LAYER_SETUPS: tuple[str, ...] = ("uvicorn-binary", "granian-binary")
SETUPS = DEFAULT_SETUPS + HTTP_LAYER_SETUPS


def split(setup: str) -> tuple[str, str]:
    server, _, body = setup.partition("-")
    return server, body


@dataclass
class ServerConfig:
    max_batch_size: int = 32
    max_queue_delay_us: int = 0
    max_queue_size: int = 1024
    core: int = 0


@dataclass
class Launch:
    argv: list[str]
    base_url: str
    env: dict[str, str] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    #: host:port of the server's gRPC front end (None: it has none)
    grpc_address: str | None = None

    #: the model's own readiness: Triton's server is ready before its models are loaded
    def ready_path(self, model: str) -> str:
        return f"/v2/models/{model}/ready"

    def infer_url(self, model: str) -> str:
        return f"{self.base_url}/v2/models/{model}/infer"


def launch_inferstack(packages: list[Path], cfg: ServerConfig) -> Launch:
    """``inferstack serve`` on one or more model packages (each served under its manifest's name,
    with its own session and batcher), pinned to ``cfg.core``, on free loopback ports."""
    port, grpc_port = free_port(), free_port()
    argv = [
        sys.executable,
        "-m",
        "inferstack.cli",
        "serve",
        *map(str, packages),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--grpc-port",
        str(grpc_port),
        "--max-batch-size",
        str(cfg.max_batch_size),
        "--max-queue-delay-us",
        str(cfg.max_queue_delay_us),
        "--max-queue-size",
        str(cfg.max_queue_size),
        "--intra-op-threads",
        "1",
        "--providers",
        "CPUExecutionProvider",
    ]
    return Launch(pinned(cfg.core, argv), f"http://127.0.0.1:{port}", grpc_address=f"127.0.0.1:{grpc_port}")


def launch(server: str, package: Path, name: str, cfg: ServerConfig, venvs: Path) -> Launch:
    """The command that starts ``server`` on ``package`` (raises envs.EnvUnavailable for a peer
    whose environment cannot be made)."""
    model = str(package / "model.onnx")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    if server == "inferstack":
        return launch_inferstack([package], cfg)
    if server == "plain":
        argv = [
            sys.executable,
            str(PEERS_DIR / "plain_server.py"),
            model,
            "--name",
            name,
            "--port",
            str(port),
        ]
        return Launch(pinned(cfg.core, argv), base)
    if server == "triton":
        env = envs.ensure("triton", venvs)
        argv = [
            str(env.python),
            str(PEERS_DIR / "pytriton_server.py"),
            model,
            "--name",
            name,
            "--http-port",
            str(port),
            "--grpc-port",
            str(grpc_port := free_port()),
            "--metrics-port",
            str(free_port()),
            "--max-batch-size",
            str(cfg.max_batch_size),
            "--max-queue-delay-us",
            str(cfg.max_queue_delay_us),
        ]
        return Launch(pinned(cfg.core, argv), base, env.env, env.versions, f"127.0.0.1:{grpc_port}")
    if server == "kserve":
        env = envs.ensure("kserve", venvs)
        argv = [
            str(env.python),
            str(PEERS_DIR / "kserve_server.py"),
            "--model_name",
            name,
            "--model_path",
            model,
            "--http_port",
            str(port),
        ]
        return Launch(pinned(cfg.core, argv), base, env.env, env.versions)
    if server in ("uvicorn", "granian"):
        argv = [sys.executable, str(PEERS_DIR / "asgi_server.py"), str(package), "--server", server,
                "--port", str(port)]
        return Launch(pinned(cfg.core, argv), base)
    raise ValueError(f"unknown server {server!r}; known: inferstack, plain, triton, kserve, uvicorn, granian")
