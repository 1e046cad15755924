"""Drive a server's gRPC ModelInfer with h2load (nghttp2's HTTP/2 load generator, C, one thread,
N connections with one call in flight each, pinned to the load generator's core) and read its
numbers.

A unary gRPC call is an HTTP/2 POST to ``/inference.GRPCInferenceService/ModelInfer`` with
``content-type: application/grpc`` and one length-prefixed message: h2load sends the same framed
``ModelInferRequest`` (raw contents) on every call. h2load does not read gRPC's status trailer, so
errors are counted from the answers' bytes: every successful answer carries one response message
of a known size (from the check call), a refused call carries none.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

METHOD = "/inference.GRPCInferenceService/ModelInfer"


class LoadFailed(RuntimeError):
    pass


def available() -> str | None:
    """None when h2load can run here, else the reason it cannot."""
    if shutil.which("h2load") is None:
        return "h2load is not installed (Debian package 'nghttp2-client')"
    return None


def frame(message: bytes) -> bytes:
    """gRPC's length-prefixed message: a compressed flag (0) and a 4-byte big-endian length."""
    return b"\0" + len(message).to_bytes(4, "big") + message


def request_message(model: str, input_name: str, array: np.ndarray, output_name: str) -> bytes:
    """A ``ModelInferRequest`` with the input in ``raw_input_contents``, as tritonclient sends it."""
    from inferstack.runtime.proto import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=input_name, datatype="FP32", shape=array.shape)
    request.outputs.add(name=output_name)
    request.raw_input_contents.append(np.ascontiguousarray(array, np.float32).tobytes())
    return bytes(request.SerializeToString())


def check(address: str, message: bytes, output_name: str, expected: np.ndarray, timeout: float = 30.0) -> int:
    """Call ModelInfer once with grpcio; raise ValueError unless the answer is ``expected``.
    Returns the answer's framed size in bytes (what each successful call brings)."""
    import grpc
    from inferstack.runtime.proto import grpc_service_pb2 as pb

    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        try:
            raw = call(message, timeout=timeout)
        except grpc.RpcError as e:
            raise ValueError(f"{e.code()}: {e.details()}") from None
    response = pb.ModelInferResponse.FromString(raw)
    names = [o.name for o in response.outputs]
    if output_name not in names or len(response.raw_output_contents) != len(names):
        raise ValueError(f"no raw output {output_name!r} in the answer (outputs {names})")
    index = names.index(output_name)
    got = np.frombuffer(response.raw_output_contents[index], np.float32).reshape(
        tuple(response.outputs[index].shape))
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise ValueError("wrong result")
    return len(frame(raw))


def _number(pattern: str, text: str) -> int:
    m = re.search(pattern, text)
    if not m:
        raise LoadFailed(f"h2load's output has no {pattern!r}: {text.strip()[-400:]}")
    return int(m.group(1))


def run(address: str, message: bytes, answer_bytes: int, connections: int, duration_s: float,
        core: int | None = 1, timeout_s: float = 10.0) -> dict[str, Any]:
    """One h2load run of ``duration_s`` seconds; returns throughput (successful calls/s), latency
    percentiles (microseconds) and errors, in the shape of wrk.run's result."""
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp:
        body = Path(tmp) / "request.bin"
        body.write_bytes(frame(message))
        log = Path(tmp) / "calls.tsv"
        argv = ["h2load", "-t1", f"-c{connections}", "-m1", f"-D{max(1, round(duration_s))}",
                "-H", "content-type: application/grpc", "-H", "te: trailers",
                "-d", str(body), "--log-file", str(log), f"-T{timeout_s:g}", f"http://{address}{METHOD}"]
        if core is not None:
            argv = ["taskset", "-c", str(core), *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + timeout_s + 30)
        out = proc.stdout
        if proc.returncode != 0:
            raise LoadFailed(f"h2load exited {proc.returncode}: {(proc.stderr or out).strip()[-400:]}")
        latencies = []
        for line in log.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1] == "200":
                latencies.append(int(parts[2]))
    seconds = duration_s
    m = re.search(r"finished in ([\d.]+)(ms|s),", out)
    if m:
        seconds = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    done = _number(r"requests: \d+ total, \d+ started, (\d+) done", out)
    ok_http = _number(r"status codes: (\d+) 2xx", out)
    data = _number(r"traffic: .*?, .*?\((\d+)\) data", out)
    answered = min(ok_http, data // answer_bytes) if answer_bytes else ok_http
    latencies.sort()

    def pct(q: float) -> float | None:
        return float(latencies[min(len(latencies) - 1, int(q * len(latencies)))]) if latencies else None

    return {
        "requests": done,
        "ok": answered,
        "seconds": seconds,
        "throughput": answered / seconds if seconds else 0.0,
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "mean_us": statistics.fmean(latencies) if latencies else None,
        "max_us": float(latencies[-1]) if latencies else None,
        "ok_p99_upper_us": pct(0.99),
        "errors": done - answered,
        "statuses": {"grpc-ok": answered, "other": done - answered},
        "socket_errors": {},
    }
