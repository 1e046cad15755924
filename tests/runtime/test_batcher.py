"""The batcher's policies, driven directly (no HTTP) on the real MLP package and onnxruntime:
a flood of requests in one long turn of the event loop is handed over and answered within that
turn, and the follow-up wait merges the clients of the last run that come back a little later."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from inferstack.runtime.batcher import Batcher, Job
from inferstack.runtime.config import ServerConfig
from inferstack.runtime.metrics import Metrics
from inferstack.runtime.model import Model, load_model
from inferstack.runtime.source import resolve


@pytest.fixture(scope="module")
def model(mlp_package: Path) -> Model:
    config = ServerConfig(model=str(mlp_package), providers=("CPUExecutionProvider",))
    return load_model(resolve(config.model, config.cache_dir), config)


def _job(x: np.ndarray, answers: list[tuple[int, Any, Any]], i: int) -> Job:
    def done(outputs: Any, error: Any) -> None:
        answers.append((i, outputs, error))

    return Job({"x": x}, x.shape[0], (x.shape[1:],), done)


def _in_loop(scenario: Callable[[asyncio.AbstractEventLoop], None]) -> None:
    async def main() -> None:
        scenario(asyncio.get_running_loop())

    asyncio.run(main())


def _wait(predicate: Callable[[], bool], seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.001)  # (releases the GIL: the worker runs meanwhile)
    return True


def test_a_full_batch_is_run_and_answered_within_one_long_turn(
    model: Model, ort_run, mlp_package: Path
) -> None:
    rows = np.random.default_rng(1).standard_normal((model.max_batch_size, 16)).astype(np.float32)
    expected = ort_run(mlp_package / "mlp.onnx", {"x": rows})[0]

    def scenario(loop: asyncio.AbstractEventLoop) -> None:
        batcher = Batcher(model, Metrics(), follow_wait=0.0)
        batcher.start(loop)
        try:
            answers: list[tuple[int, Any, Any]] = []
            for i in range(model.max_batch_size):
                batcher.submit(_job(rows[i:i + 1], answers, i))
            # Still inside the same callback (a long turn of the loop, as under a flood of
            # requests): the staged full batch reached the worker without waiting for the turn's
            # end, and its answers can be delivered right away.
            assert _wait(lambda: batcher.has_finished), "the worker never saw the staged batch"
            batcher.deliver_finished()
            assert sorted(i for i, _, _ in answers) == list(range(model.max_batch_size))
            for i, outputs, error in answers:
                assert error is None
                np.testing.assert_allclose(outputs["y"], expected[i:i + 1], rtol=1e-5, atol=1e-6)
            assert batcher.pending == 0
        finally:
            batcher.stop()

    _in_loop(scenario)


@pytest.mark.parametrize("follow_wait", [0.0, 1.0])
def test_follow_wait_merges_the_last_runs_clients_coming_back(model: Model, follow_wait: float) -> None:
    """After a run of 4 rows, 1 request is queued and 3 more arrive 30 ms later. With a follow-up
    wait (and a last run that took long enough: here set to 0.5 s, as a large model's would) they
    are merged into one run; without it, the first runs alone."""
    x = np.ones((1, 16), np.float32)

    def scenario(loop: asyncio.AbstractEventLoop) -> None:
        metrics = Metrics()
        batcher = Batcher(model, metrics, follow_wait=follow_wait)
        batcher._last_rows, batcher._last_compute = 4, 0.5  # as if a 4-row run had just taken 0.5 s
        answers: list[tuple[int, Any, Any]] = []
        batcher._loop = loop
        batcher.submit(_job(x, answers, 0))
        batcher._flush()

        def late() -> None:
            time.sleep(0.03)
            for i in (1, 2, 3):
                batcher._queue.put([_job(x, answers, i)])

        threading.Thread(target=late).start()
        first = batcher._next(block=True)
        assert first is not None
        jobs = batcher._collect(first)
        if follow_wait:
            assert len(jobs) == 4
        else:
            assert len(jobs) == 1
            assert _wait(lambda: batcher._queue.qsize() == 3)

    _in_loop(scenario)


def test_follow_wait_is_bounded_by_the_last_runs_compute_time(model: Model) -> None:
    """Nobody comes back: the wait ends after follow_wait x the last run's compute time."""
    x = np.ones((1, 16), np.float32)

    def scenario(loop: asyncio.AbstractEventLoop) -> None:
        batcher = Batcher(model, Metrics(), follow_wait=0.5)
        batcher._last_rows, batcher._last_compute = 8, 0.1
        batcher._loop = loop
        batcher.submit(_job(x, [], 0))
        batcher._flush()
        first = batcher._next(block=True)
        started = time.perf_counter()
        jobs = batcher._collect(first)
        waited = time.perf_counter() - started
        assert len(jobs) == 1
        assert 0.04 <= waited < 0.5, waited

    _in_loop(scenario)


def test_a_lone_request_for_a_fast_model_still_goes_to_the_worker(model: Model) -> None:
    """No worker thread is started here: even after a lone run has shown the model to be fast,
    the next lone request is not run on the event loop (a run's time can depend on its input, and
    the loop must keep answering health checks and timeouts); it waits for the worker."""
    x = np.random.default_rng(2).standard_normal((1, 16)).astype(np.float32)

    async def main() -> None:
        batcher = Batcher(model, Metrics(), follow_wait=0.25)
        batcher._loop = asyncio.get_running_loop()
        batcher._last_rows, batcher._last_compute = 1, 0.0001  # as after a lone fast run
        answers: list[tuple[int, Any, Any]] = []
        batcher.submit(_job(x, answers, 0))
        await asyncio.sleep(0.05)
        assert answers == []
        assert batcher._queue.qsize() == 1 and batcher.pending == 1

    asyncio.run(main())


def test_stop_answers_the_direct_requests_the_worker_had_not_taken(model: Model) -> None:
    # requests queued from other threads just before stop(): the worker sees the stop first; each
    # is still answered exactly once (503, the model is not ready), and its queue place given back
    def scenario(loop: asyncio.AbstractEventLoop) -> None:
        batcher = Batcher(model, Metrics(), follow_wait=0.0)
        batcher._loop = loop
        answers: list[tuple[int, Any, Any]] = []
        for i in range(3):
            batcher.submit_direct(_job(np.ones((1, 16), np.float32), answers, i), lambda pending: None)
        batcher.stop(timeout=0)
        batcher._thread = threading.Thread(target=batcher._work)  # (the worker starts after the stop)
        batcher._thread.start()
        batcher._thread.join(10)
        assert sorted(i for i, _, _ in answers) == [0, 1, 2]
        assert all(out is None and error.status_code == 503 for _, out, error in answers)
        assert batcher.pending == 0

    _in_loop(scenario)
