"""The install extras in pyproject.toml hold what their code imports, and the runtime image no more.

(Kept here because the model tools' owner keeps the extras lists; the checks read the repository.)
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

if sys.version_info < (3, 11):
    pytest.skip("tomllib needs Python 3.11", allow_module_level=True)
import tomllib

ROOT = Path(__file__).resolve().parents[2]


def _extras() -> dict[str, set[str]]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = data["project"]["optional-dependencies"]
    return {k: {re.split(r"[\s<>=;\[]", req, maxsplit=1)[0].lower() for req in v} for k, v in extras.items()}


def _imports(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_the_runtime_extra_carries_its_http_server_and_no_web_framework() -> None:
    extras = _extras()
    imported = _imports(ROOT / "runtime")
    # HTTP through uvicorn's httptools protocol on uvloop, a bare ASGI callable: no framework
    assert "starlette" not in imported and "starlette" not in extras["runtime"], extras["runtime"]
    assert {"uvicorn", "httptools", "uvloop"} <= imported & extras["runtime"]
    # runtime/http.py subclasses uvicorn's protocol and relies on its internals: an upper bound
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = project["optional-dependencies"]["runtime"]
    (uvicorn,) = [r for r in runtime if r.startswith("uvicorn")]
    assert "<" in uvicorn, uvicorn


def test_the_benchmark_peer_has_its_extra_and_dev_installs_it() -> None:
    extras = _extras()
    peer = _imports(ROOT / "bench" / "peers") & {"starlette", "uvicorn", "orjson"}
    assert peer == {"starlette", "uvicorn", "orjson"}
    assert peer <= extras["bench"]
    (dev,) = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert "bench" in re.search(r"\[(.*)\]", dev).group(1).split(",")  # type: ignore[union-attr]
