"""The model: an onnxruntime session, its signature as the v2 API shows it, the decision on
dynamic batching, and a warm-up.

The signature comes from the session (names, datatypes, ``-1`` for every dynamic dimension).
Requests are merged along the batch axis only when merging cannot change an answer
(:mod:`inferstack.batchcheck`): the axis is the dimension named ``--batch-dim`` (``batch``), first
in every input and output, the graph is proven row-independent (:mod:`inferstack.batchproof`) and
the merged-vs-alone check agrees. A package's ``batch_check`` record is trusted only when it was
made on this very model file (its ``model_sha256`` equals the sha256 the manifest lists and the
runtime checked) and records a passed proof; else both run here at warm-up, before anything is
merged. ``--unsafe-force-batching`` skips all of it (loudly).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from inferstack.runtime.config import GPU_PROVIDERS, ServerConfig, setting
from inferstack.runtime.errors import ConfigError, ModelLoadError
from inferstack.runtime.source import ModelSource

from inferstack import datatypes
from inferstack.batchcheck import (
    BatchCheck,
    Dims,
    batch_axis_problem,
    check_batch_independence,
    check_sizes,
    combine,
    random_rows,
)
from inferstack.batchproof import Proof, prove_row_independence
from inferstack.datatypes import DType
from inferstack.errors import InferstackError

log = logging.getLogger("inferstack.runtime")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: DType
    shape: tuple[int, ...]  # -1 for dynamic dimensions
    dims: Dims = ()  # as onnxruntime reports them: int, dim_param name (str) or None

    @property
    def datatype(self) -> str:
        return self.dtype.v2

    def as_metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.dtype.v2, "shape": list(self.shape)}


@dataclass
class Model:
    """What the server needs of a loaded model."""

    name: str
    version: str
    session: Any  # onnxruntime.InferenceSession
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    max_batch_size: int  # 0: no merging; requests run one by one with their own shapes
    providers: list[str]
    source: ModelSource | None = None
    input_by_name: dict[str, TensorInfo] = field(init=False)
    output_by_name: dict[str, TensorInfo] = field(init=False)
    output_names: list[str] = field(init=False)
    run_options: Any = None
    #: why the model is merged or not, one line (Triton config parameter ``batch_check``)
    batch_decision: str = ""

    def __post_init__(self) -> None:
        self.input_by_name = {t.name: t for t in self.inputs}
        self.output_by_name = {t.name: t for t in self.outputs}
        self.output_names = [t.name for t in self.outputs]

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 0

    @property
    def on_gpu(self) -> bool:
        return any(p in GPU_PROVIDERS for p in self.providers)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, feeds, self.run_options)


def _dims(shape: Any) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (shape or []))


def _tensor_info(arg: Any, kind: str) -> TensorInfo:
    try:
        dtype = datatypes.by_ort(arg.type)
    except KeyError:
        raise ModelLoadError(
            f"{kind} {arg.name!r} has type {arg.type}, which the v2 protocol cannot carry"
        ) from None
    return TensorInfo(arg.name, dtype, _dims(arg.shape), tuple(arg.shape or ()))


def has_dynamic_first_axis(inputs: list[TensorInfo], outputs: list[TensorInfo]) -> bool:
    """Every input and output has a dynamic first dimension (what merging needs at the least)."""
    return all(len(t.shape) >= 1 and t.shape[0] == -1 for t in [*inputs, *outputs])


def choose_providers(requested: tuple[str, ...], available: list[str], known: list[str]) -> list[str]:
    unknown = [p for p in requested if p not in known]
    if unknown:
        raise ConfigError(
            f"{setting('providers')}: unknown execution provider {unknown[0]!r}; onnxruntime knows "
            f"{', '.join(known)}"
        )
    chosen = [p for p in requested if p in available]
    if not chosen:
        raise ConfigError(
            f"{setting('providers')}: none of {', '.join(requested)} is available in this onnxruntime "
            f"build (available: {', '.join(available)})"
        )
    return chosen


def session_options(intra_op_threads: int) -> Any:
    """The ``onnxruntime.SessionOptions`` every served model's session gets: ``intra_op_threads``
    (0: onnxruntime's default), one inter-op thread, sequential execution, every graph
    optimization, errors logged (warnings not)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def load_model(source: ModelSource, config: ServerConfig) -> Model:
    """Create the session, read the signature, decide on batching and warm up."""
    import onnxruntime as ort

    providers = choose_providers(config.providers, ort.get_available_providers(), ort.get_all_providers())
    options = session_options(config.intra_op_threads)
    started = time.perf_counter()
    try:
        session = ort.InferenceSession(str(source.model_path), sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for a bad graph
        raise ModelLoadError(f"{source.uri}: onnxruntime cannot load {source.model_path.name}: {e}") from None
    active = list(session.get_providers())
    log.info("loaded %s in %.2fs with %s", source.model_path.name, time.perf_counter() - started,
             ", ".join(active))
    if config.require_gpu and not any(p in GPU_PROVIDERS for p in active):
        raise ModelLoadError(
            f"--require-gpu / INFERSTACK_REQUIRE_GPU: no GPU execution provider is active after load "
            f"(active: {', '.join(active)}; requested: {', '.join(config.providers)}; available in this "
            f"onnxruntime build: {', '.join(ort.get_available_providers())})"
        )
    inputs = [_tensor_info(a, "input") for a in session.get_inputs()]
    outputs = [_tensor_info(a, "output") for a in session.get_outputs()]

    if config.max_batch_size is not None:
        max_batch, origin = config.max_batch_size, setting("max-batch-size")
    elif source.manifest is not None:
        max_batch, origin = source.manifest.max_batch_size, "manifest.json max_batch_size"
    else:
        max_batch, origin = 64, "default for a bare .onnx"

    run_options = ort.RunOptions()
    run_options.log_severity_level = 4  # a request's bad values are answered 400, not logged as errors
    model = Model(
        run_options=run_options,
        name=config.name or source.default_name,
        version=source.version,
        session=session,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch,
        providers=active,
        source=source,
    )
    decide_batching(model, config, origin)
    warmup(model)
    return model


def _model_sha256(source: ModelSource | None) -> str:
    """The sha256 of the served model file as the manifest lists it (checked before load); ""
    without a manifest."""
    if source is None or source.manifest is None:
        return ""
    entry = next((f for f in source.manifest.files if f.path == source.manifest.model_file), None)
    return entry.sha256 if entry is not None else ""


def _manifest_check(source: ModelSource | None, batch_dim: str) -> BatchCheck | None:
    """The manifest's ``batch_check`` when it may be trusted (:meth:`BatchCheck.trusted_for`: made
    on this model file, with a passed static proof); else None (and the runtime decides itself)."""
    record = source.manifest.batch_check if source is not None and source.manifest is not None else None
    if record is None:
        return None
    try:
        check = BatchCheck.from_dict(record, "manifest.json batch_check")
    except ValueError as e:
        log.warning("%s; checking the model here instead", e)
        return None
    if check.batchable and not check.trusted_for(_model_sha256(source), batch_dim):
        log.warning("manifest.json batch_check is not tied to this model (model_sha256, static proof, "
                    "sizes or batch_dim missing or different); checking the model here instead")
        return None
    return check if check.batch_dim == batch_dim else None


def decide_batching(model: Model, config: ServerConfig, origin: str) -> None:
    """Set ``model.max_batch_size`` (0: requests run one by one) and ``model.batch_decision``.

    Merging needs a positive max batch size (``origin`` says where it came from), the batch axis
    named ``config.batch_dim`` first in every input and output, and a passed batch-independence
    check: the manifest's record for that axis, else :func:`check_batch_independence` run now on
    generated rows. ``config.unsafe_force_batching`` merges along any dynamic first axis unchecked.
    """
    wanted = model.max_batch_size
    if config.unsafe_force_batching and config.max_batch_size != 0:
        if not has_dynamic_first_axis(model.inputs, model.outputs):
            _no_batching(model, "--unsafe-force-batching / INFERSTACK_UNSAFE_FORCE_BATCHING is set, but "
                         "not every input and output has a dynamic first dimension")
            return
        if wanted <= 0:  # the manifest's 0 (a failed check) is what this flag overrides
            wanted = 64
        model.max_batch_size = wanted
        model.batch_decision = ("forced: --unsafe-force-batching merges along the first axis without "
                                "the batch-axis rule or the batch-independence check")
        log.warning("UNSAFE: --unsafe-force-batching / INFERSTACK_UNSAFE_FORCE_BATCHING: requests are "
                    "merged (up to %d rows) along the first axis without checking that this cannot "
                    "change an answer; a model that mixes rows answers with other requests' data", wanted)
        return
    if wanted <= 0:
        _no_batching(model, f"{origin} is 0", level=logging.INFO)
        return
    problem = batch_axis_problem([(t.name, t.dims) for t in model.inputs],
                                 [(t.name, t.dims) for t in model.outputs], config.batch_dim)
    if problem is not None:
        _no_batching(model, f"no batch axis ({setting('batch-dim')} is {config.batch_dim!r}): {problem}")
        return
    record = _manifest_check(model.source, config.batch_dim)
    if record is not None:
        where = f"manifest.json batch_check ({record.data} rows)"
    else:
        started = time.perf_counter()
        proof = (prove_row_independence(model.source.model_path, config.batch_dim)
                 if model.source is not None else Proof(False, "no model file to prove"))
        if proof.proven:
            record = check_model(model, config.batch_dim, wanted)
        else:
            record = BatchCheck(False, "", config.batch_dim)
        record = combine(record, proof.proven, proof.reason)
        where = (f"checked at warm-up on generated rows in {time.perf_counter() - started:.2f}s"
                 if proof.proven else "static proof at warm-up")
    if not record.batchable:
        _no_batching(model, f"batch-independence check failed ({where}): {record.reason}")
        return
    model.batch_decision = f"passed ({where}): {record.reason}"
    log.info("batching up to %d rows along %r: %s", wanted, config.batch_dim, model.batch_decision)


def check_model(model: Model, batch_dim: str, max_batch_size: int = 16) -> BatchCheck:
    """Run the batch-independence check on the model's own session with generated rows (floats of
    mixed magnitudes; integers from 0..15, and from 0..1 when the model cannot run those: an index
    into a small table) at every merged size of :func:`check_sizes`."""
    inputs = [(t.name, t.dims) for t in model.inputs]
    outputs = [(t.name, t.dims) for t in model.outputs]
    typed = [(t.name, t.dims, t.dtype.numpy) for t in model.inputs]
    sizes = check_sizes(max_batch_size)
    first = check_batch_independence(model.run, inputs, outputs, random_rows(typed, batch_dim),
                                     batch_dim=batch_dim, sizes=sizes)
    if first.batchable or not first.reason.startswith("cannot be checked") \
            or not any(t.dtype.numpy.kind in "iu" for t in model.inputs):
        return first
    small = check_batch_independence(model.run, inputs, outputs, random_rows(typed, batch_dim, int_high=2),
                                     batch_dim=batch_dim, sizes=sizes)
    return small if not small.reason.startswith("cannot be checked") else first


def _no_batching(model: Model, why: str, level: int = logging.WARNING) -> None:
    model.max_batch_size = 0
    model.batch_decision = f"off: {why}"
    log.log(level, "serving without batching: %s", why)


def example_feeds(model: Model, batch: int) -> dict[str, np.ndarray]:
    feeds = {}
    for t in model.inputs:
        shape = [d if d >= 0 else 1 for d in t.shape]
        if model.batching:
            shape[0] = batch
        if t.dtype.v2 == "BYTES":
            feeds[t.name] = np.full(shape, "", dtype=object)
        else:
            feeds[t.name] = np.zeros(shape, dtype=t.dtype.numpy)
    return feeds


def warmup(model: Model, runs: int = 3) -> None:
    """Run the model a few times so the first request does not pay for allocations (with batching,
    at 1, 2 and the largest batch); an output that does not follow the batch turns batching off."""
    sizes = [1, 2, model.max_batch_size] if model.batching else [1]
    for size in dict.fromkeys(sizes):
        feeds = example_feeds(model, size)
        try:
            for _ in range(runs):
                results = model.run(feeds)
        except InferstackError:
            raise
        except Exception as e:
            log.warning("warm-up at batch %d failed (%s); serving without further warm-up", size, e)
            return
        if model.batching and any(r.ndim == 0 or r.shape[0] != size for r in results):
            _no_batching(model, f"outputs do not follow the batch axis at batch {size} in the warm-up")
            return
