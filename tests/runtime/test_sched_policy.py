"""--sched-policy: every thread of the server runs under the Linux scheduling policy asked for
(by default SCHED_BATCH with one model, SCHED_OTHER with several), the threads started after the
models load included."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg
from runtime_harness import Served

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getscheduler") or not Path("/proc/self/task").is_dir(),
                                reason="Linux scheduling policies, read through /proc")


def _policies(s: Served) -> dict[int, int]:
    """Thread id -> its scheduling policy, for every thread of the server."""
    policies = {}
    for task in Path(f"/proc/{s.proc.pid}/task").iterdir():
        try:
            policies[int(task.name)] = os.sched_getscheduler(int(task.name))
        except ProcessLookupError:
            continue
    return policies


def _busy(s: Served) -> None:
    """One gRPC call, so that the threads that answer calls exist."""
    client = tg.InferenceServerClient(s.grpc_address)
    x = tg.InferInput("x", [1, 16], "FP32")
    x.set_data_from_numpy(np.ones((1, 16), np.float32))
    client.infer("mlp", [x])
    client.close()


@pytest.mark.parametrize("more,args,policy", [
    (False, (), os.SCHED_BATCH),  # auto, one model: batch
    (False, ("--sched-policy", "other"), os.SCHED_OTHER),
    (True, (), os.SCHED_OTHER),  # auto, two models: a slow one must not hold up the other's requests
    (True, ("--sched-policy", "batch"), os.SCHED_BATCH),
])
def test_every_server_thread_runs_under_the_policy(serve: Callable[..., Served], mlp_package: Path,
                                                   dtypes_package: Path, more: bool, args: tuple[str, ...],
                                                   policy: int) -> None:
    s = serve(mlp_package, *((str(dtypes_package),) if more else ()), *args)
    _busy(s)
    policies = _policies(s)
    assert len(policies) > 5  # (the event loop, the onnxruntime worker, grpcio's threads, ...)
    assert set(policies.values()) == {policy}, policies


def test_a_policy_the_operator_chose_is_kept(serve: Callable[..., Served], mlp_package: Path) -> None:
    """Started under SCHED_IDLE (as by ``chrt --idle 0``), the server keeps it: --sched-policy only
    moves threads between SCHED_OTHER and SCHED_BATCH."""
    started: list[Served] = []

    def start_idle() -> None:  # (in a thread of its own: the test process's threads keep their policy)
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        started.append(serve(mlp_package))

    starter = threading.Thread(target=start_idle)
    starter.start()
    starter.join()
    (s,) = started
    _busy(s)
    policies = _policies(s)
    assert set(policies.values()) == {os.SCHED_IDLE}, policies
    assert "keep the real-time or idle policy" in s.log()


def test_a_server_run_in_process_gives_the_callers_threads_their_policy_back(mlp_package: Path) -> None:
    """run() in the caller's process (as the CLI tests run ``serve``) changes every thread's policy
    while it serves and gives each its own back on the way out (here: the start fails, no GPU)."""
    from inferstack.runtime.config import ServerConfig
    from inferstack.runtime.errors import InferstackError
    from inferstack.runtime.server import run

    before = {int(t.name): os.sched_getscheduler(int(t.name)) for t in Path("/proc/self/task").iterdir()}
    if set(before.values()) - {os.SCHED_OTHER, os.SCHED_BATCH}:
        pytest.skip("this process runs under a real-time or idle policy, which the server keeps")
    other = "other" if before[os.getpid()] == os.SCHED_BATCH else "batch"  # (so that a change shows)
    config = ServerConfig(model=str(mlp_package), host="127.0.0.1", port=0, grpc_port=0, intra_op_threads=1,
                          providers=("CPUExecutionProvider",), require_gpu=True, sched_policy=other)
    with pytest.raises(InferstackError, match="no GPU execution provider is active"):
        run(config)
    after = {tid: os.sched_getscheduler(tid) for tid in before if Path(f"/proc/self/task/{tid}").exists()}
    assert after == {tid: before[tid] for tid in after}
    assert os.getpid() in after
