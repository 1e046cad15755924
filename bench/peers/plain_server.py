"""The plain peer: Starlette on uvicorn (httptools, uvloop, one worker), one ORT run per request.

No batching, no queue: the request is parsed with orjson, turned into an array with ``np.asarray``,
run, and the output is written back with orjson's numpy support. By default ORT runs in the event
loop itself, which on one core is the fastest a server without batching can do (a threadpool hop
only adds a context switch; ``--threadpool`` measures that variant). Only the v2 JSON body.

Run: ``python bench/peers/plain_server.py MODEL.onnx --name mlp --port 8000``
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_NUMPY = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32}
_V2 = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
}


def _json(doc: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type="application/json"
    )


def build_app(model_path: str, name: str, threadpool: bool) -> Starlette:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    output_types = {o.name: _V2[o.type] for o in session.get_outputs()}

    async def ready(request: Request) -> Response:
        known = request.path_params.get("model", name) == name
        return Response(b"", 200 if known else 404)

    async def infer(request: Request) -> Response:
        if request.path_params["model"] != name:
            return _json({"error": f"unknown model {request.path_params['model']!r}"}, 404)
        try:
            doc = orjson.loads(await request.body())
            feeds = {
                t["name"]: np.asarray(t["data"], dtype=_NUMPY[t["datatype"]]).reshape(t["shape"])
                for t in doc["inputs"]
            }
            wanted = [o["name"] for o in doc.get("outputs") or []] or list(output_types)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            return _json({"error": f"bad request: {e}"}, 400)
        try:
            if threadpool:
                results = await run_in_threadpool(session.run, wanted, feeds)
            else:
                results = session.run(wanted, feeds)
        except Exception as e:  # ORT rejects wrong names, types and shapes
            return _json({"error": str(e)}, 400)
        outputs = [
            {"name": n, "datatype": output_types[n], "shape": list(r.shape), "data": r.ravel()}
            for n, r in zip(wanted, results, strict=False)
        ]
        return _json({"model_name": name, "outputs": outputs, "id": doc.get("id", "")})

    routes = [
        Route("/v2/health/ready", ready),
        Route("/v2/health/live", ready),
        Route("/v2/models/{model}/ready", ready),
        Route("/v2/models/{model}/infer", infer, methods=["POST"]),
    ]
    return Starlette(routes=routes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="path of the .onnx file")
    parser.add_argument("--name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threadpool", action="store_true", help="run ORT in Starlette's threadpool")
    args = parser.parse_args()
    app = build_app(args.model, args.name, args.threadpool)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        workers=1,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
