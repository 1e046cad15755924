"""Fixtures of the model-tool tests: small real torch modules, real exports cached per session."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from modeltools_helpers import CUSTOM_OP, MODELS, export, write_source  # noqa: E402


@pytest.fixture(scope="session")
def models_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = write_source(tmp_path_factory, "src", "models.py", MODELS)
    (path.parent / "custom_op.py").write_text(CUSTOM_OP)
    return path


@pytest.fixture(scope="session")
def tiny_pkg(tmp_path_factory: pytest.TempPathFactory, models_file: Path) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "pkg"
    return export(out, f"{models_file}:tiny", "x:batch,16:FP32", extra=("--output", "logits"))


@pytest.fixture(scope="session")
def cnn_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cnn") / "pkg"
    return export(
        out, "inferstack.examples.cnn:build", "image:batch,3,32,32:FP32",
        extra=("--output", "logits", "--input-format", "image=NCHW"),
    )


@pytest.fixture(scope="session")
def encoder_pkg(tmp_path_factory: pytest.TempPathFactory, models_file: Path) -> Path:
    out = tmp_path_factory.mktemp("enc") / "pkg"
    return export(out, f"{models_file}:small_encoder", "x:batch,32,64:FP32", extra=("--output", "hidden"))


@pytest.fixture
def copy_pkg(tmp_path: Path):
    """A private copy of a cached package, for tests that damage it."""

    def copy(src: Path) -> Path:
        dst = tmp_path / "copy"
        shutil.copytree(src, dst)
        return dst

    return copy
