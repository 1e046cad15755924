"""The README's demo: a trained model to a served endpoint, end to end on this machine.

    python -m inferstack.examples.demo          (what `make demo` runs)

1. trains the example CNN for a few seconds on its synthetic task and saves a state dict;
2. ``inferstack export`` turns it into an ONNX package (parity checked against PyTorch);
3. ``inferstack optimize`` measures the variants on held-out data and packages the fastest one
   inside the accuracy budget;
4. ``inferstack verify`` re-checks the optimized package;
5. ``inferstack serve`` serves it on a free loopback port, and a tritonclient request classifies
   held-out samples; then the server is stopped.

Every step runs the real command in a subprocess; the demo stops with exit code 1 at the first
step that fails.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from inferstack.manifest import load_manifest

CNN_INPUT = "image:batch,3,32,32:FP32"


class DemoError(Exception):
    pass


def _inferstack() -> list[str]:
    script = Path(sys.executable).with_name("inferstack")
    if script.is_file():
        return [str(script)]
    found = shutil.which("inferstack")
    if found:
        return [found]
    return [sys.executable, "-c", "from inferstack.cli import main; main()"]


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(args: list[str]) -> None:
    shown = " ".join(shlex.quote(a) for a in ["inferstack", *args])
    print(f"$ {shown}", flush=True)
    env = dict(os.environ, COLUMNS=os.environ.get("COLUMNS", "120"))
    proc = subprocess.run([*_inferstack(), *args], env=env)
    if proc.returncode != 0:
        raise DemoError(f"`{shown}` exited with code {proc.returncode}")


def _reader(stream: object, lines: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):  # type: ignore[attr-defined]
        lines.put(line)
    lines.put("")


def serve_and_request(package: Path, data: Path, timeout: float = 60.0) -> None:
    import tritonclient.http as httpclient

    args = ["serve", str(package), "--host", "127.0.0.1", "--port", "0", "--intra-op-threads", "1"]
    print("$ " + " ".join(["inferstack", *args]), flush=True)
    proc = subprocess.Popen(
        [*_inferstack(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    try:
        port = None
        deadline = time.monotonic() + timeout
        while port is None:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise DemoError(f"the server printed no ready line within {timeout:.0f} s") from None
            if line == "":
                raise DemoError(f"the server exited with code {proc.wait()} before it was ready")
            print(f"  server: {line.rstrip()}", flush=True)
            m = re.search(r"ready\b.*?http://[^\s:]+:(\d+)", line)
            if m:
                port = int(m.group(1))
        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}")
        while not client.is_server_ready():
            if time.monotonic() > deadline:
                raise DemoError("/v2/health/ready did not turn 200")
            time.sleep(0.1)
        npz = np.load(data)
        images, labels = npz["image"][:8], npz["labels"][:8]
        name = load_manifest(package).name
        meta = client.get_model_metadata(name)
        print(f"  GET /v2/models/{name}: inputs {[(i['name'], i['shape']) for i in meta['inputs']]}")
        infer_input = httpclient.InferInput("image", list(images.shape), "FP32")
        infer_input.set_data_from_numpy(images, binary_data=True)
        result = client.infer(name, [infer_input], outputs=[httpclient.InferRequestedOutput("logits")])
        logits = result.as_numpy("logits")
        if logits is None or logits.shape != (len(images), 10):
            raise DemoError(f"unexpected response: {result.get_response()}")
        predicted = logits.argmax(axis=1)
        print(f"  POST /v2/models/{name}/infer with {len(images)} held-out images (binary tensor data)")
        print(f"  predicted classes: {predicted.tolist()}")
        print(f"  true classes:      {labels.tolist()}")
        print(f"  correct: {int((predicted == labels).sum())}/{len(labels)}")
        client.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        while not lines.empty():
            line = lines.get()
            if line:
                print(f"  server: {line.rstrip()}", flush=True)
    print(f"  server stopped (exit code {proc.returncode})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train, export, optimize, verify and serve the example CNN.")
    parser.add_argument("--workdir", type=Path, default=Path("build/demo"), help="where the demo writes")
    parser.add_argument("--train-seconds", type=float, default=5.0)
    parser.add_argument("--bench-seconds", type=float, default=1.0, help="optimize's time per measurement")
    args = parser.parse_args(argv)
    work: Path = args.workdir
    started = time.monotonic()
    try:
        step(f"1. train the example CNN for {args.train_seconds:g} s (at least 20 steps), synthetic task")
        from inferstack.examples import train

        train.main(
            [
                "cnn",
                "--seconds",
                str(args.train_seconds),
                "--out",
                str(work / "cnn.pt"),
                "--data",
                str(work / "cnn-heldout.npz"),
                "--samples",
                "512",
                "--min-steps",
                "20",
            ]
        )

        step("2. export to ONNX (dynamic batch axis, parity against PyTorch in a subprocess)")
        run(
            [
                "export",
                "inferstack.examples.cnn:build",
                "--weights",
                str(work / "cnn.pt"),
                "--input",
                CNN_INPUT,
                "--output",
                "logits",
                "--name",
                "cnn",
                "--out",
                str(work / "cnn"),
            ]
        )

        step("3. optimize: build, score and benchmark the variants; keep the fastest inside the budget")
        run(
            [
                "optimize",
                str(work / "cnn"),
                "--out",
                str(work / "cnn-opt"),
                "--data",
                str(work / "cnn-heldout.npz"),
                "--seconds",
                str(args.bench_seconds),
            ]
        )

        step("4. verify the optimized package")
        run(["verify", str(work / "cnn-opt")])

        step("5. serve it and send a request with tritonclient")
        serve_and_request(work / "cnn-opt", work / "cnn-heldout.npz")
    except DemoError as e:
        print(f"\ndemo failed: {e}", file=sys.stderr)
        return 1
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; packages under {work}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
