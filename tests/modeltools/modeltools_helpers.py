"""Helpers of the model-tool tests: the small modules they export and the CLI runner."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from inferstack.cli import app

#: Small modules the tests export; each factory is addressed as ``<file>:<name>``.
MODELS = textwrap.dedent(
    '''
    import torch
    from torch import nn

    from inferstack.examples.transformer import EncoderClassifier


    class Tiny(nn.Module):
        """A 16 -> 4 classifier: the quickest real export."""

        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(16, 32)
            self.fc2 = nn.Linear(32, 4)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))


    def tiny():
        torch.manual_seed(0)
        return Tiny().eval()


    def raises():
        raise ValueError("checkpoint directory is empty")


    def not_a_module():
        return {"fc.weight": torch.zeros(4, 16)}


    class Diverges(nn.Module):
        """Computes something else while being exported: parity must catch it."""

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            y = self.fc(x)
            if torch.onnx.is_in_onnx_export():
                return y * 1.01
            return y


    def diverges():
        torch.manual_seed(0)
        return Diverges().eval()


    class SmallEncoder(nn.Module):
        """A one-layer transformer encoder that returns hidden states: a model that is not a classifier."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = EncoderClassifier(width=32, layers=1, heads=2)

        def forward(self, x):
            return self.inner.encoder(self.inner.proj(x) + self.inner.pos)


    def small_encoder():
        torch.manual_seed(0)
        return SmallEncoder().eval()


    class Embed(nn.Module):
        """Token ids through a 100-row embedding: ids out of range make onnxruntime fail at run time."""

        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(100, 8)
            self.fc = nn.Linear(8, 4)

        def forward(self, ids):
            return self.fc(self.embedding(ids).mean(1))


    def embed():
        torch.manual_seed(0)
        return Embed().eval()
    '''
)


#: A module with an operator the ONNX exporter cannot translate; a file of its own, because a
#: custom op may be registered only once per process.
CUSTOM_OP = textwrap.dedent(
    """
    import torch
    from torch import nn


    @torch.library.custom_op("inferstack_test::scramble", mutates_args=())
    def scramble(x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1)


    @scramble.register_fake
    def _(x):
        return torch.empty_like(x)


    class Custom(nn.Module):
        def forward(self, x):
            return scramble(x)


    def custom():
        return Custom().eval()
    """
)


def load_models(path: Path) -> Any:
    """The test models module, imported the way export imports it (once per process)."""
    from inferstack.modeltools.loading import _import_target

    return _import_target(str(path))


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> Result:
    """Run ``inferstack ARGS`` in-process through typer's runner, with a wide console."""
    runner = CliRunner()
    r = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "160"})
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return Result(r.exit_code, r.stdout, r.stderr)


def write_source(tmp_path_factory: pytest.TempPathFactory, folder: str, file_name: str, text: str) -> Path:
    """Write ``text`` as ``file_name`` in a fresh temporary folder named after ``folder``."""
    path = tmp_path_factory.mktemp(folder) / file_name
    path.write_text(text)
    return path


def export(out: Path, source: str, *inputs: str, extra: tuple[str, ...] = ()) -> Path:
    """``inferstack export SOURCE --out OUT --input I...`` plus ``extra``, which must succeed."""
    args = ["export", source, "--out", str(out)]
    for i in inputs:
        args += ["--input", i]
    r = run_cli(*args, *extra)
    assert r.exit_code == 0, r.stderr
    return out


def assert_one_line_error(r: Result, *needles: str) -> str:
    """Exit 1, one ``error:`` line on stderr naming the problem, and no traceback."""
    assert r.exit_code == 1, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    # rich soft-wraps nothing (soft_wrap=True): the message is exactly one line
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    # rich may soft-wrap; join to compare
    text = " ".join(r.stderr.split())
    for n in needles:
        assert n in text, f"{n!r} not in {text!r}"
    return lines[0]


def assert_nothing_written(parent: Path, before: set[str]) -> None:
    """No package directory and no temporary leftovers beside it."""
    assert {p.name for p in parent.iterdir()} == before, sorted(p.name for p in parent.iterdir())


def read_manifest(pkg: Path) -> dict:
    return json.loads((pkg / "manifest.json").read_text())
