"""The runtime's request handling and batcher behind a minimal ASGI callable on stock uvicorn or
granian.

What the HTTP-layer comparison measures (runtime/README.md, "The HTTP layer"): the same routes,
protocol code and batcher as ``inferstack serve`` (``inferstack.runtime.server.App``) behind a bare
ASGI callable, no framework and none of the runtime's additions on top of uvicorn
(``inferstack.runtime.http``: header and body timeouts, the body budget, bounded pipelining,
lingering close, the drain): the body is read from ASGI ``receive``, handed to ``App.handle`` as a
parsed request, and the answer ``App`` writes is sent through ASGI ``send``. The runtime itself
serves through uvicorn's httptools protocol, so on uvicorn this is the "same code, bare" check.

Run: ``python bench/peers/asgi_server.py PACKAGE --server uvicorn --port 8000`` (or ``--server
granian``; granian imports this module again in its worker, configured through the environment).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
from collections.abc import Iterable
from typing import Any

from inferstack.runtime.config import ServerConfig
from inferstack.runtime.errors import HTTPError
from inferstack.runtime.http import Request
from inferstack.runtime.model import load_model
from inferstack.runtime.server import App
from inferstack.runtime.source import resolve

_WANTED = frozenset(
    {b"content-length", b"content-type", b"content-encoding", b"inference-header-content-length",
     b"authorization", b"expect", b"transfer-encoding"}
)


class _Answer:
    """Stands in for the runtime's connection: ``App`` answers into a future."""

    __slots__ = ("future", "busy")

    def __init__(self, future: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]]) -> None:
        self.future = future
        self.busy = True

    def respond(self, status: int, body: bytes | Iterable[bytes | memoryview],
                content_type: bytes = b"application/json", headers: tuple[tuple[str, str], ...] = (),
                keep_alive: bool = True) -> bool:
        if self.future.done():
            return False
        data = body if isinstance(body, bytes) else b"".join(bytes(c) for c in body)
        head = [(b"content-type", content_type), (b"content-length", str(len(data)).encode())]
        head += [(n.encode(), v.encode()) for n, v in headers]
        self.busy = False
        self.future.set_result((status, head, data))
        return True

    def respond_error(self, error: HTTPError, keep_alive: bool = True) -> bool:
        import orjson

        return self.respond(error.status_code, orjson.dumps({"error": error.message}), headers=error.headers)


def build(package: str) -> Any:
    config = ServerConfig(model=package, max_batch_size=32, max_queue_size=1024, intra_op_threads=1,
                          providers=("CPUExecutionProvider",))
    app = App(config)

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    loop = asyncio.get_running_loop()
                    model = await loop.run_in_executor(None, load_model,
                                                       resolve(config.model, config.cache_dir), config)
                    app.attach(model, loop)
                    gc.collect()
                    gc.freeze()
                    gc.set_threshold(10_000, 50, 100)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if app.batcher is not None:
                        app.batcher.stop()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":
            return
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        headers = {n: v for n, v in scope["headers"] if n in _WANTED}
        url = scope["raw_path"] or scope["path"].encode()
        if scope.get("query_string"):
            url += b"?" + scope["query_string"]
        request = Request(scope["method"].encode(), url, headers, body, True, None)
        future: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] = \
            asyncio.get_running_loop().create_future()
        app.handle(_Answer(future), request)  # type: ignore[arg-type,unused-ignore]
        status, head, data = await future
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": data})

    return asgi


def granian_app() -> Any:
    """granian's target (``--factory``): the package comes from the environment."""
    return build(os.environ["INFERSTACK_BENCH_PACKAGE"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("package")
    parser.add_argument("--server", choices=("uvicorn", "granian"), default="uvicorn")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if args.server == "uvicorn":
        import uvicorn

        uvicorn.run(build(args.package), host="127.0.0.1", port=args.port, http="httptools", loop="uvloop",
                    lifespan="on", access_log=False, log_level="warning")
        return
    os.environ["INFERSTACK_BENCH_PACKAGE"] = args.package
    argv = [
        "granian", "--interface", "asgi", "--loop", "uvloop", "--workers", "1", "--runtime-threads", "1",
        "--host", "127.0.0.1", "--port", str(args.port), "--no-access-log", "--log-level", "warning",
        "--factory", "inferstack.bench.peers.asgi_server:granian_app",
    ]
    import sys

    from granian.cli import cli

    sys.argv = argv
    cli()


if __name__ == "__main__":
    main()
