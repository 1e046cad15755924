"""Regenerate the Python code of ``grpc_service.proto`` (needs grpcio-tools, a dev dependency):

    python -m inferstack.runtime.proto.generate

The generated modules are committed (marked ``linguist-generated`` in .gitattributes, outside
ruff and mypy), so installing the runtime needs no code generation. Two edits to protoc's output:
the service module imports the messages from this package, and the messages live in a private
descriptor pool, not protobuf's default one: tritonclient registers the same ``inference.*``
names there, and a process may hold both (a test, a benchmark, an application embedding both).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = "grpc_service.proto"
_POOL_DEFAULT = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_POOL_PRIVATE = "POOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = POOL.AddSerializedFile("


def generate(out: Path = HERE) -> list[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{HERE}", f"--python_out={tmp}",
               f"--grpc_python_out={tmp}", str(HERE / PROTO)]
        subprocess.run(cmd, check=True)
        messages = (Path(tmp) / "grpc_service_pb2.py").read_text()
        service = (Path(tmp) / "grpc_service_pb2_grpc.py").read_text()
    if messages.count(_POOL_DEFAULT) != 1:
        raise SystemExit("protoc's output changed: no single default-pool registration to replace")
    messages = messages.replace(_POOL_DEFAULT, _POOL_PRIVATE, 1)
    old_import = "import grpc_service_pb2 as grpc__service__pb2"
    if old_import not in service:
        raise SystemExit("protoc's output changed: the service module's import is not where expected")
    service = service.replace(
        old_import, "from inferstack.runtime.proto import grpc_service_pb2 as grpc__service__pb2", 1
    )
    written = [out / "grpc_service_pb2.py", out / "grpc_service_pb2_grpc.py"]
    written[0].write_text(messages)
    written[1].write_text(service)
    return written


if __name__ == "__main__":
    for path in generate():
        print(path)
