"""Several small models in one process against one model alone: the goal that serving four small
models in one ``inferstack serve`` must not lower any one model's throughput at concurrency 8 by
more than its share of the core; and two measurements that explain the reading.

The model (default: the MLP) is packaged ``--count`` times under different names (``mlp1``,
``mlp2``, ...; the same ``model.onnx``, each a separate package with its own session and batcher).
Each round runs these phases, each server a fresh one pinned to the server core:

- **alone**: ``inferstack serve mlp1``, one wrk (``-t1 -c<concurrency>``, the binary tensor body)
  on the client core;
- **together**: ``inferstack serve mlp1 mlp2 mlp3 mlp4``, one such wrk per model, all at once, all
  on the client core (so ``count x concurrency`` connections in all);
- **separate** (unless ``--no-separate``): ``count`` servers, ``inferstack serve mlpN`` each, all
  pinned to the server core, one such wrk per server, all at once;
- **onnxruntime**: no server; a child process pinned to the server core (the benchmark itself is
  not pinned) loads the ``count`` packages' ``model.onnx`` with the server's session options
  (1 intra-op and 1 inter-op thread, sequential, all graph optimizations) and times
  ``session.run`` on the request array repeated to ``min(concurrency, max_batch_size)`` rows (the
  batch the server forms when ``concurrency`` requests of one model wait at once): (a) one session
  run ``ORT_RUNS`` times, (b) the ``count`` sessions run in turn, ``ORT_RUNS`` runs each; after
  ``ORT_WARMUP_RUNS`` runs of every session, (a) and (b) alternate ``ORT_REPEATS`` times and
  the medians are kept. The reading is CPU time (``time.process_time``) per row, microseconds:
  ``us_per_row_one`` and ``us_per_row_in_turn``. It runs once per round, after the server phases,
  so that its medians come from the same stretch of the machine's drift as theirs (it takes a few
  seconds).

Before each server phase is measured, every model's answer to the request is checked against
onnxruntime's own output and every model gets ``--warmup`` seconds of the same load. The rounds
repeat (alone, together, separate, onnxruntime, alone, ...) ``--rounds`` times, because the
machine's speed drifts.

The readings:

- A model's *share of the core* is the alone throughput divided by ``count``; each model's reading
  (together and separate) is its throughput divided by that share (``>= 1``: it lost no more than
  its share). ``median_round_ratio`` pairs each phase with the alone phase of the same round (a few
  seconds apart, so less disturbed by other work); ``ratio_of_medians`` uses each side's median
  over the rounds. The goal is judged on the together phase's paired reading, with
  ``--tolerance`` for noise.
- Server CPU per request (``cpu_us``, microseconds): the server processes' CPU time over the
  requests answered in the phase (for separate: summed over the ``count`` processes).
- The **ceiling**: the best x share a server could reach if the only cost of serving the models
  together were onnxruntime's own slowdown when sessions run in turn, on a core the server uses
  fully: a request that costs ``alone_cpu_us`` (the alone phase's server CPU per request, median)
  then costs ``in_turn - one`` more, so ceiling = ``alone_cpu_us / (alone_cpu_us + (in_turn -
  one))``. ``worst_ratio / ceiling`` is what the server keeps of that ceiling (below 1: it loses
  more than onnxruntime itself does).
- ``one_process_over_separate``: the together phase's total throughput over the separate phase's,
  round by round, median (> 1: one process serves the models better than one process each).

Writes ``<out-dir>/<name>.json`` (default ``multimodel``).

Run: ``python -m inferstack.bench.multimodel --rounds 3 --duration 4``
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from inferstack.bench import payloads, wrk
from inferstack.bench.models import MODELS, ModelSpec, ensure_package
from inferstack.bench.procs import Server, StartFailed
from inferstack.bench.run import _reference, check_answer
from inferstack.bench.setups import ServerConfig, launch_inferstack

from inferstack.manifest import load_manifest, write_manifest

#: what each phase's point keeps from wrk's summary
POINT_KEYS = ("throughput", "p50_us", "p99_us", "errors", "requests")
#: the onnxruntime phase: runs of every session before timing; runs of each session per timed
#: part; alternations of the two timed parts (one session, all in turn)
ORT_WARMUP_RUNS = 50
ORT_RUNS = 200
ORT_REPEATS = 5


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
    parser.add_argument("--no-separate", dest="separate", action="store_false",
                        help="skip the phase with one server process per model")
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


def onnxruntime_in_turn(
    models: Sequence[Path], x: np.ndarray, runs: int = ORT_RUNS, warmup_runs: int = ORT_WARMUP_RUNS,
    repeats: int = ORT_REPEATS,
) -> dict[str, Any]:
    """onnxruntime's CPU time per row in this process, one session against ``len(models)`` in turn.

    Every ``models[i]`` (a ``model.onnx`` with one input) gets its own session with the server's
    options (runtime/model.py ``session_options``) and is run ``warmup_runs`` times on ``x`` (the
    whole batch, ``x.shape[0]`` rows). Then, ``repeats`` times: session 0 run ``runs`` times, and
    all sessions run in turn (round robin) ``runs`` times each. Returns ``rows``, ``sessions``,
    ``runs``, ``repeats``, ``us_per_row_one`` and ``us_per_row_in_turn`` (medians over the
    repeats of CPU microseconds per row, ``time.process_time``) and ``one`` / ``in_turn`` (each
    repeat's value). Raises ValueError for no models or fewer than 1 run or repeat.
    """
    import onnxruntime as ort
    from inferstack.runtime.model import session_options

    if not models or runs < 1 or repeats < 1:
        raise ValueError(f"need models and at least 1 run and repeat: {len(models)} models, "
                         f"{runs} runs, {repeats} repeats")
    options = session_options(1)  # (what the benchmark's servers run with: --intra-op-threads 1)
    run_options = ort.RunOptions()
    calls = []
    for path in models:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        feeds = {session.get_inputs()[0].name: x}
        outputs = [o.name for o in session.get_outputs()]
        calls.append((session, outputs, feeds))
    for session, outputs, feeds in calls:
        for _ in range(warmup_runs):
            session.run(outputs, feeds, run_options)
    rows = int(x.shape[0])
    first = calls[0]
    one: list[float] = []
    in_turn: list[float] = []
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(runs):
            first[0].run(first[1], first[2], run_options)
        one.append((time.process_time() - t0) / (runs * rows) * 1e6)
        t0 = time.process_time()
        for _ in range(runs):
            for session, outputs, feeds in calls:
                session.run(outputs, feeds, run_options)
        in_turn.append((time.process_time() - t0) / (runs * len(calls) * rows) * 1e6)
    return {"rows": rows, "sessions": len(calls), "runs": runs, "repeats": repeats,
            "us_per_row_one": statistics.median(one), "us_per_row_in_turn": statistics.median(in_turn),
            "one": one, "in_turn": in_turn}


def _pinned_in_turn(core: int, models: list[Path], x: np.ndarray, runs: int, warmup_runs: int,
                    repeats: int) -> dict[str, Any]:
    os.sched_setaffinity(0, {core})
    result = onnxruntime_in_turn(models, x, runs, warmup_runs, repeats)
    return {**result, "affinity": sorted(os.sched_getaffinity(0))}


def measure_onnxruntime(
    packages: list[Path], x: np.ndarray, core: int, runs: int = ORT_RUNS,
    warmup_runs: int = ORT_WARMUP_RUNS, repeats: int = ORT_REPEATS,
) -> dict[str, Any]:
    """The onnxruntime phase: ``onnxruntime_in_turn`` on the packages' model files with the batch
    ``x``, in a fresh child process pinned to ``core`` before onnxruntime is loaded (this process
    stays unpinned). Returns its readings plus ``affinity``, the child's allowed cores. Raises
    SystemExit with the child's error (a core that does not exist, a model that does not load)."""
    models = [p / load_manifest(p).model_file for p in packages]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        try:
            return pool.apply(_pinned_in_turn, (core, models, x, runs, warmup_runs, repeats))
        except Exception as e:  # whatever the child raised, re-raised here
            raise SystemExit(f"onnxruntime phase: {type(e).__name__}: {e}") from None


def _point(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: raw[k] for k in POINT_KEYS}


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _readings(
    alone: list[dict[str, Any]], phases: list[dict[str, Any]], names: list[str], count: int
) -> tuple[dict[str, Any], dict[str, Any], list[float]]:
    """Each model's and the total readings of one kind of phase against the alone rounds; and the
    total throughput of each round."""
    alone_tp = statistics.median(a["throughput"] for a in alone)
    share = alone_tp / count
    models: dict[str, Any] = {}
    for name in names:
        runs = [t["models"][name] for t in phases]
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
    totals = [sum(t["models"][n]["throughput"] for n in names) for t in phases]
    total_tp = statistics.median(totals)
    total = {
        "median_throughput": total_tp,
        "ratio_of_medians": total_tp / alone_tp,
        "median_round_ratio": statistics.median(
            t / a["throughput"] for t, a in zip(totals, alone, strict=True)),
        "median_cpu_us": _median([t.get("cpu_us") for t in phases]),
        "median_cpu_share": _median([t.get("cpu_share") for t in phases]),
        # server CPU time per request alone over this phase, round by round (> 1: a request
        # costs the server less CPU here); far less disturbed by other work than req/s
        "median_round_cpu_ratio": _median([
            a["cpu_us"] / t["cpu_us"] if a.get("cpu_us") and t.get("cpu_us") else None
            for a, t in zip(alone, phases, strict=True)]),
        "errors": sum(m["errors"] for m in models.values()),
    }
    return models, total, totals


def _check_rounds(
    kind: str, alone: list[dict[str, Any]], phases: list[dict[str, Any]], names: list[str]
) -> None:
    if len(alone) != len(phases):
        raise ValueError(f"{len(alone)} alone and {len(phases)} {kind} rounds: they must pair up")
    if any(list(t["models"]) != names for t in phases):
        raise ValueError(f"the {kind} rounds do not all have the same models")


def summarize(
    alone: list[dict[str, Any]], together: list[dict[str, Any]], count: int, tolerance: float,
    separate: list[dict[str, Any]] | None = None, onnxruntime: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The readings from the measured rounds.

    ``alone[r]`` is round r's alone point (``throughput`` in req/s, ``p50_us``, ``p99_us``,
    ``errors``, ``requests``; optional ``cpu_us``, server CPU microseconds per request, and
    ``cpu_share``, server CPU seconds per wall second) and ``together[r]`` is
    ``{"models": {name: point}, "cpu_us": ..., "cpu_share": ...}`` for the same round; so is
    ``separate[r]`` (the separate phase, all servers' CPU together), if given. ``onnxruntime[r]``
    is round r's ``measure_onnxruntime`` result (``us_per_row_one``, ``us_per_row_in_turn``,
    ``rows``, ``sessions``), if given. The ``separate`` and ``onnxruntime`` sections of the result
    are None when not given; the ceiling is None when no alone round has ``cpu_us``. Raises
    ValueError when the rounds do not pair up, when a round's model set differs or is not
    ``count`` models, or when an alone throughput is 0 (no share to compare with).
    """
    if not alone or len(alone) != len(together):
        raise ValueError(f"{len(alone)} alone and {len(together)} together rounds: they must pair up")
    names = list(together[0]["models"])
    if len(names) != count:
        raise ValueError(f"together rounds have {len(names)} models, expected {count}")
    _check_rounds("together", alone, together, names)
    if separate is not None:
        _check_rounds("separate", alone, separate, names)
    if onnxruntime is not None and len(onnxruntime) != len(alone):
        raise ValueError(f"{len(alone)} alone and {len(onnxruntime)} onnxruntime rounds: they must pair up")
    if any(not a["throughput"] > 0 for a in alone):
        raise ValueError("an alone round answered nothing: no share to compare with")
    alone_tp = statistics.median(a["throughput"] for a in alone)
    models, total, totals = _readings(alone, together, names, count)
    worst = min(m["median_round_ratio"] for m in models.values())
    alone_cpu_us = _median([a.get("cpu_us") for a in alone])

    separate_summary: dict[str, Any] | None = None
    if separate is not None:
        s_models, s_total, s_totals = _readings(alone, separate, names, count)
        ratios = [m["median_round_ratio"] for m in s_models.values()]
        separate_summary = {
            "models": s_models,
            "total": s_total,
            "worst_ratio": min(ratios),
            "best_ratio": max(ratios),
            # the together phase's total req/s over the separate phase's, round by round
            "one_process_over_separate": statistics.median(
                t / s if s > 0 else float("inf") for t, s in zip(totals, s_totals, strict=True)),
        }

    ort_summary: dict[str, Any] | None = None
    if onnxruntime is not None:
        one = statistics.median(o["us_per_row_one"] for o in onnxruntime)
        in_turn = statistics.median(o["us_per_row_in_turn"] for o in onnxruntime)
        ceiling = alone_cpu_us / (alone_cpu_us + (in_turn - one)) if alone_cpu_us else None
        ort_summary = {
            "rows": onnxruntime[0]["rows"],
            "sessions": onnxruntime[0]["sessions"],
            "us_per_row_one": one,
            "us_per_row_in_turn": in_turn,
            "slowdown_us_per_row": in_turn - one,
            "alone_cpu_us": alone_cpu_us,
            "ceiling": ceiling,
            "worst_over_ceiling": worst / ceiling if ceiling else None,
            "runs": onnxruntime,
        }

    return {
        "count": count,
        "alone": {
            "median_throughput": alone_tp,
            "median_p50_us": _median([a["p50_us"] for a in alone]),
            "median_p99_us": _median([a["p99_us"] for a in alone]),
            "median_cpu_us": alone_cpu_us,
            "median_cpu_share": _median([a.get("cpu_share") for a in alone]),
            "errors": sum(a["errors"] for a in alone),
            "runs": alone,
        },
        "share_throughput": alone_tp / count,
        "models": models,
        "total": total,
        "worst_ratio": worst,
        "tolerance": tolerance,
        "met": worst >= 1 - tolerance,
        "separate": separate_summary,
        "onnxruntime": ort_summary,
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
    label: str, separate: bool = False,
) -> dict[str, Any]:
    """One phase: a fresh server on ``packages`` (``separate``: one server per package, all pinned
    to the server core), every model checked, warmed and then driven at once by its own wrk;
    returns ``{"models": {name: point}, "cpu_us": server CPU us/request (all servers' CPU over all
    requests), "cpu_share": server CPU seconds per wall second (all servers), "servers": how many,
    "load_average": the machine's 1-minute load average as the measurement started}``. Raises
    SystemExit when a server does not start or a model answers wrongly."""
    cfg = ServerConfig(max_batch_size=args.max_batch_size, core=args.server_core)
    groups = [[p] for p in packages] if separate else [packages]
    urls: dict[str, str] = {}
    servers: list[Server] = []
    with contextlib.ExitStack() as stack:
        for group in groups:
            names = [load_manifest(p).name for p in group]
            how = launch_inferstack(group, cfg)
            stem = f"multimodel-{label}-{names[0]}" if separate else f"multimodel-{label}"
            log = args.work_dir / "logs" / f"{stem}.log"
            server = stack.enter_context(Server(how.argv, how.base_url, log, how.env))
            try:
                server.start()
            except StartFailed as e:
                which = f"the server of {names[0]}" if separate else "the server"
                raise SystemExit(f"{label}: {which} did not start: {e}") from None
            servers.append(server)
            urls.update({n: how.infer_url(n) for n in names})
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
        cpu, t0 = sum(s.cpu_seconds() for s in servers), time.perf_counter()
        points = load(args.duration)
        cpu, wall = sum(s.cpu_seconds() for s in servers) - cpu, time.perf_counter() - t0
    served = sum(p["requests"] for p in points.values())
    return {"models": {n: _point(p) for n, p in points.items()},
            "cpu_us": cpu / served * 1e6 if served else None,
            "cpu_share": cpu / wall, "servers": len(servers), "load_average": load_average}


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
    sep = summary.get("separate")
    if sep is not None:
        for name, m in sep["models"].items():
            rows.append(
                f"| {name} (own process, with {summary['count'] - 1} others), c={concurrency} | "
                f"{m['median_throughput']:.0f} | "
                f"{_ms(m['median_p50_us'])} | {_ms(m['median_p99_us'])} | {m['errors']} | "
                f"{m['median_round_ratio']:.2f} | {m['ratio_of_medians']:.2f} |"
            )
    rows.append(f"| all {summary['count']} together | {t['median_throughput']:.0f} | - | - | {t['errors']} | "
                f"{t['median_round_ratio']:.2f} x alone | {t['ratio_of_medians']:.2f} x alone |")
    if sep is not None:
        st = sep["total"]
        rows.append(f"| all {summary['count']} in separate processes | {st['median_throughput']:.0f} | "
                    f"- | - | {st['errors']} | {st['median_round_ratio']:.2f} x alone | "
                    f"{st['ratio_of_medians']:.2f} x alone |")
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
    ort = summary.get("onnxruntime")
    if ort is not None:
        line = (f"onnxruntime alone ({ort['rows']} rows a run): one session "
                f"{ort['us_per_row_one']:.1f} us/row, {ort['sessions']} sessions in turn "
                f"{ort['us_per_row_in_turn']:.1f} us/row")
        if ort["ceiling"] is not None:
            line += (f" -> ceiling {ort['ceiling']:.2f} x share (alone: {ort['alone_cpu_us']:.0f} us of "
                     f"server CPU per request); worst model {summary['worst_ratio']:.2f} x share = "
                     f"{ort['worst_over_ceiling']:.2f} of the ceiling")
        rows.append(line)
    if sep is not None:
        st = sep["total"]
        cpu = "-" if st["median_cpu_us"] is None else f"{st['median_cpu_us']:.0f} us"
        rows.append(f"{summary['count']} separate processes: {sep['worst_ratio']:.2f} to "
                    f"{sep['best_ratio']:.2f} x share, total {st['median_round_ratio']:.2f} x alone, "
                    f"server CPU per request {cpu} "
                    f"(summed over the processes) (one process / separate: "
                    f"{sep['one_process_over_separate']:.2f})")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    missing = wrk.available()
    if missing:
        raise SystemExit(missing)
    spec, packages, body, expected = prepare(args)
    alone: list[dict[str, Any]] = []
    together: list[dict[str, Any]] = []
    separate: list[dict[str, Any]] = []
    ort_runs: list[dict[str, Any]] = []
    # the batch the server forms when every connection of one model waits at once
    batch = np.repeat(spec.request_array(), min(args.concurrency, args.max_batch_size), axis=0)
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
        if args.separate:
            separate.append(measure(packages, spec, body, expected, args, f"round{r}-separate",
                                    separate=True))
            t = separate[-1]
            each = ", ".join(f"{n} {p['throughput']:.0f}" for n, p in t["models"].items())
            print(f"round {r + 1}: separate: {each} req/s, servers' CPU {t['cpu_share']:.0%} of their core, "
                  f"load average {t['load_average']:.1f}", flush=True)
        ort_runs.append(measure_onnxruntime(packages, batch, args.server_core))
        o = ort_runs[-1]
        print(f"round {r + 1}: onnxruntime: one session {o['us_per_row_one']:.1f} us/row, "
              f"{o['sessions']} in turn {o['us_per_row_in_turn']:.1f} us/row ({o['rows']} rows a run)",
              flush=True)
    summary = summarize(alone, together, args.count, args.tolerance,
                        separate if args.separate else None, ort_runs)
    out = {
        "model": args.model,
        "concurrency_per_model": args.concurrency,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "max_batch_size": args.max_batch_size,
        "server_core": args.server_core,
        "client_core": args.client_core,
        "separate": args.separate,
        "onnxruntime_runs": {"warmup": ORT_WARMUP_RUNS, "each": ORT_RUNS, "repeats": ORT_REPEATS,
                             "rows": int(batch.shape[0])},
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
