"""The KServe peer: the KServe Python model server (``kserve`` package, v2 REST protocol) with a
custom Model that runs the same ORT session (one intra-op thread) per request.

Per-request log lines (access log, latency log) are turned off, as they are for every setup.
Runs in its own virtual environment (see bench/envs.py), never imports inferstack.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from typing import Any

import numpy as np
import onnxruntime as ort

_QUIET_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}
    },
    "loggers": {
        name: {"handlers": ["stderr"], "level": "WARNING", "propagate": False}
        for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.error", "uvicorn.access")
    },
}


def main() -> None:
    # kserve parses sys.argv when it is imported, so the logging config must be there first
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(_QUIET_LOGGING, fh)
    sys.argv += ["--log_config_file", fh.name, "--enable_latency_logging", "false"]

    from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server

    class OrtModel(Model):  # type: ignore[misc]
        def __init__(self, name: str, path: str) -> None:
            super().__init__(name)
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            self.output_names = [o.name for o in self.session.get_outputs()]
            self.ready = True

        def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
            feeds = {t.name: t.as_numpy() for t in payload.inputs}
            results = self.session.run(self.output_names, feeds)
            outputs = []
            for name, result in zip(self.output_names, results, strict=False):
                out = InferOutput(name=name, shape=list(result.shape), datatype="FP32")
                out.set_data_from_numpy(np.asarray(result, dtype=np.float32), binary_data=False)
                outputs.append(out)
            return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs)

    parser = argparse.ArgumentParser(parents=[model_server.parser], add_help=False)
    parser.add_argument("--model_path", required=True)
    args, _ = parser.parse_known_args()
    model = OrtModel(args.model_name, args.model_path)
    server: Any = ModelServer(http_port=args.http_port, workers=1, enable_grpc=False)
    server.start([model])


if __name__ == "__main__":
    main()
