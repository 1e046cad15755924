"""The same module and weights give the same package, byte for byte, wherever they are exported;
and the package carries no path of the machine that built it."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pytest
import torch
from modeltools_helpers import MODELS, load_models, read_manifest, run_cli


def _paths_of_this_machine(*extra: Path) -> list[bytes]:
    """Absolute paths an export could leak: the source's and weights' folders, the working
    directory, the interpreter's and torch's installation, the home directory."""
    places = {*extra, Path.cwd(), Path(sys.prefix), Path(torch.__file__).parent, Path.home()}
    return sorted({str(p.resolve()).encode() for p in places if str(p.resolve()) != "/"})


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_two_exports_in_different_folders_give_the_same_package_and_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exporter: str
) -> None:
    builds = []
    for run in ("first", "second"):
        where = tmp_path / run
        (where / "src").mkdir(parents=True)
        models = where / "src" / "models.py"
        models.write_text(MODELS)
        weights = where / "src" / "tiny.pt"
        if run == "first":
            torch.save(load_models(models).tiny().state_dict(), weights)
        else:
            shutil.copyfile(tmp_path / "first" / "src" / "tiny.pt", weights)
        work = where / "work"
        work.mkdir()
        monkeypatch.chdir(work)  # a different working directory each time
        out = where / "out" / "pkg"
        r = run_cli(
            "export", f"{models}:tiny", "--weights", weights, "-i", "x:batch,16:FP32", "--out", out,
            "--exporter", exporter,
        )
        assert r.exit_code == 0, r.stderr
        builds.append((out, where))

    (a, a_root), (b, b_root) = builds
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir()) == ["manifest.json", "model.onnx"]
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # the rollout identity: the object prefix is named by the sha256 of manifest.json
    identity = [hashlib.sha256((p / "manifest.json").read_bytes()).hexdigest() for p in (a, b)]
    assert identity[0] == identity[1]
    assert "created" not in read_manifest(a)
    assert read_manifest(a)["exporter"] == exporter

    for pkg, root in builds:
        leaks = _paths_of_this_machine(root, tmp_path)
        for f in pkg.iterdir():
            data = f.read_bytes()
            found = [p.decode() for p in leaks if p in data]
            assert not found, f"{f.name} holds {found}"
        assert b"_inferstack_source_" not in (pkg / "model.onnx").read_bytes()
