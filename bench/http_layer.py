"""The HTTP-layer comparison: the runtime (uvicorn's httptools protocol with the runtime's additions,
runtime/http.py) against the same request handling and batcher behind a bare ASGI callable on stock
uvicorn and on granian, and the plain Starlette peer, on the MLP at one concurrency.

The machine is shared, so the setups run in interleaved rounds (A, B, C, D, A, B, C, D, ...), one
``inferstack bench`` run per setup and round, and the result is each setup's median over the rounds
and the ratio of medians to the plain peer. Writes ``<out-dir>/<name>.json`` (``http-layer``).

Run: ``python -m inferstack.bench.http_layer --rounds 5 --duration 5``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

SETUPS = ("inferstack-binary", "uvicorn-binary", "granian-binary", "plain-json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    parser.add_argument("--work-dir", type=Path, default=Path("build/bench"))
    parser.add_argument("--name", default="http-layer", help="file stem of the results")
    args = parser.parse_args()
    setups = args.setups.split(",")
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in setups}
    scratch = args.work_dir / "http-layer"
    for r in range(args.rounds):
        for setup in setups:
            name = f"round{r}-{setup}"
            subprocess.run(
                [sys.executable, "-m", "inferstack.cli", "bench", "--models", "mlp", "--setups", setup,
                 "--concurrency", str(args.concurrency), "--duration", str(args.duration), "--warmup", "1",
                 "--out-dir", str(scratch), "--work-dir", str(args.work_dir), "--name", name],
                check=True, stdout=subprocess.DEVNULL,
            )
            result = json.loads((scratch / f"{name}.json").read_text())["models"]["mlp"]["setups"][setup]
            point = result["points"][str(args.concurrency)]
            runs[setup].append({"throughput": point["throughput"], "p99_us": point["p99_us"],
                                "errors": point["errors"], "cpu_us": point["cpu_us_per_request"]})
            print(f"round {r + 1}: {setup}: {point['throughput']:.0f} req/s, "
                  f"p99 {point['p99_us'] / 1000:.2f} ms, CPU {point['cpu_us_per_request']:.0f} us/req",
                  flush=True)
    summary: dict[str, dict[str, Any]] = {}
    base = runs.get("plain-json")
    plain = statistics.median(x["throughput"] for x in base) if base else None
    for setup, xs in runs.items():
        tp = statistics.median(x["throughput"] for x in xs)
        pairs = list(zip(xs, base, strict=True)) if base else []
        summary[setup] = {
            # the same round's runs, a few seconds apart: less disturbed by other work on the machine
            "median_round_ratio": statistics.median(x["throughput"] / p["throughput"] for x, p in pairs)
            if pairs else None,
            "median_round_cpu_ratio": statistics.median(p["cpu_us"] / x["cpu_us"] for x, p in pairs)
            if pairs else None,
            "median_throughput": tp,
            "median_p99_us": statistics.median(x["p99_us"] for x in xs),
            "median_cpu_us": statistics.median(x["cpu_us"] for x in xs),
            "errors": sum(x["errors"] for x in xs),
            "vs_plain": tp / plain if plain else None,
            "runs": xs,
        }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = {"concurrency": args.concurrency, "duration_s": args.duration, "rounds": args.rounds,
           "summary": summary}
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    print("| setup | median req/s | median p99 ms | median CPU us/req | x plain (medians) "
          "| x plain (median of rounds) | x plain by CPU/req (median of rounds) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for setup, s in summary.items():
        def ratio(key: str, s: dict[str, Any] = s) -> str:
            value = s[key]
            return f"{value:.2f}" if isinstance(value, float) else "-"

        print(f"| {setup} | {s['median_throughput']:.0f} | {s['median_p99_us'] / 1000:.2f} | "
              f"{s['median_cpu_us']:.0f} | {ratio('vs_plain')} | {ratio('median_round_ratio')} "
              f"| {ratio('median_round_cpu_ratio')} |")


if __name__ == "__main__":
    main()
