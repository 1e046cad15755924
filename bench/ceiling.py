"""The in-process ORT ceiling: one thread looping ``session.run`` on a ready-made batch.

Definition: for a concurrency c, the batch is ``min(c, max_batch_size)`` rows of the same kind of
input the servers get; requests/s = rows x runs / elapsed seconds. No HTTP, no parsing, no
copies: what the model itself allows on one core, which no server can beat for the same batch.

Run (pinned by the benchmark): ``python bench/ceiling.py MODEL.onnx --batch 8 --seconds 10``;
prints one JSON line. Standalone on purpose (numpy and onnxruntime only).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def measure(model: str, batch: int, seconds: float, warmup_s: float) -> dict[str, float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    shape = [batch, *(int(d) for d in inp.shape[1:])]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feeds = {inp.name: x}
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        session.run(None, feeds)
    times = []
    cpu_start = time.process_time()
    start = time.perf_counter()
    end = start + seconds
    now = start
    while now < end:
        session.run(None, feeds)
        t = time.perf_counter()
        times.append(t - now)
        now = t
    elapsed = now - start
    cpu = time.process_time() - cpu_start
    return {
        "batch": batch,
        "runs": len(times),
        "seconds": elapsed,
        "throughput": batch * len(times) / elapsed,
        # CPU time per request: the same as 1/throughput on an idle core, and less disturbed by
        # other work on a busy one
        "cpu_us_per_request": cpu / (batch * len(times)) * 1e6,
        "run_p50_us": float(np.percentile(times, 50) * 1e6),
        "run_p99_us": float(np.percentile(times, 99) * 1e6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="in-process ORT throughput at a fixed batch")
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    print(json.dumps(measure(args.model, args.batch, args.seconds, args.warmup)))


if __name__ == "__main__":
    main()
