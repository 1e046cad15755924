"""Measure a model variant: its outputs on the scoring data, its latency and throughput.

Latency and throughput are measured in interleaved rounds over all variants, so that a burst of
load from elsewhere on the machine slows every variant alike instead of one unlucky one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from inferstack.modeltools._ort import session_options


@dataclass
class Runner:
    name: str
    session: Any
    load_ms: float
    latency: list[float] = field(default_factory=list)  # seconds per batch-1 call
    batch_times: list[float] = field(default_factory=list)  # seconds per large-batch call


def open_session(model: Path, providers: list[str], threads: int) -> tuple[Any, float]:
    """A session as the runtime opens one (ORT_ENABLE_ALL), and how long it took to load."""
    import onnxruntime as ort

    options = session_options(threads)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    start = time.perf_counter()
    session = ort.InferenceSession(str(model), options, providers=providers)
    load_ms = (time.perf_counter() - start) * 1e3
    wanted = providers[0]
    if wanted not in session.get_providers():
        raise RuntimeError(f"{wanted} is not active for this model (got {session.get_providers()})")
    return session, load_ms


def slice_feeds(data: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {k: v[start:stop] for k, v in data.items()}


def predict(session: Any, data: dict[str, np.ndarray], rows: int, batch: int | None) -> list[np.ndarray]:
    """All outputs over the data, in chunks of ``batch`` rows (the whole fixed shape when None)."""
    if batch is None:
        return [np.asarray(o) for o in session.run(None, data)]
    parts: list[list[np.ndarray]] = []
    for start in range(0, rows, batch):
        parts.append(session.run(None, slice_feeds(data, start, min(rows, start + batch))))
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def score(reference: list[np.ndarray], actual: list[np.ndarray], classifier: bool) -> dict[str, float]:
    """max abs diff over all outputs; top-1 agreement (classifier) or mean cosine similarity of output 0."""
    max_abs = max(
        float(np.max(np.abs(r.astype(np.float64) - a.astype(np.float64)))) if r.size else 0.0
        for r, a in zip(reference, actual, strict=True)
    )
    r0 = reference[0].astype(np.float64)
    a0 = actual[0].astype(np.float64)
    result = {"max_abs_diff": max_abs}
    if classifier:
        result["top1"] = float(np.mean(np.argmax(r0, axis=-1) == np.argmax(a0, axis=-1)))
    else:
        r = r0.reshape(r0.shape[0], -1) if r0.ndim > 1 else r0.reshape(1, -1)
        a = a0.reshape(a0.shape[0], -1) if a0.ndim > 1 else a0.reshape(1, -1)
        denom = np.linalg.norm(r, axis=1) * np.linalg.norm(a, axis=1)
        cos = np.where(denom > 0, np.sum(r * a, axis=1) / np.where(denom > 0, denom, 1), 1.0)
        result["cosine"] = float(np.mean(cos))
    return result


def accuracy(output: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(output, axis=-1) == labels.reshape(-1)))


def measure(
    runners: list[Runner],
    one: dict[str, np.ndarray],
    many: dict[str, np.ndarray] | None,
    seconds: float,
    rounds: int = 5,
) -> None:
    """Fill each runner's ``latency`` (batch 1) and ``batch_times`` (large batch), interleaved."""
    for r in runners:  # warm up: first runs allocate and tune
        for _ in range(3):
            r.session.run(None, one)
        if many is not None:
            r.session.run(None, many)
    slot = seconds / rounds
    for _ in range(rounds):
        for r in runners:
            _loop(r.session, one, slot, r.latency)
            if many is not None:
                _loop(r.session, many, slot, r.batch_times)


def _loop(session: Any, feeds: dict[str, np.ndarray], seconds: float, into: list[float]) -> None:
    deadline = time.perf_counter() + seconds
    n = 0
    while True:
        t0 = time.perf_counter()
        session.run(None, feeds)
        t1 = time.perf_counter()
        into.append(t1 - t0)
        n += 1
        if t1 >= deadline and n >= 3:
            return
