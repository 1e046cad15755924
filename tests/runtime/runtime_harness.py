"""What the runtime's tests share: packaging a model with inferstack.manifest and starting the real
server (``python -m inferstack.runtime``, the container's entrypoint) as a subprocess on a free
loopback port, reading its ready line."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inferstack.manifest import Manifest, TensorSpec, file_entries, write_manifest

READY = re.compile(r"ready: model (\S+) on http://([^:\s]+):(\d+)")
GRPC_READY = re.compile(r" and grpc ([^:\s]+):(\d+)")
DTYPE_CASES = {
    # input name -> (v2 datatype, numpy dtype, ONNX elem type)
    "f16": ("FP16", np.float16, 10),
    "f32": ("FP32", np.float32, 1),
    "f64": ("FP64", np.float64, 11),
    "i8": ("INT8", np.int8, 3),
    "i32": ("INT32", np.int32, 6),
    "i64": ("INT64", np.int64, 7),
    "u8": ("UINT8", np.uint8, 2),
    "u64": ("UINT64", np.uint64, 13),
    "b": ("BOOL", np.bool_, 9),
    "s": ("BYTES", np.object_, 8),
}


def save_graph(graph: object, path: Path) -> Path:
    """Save an ``onnx.helper`` graph at ``path`` as a model of opset 18, IR version 9."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def read_until_closed(sock: socket.socket, limit_s: float = 5) -> bytes:
    """Every byte ``sock`` receives until the peer closes (or resets) it, or ``limit_s`` seconds pass
    without a byte."""
    sock.settimeout(limit_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def package(directory: Path, onnx_files: list[Path], name: str, max_batch_size: int) -> Path:
    """Write a model package: the ONNX file(s) plus manifest.json with sha256 of each file."""
    import onnxruntime as ort

    directory.mkdir(parents=True, exist_ok=True)
    for f in onnx_files:
        shutil.copy(f, directory / f.name)
    session = ort.InferenceSession(str(directory / onnx_files[0].name), providers=["CPUExecutionProvider"])
    from inferstack import datatypes

    def spec(arg: object) -> TensorSpec:
        dims = [d if isinstance(d, int) else -1 for d in arg.shape]  # type: ignore[attr-defined]
        return TensorSpec(arg.name, datatypes.by_ort(arg.type).v2, dims)  # type: ignore[attr-defined]

    manifest = Manifest(
        name=name,
        version="1",
        model_file=onnx_files[0].name,
        files=file_entries(directory, [f.name for f in onnx_files]),
        inputs=[spec(a) for a in session.get_inputs()],
        outputs=[spec(a) for a in session.get_outputs()],
        max_batch_size=max_batch_size,
    )
    write_manifest(directory, manifest)
    return directory


# -- the server as a subprocess --------------------------------------------------------------------
@dataclass
class Served:
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    name: str = ""
    host: str = ""
    port: int = 0
    grpc_port: int = 0

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def log(self) -> str:
        return "".join(self.lines)

    def wait_exit(self, timeout: float = 20) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _server_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERSTACK_")}
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    env.update(extra or {})
    return env


def start_server(
    model: str | Path,
    *args: str,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
    timeout: float = 60,
) -> Served:
    """``python -m inferstack.runtime MODEL --port 0 ARGS`` on loopback; wait for the ready line."""
    cmd = [
        sys.executable,
        "-m",
        "inferstack.runtime",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--grpc-port",
        "0",
        "--intra-op-threads",
        "1",
        "--providers",
        "CPUExecutionProvider",
        *args,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_server_env(env)
    )
    served = Served(proc)
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            served.lines.append(line)
            m = READY.search(line)
            if m:
                served.name, served.host, served.port = m.group(1), m.group(2), int(m.group(3))
                g = GRPC_READY.search(line)
                served.grpc_port = int(g.group(2)) if g else 0
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if wait_ready:
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if time.monotonic() > deadline:
                served.stop()
                raise AssertionError(f"server not ready within {timeout}s:\n{served.log()}")
        if not served.port:
            served.stop()
            raise AssertionError(f"server exited before ready (rc={proc.poll()}):\n{served.log()}")
    return served


def metric(text: str, selector: str) -> float:
    """The value of ``selector`` (``name`` or ``name{label="value",...}``) in /metrics' ``text``:
    the sum over every series of that name whose labels include the given ones (the inference
    metrics carry ``model`` and ``version`` labels besides)."""
    from prometheus_client.parser import text_string_to_metric_families

    name, _, rest = selector.partition("{")
    wanted = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    found = [s.value for family in text_string_to_metric_families(text) for s in family.samples
             if s.name == name and all(s.labels.get(k) == v for k, v in wanted.items())]
    assert found, f"{selector} not in /metrics"
    return float(sum(found))
