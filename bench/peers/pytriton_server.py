"""The Triton peer: Triton Inference Server through nvidia-pytriton, with its dynamic batcher and a
Python model that runs the same ORT session (one intra-op thread).

PyTriton starts the ``tritonserver`` binary as a child process and runs the model callable in this
process; the benchmark pins the whole tree to one core by starting this script under taskset.
Runs in its own Python 3.12 environment (see bench/envs.py), never imports inferstack.
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve an ONNX model with Triton via PyTriton")
    parser.add_argument("model")
    parser.add_argument("--name", required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-queue-delay-us", type=int, default=0)
    args = parser.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    in_shape = tuple(int(d) for d in inp.shape[1:])
    out_shape = tuple(int(d) for d in out.shape[1:])

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        (result,) = session.run([out.name], {inp.name: inputs[inp.name]})
        return {out.name: result}

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=args.name,
            infer_func=infer,
            inputs=[Tensor(name=inp.name, dtype=np.float32, shape=in_shape)],
            outputs=[Tensor(name=out.name, dtype=np.float32, shape=out_shape)],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
            ),
            strict=False,
        )
        print("pytriton: serving", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
