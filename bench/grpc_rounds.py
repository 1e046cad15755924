"""The gRPC comparison over interleaved rounds: reads the results of several ``inferstack bench``
runs of the MLP with ``inferstack-binary,inferstack-grpc,triton-grpc`` (one run per round; within a
run the setups follow each other a few seconds apart) and writes each setup's median per
concurrency and the median of the per-round ratios to ``<out-dir>/grpc.json``.

Run: ``python -m inferstack.bench.grpc_rounds build/grpc-rounds/g*.json``
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

SETUPS = ("inferstack-grpc", "inferstack-binary", "triton-grpc")
RATIOS = (("inferstack-grpc", "triton-grpc"), ("inferstack-grpc", "inferstack-binary"))


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    points: dict[str, dict[str, dict[str, Any]]] = {}
    ratios: dict[str, dict[str, Any]] = {}
    concurrencies = sorted({c for r in rounds for s in SETUPS
                            for c in r["models"]["mlp"]["setups"].get(s, {}).get("points", {})}, key=int)
    for c in concurrencies:
        def runs(setup: str, c: str = c) -> list[dict[str, Any]]:
            return [r["models"]["mlp"]["setups"][setup]["points"][c] for r in rounds]

        for setup in SETUPS:
            xs = runs(setup)
            points.setdefault(setup, {})[c] = {
                "median_throughput": statistics.median(x["throughput"] for x in xs),
                "median_p50_us": statistics.median(x["p50_us"] for x in xs),
                "median_p99_us": statistics.median(x["p99_us"] for x in xs),
                "median_cpu_us": statistics.median(x["cpu_us_per_request"] for x in xs),
                "errors": sum(x["errors"] for x in xs),
                "throughputs": [x["throughput"] for x in xs],
            }
        for a, b in RATIOS:
            per_round = [x["throughput"] / y["throughput"] for x, y in zip(runs(a), runs(b), strict=True)]
            ratios.setdefault(f"{a} / {b}", {})[c] = {
                "median_round_ratio": statistics.median(per_round),
                "rounds": per_round,
            }
    return {"rounds": len(rounds), "started": [r["started"] for r in rounds],
            "source": rounds[-1].get("source"), "machine": rounds[-1].get("machine"),
            "points": points, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    summary = summarize([json.loads(p.read_text()) for p in args.results])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "grpc.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("| setup | c | median req/s | p50 ms | p99 ms | CPU us/req | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for setup, by_c in summary["points"].items():
        for c, p in by_c.items():
            print(f"| {setup} | {c} | {p['median_throughput']:.0f} | {p['median_p50_us'] / 1000:.2f} | "
                  f"{p['median_p99_us'] / 1000:.2f} | {p['median_cpu_us']:.0f} | {p['errors']} |")
    for name, by_c in summary["ratios"].items():
        print(name + ": " + ", ".join(f"c={c} {r['median_round_ratio']:.2f}x" for c, r in by_c.items()))


if __name__ == "__main__":
    main()
