"""Fixtures of the component tests; the mocks themselves live in pulumi_harness.py."""

from __future__ import annotations

import asyncio
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
    # Pulumi's mocks run on the main thread's current event loop; an asyncio.run() in an earlier
    # module (the runtime's tests, when run in the same process) leaves none set
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    yield
    pulumi.runtime.set_all_config({})
