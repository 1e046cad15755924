"""The variants ``inferstack optimize`` tries. Each builder writes one ONNX file (and its external
data, if any) into a directory of its own and returns the model path; an exception means the
candidate failed and is reported as such.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferstack.modeltools._ort import session_options

#: name -> (description, needs calibration data, GPU-only by default)
DESCRIPTIONS: dict[str, str] = {
    "reference": "the exported fp32 model, as the runtime loads it",
    "ort-basic": "ORT offline graph optimization, basic (constant folding, redundant nodes)",
    "ort-extended": "ORT offline graph optimization, extended (fusions)",
    "ort-all": "ORT offline graph optimization, all (fusions + provider layout)",
    "int8-dynamic": "dynamic int8 quantization, per-channel weights",
    "int8-static": "static int8 QDQ quantization, per-channel, calibrated on the data",
    "fp16": "fp16 weights and compute, fp32 inputs and outputs (GPU targets)",
}
ORDER = list(DESCRIPTIONS)
GPU_ONLY = {"fp16"}


@dataclass
class BuildContext:
    source: Path  # the exported model
    work: Path  # a scratch directory for this run
    providers: list[str]
    calibration: list[dict[str, Any]]  # input feeds for static quantization
    external: bool  # whether the weights are (and must stay) external


def _session_options(level: Any, threads: int = 1) -> Any:
    o = session_options(threads)
    o.graph_optimization_level = level
    return o


def _graph_opt(level_name: str) -> Callable[[BuildContext, Path], Path]:
    def build(ctx: BuildContext, out: Path) -> Path:
        import onnxruntime as ort

        level = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level_name]
        path = out / "model.onnx"
        options = _session_options(level)
        options.optimized_model_filepath = str(path)
        if ctx.external:
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", "model.onnx.data"
            )
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
            )
        ort.InferenceSession(str(ctx.source), options, providers=ctx.providers)
        if not path.is_file():
            raise RuntimeError("onnxruntime wrote no optimized model")
        return path

    return build


def preprocess(ctx: BuildContext) -> Path:
    """Shape inference and graph cleanup that ORT's quantizer recommends before quantizing.

    Falls back to the exported model if pre-processing fails (it is an aid, not a requirement).
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = ctx.work / "preprocessed"
    out.mkdir(exist_ok=True)
    path = out / "model.onnx"
    if path.is_file():
        return path
    try:
        quant_pre_process(
            str(ctx.source),
            str(path),
            save_as_external_data=ctx.external,
            all_tensors_to_one_file=True,
            external_data_location="model.onnx.data" if ctx.external else None,
        )
        return path
    except Exception:
        return ctx.source


def _int8_dynamic(ctx: BuildContext, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = out / "model.onnx"
    quantize_dynamic(
        preprocess(ctx),
        path,
        per_channel=True,
        weight_type=QuantType.QInt8,
        use_external_data_format=ctx.external,
    )
    return path


class _Feeds:
    """onnxruntime's CalibrationDataReader protocol over a list of input feeds."""

    def __init__(self, feeds: list[dict[str, Any]]) -> None:
        self._feeds = feeds
        self._it: Iterator[dict[str, Any]] = iter(feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def _int8_static(ctx: BuildContext, out: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(_Feeds, CalibrationDataReader):
        pass

    if not ctx.calibration:
        raise RuntimeError("no calibration data")
    path = out / "model.onnx"
    quantize_static(
        preprocess(ctx),
        path,
        Reader(ctx.calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        use_external_data_format=ctx.external,
        extra_options={"CalibTensorRangeSymmetric": False},
    )
    return path


def _fp16(ctx: BuildContext, out: Path) -> Path:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(ctx.source))
    converted = convert_float_to_float16(model, keep_io_types=True)
    path = out / "model.onnx"
    if ctx.external:
        onnx.save_model(
            converted,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="model.onnx.data",
            size_threshold=1024,
        )
    else:
        onnx.save_model(converted, str(path))
    return path


BUILDERS: dict[str, Callable[[BuildContext, Path], Path]] = {
    "ort-basic": _graph_opt("basic"),
    "ort-extended": _graph_opt("extended"),
    "ort-all": _graph_opt("all"),
    "int8-dynamic": _int8_dynamic,
    "int8-static": _int8_static,
    "fp16": _fp16,
}


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """Run in ``path``: onnxruntime's tools write scratch files to the working directory (symbolic
    shape inference saves ``sym_shape_infer_temp.onnx`` and a ``<uuid>.data`` there when it gives
    up), which must stay inside the run's work area, not in the user's folder."""
    path.mkdir(parents=True, exist_ok=True)
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def build(name: str, ctx: BuildContext) -> Path:
    """Build candidate ``name`` into ``ctx.work/name``; the reference is the exported model itself.

    The builder runs with ``ctx.work/scratch`` as its working directory (paths in ``ctx`` must be
    absolute)."""
    if name == "reference":
        return ctx.source
    out = ctx.work / name
    out.mkdir(parents=True, exist_ok=True)
    with _working_directory(ctx.work / "scratch"):
        return BUILDERS[name](ctx, out)


def model_files(model: Path) -> list[Path]:
    """The model file and the external data files that sit beside it."""
    files = [model]
    files += [p for p in model.parent.iterdir() if p.is_file() and p.name.startswith(model.name + ".")]
    return files
