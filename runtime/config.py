"""The server's settings: one typed object, built from command-line flags and the environment.

Every setting has a flag and an environment variable ``INFERSTACK_<FLAG>`` (the model path is
``INFERSTACK_MODEL``; the bearer token may also come directly from ``INFERSTACK_AUTH_TOKEN``).
Nothing is read at import time; tests build a :class:`ServerConfig` directly.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

from inferstack.runtime.errors import ConfigError

DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = frozenset(
    {"CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider",
     "MIGraphXExecutionProvider"}
)
#: connections accepted past --max-connections to answer health checks (each answered once, then
#: closed: /v2/health/* served, anything else 503 + Retry-After); past these, closed at once
PROBE_RESERVE = 16
#: file descriptors kept for what is not an HTTP connection (model files, the gRPC server and its
#: connections, logs, the listening sockets)
FD_HEADROOM = 256
#: the default --max-connections where the open-file limit allows it
DEFAULT_MAX_CONNECTIONS = 4096
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LOG_FORMATS = ("text", "json")
MODEL_CONTROL_MODES = ("none", "explicit")
#: Linux scheduling policies for the server's threads (sched(7)): ``batch`` is SCHED_BATCH, ``other``
#: the default SCHED_OTHER, ``auto`` batch for a server of one model and other for several
SCHED_POLICIES = ("auto", "batch", "other")
#: grpcio's experiments the server turns off unless ``GRPC_EXPERIMENTS`` is already set (grpcio's
#: documented variable, read once, when ``grpc`` is first imported): with ``event_engine_listener``
#: on (grpcio's default since 1.6x), the gRPC port's connections are read and written by grpcio's
#: EventEngine threads, one more thread hand-off per call on the way in and out; off, by the
#: polling thread that also delivers the calls (see runtime/README.md, "gRPC", for the numbers)
GRPC_EXPERIMENTS = "-event_engine_listener"


def setting(flag: str) -> str:
    """``--max-batch-size`` -> ``--max-batch-size / INFERSTACK_MAX_BATCH_SIZE`` (for messages)."""
    return f"--{flag} / INFERSTACK_{flag.upper().replace('-', '_')}"


def open_file_limit() -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE of this process; unlimited is given as a large number."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return (1 << 20, 1 << 20)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    big = 1 << 30
    return (big if soft == resource.RLIM_INFINITY else soft, big if hard == resource.RLIM_INFINITY else hard)


def default_cache_dir() -> Path:
    # Under the temporary directory: writable in a container with a read-only root file system.
    return Path(tempfile.gettempdir()) / "inferstack-models"


@dataclass
class ServerConfig:
    """What ``inferstack serve`` runs with. Defaults are the CLI's defaults."""

    model: str = ""
    """PATH: a package directory with manifest.json, a .onnx file, or a file://, s3://, https:// URI
    ("" when only ``model_repository`` is given)."""
    name: str | None = None
    """Model name on the API (one model only); default: the manifest's name, or the .onnx file's stem."""
    extra_models: tuple[str, ...] = ()
    """More PATHs served by the same process, each with its own session and batcher."""
    model_repository: Path | None = None
    """A directory with one model package per subfolder (Triton's repository layout); each is
    served under its folder's name."""
    model_control: str = "none"
    """``none``: the models given at the start are served until the end; ``explicit``: the
    repository extension's load and unload are on as well."""
    access_log: bool = False
    """One log line per request (method, path, model, status, bytes, duration)."""
    log_format: str = "text"
    """``text`` or ``json`` (one JSON object per line) for every log line."""
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 8001
    """Port of the gRPC front end (0: any free port)."""
    max_batch_size: int | None = None
    """Largest merged batch; default: the manifest's max_batch_size (0 = no batching)."""
    batch_dim: str = "batch"
    """Name of the batch axis (the ONNX dim_param): merging needs it first in every input and output."""
    unsafe_force_batching: bool = False
    """Merge requests along the first axis without the batch-axis rule and the batch-independence
    check: a model that mixes rows then answers with other requests' data."""
    max_queue_delay_us: int = 0
    """How long the batcher may wait for more requests once one is queued; 0 = take what is there."""
    follow_wait: float = 0.25
    """After a run of N rows, while fewer than N rows are queued, wait up to this fraction of that
    run's compute time for the rest (closed-loop clients come back); 0 = never wait."""
    max_queue_size: int = 256
    """Requests admitted to the batcher at once (waiting or running); past it, 503 + Retry-After."""
    max_body_bytes: int = 64 * 1024 * 1024
    max_bytes_elements: int = 1 << 19
    """BYTES (string) elements one request may carry, all inputs together; past it, 400. Each
    element becomes a Python string and an onnxruntime string on the way in and again on the way
    out (a few hundred bytes each), so this, not the body size, bounds a BYTES request's memory."""
    request_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    """Seconds a client may take to send a request line and headers; past it, 408 and close."""
    body_timeout_s: float = 30.0
    """Seconds a request body may stall (no bytes arrive); past it, 408 and close. Also the window
    over which ``min_body_rate`` is measured."""
    min_body_rate: float = 1024.0
    """Bytes per second a request body must bring over each ``body_timeout_s`` window (a body
    trickled a byte now and then never stalls); below it, 408 and close. 0 = no minimum."""
    idle_timeout_s: float = 75.0
    """Seconds a keep-alive connection may sit idle between requests before it is closed."""
    max_buffered_bytes: int = 256 * 1024 * 1024
    """Request bytes all connections together may hold (declared bodies being read, pipelined
    requests waiting, requests being answered); past it, 503 + Retry-After."""
    max_client_buffered_bytes: int | None = None
    """... of which the connections of one client address may hold; past it, 503 + Retry-After.
    Default: a quarter of ``max_buffered_bytes``, at least ``max_body_bytes``."""
    max_connections: int | None = None
    """HTTP connections open at once; past it, up to ``PROBE_RESERVE`` more are accepted, each
    answered once and closed (health checks served, anything else 503 + Retry-After; 408 after 1 s
    without a request), and the
    rest closed as soon as accepted. Default: 4096, or less where the hard open-file limit
    (RLIMIT_NOFILE) leaves fewer than that plus ``PROBE_RESERVE + FD_HEADROOM`` descriptors; the
    server raises its soft limit to fit (up to the hard limit)."""
    drain_delay_s: float = 0.0
    """After SIGTERM: seconds to keep accepting (readiness already 503) before draining."""
    drain_timeout_s: float = 10.0
    """While draining: seconds an idle keep-alive connection stays open for a last request (its
    client may be writing one as the drain begins); then it is closed."""
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    require_gpu: bool = False
    intra_op_threads: int = 0
    """onnxruntime intra-op threads; 0 = onnxruntime's default (one per physical core)."""
    sched_policy: str = "auto"
    """Linux scheduling policy of every server thread: ``batch`` (SCHED_BATCH: a thread that
    wakes does not preempt the running one, see sched(7)), ``other`` (the default SCHED_OTHER), or
    ``auto``: batch when the server has one model (fewer thread switches per gRPC call), other when
    it may have several (a small model's requests must not wait for a slow one's run to yield the
    core: several models given, or a repository)."""
    auth_token: str | None = field(default=None, repr=False)
    cache_dir: Path = field(default_factory=default_cache_dir)
    log_level: str = "info"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not self.model and not self.extra_models and self.model_repository is None:
            raise ConfigError("PATH / INFERSTACK_MODEL: no model given (give PATH ... or --model-repository)")
        if self.name is not None and len(self.model_uris) > 1:
            raise ConfigError(f"{setting('name')}: applies to one model; this server is given "
                              f"{len(self.model_uris)} PATHs (each is served under its manifest's name)")
        if self.model_control not in MODEL_CONTROL_MODES:
            raise ConfigError(f"{setting('model-control')}: must be one of {', '.join(MODEL_CONTROL_MODES)}, "
                              f"got {self.model_control!r}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"{setting('log-format')}: must be one of {', '.join(LOG_FORMATS)}, "
                              f"got {self.log_format!r}")
        if self.model_repository is not None and not Path(self.model_repository).is_dir():
            raise ConfigError(f"{setting('model-repository')}: {self.model_repository} is not a directory")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"{setting('port')}: must be 0..65535, got {self.port}")
        if not 0 <= self.grpc_port <= 65535:
            raise ConfigError(f"{setting('grpc-port')}: must be 0..65535, got {self.grpc_port}")
        if self.max_batch_size is not None and self.max_batch_size < 0:
            raise ConfigError(f"{setting('max-batch-size')}: must be >= 0, got {self.max_batch_size}")
        if not self.batch_dim.strip():
            raise ConfigError(f"{setting('batch-dim')}: must not be empty")
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"{setting('max-queue-delay-us')}: must be >= 0, got {self.max_queue_delay_us}")
        if not 0 <= self.follow_wait <= 1:
            raise ConfigError(f"{setting('follow-wait')}: must be from 0 to 1, got {self.follow_wait}")
        if self.max_queue_size < 1:
            raise ConfigError(f"{setting('max-queue-size')}: must be >= 1, got {self.max_queue_size}")
        if self.max_body_bytes < 1:
            raise ConfigError(f"{setting('max-body-bytes')}: must be >= 1, got {self.max_body_bytes}")
        if self.max_bytes_elements < 1:
            raise ConfigError(f"{setting('max-bytes-elements')}: must be >= 1, got {self.max_bytes_elements}")
        if not self.request_timeout_s > 0:
            raise ConfigError(f"{setting('request-timeout-s')}: must be > 0, got {self.request_timeout_s}")
        for flag, value in (("header-timeout-s", self.header_timeout_s),
                            ("body-timeout-s", self.body_timeout_s),
                            ("idle-timeout-s", self.idle_timeout_s)):
            if not value > 0:
                raise ConfigError(f"{setting(flag)}: must be > 0, got {value}")
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ConfigError(
                f"{setting('max-buffered-bytes')}: must be >= --max-body-bytes ({self.max_body_bytes}), "
                f"got {self.max_buffered_bytes}"
            )
        if self.max_client_buffered_bytes is not None and not (
                self.max_body_bytes <= self.max_client_buffered_bytes <= self.max_buffered_bytes):
            raise ConfigError(
                f"{setting('max-client-buffered-bytes')}: must be from --max-body-bytes "
                f"({self.max_body_bytes}) to --max-buffered-bytes ({self.max_buffered_bytes}), "
                f"got {self.max_client_buffered_bytes}"
            )
        if self.max_connections is not None:
            if self.max_connections < 1:
                raise ConfigError(f"{setting('max-connections')}: must be >= 1, got {self.max_connections}")
            hard = open_file_limit()[1]
            if self.max_connections + PROBE_RESERVE + FD_HEADROOM > hard:
                raise ConfigError(
                    f"{setting('max-connections')}: {self.max_connections} connections need "
                    f"{self.max_connections + PROBE_RESERVE + FD_HEADROOM} file descriptors (with "
                    f"{PROBE_RESERVE} for health checks past the limit and {FD_HEADROOM} for the rest); "
                    f"the hard open-file limit (RLIMIT_NOFILE, ulimit -Hn) is {hard}"
                )
        if not self.min_body_rate >= 0:
            raise ConfigError(f"{setting('min-body-rate')}: must be >= 0, got {self.min_body_rate}")
        if not self.drain_timeout_s > 0:
            raise ConfigError(f"{setting('drain-timeout-s')}: must be > 0, got {self.drain_timeout_s}")
        if not self.drain_delay_s >= 0:
            raise ConfigError(f"{setting('drain-delay-s')}: must be >= 0, got {self.drain_delay_s}")
        if self.sched_policy not in SCHED_POLICIES:
            raise ConfigError(f"{setting('sched-policy')}: must be one of {', '.join(SCHED_POLICIES)}, "
                              f"got {self.sched_policy!r}")
        if self.intra_op_threads < 0:
            raise ConfigError(f"{setting('intra-op-threads')}: must be >= 0, got {self.intra_op_threads}")
        if not self.providers:
            raise ConfigError(f"{setting('providers')}: give at least one execution provider")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError(
                f"{setting('log-level')}: must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        if self.name is not None and not self.name.strip():
            raise ConfigError(f"{setting('name')}: must not be empty")
        if self.auth_token is not None and not self.auth_token.strip():
            raise ConfigError("--auth-token-file / INFERSTACK_AUTH_TOKEN: the token is empty")

    @property
    def client_buffered_bytes(self) -> int:
        """``max_client_buffered_bytes`` or its default."""
        if self.max_client_buffered_bytes is not None:
            return self.max_client_buffered_bytes
        return max(self.max_body_bytes, self.max_buffered_bytes // 4)

    @property
    def connection_limit(self) -> int:
        """``max_connections`` or its default (see there)."""
        if self.max_connections is not None:
            return self.max_connections
        hard = open_file_limit()[1]
        return max(1, min(DEFAULT_MAX_CONNECTIONS, hard - PROBE_RESERVE - FD_HEADROOM))

    @property
    def model_uris(self) -> tuple[str, ...]:
        """The PATHs given (not the repository's packages)."""
        return tuple(u for u in (self.model, *self.extra_models) if u)

    @property
    def effective_sched_policy(self) -> str:
        """``sched_policy`` with ``auto`` decided: ``batch`` for one model given and no repository,
        else ``other``."""
        if self.sched_policy != "auto":
            return self.sched_policy
        return "batch" if len(self.model_uris) == 1 and self.model_repository is None else "other"

    @property
    def max_queue_delay_s(self) -> float:
        return self.max_queue_delay_us / 1e6


def set_grpc_environment(env: MutableMapping[str, str]) -> None:
    """Put :data:`GRPC_EXPERIMENTS` in ``env`` (``os.environ``, before ``grpc`` is imported) unless
    the variable is set (the operator's value wins)."""
    env.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)


def parse_providers(text: str) -> tuple[str, ...]:
    """``"CUDAExecutionProvider, CPUExecutionProvider"`` -> a tuple; order is priority."""
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    if not names:
        raise ConfigError(f"{setting('providers')}: give at least one execution provider, got {text!r}")
    return names


def read_token(token_file: Path | None, env: Mapping[str, str] | None = None) -> str | None:
    """The bearer token: from ``--auth-token-file`` (surrounding whitespace stripped), else from
    ``INFERSTACK_AUTH_TOKEN``; ``None`` when neither is set (auth off)."""
    env = os.environ if env is None else env
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"--auth-token-file / INFERSTACK_AUTH_TOKEN_FILE: cannot read {token_file}: "
                              f"{e.strerror or e}") from None
        if not token:
            raise ConfigError(f"--auth-token-file / INFERSTACK_AUTH_TOKEN_FILE: {token_file} is empty")
        return token
    token = env.get("INFERSTACK_AUTH_TOKEN", "").strip()
    return token or None
