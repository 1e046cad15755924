"""The serving runtime: one process serves one model package with onnxruntime over the
Open Inference Protocol (KServe v2).

The public names below are imported lazily, so that ``inferstack --help`` (which imports
:mod:`inferstack.runtime.cli`) does not pay for numpy, onnxruntime or the HTTP stack.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ServerConfig": "config",
    "App": "server",
    "Server": "server",
    "run": "server",
    "Model": "model",
    "TensorInfo": "model",
    "load_model": "model",
    "ModelSource": "source",
    "resolve": "source",
    "Batcher": "batcher",
    "Metrics": "metrics",
    "HTTPError": "errors",
    "BadRequest": "errors",
    "ModelLoadError": "errors",
    "ConfigError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
