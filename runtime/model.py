"""The model: an onnxruntime session, its signature as the v2 API shows it, and a warm-up.

The signature comes from the session (names, datatypes, ``-1`` for every dynamic dimension).
A model can be batched when every input and output has a dynamic first dimension; the warm-up
runs batch 1 and batch 2 and checks that every output's first dimension follows the batch, so a
graph whose first axis only looks dynamic is served without merging.
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
from inferstack.datatypes import DType
from inferstack.errors import InferstackError

log = logging.getLogger("inferstack.runtime")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: DType
    shape: tuple[int, ...]  # -1 for dynamic dimensions

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
    return TensorInfo(arg.name, dtype, _dims(arg.shape))


def has_batch_axis(inputs: list[TensorInfo], outputs: list[TensorInfo]) -> bool:
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


def load_model(source: ModelSource, config: ServerConfig) -> Model:
    """Create the session, read the signature, decide on batching and warm up."""
    import onnxruntime as ort

    providers = choose_providers(config.providers, ort.get_available_providers(), ort.get_all_providers())
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
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

    batchable = has_batch_axis(inputs, outputs)
    if config.max_batch_size is not None:
        max_batch = config.max_batch_size
        origin = setting("max-batch-size")
    elif source.manifest is not None:
        max_batch = source.manifest.max_batch_size
        origin = "manifest.json max_batch_size"
    else:
        max_batch = 64 if batchable else 0
        origin = "default for a bare .onnx"
    if max_batch > 0 and not batchable:
        log.warning("%s is %d, but the model has no dynamic first axis on every input and output: "
                    "serving without batching", origin, max_batch)
        max_batch = 0

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
    warmup(model)
    return model


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
    """Run the model a few times so the first request does not pay for allocations; with batching,
    check that every output follows the batch axis (else turn batching off)."""
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
            log.warning("outputs do not follow the batch axis at batch %d; serving without batching", size)
            model.max_batch_size = 0
            return
