"""Several small models in one process against one model alone: the goal that serving four small
models in one ``inferstack serve`` must not lower any one model's throughput at concurrency 8 by
more than its share of the core.

The model (default: the MLP) is packaged ``--count`` times under different names (``mlp1``,
``mlp2``, ...; the same ``model.onnx``, each a separate package with its own session and batcher).
Each round runs two phases, each with a fresh server pinned to the server core:

- **alone**: ``inferstack serve mlp1``, one wrk (``-t1 -c<concurrency>``, the binary tensor body)
  on the client core;
- **together**: ``inferstack serve mlp1 mlp2 mlp3 mlp4``, one such wrk per model, all at once, all
  on the client core (so ``count x concurrency`` connections in all).

Before each phase is measured, every model's answer to the request is checked against
onnxruntime's own output and every model gets ``--warmup`` seconds of the same load. The phases
alternate (alone, together, alone, together, ...) over ``--rounds`` rounds, because the machine's
speed drifts. A model's *share of the core* is the alone throughput divided by ``count``; the
reading for each model is its throughput together divided by that share (``>= 1``: it lost no
more than its share). ``median_round_ratio`` pairs each together phase with the alone phase just
before it (a few seconds apart, so less disturbed by other work); ``ratio_of_medians`` uses each
side's median over the rounds. The goal is judged on the paired reading, with ``--tolerance`` for
noise. Writes ``<out-dir>/<name>.json`` (default ``multimodel``).

Run: ``python -m inferstack.bench.multimodel --rounds 3 --duration 4``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from inferstack.bench import payloads, wrk
from inferstack.bench.models import MODELS, ModelSpec, ensure_package
from inferstack.bench.procs import Server, StartFailed
from inferstack.bench.run import _reference, check_answer
from inferstack.bench.setups import ServerConfig, launch_inferstack

from inferstack.manifest import load_manifest, write_manifest

#: what each phase's point keeps from wrk's summary
POINT_KEYS = ("throughput", "p50_us", "p99_us", "errors", "requests")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring); exits with status 2 on a bad value."""
    parser = argparse.ArgumentParser(
        prog="python -m inferstack.bench.multimodel",
        description="Several small models in one server against one alone, per model, at one concurrency.",
    )
    parser.add_argument("--model", default="mlp", choices=sorted(MODELS),
                        help="the model packaged --count times")
    parser.add_argument("--count", type=int, default=4, help="models served together (>= 2)")
    parser.add_argument("--concurrency", type=int, default=8, help="wrk connections per model")
    parser.add_argument("--rounds", type=int, default=3, help="alone/together rounds")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds measured per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each phase")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="noise allowed below the share: the goal is met when every model's "
                        "paired ratio is >= 1 - tolerance")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    parser.add_argument("--work-dir", type=Path, default=Path("build/bench"))
    parser.add_argument("--name", default="multimodel", help="file stem of the results")
    args = parser.parse_args(argv)
    problems = []
    if args.count < 2:
        problems.append("--count must be at least 2")
    for flag in ("concurrency", "rounds", "max_batch_size"):
        if getattr(args, flag) < 1:
            problems.append(f"--{flag.replace('_', '-')} must be at least 1")
    if not args.duration > 0:
        problems.append("--duration must be positive")
    if not args.warmup >= 0:
        problems.append("--warmup must not be negative")
    if not 0 <= args.tolerance < 1:
        problems.append("--tolerance must be in [0, 1)")
    if problems:
        parser.error("; ".join(problems))
    return args


def model_names(model: str, count: int) -> list[str]:
    """The names the copies are served under: ``mlp1``, ``mlp2``, ..."""
    return [f"{model}{i}" for i in range(1, count + 1)]


def copy_package(source: Path, target: Path, name: str) -> Path:
    """``source`` package copied to ``target`` with its manifest renamed to ``name`` (the files
    and their checksums unchanged)."""
    manifest = load_manifest(source)
    target.mkdir(parents=True, exist_ok=True)
    for entry in manifest.files:
        dst = target / entry.path
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / entry.path, dst)
    write_manifest(target, dataclasses.replace(manifest, name=name))
    return target


def _point(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: raw[k] for k in POINT_KEYS}


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def summarize(
    alone: list[dict[str, Any]], together: list[dict[str, Any]], count: int, tolerance: float
) -> dict[str, Any]:
    """The readings from the measured rounds.

    ``alone[r]`` is round r's alone point (``throughput`` in req/s, ``p50_us``, ``p99_us``,
    ``errors``, ``requests``; optional ``cpu_us``, server CPU microseconds per request, and
    ``cpu_share``, server CPU seconds per wall second) and ``together[r]`` is
    ``{"models": {name: point}, "cpu_us": ..., "cpu_share": ...}`` for the same round. Raises
    ValueError when the rounds do not pair up, when a round's model set differs or is not
    ``count`` models, or when an alone throughput is 0 (no share to compare with).
    """
    if not alone or len(alone) != len(together):
        raise ValueError(f"{len(alone)} alone and {len(together)} together rounds: they must pair up")
    names = list(together[0]["models"])
    if len(names) != count:
        raise ValueError(f"together rounds have {len(names)} models, expected {count}")
    if any(list(t["models"]) != names for t in together):
        raise ValueError("the together rounds do not all have the same models")
    if any(not a["throughput"] > 0 for a in alone):
        raise ValueError("an alone round answered nothing: no share to compare with")
    alone_tp = statistics.median(a["throughput"] for a in alone)
    share = alone_tp / count
    models: dict[str, Any] = {}
    for name in names:
        runs = [t["models"][name] for t in together]
        tp = statistics.median(r["throughput"] for r in runs)
        paired = [r["throughput"] / (a["throughput"] / count) for r, a in zip(runs, alone, strict=True)]
        models[name] = {
            "median_throughput": tp,
            "median_p50_us": _median([r["p50_us"] for r in runs]),
            "median_p99_us": _median([r["p99_us"] for r in runs]),
            "errors": sum(r["errors"] for r in runs),
            "ratio_of_medians": tp / share,
            "median_round_ratio": statistics.median(paired),
            "round_ratios": paired,
            "runs": runs,
        }
    totals = [sum(t["models"][n]["throughput"] for n in names) for t in together]
    total_tp = statistics.median(totals)
    worst = min(models.values(), key=lambda m: m["median_round_ratio"])["median_round_ratio"]
    return {
        "count": count,
        "alone": {
            "median_throughput": alone_tp,
            "median_p50_us": _median([a["p50_us"] for a in alone]),
            "median_p99_us": _median([a["p99_us"] for a in alone]),
            "median_cpu_us": _median([a.get("cpu_us") for a in alone]),
            "median_cpu_share": _median([a.get("cpu_share") for a in alone]),
            "errors": sum(a["errors"] for a in alone),
            "runs": alone,
        },
        "share_throughput": share,
        "models": models,
        "total": {
            "median_throughput": total_tp,
            "ratio_of_medians": total_tp / alone_tp,
            "median_round_ratio": statistics.median(
                t / a["throughput"] for t, a in zip(totals, alone, strict=True)),
            "median_cpu_us": _median([t.get("cpu_us") for t in together]),
            "median_cpu_share": _median([t.get("cpu_share") for t in together]),
            # server CPU time per request alone over together, round by round (> 1: a request
            # costs the server less CPU together); far less disturbed by other work than req/s
            "median_round_cpu_ratio": _median([
                a["cpu_us"] / t["cpu_us"] if a.get("cpu_us") and t.get("cpu_us") else None
                for a, t in zip(alone, together, strict=True)]),
            "errors": sum(m["errors"] for m in models.values()),
        },
        "worst_ratio": worst,
        "tolerance": tolerance,
        "met": worst >= 1 - tolerance,
    }


def prepare(args: argparse.Namespace) -> tuple[ModelSpec, list[Path], payloads.Body, Any]:
    """The packages (``count`` renamed copies of the model), the binary request body and the
    reference output onnxruntime gives for it."""
    spec = MODELS[args.model]
    base = ensure_package(args.work_dir, spec, args.max_batch_size)
    root = args.work_dir / "multimodel"
    packages = [copy_package(base, root / n, n) for n in model_names(args.model, args.count)]
    x = spec.request_array()
    body = payloads.write_bodies(root / "bodies", spec.input_name, x, spec.output_name)["binary"]
    return spec, packages, body, _reference(base, spec, x)


def measure(
    packages: list[Path], spec: ModelSpec, body: payloads.Body, expected: Any, args: argparse.Namespace,
    label: str,
) -> dict[str, Any]:
    """One phase: a fresh server on ``packages``, every model checked, warmed and then driven at
    once by its own wrk; returns ``{"models": {name: point}, "cpu_us": server CPU us/request,
    "cpu_share": server CPU seconds per wall second, "load_average": the machine's 1-minute load
    average as the measurement started}``."""
    names = [load_manifest(p).name for p in packages]
    how = launch_inferstack(packages, ServerConfig(max_batch_size=args.max_batch_size, core=args.server_core))
    log = args.work_dir / "logs" / f"multimodel-{label}.log"
    with Server(how.argv, how.base_url, log, how.env) as server:
        try:
            server.start()
        except StartFailed as e:
            raise SystemExit(f"{label}: the server did not start: {e}") from None
        urls = {n: how.infer_url(n) for n in names}
        for n, url in urls.items():
            try:
                check_answer(url, body, spec, expected)
            except (ValueError, OSError) as e:
                raise SystemExit(f"{label}: {n} answered wrongly, not measured: {e}") from None

        def load(seconds: float) -> dict[str, dict[str, Any]]:
            with ThreadPoolExecutor(len(urls)) as pool:
                futures = {n: pool.submit(wrk.run, u, body, args.concurrency, seconds, args.client_core)
                           for n, u in urls.items()}
                return {n: f.result() for n, f in futures.items()}

        if args.warmup > 0:
            load(args.warmup)
        load_average = os.getloadavg()[0]
        cpu, t0 = server.cpu_seconds(), time.perf_counter()
        points = load(args.duration)
        cpu, wall = server.cpu_seconds() - cpu, time.perf_counter() - t0
    served = sum(p["requests"] for p in points.values())
    return {"models": {n: _point(p) for n, p in points.items()},
            "cpu_us": cpu / served * 1e6 if served else None,
            "cpu_share": cpu / wall, "load_average": load_average}


def _ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.2f}"


def table(summary: dict[str, Any], concurrency: int) -> str:
    """The summary as a Markdown table."""
    a = summary["alone"]
    rows = [
        "| model | req/s (median) | p50 ms | p99 ms | errors | x share (median of rounds) "
        "| x share (medians) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| alone, c={concurrency} | {a['median_throughput']:.0f} | {_ms(a['median_p50_us'])} | "
        f"{_ms(a['median_p99_us'])} | {a['errors']} | - | - |",
    ]
    for name, m in summary["models"].items():
        rows.append(
            f"| {name} (with {summary['count'] - 1} others), c={concurrency} | "
            f"{m['median_throughput']:.0f} | "
            f"{_ms(m['median_p50_us'])} | {_ms(m['median_p99_us'])} | {m['errors']} | "
            f"{m['median_round_ratio']:.2f} | {m['ratio_of_medians']:.2f} |"
        )
    t = summary["total"]
    rows.append(f"| all {summary['count']} together | {t['median_throughput']:.0f} | - | - | {t['errors']} | "
                f"{t['median_round_ratio']:.2f} x alone | {t['ratio_of_medians']:.2f} x alone |")
    verdict = "met" if summary["met"] else "NOT met"
    rows.append("")
    rows.append(f"share of the core = alone / {summary['count']} = {summary['share_throughput']:.0f} req/s; "
                f"worst model {summary['worst_ratio']:.2f}x its share "
                f"(goal >= {1 - summary['tolerance']:.2f}): "
                f"{verdict}")
    cpu_ratio = t["median_round_cpu_ratio"]
    if cpu_ratio is not None:
        rows.append(f"server CPU per request: alone {a['median_cpu_us']:.0f} us, together "
                    f"{t['median_cpu_us']:.0f} us (alone / together, median of rounds: {cpu_ratio:.2f}); "
                    f"server CPU use: alone {a['median_cpu_share']:.0%}, together "
                    f"{t['median_cpu_share']:.0%} of its core")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    missing = wrk.available()
    if missing:
        raise SystemExit(missing)
    spec, packages, body, expected = prepare(args)
    alone: list[dict[str, Any]] = []
    together: list[dict[str, Any]] = []
    for r in range(args.rounds):
        one = measure(packages[:1], spec, body, expected, args, f"round{r}-alone")
        alone.append({**one["models"][model_names(args.model, 1)[0]],
                      **{k: one[k] for k in ("cpu_us", "cpu_share", "load_average")}})
        print(f"round {r + 1}: alone: {alone[-1]['throughput']:.0f} req/s, "
              f"p99 {_ms(alone[-1]['p99_us'])} ms, "
              f"server CPU {one['cpu_share']:.0%} of its core, load average {one['load_average']:.1f}",
              flush=True)
        together.append(measure(packages, spec, body, expected, args, f"round{r}-together"))
        each = ", ".join(f"{n} {p['throughput']:.0f}" for n, p in together[-1]["models"].items())
        t = together[-1]
        print(f"round {r + 1}: together: {each} req/s, server CPU {t['cpu_share']:.0%} of its core, "
              f"load average {t['load_average']:.1f}", flush=True)
    summary = summarize(alone, together, args.count, args.tolerance)
    out = {
        "model": args.model,
        "concurrency_per_model": args.concurrency,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "max_batch_size": args.max_batch_size,
        "server_core": args.server_core,
        "client_core": args.client_core,
        "load_average_at_end": os.getloadavg(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": summary,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"{args.name}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(table(summary, args.concurrency))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
