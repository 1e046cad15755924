"""grpcio's own ceiling on one core: a bare ``inference.GRPCInferenceService/ModelInfer`` that answers
every call with one constant ModelInferResponse (the MLP's answer: 10 FP32 in
``raw_output_contents``), served by ``grpc.aio`` or by the threaded ``grpc.server``, driven by the
same h2load command and request message as ``inferstack bench``'s gRPC points (bench/grpc_load.py).
No model, no batching, no checks: what a Python gRPC front end costs before it does any work, which
no grpcio server in Python can beat.

Modes: ``aio`` (grpc.aio on uvloop, the message parsed), ``aio-bytes`` (grpc.aio, no parsing),
``sync`` (grpc.server, 64 pool threads, the message parsed), ``sync-bytes`` (grpc.server, no
parsing), ``sync-runtime`` (``sync`` with the settings ``inferstack serve`` applies: grpcio's
``event_engine_listener`` experiment off, every thread under SCHED_BATCH).

Run: ``python -m inferstack.bench.grpc_ceiling --modes sync,sync-runtime --rounds 3`` (server on core 0,
h2load on core 1); prints one JSON line per run and a table of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

METHOD = "ModelInfer"
SERVICE = "inference.GRPCInferenceService"


def serve(port: int, mode: str) -> None:
    """Serve the constant answer on ``port`` until killed (runs in the child process)."""
    from concurrent.futures import ThreadPoolExecutor

    if mode.endswith("-runtime"):  # (before grpc is imported: grpcio reads its variable once)
        from inferstack.runtime.config import set_grpc_environment

        set_grpc_environment(os.environ)
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    import grpc
    import numpy as np
    from inferstack.runtime.proto import grpc_service_pb2 as pb

    response = pb.ModelInferResponse(model_name="mlp", model_version="1")
    response.outputs.add(name="logits", datatype="FP32", shape=[1, 10])
    response.raw_output_contents.append(np.zeros((1, 10), np.float32).tobytes())
    raw = response.SerializeToString()
    parse = not mode.endswith("-bytes")

    def answer(request: Any, context: Any) -> Any:
        return response if parse else raw

    async def answer_async(request: Any, context: Any) -> Any:
        return response if parse else raw

    handler = grpc.method_handlers_generic_handler(SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(
        answer_async if mode.startswith("aio") else answer,
        request_deserializer=pb.ModelInferRequest.FromString if parse else None,
        response_serializer=pb.ModelInferResponse.SerializeToString if parse else None)})
    if mode.startswith("aio"):
        import uvloop

        async def main() -> None:
            server = grpc.aio.server()
            server.add_generic_rpc_handlers((handler,))
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            await server.wait_for_termination()

        uvloop.run(main())
        return
    server = grpc.server(ThreadPoolExecutor(64), maximum_concurrent_rpcs=1024)
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(mode: str, connections: int, seconds: float, core: int = 0,
            client_core: int = 1) -> dict[str, Any]:
    """One run of ``mode`` at ``connections`` concurrent calls: grpc_load.run's numbers plus the
    server's CPU microseconds per answered call."""
    import numpy as np
    from inferstack.bench import grpc_load
    from inferstack.bench.models import MODELS

    spec = MODELS["mlp"]
    port = _free_port()
    proc = subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-m",
                             "inferstack.bench.grpc_ceiling", "--serve", mode, "--port", str(port)])
    try:
        message = grpc_load.request_message("mlp", spec.input_name, spec.request_array(), spec.output_name)
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                answer_bytes = grpc_load.check(address, message, spec.output_name,
                                               np.zeros((1, 10), np.float32), timeout=2)
                break
            except ValueError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        grpc_load.run(address, message, answer_bytes, connections, 1.0, core=client_core)  # warm-up
        before = _cpu_s(proc.pid)
        result = grpc_load.run(address, message, answer_bytes, connections, seconds, core=client_core)
        cpu = _cpu_s(proc.pid) - before
    finally:
        proc.kill()
        proc.wait()
    result["mode"] = mode
    result["connections"] = connections
    result["cpu_us_per_request"] = cpu * 1e6 / result["ok"] if result["ok"] else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="aio,sync")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.port, args.serve)
        return
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for _ in range(args.rounds):  # interleaved: each round runs every mode once
        for mode in modes:
            r = measure(mode, args.concurrency, args.seconds)
            runs[mode].append(r)
            print(json.dumps({k: r[k] for k in ("mode", "connections", "throughput", "p50_us", "p99_us",
                                                "errors", "cpu_us_per_request")}), flush=True)
    print("| mode | c | median calls/s | p50 ms | p99 ms | CPU us/call |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, rs in runs.items():
        print(f"| {mode} | {args.concurrency} | {statistics.median(r['throughput'] for r in rs):.0f} | "
              f"{statistics.median(r['p50_us'] for r in rs) / 1000:.2f} | "
              f"{statistics.median(r['p99_us'] for r in rs) / 1000:.2f} | "
              f"{statistics.median(r['cpu_us_per_request'] for r in rs):.0f} |")


if __name__ == "__main__":
    main()
