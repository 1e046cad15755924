"""The tools say what went wrong: one line saying what to do, exit 1, nothing written and no torch
log line on the terminal."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from modeltools_helpers import Result, assert_nothing_written, assert_one_line_error, read_manifest, run_cli

SOURCE = textwrap.dedent(
    '''
    import sys

    import torch
    from torch import nn


    def exits():
        sys.exit(0)


    class ExitsInForward(nn.Module):
        def forward(self, x):
            sys.exit(0)


    def exits_in_forward():
        return ExitsInForward().eval()


    class Branches(nn.Module):
        """Control flow on tensor values: torch.export cannot record it."""

        def forward(self, x):
            if x.sum() > 0:
                return x * 2
            return x - 1


    def branches():
        return Branches().eval()


    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return torch.relu(self.fc(x))


    def linear():
        return Linear().eval()
    '''
)

EXITS_ON_IMPORT = "import sys\nsys.exit(3)\n\ndef build():\n    pass\n"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "error_models.py"
    path.parent.mkdir()
    path.write_text(SOURCE)
    (path.parent / "exits_on_import.py").write_text(EXITS_ON_IMPORT)
    return path


def test_a_factory_that_calls_sys_exit_is_exit_1_not_0(tmp_path: Path, source: Path) -> None:
    before = {p.name for p in tmp_path.iterdir()}
    r = run_cli("export", f"{source}:exits", "-i", "x:batch,4:FP32", "-o", tmp_path / "pkg")
    assert_one_line_error(
        r, "error_models.py:exits: the factory called sys.exit(0)", "must return the module"
    )
    assert_nothing_written(tmp_path, before)
    r = run_cli(
        "export",
        f"{source.parent / 'exits_on_import.py'}:build",
        "-i",
        "x:batch,4:FP32",
        "-o",
        tmp_path / "pkg",
    )
    assert_one_line_error(r, "importing it called sys.exit(3)", "if __name__ == '__main__'")
    assert_nothing_written(tmp_path, before)
    r = run_cli("export", f"{source}:exits_in_forward", "-i", "x:batch,4:FP32", "-o", tmp_path / "pkg")
    assert_one_line_error(r, "the model's forward called sys.exit(0)")
    assert_nothing_written(tmp_path, before)


def test_data_dependent_control_flow_says_where_and_what_to_do_without_torch_logs(
    tmp_path: Path, source: Path
) -> None:
    # a process of its own, as on a terminal: torch's log handler writes to the process's stderr
    proc = subprocess.run(
        [sys.executable, "-c", "from inferstack.cli import main; main()", "export", f"{source}:branches"]
        + ["-i", "x:batch,4:FP32", "-o", str(tmp_path / "pkg")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    r = Result(proc.returncode, proc.stdout, proc.stderr)
    line = assert_one_line_error(
        r,
        "forward branches on the values of a tensor at error_models.py:",
        "'if x.sum() > 0:'",
        "torch.cond",
        "--exporter torchscript",
    )
    assert "GuardOnDataDependent" not in line and "Could not guard" not in line
    assert proc.stdout == ""
    assert not (tmp_path / "pkg").exists()


def test_an_output_name_that_collides_in_the_graph_exports_or_is_one_clear_line(
    tmp_path: Path, source: Path
) -> None:
    # 'linear' is the exporter's name for the Linear's value inside the graph
    r = run_cli(
        "export", f"{source}:linear", "-i", "x:batch,4:FP32", "-o", tmp_path / "pkg", "--output", "linear"
    )
    if r.exit_code == 0:
        assert [o["name"] for o in read_manifest(tmp_path / "pkg")["outputs"]] == ["linear"]
    else:
        line = assert_one_line_error(
            r, "--output 'linear' is also the name of a value", "choose another --output"
        )
        assert "SSA" not in line.split("(")[0]


def test_checker_ssa_failure_on_an_output_name_is_explained() -> None:
    import onnx
    from inferstack.modeltools.export import _explain_checker_failure
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["y"])], "g", [x], [y]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(onnx.checker.ValidationError) as e:
        onnx.checker.check_model(model)
    assert _explain_checker_failure(e.value, ["y"]).startswith("--output 'y' is also the name of a value")
    assert _explain_checker_failure(e.value, ["z"]).startswith("the exported model fails onnx.checker")


def test_trust_pickle_imports_the_model_module_from_the_pickle_directory(tmp_path: Path) -> None:
    # the module and the pickle live in a folder that is neither the working directory nor installed;
    # a subprocess makes the pickle, so that this process has never imported the module
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    module = f"net_{tmp_path.name.replace('-', '_')}"
    (folder / f"{module}.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn


            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    torch.manual_seed(0)
                    self.fc = nn.Linear(4, 2)

                def forward(self, x):
                    return self.fc(x)
            """
        )
    )
    subprocess.run(
        [sys.executable, "-c", f"import torch, {module}; torch.save({module}.Net().eval(), 'model.pt')"],
        cwd=folder,
        check=True,
    )
    assert module not in sys.modules
    r = run_cli(
        "export", folder / "model.pt", "--trust-pickle", "-i", "x:batch,4:FP32", "-o", tmp_path / "pkg"
    )
    assert r.exit_code == 0, r.stderr
    assert read_manifest(tmp_path / "pkg")["parity"]["passed"]
    # a class whose module is nowhere to be found: one line naming the module and what to do
    (folder / f"{module}.py").unlink()
    sys.modules.pop(module, None)
    r = run_cli(
        "export", folder / "model.pt", "--trust-pickle", "-i", "x:batch,4:FP32", "-o", tmp_path / "pkg2"
    )
    assert_one_line_error(r, f"the module {module!r} that defines its class is not importable from {folder}")
