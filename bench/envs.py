"""Virtual environments for the peers that cannot share inferstack's: Triton through
nvidia-pytriton (Python 3.12, whose libpython the Triton binary loads) and the KServe model server.

The benchmark creates them itself under ``.bench-venvs/`` with pip; a peer whose environment
cannot be made is reported as unavailable with the reason. ``.bench-venvs`` may be a link to a
folder several checkouts share: an exclusive lock per peer lets one benchmark build an environment
while another waits for it instead of building it at the same time.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES: dict[str, list[str]] = {
    "triton": ["nvidia-pytriton", "onnxruntime", "numpy"],
    "kserve": ["kserve", "onnxruntime", "numpy"],
}
#: the distribution whose version the results name
MAIN_PACKAGE = {"triton": "nvidia-pytriton", "kserve": "kserve"}
PYTHON_VERSION = "3.12"


class EnvUnavailable(RuntimeError):
    pass


@dataclass
class PeerEnv:
    python: Path
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the server process
    versions: dict[str, str] = field(default_factory=dict)


def find_python(version: str = PYTHON_VERSION) -> Path:
    """A CPython ``version`` interpreter: pyenv's, else one on PATH."""
    roots = [os.environ.get("PYENV_ROOT"), str(Path.home() / ".pyenv")]
    if shutil.which("pyenv"):
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            roots.insert(
                0,
                subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True).stdout.strip(),
            )
    for root in filter(None, roots):
        found = sorted(glob.glob(f"{root}/versions/{version}.*/bin/python"))
        if found:
            return Path(found[-1])
    on_path = shutil.which(f"python{version}")
    if on_path:
        return Path(on_path)
    raise EnvUnavailable(f"no Python {version} interpreter (pyenv or python{version} on PATH)")


def _libdir(python: Path) -> str:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def ensure(peer: str, root: Path) -> PeerEnv:
    """Create (once) and describe the environment of ``peer`` under ``root``."""
    packages = PACKAGES[peer]
    venv = root / peer
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    try:
        base = find_python()
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f".{peer}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            if not (marker.is_file() and marker.read_text() == " ".join(packages) and python.exists()):
                if venv.exists():
                    shutil.rmtree(venv)
                subprocess.run(
                    [str(base), "-m", "venv", str(venv)], check=True, capture_output=True, text=True
                )
                subprocess.run(
                    [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *packages],
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=1800,
                )
                marker.write_text(" ".join(packages))
        env = dict(os.environ)
        if peer == "triton":
            # the tritonserver binary links against the interpreter's shared libpython
            libdir = _libdir(python)
            env["LD_LIBRARY_PATH"] = ":".join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))
        names = [MAIN_PACKAGE[peer], "onnxruntime", "numpy"]
        code = (
            "import importlib.metadata as m, json, sys; "
            "print(json.dumps({'python': sys.version.split()[0], "
            + ", ".join(f"'{n}': m.version('{n}')" for n in names)
            + "}))"
        )
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, env=env)
        import json

        return PeerEnv(python=python, env=env, versions=json.loads(out.stdout))
    except subprocess.CalledProcessError as e:
        detail = (e.stderr or e.stdout or "").strip().splitlines()[-3:]
        raise EnvUnavailable(f"{' '.join(map(str, e.cmd[:4]))}... failed: {' | '.join(detail)}") from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EnvUnavailable(str(e)) from None
