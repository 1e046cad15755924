"""The one helper that quotes an exception in an error line."""

from __future__ import annotations

import ast
from pathlib import Path

from inferstack.modeltools._text import first_line


def test_first_line_skips_blank_lines_strips_and_names_the_type() -> None:
    e = RuntimeError("\n\n   shape mismatch at /fc1/Gemm  \n  second line\n")
    assert first_line(e) == "RuntimeError: shape mismatch at /fc1/Gemm"
    assert first_line(e, with_type=False) == "shape mismatch at /fc1/Gemm"
    assert first_line(ValueError("x" * 500), limit=300) == "ValueError: " + "x" * 300
    assert first_line(KeyError()) == "KeyError" and first_line(OSError("  \n "), with_type=False) == "OSError"


def test_no_model_tool_module_keeps_its_own_copy() -> None:
    root = Path(__file__).resolve().parents[2] / "modeltools"
    copies = [
        f"{p.name}:{node.lineno}"
        for p in sorted(root.glob("*.py"))
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.FunctionDef)
        and node.name.lstrip("_") == "first_line"
        and p.name != "_text.py"
    ]
    assert copies == []
