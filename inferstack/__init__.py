"""inferstack: a trained PyTorch model to a GPU-backed Open Inference Protocol endpoint.

Parts, each in the top-level folder of the same name:

- ``inferstack.modeltools`` (``modeltools/``): export, verify, optimize and package a model.
- ``inferstack.runtime`` (``runtime/``): the KServe v2 server on onnxruntime.
- ``inferstack.components`` (``components/``): Pulumi components and the stack program.
"""

from __future__ import annotations

__version__ = "0.1.0"

from inferstack.errors import InferstackError

__all__ = ["InferstackError", "__version__"]
