"""The data plane: everything a request needs that does not depend on how it arrived, so that the
HTTP front end (:mod:`inferstack.runtime.server`) and the gRPC front end share one set of rules (a
limit, an error, a metric, a statistic is written once), the way kserve's model server separates
its ``DataPlane`` from its REST and gRPC servers.

It holds the models by name, each with its own onnxruntime session, :class:`Batcher` and
statistics; readiness; auth; shedding; the request timeout; metrics and statistics. Everything is
called on the event loop thread (the batchers' workers hand their answers back there), except
what says "any thread": the gRPC front end's pool threads parse, check auth, look up the model,
hold budget, decode, queue on the batcher and wait for its worker's answer off the loop
(:meth:`DataPlane.submit_direct`); only their counting reaches the loop (:meth:`finish_later`).

The interface a front end calls (errors are :mod:`inferstack.runtime.errors` exceptions: each has
``status_code`` for HTTP and ``grpc_code`` for gRPC, and ``message``)::

    plane = DataPlane(config, metrics)            # one per server process
    plane.server_live -> bool                     # always True while the process answers
    plane.server_ready -> bool                    # every model ready, not stopping or draining
    plane.not_ready_reason() -> str               # why not, one line
    plane.model_ready(name, version=None) -> bool
    plane.check_auth(header_value) -> Unauthorized | None
        # header_value: the ``authorization`` header / gRPC metadata value (str or bytes, None when
        # absent); None when auth is off or the bearer token matches
    plane.entry(name, version=None) -> ModelEntry # raises NotFound / ServiceUnavailable
    plane.server_metadata() -> dict               # {"name", "version", "extensions"}
    plane.model_metadata(entry) -> dict           # {"name", "versions", "platform", "inputs", "outputs"}
    plane.model_config(entry) -> dict             # Triton's model configuration (JSON shape)
    plane.statistics(name=None, version=None) -> dict   # {"model_stats": [...]}, Triton's shape
    plane.admit(entry)                            # shedding: raises QueueFull / ServiceUnavailable
    plane.submit_direct(entry, infer, started, done) -> Job  # any thread: shedding and queueing
        # in one step (raises QueueFull / ServiceUnavailable); done(outputs, error) is called
        # once, from the batcher's worker thread; the caller waits until job.deadline and then
        # plane.expire(entry, job) (a RequestTimeout, or None when the worker answered first)
    plane.submit(entry, infer, started, done)     # infer: an InferRequest decoded against
        # entry.model (protocol.decode for HTTP/JSON); started: time.perf_counter() when the
        # request arrived (its deadline is started + --request-timeout-s); done(outputs, error)
        # is called exactly once on the event loop, outputs a dict name -> numpy array or error an
        # HTTPError (RequestTimeout past the deadline, ModelFailed, InternalError)
    plane.finish(entry, started, error, written=True)  # once per infer request, whatever the
        # outcome (error None: success; entry None: the model was never found); written=False
        # when the client left before its answer. Counts metrics and statistics.
    plane.finish_later(entry, started, error, written, took)  # finish() from any thread: queued,
        # counted on the event loop at its next deliver_finished(), sweep or scrape
    plane.deliver_finished()                      # call before reading each new request: answers
        # of finished runs first (they free queue places)
    plane.hold(n) / plane.release(n)              # the server-wide budget of request bytes held
        # (--max-buffered-bytes), from any thread: hold raises Overloaded past it
    plane.worker() -> ThreadPoolExecutor          # decoding and encoding off the event loop:
        # entry.decode_off_loop(size) / entry.encode_off_loop(outputs) say when (BYTES tensors,
        # bodies or answers over INLINE_BYTES)
    plane.begin_drain(); plane.idle() -> bool; plane.stop()

    # the repository extension (Triton's model repository API); control errors are BadRequest
    plane.repository_index(ready_only=False) -> list[dict]  # [{"name", "version", "state", "reason"}]
    await plane.load(name, parameters=None)  # (re)load from its package, verified before anything
        # is replaced; 'config' (Triton's configuration override) as runtime.overrides honours it,
        # 'file:...' (files sent in the request) refused, over either protocol
    await plane.unload(name)    # 404 for new requests at once; returns once in-flight ones are answered
    plane.require_model_control()  # BadRequest unless --model-control explicit
    plane.models: dict[str, ModelEntry]           # entry.model (Model), entry.batcher, entry.stats
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from inferstack.runtime.batcher import Batcher, Done, Job
from inferstack.runtime.config import ServerConfig
from inferstack.runtime.errors import (
    BadRequest,
    HTTPError,
    ModelLoadError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    QueueFull,
    RequestTimeout,
    ServiceUnavailable,
    Unauthorized,
)
from inferstack.runtime.metrics import Metrics, ModelMetrics, ModelStats
from inferstack.runtime.model import Model, load_model
from inferstack.runtime.overrides import Override, check_honoured, check_limit, parameter_text, parse_override
from inferstack.runtime.protocol import InferRequest
from inferstack.runtime.source import resolve
from inferstack.runtime.wording import check_version, unknown_model, unknown_package, unknown_version

from inferstack import __version__
from inferstack.errors import InferstackError

log = logging.getLogger("inferstack.runtime")

EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "statistics", "model_repository"]
_TRITON_TYPES = {"BYTES": "TYPE_STRING"}
#: bodies or messages larger than this (and every one for a model with a BYTES input) are decoded
#: off the event loop; answers larger than this (and every answer with a BYTES output) are encoded
#: off it: per-element work must not stall health checks and other requests
INLINE_BYTES = 1 << 20


def status_outcome(status: int) -> str:
    """The ``inferstack_requests_total{outcome}`` label of an answer's HTTP status."""
    if status < 400:
        return "success"
    if status == 503:
        return "rejected"
    if status == 504:
        return "timeout"
    if status < 500:
        return "client_error"
    return "error"


@dataclass(eq=False)
class ModelEntry:
    """One served model: its session, batcher and statistics. ``source`` is the URI it was loaded
    from (what a repository load reads again)."""

    model: Model
    batcher: Batcher
    stats: ModelStats
    source: str
    metrics: ModelMetrics
    ready: bool = True
    infer_paths: tuple[str, ...] = field(default=())
    bytes_in: bool = False  # the model has a BYTES input
    bytes_out: bool = False  # ... a BYTES output

    @property
    def name(self) -> str:
        return self.model.name

    def decode_off_loop(self, size: int) -> bool:
        """Whether a request of ``size`` bytes (its body or message) is decoded in
        :meth:`DataPlane.worker` rather than on the event loop."""
        return self.bytes_in or size > INLINE_BYTES

    def encode_off_loop(self, outputs: dict[str, Any]) -> bool:
        """Whether the answer of ``outputs`` (name -> numpy array) is encoded in
        :meth:`DataPlane.worker`."""
        return self.bytes_out or sum(o.nbytes for o in outputs.values()) > INLINE_BYTES


class DataPlane:
    """The models and the rules every front end shares (see the module docstring)."""

    def __init__(self, config: ServerConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.models: dict[str, ModelEntry] = {}
        self.loaded = False  # the models given at the start are loaded
        self.stopping = False  # SIGTERM seen: not ready, still serving (--drain-delay-s)
        self.draining = False
        self._loading = "the model is still loading"
        self._token = config.auth_token.encode() if config.auth_token else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: deque[Job] = deque()
        self._sweep_every = max(0.005, min(0.1, config.request_timeout_s / 10))
        #: name -> the URI it was loaded from (what a repository load reads again, outside
        #: repository mode), and the last load error of a name (the repository index's reason)
        self.known: dict[str, str] = {}
        self.load_errors: dict[str, str] = {}
        self._loading_names: set[str] = set()
        self._retiring: set[ModelEntry] = set()  # replaced or unloaded, requests still in flight
        self._tasks: set[asyncio.Task[None]] = set()  # (a task only weakly held is collected)
        #: called after the set of models changed (front ends rebuild their routes)
        self.on_change: list[Callable[[], None]] = []
        self.metrics.watch(self._queue_depth, self._inflight)
        self.metrics.before_scrape = self.settle
        self._worker: ThreadPoolExecutor | None = None
        #: finish() calls made off the event loop (the gRPC front end's threads), counted on it
        self._finished_elsewhere: deque[tuple[ModelEntry | None, float, HTTPError | None, bool, float]] = (
            deque())
        #: request bytes held now (--max-buffered-bytes), changed from any thread under the lock
        self.buffered = 0
        self._budget_lock = threading.Lock()

    # -- the request-bytes budget (any thread) -------------------------------------------------
    def hold(self, n: int, before: int = 0) -> int:
        """Count ``n`` more request bytes held (a message, or what decoding it makes; ``before``:
        what the same request holds already). Raises :class:`PayloadTooLarge` (413 /
        RESOURCE_EXHAUSTED) when the request alone would pass --max-buffered-bytes, and
        :class:`Overloaded` (503 / RESOURCE_EXHAUSTED, retry later) when all requests together
        would; nothing is counted then. Returns ``n``, to :meth:`release` when the request is
        answered."""
        limit = self.config.max_buffered_bytes
        if before + n > limit:
            raise PayloadTooLarge(
                f"this request needs {before + n} bytes held to be decoded, more than the server holds "
                f"for all requests together (--max-buffered-bytes / INFERSTACK_MAX_BUFFERED_BYTES: "
                f"{limit}); send fewer elements per request, or raw contents")
        with self._budget_lock:
            if self.buffered + n > limit:
                raise Overloaded(
                    f"the server holds {self.buffered} request bytes and this request needs {n} more; "
                    f"--max-buffered-bytes / INFERSTACK_MAX_BUFFERED_BYTES is {limit}; retry later")
            self.buffered += n
        return n

    def release(self, n: int) -> None:
        """Give back ``n`` bytes counted by :meth:`hold`."""
        if n:
            with self._budget_lock:
                self.buffered -= n

    def count(self, n: int) -> None:
        """Add ``n`` (negative: give back) to the bytes held, with no check: the HTTP front end checks
        the budget itself, on the event loop, before it counts a body's bytes as they arrive. One
        total for both protocols, so HTTP bodies and gRPC messages together stay within
        --max-buffered-bytes."""
        with self._budget_lock:
            self.buffered += n

    def worker(self) -> ThreadPoolExecutor:
        """The threads that decode and encode tensors off the event loop (two, made on first use)."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(2, thread_name_prefix="inferstack-decode")
        return self._worker

    def stop_worker(self) -> None:
        """Cancel the decoding and encoding not started yet (the process is stopping)."""
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the request-timeout sweep on ``loop`` (the loop every call comes from)."""
        self._loop = loop
        loop.call_later(self._sweep_every, self._sweep)

    # -- models ------------------------------------------------------------------------------
    def add(self, model: Model, source: str) -> ModelEntry:
        """Serve ``model`` (replacing a model of the same name, whose batcher then drains and
        stops): start its batcher on the event loop."""
        assert self._loop is not None, "start() first"
        stats = ModelStats(model.name, model.version)
        metrics = self.metrics.model(model.name, model.version)
        batcher = Batcher(model, metrics, self.config.max_queue_delay_s, self.config.follow_wait, stats)
        batcher.start(self._loop)
        base = f"/v2/models/{model.name}"
        entry = ModelEntry(model, batcher, stats, source, metrics,
                           infer_paths=(f"{base}/infer", f"{base}/versions/{model.version}/infer"),
                           bytes_in=any(t.dtype.v2 == "BYTES" for t in model.inputs),
                           bytes_out=any(t.dtype.v2 == "BYTES" for t in model.outputs))
        old = self.models.get(model.name)
        self.models[model.name] = entry
        if old is not None:
            old.ready = False
            task = self._loop.create_task(self.retire(old))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._changed()
        return entry

    def remove(self, name: str) -> ModelEntry | None:
        """Stop routing requests to model ``name`` (404 from now on); its requests in flight are
        still answered (await :meth:`retire` on the entry to wait for them)."""
        entry = self.models.pop(name, None)
        if entry is not None:
            entry.ready = False
            self._changed()
        return entry

    async def retire(self, entry: ModelEntry, timeout_s: float | None = None) -> None:
        """Wait until ``entry``'s requests in flight are answered (at most ``timeout_s``, default
        the request timeout plus a margin), then stop its batcher."""
        limit = timeout_s if timeout_s is not None else self.config.request_timeout_s + 1
        deadline = time.monotonic() + limit
        self._retiring.add(entry)
        try:
            while entry.batcher.pending and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        finally:
            self._retiring.discard(entry)
            entry.batcher.stop(timeout=0)

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()

    def entry(self, name: str, version: str | None = None) -> ModelEntry:
        """The model ``name`` (and ``version``, when given); NotFound names what is served, a
        malformed version is a BadRequest (:mod:`wording`: Triton's texts)."""
        if version is not None:
            check_version(version)
        entry = self.models.get(name)
        if entry is None:
            if not self.loaded:
                raise ServiceUnavailable(self._loading)
            raise unknown_model(name, self.models)
        if version is not None and version != entry.model.version:
            raise unknown_version(name, version, entry.model.version)
        return entry

    # -- loading -----------------------------------------------------------------------------
    def repository_packages(self) -> dict[str, str]:
        """Name -> URI of every model the server may load: the repository's subfolders (each under
        its folder's name; hidden ones skipped) and the PATHs given at the start."""
        found = dict(self.known)
        root = self.config.model_repository
        if root is not None:
            try:
                children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError as e:
                raise ModelLoadError(f"--model-repository {root}: cannot list: {e.strerror or e}") from None
            for child in children:
                found.setdefault(child.name, str(child))
        return found

    def startup_sources(self) -> list[tuple[str, str | None]]:
        """(URI, name or None for the package's own) of every model to load at the start."""
        sources: list[tuple[str, str | None]] = [(u, self.config.name) for u in self.config.model_uris]
        root = self.config.model_repository
        if root is not None:
            packages = self.repository_packages()
            if not packages and self.config.model_control != "explicit":
                raise ModelLoadError(f"--model-repository {root}: no model package in any subfolder")
            sources += [(uri, name) for name, uri in packages.items()]
        if len(sources) > 1:
            self._loading = "the models are still loading"
        return sources

    def load_blocking(self, uri: str, name: str | None, override: Override | None = None) -> Model:
        """Fetch, verify (sha256 of every file in the manifest), load and warm up one model (in a
        worker thread: this takes seconds). Raises ModelLoadError / ChecksumMismatch, and
        BadRequest for an ``override`` (a load's ``config``, :mod:`overrides`) it cannot honour."""
        source = resolve(uri, self.config.cache_dir)
        config = dataclasses.replace(self.config, model=uri, extra_models=(), model_repository=None,
                                     name=name)
        if override is not None:
            check_limit(override, source.manifest.max_batch_size if source.manifest else 64,
                        self.config.max_batch_size)
            if override.max_batch_size is not None:
                config = dataclasses.replace(config, max_batch_size=override.max_batch_size)
        model = load_model(source, config)
        if override is not None:
            check_honoured(override, self.config_of(model), model.batch_decision)
        return model

    def load_all_blocking(self, sources: list[tuple[str, str | None]]) -> list[tuple[Model, str]]:
        """Load every start-up model; two with the same name are refused, naming both paths."""
        models: list[tuple[Model, str]] = []
        seen: dict[str, str] = {}
        for uri, name in sources:
            model = self.load_blocking(uri, name)
            if model.name in seen:
                raise ModelLoadError(
                    f"two models are named {model.name!r}: {seen[model.name]} and {uri}; model names must "
                    "be unique (rename one in its manifest, or its repository folder)")
            seen[model.name] = uri
            models.append((model, uri))
        return models

    def require_model_control(self) -> None:
        if self.config.model_control != "explicit":
            raise BadRequest("the model repository's load and unload are off: start the server with "
                             "--model-control explicit (INFERSTACK_MODEL_CONTROL=explicit)")

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Triton's repository index: every model the server serves or may load."""
        try:
            packages = self.repository_packages()
        except ModelLoadError as e:
            raise BadRequest(str(e)) from None
        rows = []
        for name in sorted(set(packages) | set(self.models)):
            entry = self.models.get(name)
            if entry is not None and entry.ready:
                rows.append({"name": name, "version": entry.model.version, "state": "READY", "reason": ""})
            elif not ready_only:
                state = "LOADING" if name in self._loading_names else "UNAVAILABLE"
                rows.append({"name": name, "version": "", "state": state,
                             "reason": self.load_errors.get(name, "unloaded")})
        return rows

    async def load(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        """(Re)load model ``name`` from its package. Nothing is replaced until the new model is
        verified, loaded and warmed up; a failed load (BadRequest naming why) leaves the old one
        serving. Loads of one name do not overlap (ServiceUnavailable meanwhile). ``parameters``:
        the request's (HTTP JSON values, or gRPC ``ModelRepositoryParameter`` messages); Triton's
        ``config`` (a configuration) is honoured as :mod:`overrides` says, ``file:<path>`` (files)
        is refused (BadRequest): a model loads from its package only."""
        self.require_model_control()
        parameters = parameters if parameters is not None else {}
        if any(k.startswith("file:") for k in parameters):
            raise BadRequest("loading with files in the request is not supported; the model is loaded "
                             "from its package in the repository")
        override = None
        if "config" in parameters:
            try:
                override = parse_override(parameter_text(parameters["config"]), name)
            except BadRequest as e:
                raise BadRequest(f"failed to load model {name!r}: {e}") from None
        if self.stopping or self.draining:
            raise ServiceUnavailable("the server is stopping; nothing is loaded")
        uri = self.repository_packages().get(name)
        if uri is None:
            raise unknown_package(name, self.repository_packages())
        if name in self._loading_names:
            raise ServiceUnavailable(f"model {name!r} is being loaded; retry later")
        self._loading_names.add(name)
        try:
            loop = asyncio.get_running_loop()
            done: asyncio.Future[Model] = loop.create_future()

            def work() -> None:
                try:
                    model: Model | BaseException = self.load_blocking(uri, name, override)
                except BaseException as e:  # handed to the event loop
                    model = e
                loop.call_soon_threadsafe(_settle, done, model)

            threading.Thread(target=work, name=f"inferstack-load-{name}", daemon=True).start()
            try:
                model = await done
            except InferstackError as e:
                self.load_errors[name] = str(e)
                log.warning("load of model %r failed; still serving the previous one if any: %s", name, e)
                raise BadRequest(f"failed to load model {name!r}: {e}") from None
            self.load_errors.pop(name, None)
            self.known.setdefault(name, uri)
            self.add(model, uri)
            log.info("loaded model %r from %s", name, uri)
        finally:
            self._loading_names.discard(name)

    async def unload(self, name: str) -> None:
        """Stop serving ``name``: new requests get 404 at once; returns after its requests in
        flight are answered and its batcher stopped."""
        self.require_model_control()
        entry = self.remove(name)
        if entry is None:
            raise NotFound(f"model {name!r} is not loaded")
        self.load_errors[name] = "unloaded"
        await self.retire(entry)
        log.info("unloaded model %r", name)

    # -- health ------------------------------------------------------------------------------
    server_live = True

    @property
    def server_ready(self) -> bool:
        return (self.loaded and not self.stopping and not self.draining
                and all(e.ready for e in self.models.values()))

    def model_ready(self, name: str, version: str | None = None) -> bool:
        entry = self.models.get(name)
        return (entry is not None and entry.ready and not self.stopping and not self.draining
                and (version is None or version == entry.model.version))

    def not_ready_reason(self) -> str:
        if self.stopping or self.draining:
            return "draining"
        if not self.loaded:
            return self._loading
        return "not every model is loaded"

    # -- auth --------------------------------------------------------------------------------
    @property
    def auth(self) -> bool:
        return self._token is not None

    def check_auth(self, header: bytes | str | None) -> Unauthorized | None:
        """``header``: the ``authorization`` value (``Bearer <token>``). None when it passes."""
        token = self._token
        if token is None:
            return None
        if isinstance(header, str):
            header = header.encode("latin-1", "replace")
        scheme, _, given = (header or b"").partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), token):
            return Unauthorized("missing or wrong bearer token (send 'Authorization: Bearer <token>')")
        return None

    # -- metadata ----------------------------------------------------------------------------
    @staticmethod
    def server_metadata() -> dict[str, Any]:
        return {"name": "inferstack", "version": __version__, "extensions": EXTENSIONS}

    @staticmethod
    def model_metadata(entry: ModelEntry) -> dict[str, Any]:
        model = entry.model
        return {
            "name": model.name,
            "versions": [model.version],
            "platform": "onnxruntime_onnx",
            "inputs": [t.as_metadata() for t in model.inputs],
            "outputs": [t.as_metadata() for t in model.outputs],
        }

    def model_config(self, entry: ModelEntry) -> dict[str, Any]:
        """The model's configuration in Triton's JSON shape (what tritonclient/perf_analyzer read):
        with batching, ``dims`` leave out the batch axis."""
        return self.config_of(entry.model)

    def config_of(self, model: Model) -> dict[str, Any]:
        """:meth:`model_config` of a model (served or not yet)."""

        def tensors(infos: list[Any]) -> list[dict[str, Any]]:
            return [
                {
                    "name": t.name,
                    "data_type": _TRITON_TYPES.get(t.dtype.v2, f"TYPE_{t.dtype.v2}"),
                    "dims": list(t.shape[1:] if model.batching else t.shape),
                }
                for t in infos
            ]

        config: dict[str, Any] = {
            "name": model.name,
            "platform": "onnxruntime_onnx",
            "backend": "onnxruntime",
            "version_policy": {"latest": {"num_versions": 1}},
            "max_batch_size": model.max_batch_size,
            "input": tensors(model.inputs),
            "output": tensors(model.outputs),
            "instance_group": [
                {"name": model.name, "count": 1, "kind": "KIND_GPU" if model.on_gpu else "KIND_CPU"}
            ],
            "parameters": {
                "execution_providers": {"string_value": ",".join(model.providers)},
                # why requests are merged or not: "passed (...)", "off: ...", "forced: ..."
                "batch_check": {"string_value": model.batch_decision},
                "batch_dim": {"string_value": self.config.batch_dim},
            },
        }
        manifest = model.source.manifest if model.source is not None else None
        layouts = {t.name: t.format for t in manifest.inputs if t.format} if manifest is not None else {}
        for item in config["input"]:  # Triton's input format (the package's --input-format)
            item["format"] = f"FORMAT_{layouts[item['name']]}" if item["name"] in layouts else "FORMAT_NONE"
        if model.batching:
            config["dynamic_batching"] = {
                "max_queue_delay_microseconds": self.config.max_queue_delay_us,
                "preferred_batch_size": [],
            }
        return config

    def statistics(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        """Triton's statistics extension: ``{"model_stats": [...]}`` for every model (``name``
        None) or one (NotFound when it is not served)."""
        self.settle()
        if name is None:
            entries = [self.models[n] for n in sorted(self.models)]
        else:
            entries = [self.entry(name, version)]
        return {"model_stats": [e.stats.as_dict() for e in entries]}

    # -- inference ---------------------------------------------------------------------------
    def admit(self, entry: ModelEntry, pending: int | None = None) -> None:
        """Shedding, before a request is decoded: the model must be ready and its queue not full
        (--max-queue-size counts each model's requests admitted and not yet answered; ``pending``:
        that count, default the batcher's now)."""
        if not entry.ready:
            raise ServiceUnavailable(f"model {entry.name!r} is not ready")
        self._check_queue(entry, entry.batcher.pending if pending is None else pending)

    def _check_queue(self, entry: ModelEntry, pending: int) -> None:
        if pending >= self.config.max_queue_size:
            raise QueueFull(
                f"the queue is full (model {entry.name!r}: {pending} requests; --max-queue-size / "
                f"INFERSTACK_MAX_QUEUE_SIZE is {self.config.max_queue_size}); retry later"
            )

    def submit(self, entry: ModelEntry, infer: InferRequest, started: float, done: Done) -> None:
        """Queue ``infer`` on ``entry``'s batcher; ``done`` answers it (see the module docstring).
        The queue limit is looked at again and counted in one step (:meth:`admit` ran before the
        request was decoded, and gRPC calls queue from their threads meanwhile): past it, or when
        the batcher has stopped (the model was unloaded meanwhile), ``done`` is called at once
        with QueueFull / ServiceUnavailable."""
        job = Job(infer.inputs, infer.rows, infer.key, done)
        job.deadline = started + self.config.request_timeout_s
        try:
            # (the queue limit only: a model replaced meanwhile still answers what it admitted)
            entry.batcher.submit(job, lambda pending: self._check_queue(entry, pending))
        except HTTPError as e:
            e.__traceback__ = None
            done(None, e)
            return
        self._watch.append(job)

    def submit_direct(self, entry: ModelEntry, infer: InferRequest, started: float, done: Done) -> Job:
        """From any thread: :meth:`admit` and queue ``infer`` on ``entry``'s batcher in one step
        (under the batcher's lock: --max-queue-size holds exactly); raises QueueFull /
        ServiceUnavailable as :meth:`admit`. ``done(outputs, error)`` is called once, from the
        batcher's worker thread, unless :meth:`expire` claims the job first. The caller waits at
        most until ``job.deadline`` (``started`` + --request-timeout-s, perf_counter seconds)."""
        job = Job(infer.inputs, infer.rows, infer.key, done)
        job.deadline = started + self.config.request_timeout_s
        entry.batcher.submit_direct(job, lambda pending: self.admit(entry, pending))
        return job

    def expire(self, entry: ModelEntry, job: Job) -> RequestTimeout | None:
        """A direct job past its deadline: the RequestTimeout to answer (its ``done`` will not be
        called), or None when the worker answered it first (``done`` is being called)."""
        return self._timeout() if entry.batcher.cancel(job) else None

    def _timeout(self) -> RequestTimeout:
        return RequestTimeout(f"no answer within {self.config.request_timeout_s:g}s (--request-timeout-s / "
                              "INFERSTACK_REQUEST_TIMEOUT_S)")

    def finish(self, entry: ModelEntry | None, started: float, error: HTTPError | None,
               written: bool = True, took: float | None = None) -> None:
        """Count one answered infer request (metrics and the model's statistics); ``took``:
        seconds to its answer (default: from ``started`` to now)."""
        if took is None:
            took = time.perf_counter() - started
        metrics = self.metrics.none if entry is None else entry.metrics
        if error is None and written:
            metrics.outcome["success"].inc()
            if entry is not None:
                entry.stats.success.add(took)
        else:
            if not written:
                metrics.outcome["disconnected"].inc()
                metrics.failure("disconnected")
            else:
                assert error is not None
                metrics.outcome[status_outcome(error.status_code)].inc()
                metrics.failure(error.reason)
            if entry is not None:
                entry.stats.fail.add(took)
        metrics.request_seconds.observe(took)

    def finish_later(self, entry: ModelEntry | None, started: float, error: HTTPError | None,
                     written: bool, took: float) -> None:
        """:meth:`finish` from another thread (``took``: seconds from ``started`` to answered):
        queued, and counted on the event loop by :meth:`settle`."""
        self._finished_elsewhere.append((entry, started, error, written, took))

    def settle(self) -> None:
        """Count what :meth:`finish_later` queued (on the event loop; also before each scrape and
        statistics answer, so that an answered call is counted when its client looks)."""
        queued = self._finished_elsewhere
        while queued:
            self.finish(*queued.popleft())

    def deliver_finished(self) -> None:
        if self._finished_elsewhere:
            self.settle()
        for entry in self.models.values():  # (retiring batchers deliver on their own wake-ups)
            batcher = entry.batcher
            if batcher.has_finished:
                batcher.deliver_finished()

    def _sweep(self) -> None:
        """Answer 504 for requests past their deadline. All requests share one timeout, so the
        deadlines are in arrival order: a deque and a periodic look at its head suffice (cheaper
        than one timer per request)."""
        if self._finished_elsewhere:
            self.settle()
        watch = self._watch
        now = time.perf_counter()
        while watch:
            job = watch[0]
            if job.answered:
                watch.popleft()
                continue
            if job.deadline > now:
                break
            watch.popleft()
            if job.owner is None or job.owner.cancel(job):  # (its queue place is given back now)
                job.done(None, self._timeout())
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_later(self._sweep_every, self._sweep)

    # -- gauges --------------------------------------------------------------------------------
    def _entries(self) -> list[ModelEntry]:
        """Every entry with a batcher: served, and retiring (requests still in flight)."""
        return [*self.models.values(), *self._retiring]

    def _queue_depth(self) -> dict[tuple[str, str], float]:
        depth: dict[tuple[str, str], float] = {}
        for e in self._entries():
            key = (e.name, e.model.version)
            depth[key] = depth.get(key, 0) + e.batcher.queue_depth()
        return depth

    def _inflight(self) -> dict[tuple[str, str], float]:
        inflight: dict[tuple[str, str], float] = {}
        for e in self._entries():
            key = (e.name, e.model.version)
            inflight[key] = inflight.get(key, 0) + e.batcher.pending
        return inflight

    # -- shutdown ------------------------------------------------------------------------------
    def begin_drain(self) -> None:
        self.draining = True

    def idle(self) -> bool:
        return all(e.batcher.pending == 0 for e in self._entries())

    def stop(self) -> None:
        for entry in self._entries():
            entry.batcher.stop()


def _settle(future: asyncio.Future[Model], result: Model | BaseException) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
