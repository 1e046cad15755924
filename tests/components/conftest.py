"""Fixtures of the component tests; the mocks themselves live in pulumi_harness.py."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pulumi
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from pulumi_harness import ROOT  # noqa: E402


@pytest.fixture
def tiny_package() -> Path:
    return ROOT / "examples" / "packages" / "tiny-linear"


@pytest.fixture(autouse=True)
def _fresh_pulumi() -> Iterator[None]:
    yield
    pulumi.runtime.set_all_config({})
