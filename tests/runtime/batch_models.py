"""Small PyTorch modules that merging along the batch axis can or cannot serve, exported with the
dynamo exporter as users export them: the batch axis is ``torch.export.Dim("batch")``."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any


def export(module: Any, args: tuple[Any, ...], path: Path, input_names: list[str],
           dynamic_shapes: dict[str, dict[int, Any]], output_names: list[str] | None = None) -> Path:
    import torch

    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(module.eval(), args, dynamo=True, input_names=input_names,
                                    output_names=output_names or ["y"], dynamic_shapes=dynamic_shapes)
    program.save(str(path))
    return path


def export_all(directory: Path) -> dict[str, Path]:
    """name -> .onnx: ``rowwise`` (a per-row MLP, x: batch,16), ``mixing`` (x - x.mean(0):
    batch,8), ``cumsum`` (cumsum over the batch: batch,8), ``width`` (y = x[:, :max(n)] * 2, the
    output's width depends on the whole batch: x: batch,8, n: batch,1 INT64), ``seqfirst``
    (nn.TransformerEncoderLayer in PyTorch's default layout: x: seq,batch,32) and ``rowseq`` (a
    per-row module over a sequence: x: batch,seq,8 -> y: batch,seq,4), ``types`` (nn.Embedding(2, 4):
    x: batch,seq INT64 indices into a table of 2 rows -> y: batch,seq,4)."""
    import torch
    from torch import nn

    class Mixing(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x - x.mean(0, keepdim=True)

    class Cumsum(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(x, 0)

    class Width(nn.Module):
        def forward(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            w = n.max().item()
            torch._check(w >= 0)
            torch._check(w <= x.shape[1])
            return x[:, :w] * 2

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("seq", min=1, max=64)
    paths = {
        "rowwise": export(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)),
                          (torch.randn(4, 16),), directory / "rowwise.onnx", ["x"], {"input": {0: batch}}),
        "mixing": export(Mixing(), (torch.randn(4, 8),), directory / "mixing.onnx", ["x"], {"x": {0: batch}}),
        "cumsum": export(Cumsum(), (torch.randn(4, 8),), directory / "cumsum.onnx", ["x"], {"x": {0: batch}}),
        "width": export(Width(), (torch.randn(4, 8), torch.tensor([[3], [5], [1], [2]])),
                        directory / "width.onnx", ["x", "n"], {"x": {0: batch}, "n": {0: batch}}),
        "seqfirst": export(nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0), (torch.randn(5, 3, 32),),
                           directory / "seqfirst.onnx", ["x"], {"src": {0: seq, 1: batch}}),
        "rowseq": export(nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)),
                         (torch.randn(3, 5, 8),), directory / "rowseq.onnx", ["x"],
                         {"input": {0: batch, 1: seq}}),
        "types": export(nn.Embedding(2, 4), (torch.tensor([[0, 1, 1], [1, 0, 0]]),), directory / "types.onnx",
                        ["x"], {"input": {0: batch, 1: seq}}),
    }
    return paths
