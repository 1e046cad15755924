"""One benchmark run: models x setups x concurrency, written as JSON, Markdown and plots.

For each model: export the package (once), measure the in-process ceiling, then start each server
in turn pinned to the server core, check that it answers correctly, and drive it with wrk from the
other core at each concurrency (a warm-up, then ``repeats`` measured runs). A server that cannot
start or answers wrongly is recorded with the reason. Optionally an overload point and cold start.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from inferstack.bench import envs, grpc_load, machine, payloads, wrk
from inferstack.bench.models import MODELS, ModelSpec, ensure_package
from inferstack.bench.procs import Server, StartFailed, http_post
from inferstack.bench.setups import DEFAULT_SETUPS, SETUPS, ServerConfig, launch, split

from inferstack.errors import InferstackError

BENCH_DIR = Path(__file__).resolve().parent
Log = Callable[[str], None]


@dataclass
class Config:
    models: list[str] = field(default_factory=lambda: ["mlp", "transformer"])
    setups: list[str] = field(default_factory=lambda: list(DEFAULT_SETUPS))
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 32, 128])
    duration_s: float = 10.0
    warmup_s: float = 2.0
    repeats: int = 1
    server: ServerConfig = field(default_factory=ServerConfig)
    client_core: int = 1
    overload: bool = False
    overload_connections: int = 512
    overload_queue_size: int = 64
    overload_duration_s: float = 60.0
    cold_start: bool = False
    #: models whose inferstack points each get the ceiling measured right after them
    paired_ceiling_models: tuple[str, ...] = ("transformer",)
    work_dir: Path = Path("build/bench")
    out_dir: Path = Path("bench/results")
    venvs_dir: Path = Path(".bench-venvs")
    name: str = "latest"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("work_dir", "out_dir", "venvs_dir"):
            d[k] = str(d[k])
        return d


def _median_point(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    point: dict[str, Any] = {"repeats": repeats}
    for key in ("throughput", "p50_us", "p90_us", "p99_us", "ok_p99_upper_us"):
        values = [r[key] for r in repeats if r.get(key) is not None]
        point[key] = statistics.median(values) if values else None
    point["errors"] = sum(r["errors"] for r in repeats)
    point["requests"] = sum(r["requests"] for r in repeats)
    if len(repeats) > 1:
        t = [r["throughput"] for r in repeats]
        point["throughput_min"], point["throughput_max"] = min(t), max(t)
    return point


def _ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.2f}"


def _reference(package: Path, spec: ModelSpec, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
    return np.asarray(session.run([spec.output_name], {spec.input_name: x})[0])


def check_answer(url: str, body: payloads.Body, spec: ModelSpec, expected: np.ndarray) -> None:
    """Raise ValueError unless the server answers ``body`` with the reference output."""
    headers = {"Content-Type": body.content_type}
    if body.header_length is not None:
        headers["Inference-Header-Content-Length"] = str(body.header_length)
    status, data, resp_headers = http_post(url, body.path.read_bytes(), headers)
    if status != 200:
        raise ValueError(f"status {status}: {data[:300]!r}")
    length = resp_headers.get("inference-header-content-length")
    got = payloads.decode_response(data, int(length) if length else None, spec.output_name)
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise ValueError(f"wrong result: max abs diff {float(np.max(np.abs(got - expected))):.3g}")


#: servers whose bare HTTP round trip (GET of the model's ready endpoint at c=1) is measured
FLOOR_SERVERS = ("inferstack", "plain")
_METRICS = ("inferstack_batch_size_sum", "inferstack_batch_size_count", "inferstack_compute_seconds_sum")


def scrape_metrics(base_url: str, names: tuple[str, ...]) -> dict[str, float] | None:
    """The named samples from inferstack's /metrics, each summed over its series (the runtime labels
    them by model and version); None when not all are available."""
    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    values: dict[str, float] = {}
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        name = series.partition("{")[0]
        if name in names:
            values[name] = values.get(name, 0.0) + float(value)
    return values if len(values) == len(names) else None


def scrape_batching(base_url: str) -> dict[str, float] | None:
    """inferstack's batch and compute counters from /metrics (None when not available)."""
    return scrape_metrics(base_url, _METRICS)


def wait_idle(base_url: str, timeout_s: float = 30.0) -> None:
    """Wait until inferstack has answered every admitted request (wrk stops sending at the end of
    a run, but at high concurrency the server still has a queue to work through)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        inflight = scrape_metrics(base_url, ("inferstack_inflight_requests",))
        if inflight is None or inflight["inferstack_inflight_requests"] == 0:
            return
        time.sleep(0.02)


def batching_delta(
    before: dict[str, float] | None, after: dict[str, float] | None, seconds: float
) -> dict[str, float] | None:
    """Mean merged batch and the share of the wall time ORT was computing, between two scrapes."""
    if not before or not after:
        return None
    batches = after["inferstack_batch_size_count"] - before["inferstack_batch_size_count"]
    if batches <= 0:
        return None
    requests = after["inferstack_batch_size_sum"] - before["inferstack_batch_size_sum"]
    compute = after["inferstack_compute_seconds_sum"] - before["inferstack_compute_seconds_sum"]
    return {
        "batches": batches,
        "mean_batch": requests / batches,
        "compute_share": compute / seconds if seconds else 0.0,
        "compute_us_per_batch": compute / batches * 1e6,
    }


def run_ceiling(package: Path, batch: int, seconds: float, warmup_s: float, core: int) -> dict[str, Any]:
    """One run of the in-process loop (bench/ceiling.py) pinned to ``core``."""
    argv = [
        "taskset",
        "-c",
        str(core),
        sys.executable,
        str(BENCH_DIR / "ceiling.py"),
        str(package / "model.onnx"),
        "--batch",
        str(batch),
        "--seconds",
        str(seconds),
        "--warmup",
        str(warmup_s),
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def measure_ceiling(package: Path, cfg: Config, log: Log) -> dict[str, Any]:
    points: dict[str, Any] = {}
    by_batch: dict[int, dict[str, Any]] = {}
    for c in cfg.concurrency:
        batch = min(c, cfg.server.max_batch_size)
        if batch not in by_batch:
            runs = [
                run_ceiling(package, batch, cfg.duration_s, min(cfg.warmup_s, 2.0), cfg.server.core)
                for _ in range(cfg.repeats)
            ]
            by_batch[batch] = {
                "batch": batch,
                "throughput": statistics.median(r["throughput"] for r in runs),
                "run_p50_us": statistics.median(r["run_p50_us"] for r in runs),
                "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in runs),
                "repeats": runs,
            }
            log(f"  ceiling batch {batch}: {by_batch[batch]['throughput']:.0f} req/s")
        points[str(c)] = by_batch[batch]
    return {"status": "ok", "points": points}


def _merge_ceilings(before: dict[str, Any], after: dict[str, Any]) -> None:
    keys = ("throughput", "run_p50_us", "cpu_us_per_request")
    for c, point in before["points"].items():
        if "before" in point:
            continue  # concurrencies with the same batch share one point: merge it once
        late = after["points"][c]
        point["before"] = {k: point[k] for k in keys}
        point["after"] = {k: late[k] for k in keys}
        for k in keys:
            point[k] = (point["before"][k] + point["after"][k]) / 2
        point["repeats"] = point["repeats"] + late["repeats"]


def measure_server(
    server_name: str,
    bodies_wanted: list[str],
    package: Path,
    spec: ModelSpec,
    bodies: dict[str, payloads.Body],
    expected: np.ndarray,
    cfg: Config,
    log: Log,
) -> dict[str, dict[str, Any]]:
    """Results for each ``server_name-body`` setup (one server start serves all its bodies)."""
    results: dict[str, dict[str, Any]] = {}
    setups = [f"{server_name}-{b}" for b in bodies_wanted]
    try:
        how = launch(server_name, package, spec.name, cfg.server, cfg.venvs_dir)
    except (envs.EnvUnavailable, OSError) as e:
        log(f"  {server_name}: unavailable: {e}")
        return {s: {"status": "unavailable", "reason": str(e)} for s in setups}
    logs = cfg.work_dir / "logs"
    server = Server(
        how.argv, how.base_url, logs / f"{spec.name}-{server_name}.log", how.env, how.ready_path(spec.name)
    )
    try:
        try:
            cold = server.start()
        except StartFailed as e:
            log(f"  {server_name}: did not start: {e}")
            return {s: {"status": "unavailable", "reason": f"did not start: {e}"} for s in setups}
        log(f"  {server_name}: ready after {cold:.2f} s")
        url = how.infer_url(spec.name)
        floor = None
        if server_name in FLOOR_SERVERS and 1 in cfg.concurrency:
            # the HTTP round trip with no model work: what c=1 latency cannot go below
            ready_url = how.base_url + how.ready_path(spec.name)
            wrk.run(ready_url, None, 1, min(cfg.warmup_s, 2.0) or 1, core=cfg.client_core)
            floor = wrk.run(ready_url, None, 1, min(cfg.duration_s, 5.0), core=cfg.client_core)
            log(f"  {server_name}: GET ready at c=1 (HTTP floor): p50 {_ms(floor['p50_us'])} ms")
        for body_name, setup in zip(bodies_wanted, setups, strict=False):
            drive: Callable[[int, float], dict[str, Any]]
            if body_name == "grpc":
                # ModelInfer with raw contents, driven by h2load (see grpc_load)
                missing = grpc_load.available() or (
                    None if how.grpc_address else f"{server_name} has no gRPC port")
                if missing:
                    log(f"  {setup}: unavailable: {missing}")
                    results[setup] = {"status": "unavailable", "reason": missing}
                    continue
                message = grpc_load.request_message(spec.name, spec.input_name, spec.request_array(),
                                                    spec.output_name)
                try:
                    answer_bytes = grpc_load.check(how.grpc_address, message, spec.output_name, expected)
                except (ValueError, OSError) as e:
                    log(f"  {setup}: wrong answer, not measured: {e}")
                    results[setup] = {"status": "wrong-answer", "reason": str(e), "cold_start_s": cold}
                    continue
                address = how.grpc_address

                def drive(c: int, seconds: float, m: bytes = message, n: int = answer_bytes,
                          a: str = address) -> dict[str, Any]:
                    return grpc_load.run(a, m, n, c, seconds, core=cfg.client_core)
            else:
                body = bodies[body_name]
                try:
                    check_answer(url, body, spec, expected)
                except (ValueError, OSError) as e:
                    log(f"  {setup}: wrong answer, not measured: {e}")
                    results[setup] = {"status": "wrong-answer", "reason": str(e), "cold_start_s": cold}
                    continue

                def drive(c: int, seconds: float, b: payloads.Body = body) -> dict[str, Any]:
                    return wrk.run(url, b, c, seconds, core=cfg.client_core)
            points: dict[str, Any] = {}
            rss_before = server.rss_bytes()
            for c in cfg.concurrency:
                if cfg.warmup_s > 0:
                    drive(c, cfg.warmup_s)
                before = scrape_batching(how.base_url) if server_name == "inferstack" else None
                paired = server_name == "inferstack" and spec.name in cfg.paired_ceiling_models
                cpu_before = server.cpu_seconds()
                wall = 0.0  # seconds under load (the paired ceiling runs between them are left out)
                repeats, ceilings = [], []
                for _ in range(cfg.repeats):
                    t0 = time.perf_counter()
                    repeats.append(drive(c, cfg.duration_s))
                    if paired:
                        wait_idle(how.base_url)  # the queue's last requests are part of the run
                    wall += time.perf_counter() - t0
                    if paired:
                        # The machine's speed drifts (other tenants of the host): the ceiling is
                        # measured again right after each run, and the ratio taken pair by pair.
                        batch = min(c, cfg.server.max_batch_size)
                        ceilings.append(run_ceiling(package, batch, min(cfg.duration_s, 5.0), 1.0,
                                                    cfg.server.core)["throughput"])
                point = points[str(c)] = _median_point(repeats)
                served = sum(r["requests"] for r in repeats)
                point["cpu_us_per_request"] = (
                    (server.cpu_seconds() - cpu_before) / served * 1e6 if served else None
                )
                if ceilings:
                    point["paired_ceiling"] = ceilings
                    point["paired_ratio"] = statistics.median(
                        r["throughput"] / t for r, t in zip(repeats, ceilings, strict=True) if t
                    )
                if before is not None:
                    point["batching"] = batching_delta(before, scrape_batching(how.base_url), wall)
                b = point.get("batching")
                log(
                    f"  {setup} c={c}: {point['throughput']:.0f} req/s, p50 {_ms(point['p50_us'])} ms, "
                    f"p99 {_ms(point['p99_us'])} ms, errors {point['errors']}, "
                    f"CPU {point['cpu_us_per_request'] or 0:.0f} us/request"
                    + (f", mean batch {b['mean_batch']:.1f}, ORT busy {b['compute_share']:.0%}" if b else "")
                    + (f", {point['paired_ratio']:.3f}x the ceiling run after it" if ceilings else "")
                )
            results[setup] = {
                "status": "ok",
                "cold_start_s": cold,
                "rss_mb_before": rss_before / 2**20,
                "rss_mb_after": server.rss_bytes() / 2**20,
                "versions": how.versions,
                "http_floor_c1": floor,
                "points": points,
            }
    except (wrk.WrkFailed, grpc_load.LoadFailed) as e:
        for s in setups:
            results.setdefault(s, {"status": "failed", "reason": str(e)})
    finally:
        server.stop()
    return results


def measure_overload(
    package: Path, spec: ModelSpec, bodies: dict[str, payloads.Body], cfg: Config, log: Log
) -> dict[str, Any]:
    """inferstack with a queue of ``overload_queue_size``: c=32 as the baseline, then
    ``overload_connections`` connections for ``overload_duration_s`` with RSS sampled each second."""
    scfg = ServerConfig(
        max_batch_size=cfg.server.max_batch_size,
        max_queue_delay_us=cfg.server.max_queue_delay_us,
        max_queue_size=cfg.overload_queue_size,
        core=cfg.server.core,
    )
    how = launch("inferstack", package, spec.name, scfg, cfg.venvs_dir)
    server = Server(
        how.argv,
        how.base_url,
        cfg.work_dir / "logs" / f"{spec.name}-overload.log",
        how.env,
        how.ready_path(spec.name),
    )
    body = bodies["json"]
    url = how.infer_url(spec.name)
    try:
        server.start()
        wrk.run(url, body, 32, cfg.warmup_s, core=cfg.client_core)
        base = wrk.run(url, body, 32, cfg.duration_s, core=cfg.client_core)
        samples: list[tuple[float, float]] = []
        stop = threading.Event()
        t0 = time.perf_counter()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.perf_counter() - t0, server.rss_bytes() / 2**20))
                stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            over = wrk.run(url, body, cfg.overload_connections, cfg.overload_duration_s, core=cfg.client_core)
        finally:
            stop.set()
            sampler.join()
        alive = server.proc is not None and server.proc.poll() is None
    finally:
        server.stop()
    statuses = {int(s) for s in over["statuses"]}
    rss = [m for _, m in samples]
    half = max(1, len(rss) // 2)
    result = {
        "model": spec.name,
        "setup": "inferstack-json",
        "queue_size": cfg.overload_queue_size,
        "connections": cfg.overload_connections,
        "baseline_c32": base,
        "overload": over,
        "only_200_and_503": statuses <= {200, 503} and not any(over["socket_errors"].values()),
        "ok_p99_upper_over_c32_p99": (
            over["ok_p99_upper_us"] / base["p99_us"] if over["ok_p99_upper_us"] and base["p99_us"] else None
        ),
        "rss_mb": samples,
        "rss_growth_mb_second_half": (max(rss[half:]) - max(rss[:half])) if len(rss) > 2 else None,
        "server_alive_after": alive,
    }
    log(
        f"  overload: statuses {over['statuses']}, {over['throughput']:.0f} ok/s, ok p99 <= "
        f"{_ms(over['ok_p99_upper_us'])} ms (c=32 p99 {_ms(base['p99_us'])} ms), "
        f"RSS {min(rss):.0f}-{max(rss):.0f} MB"
    )
    return result


def measure_cold_start(cfg: Config, log: Log) -> dict[str, Any]:
    from inferstack.bench import coldstart

    def start(package: Path) -> float:
        how = launch("inferstack", package, "large", cfg.server, cfg.venvs_dir)
        server = Server(
            how.argv,
            how.base_url,
            cfg.work_dir / "logs" / "large-coldstart.log",
            how.env,
            how.ready_path("large"),
        )
        try:
            return server.start()
        finally:
            server.stop()

    result = coldstart.measure(cfg.work_dir, cfg.server.core, 3, start)
    log(
        f"  {result['model_bytes'] / 1e6:.0f} MB model: ready after {result['start_to_ready_s']:.2f} s, "
        f"ORT alone loads it in {result['ort_load_s']:.2f} s"
    )
    return result


def run(cfg: Config, log: Log = print) -> dict[str, Any]:
    reason = wrk.available()
    if reason:
        raise InferstackError(f"cannot benchmark: {reason}")
    unknown = [m for m in cfg.models if m not in MODELS]
    if unknown:
        raise InferstackError(f"--models: unknown {', '.join(unknown)}; known: {', '.join(MODELS)}")
    bad = [s for s in cfg.setups if s not in SETUPS]
    if bad:
        raise InferstackError(f"--setups: unknown {', '.join(bad)}; known: {', '.join(SETUPS)}")
    if not cfg.concurrency or min(cfg.concurrency) < 1 or cfg.duration_s < 1 or cfg.repeats < 1:
        raise InferstackError("--concurrency values, --duration (s) and --repeats must be >= 1")
    # the orchestrator (and wrk, which inherits it) stays off the server's core
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cfg.client_core})
    results: dict[str, Any] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.to_dict(),
        "machine": machine.describe(),
        "load_average_start": os.getloadavg(),
        "source": _source_revision(),
        "models": {},
    }
    t_start = time.perf_counter()
    for name in cfg.models:
        spec = MODELS[name]
        log(f"{name}: exporting / checking the package")
        package = ensure_package(cfg.work_dir, spec, cfg.server.max_batch_size)
        x = spec.request_array()
        expected = _reference(package, spec, x)
        bodies = payloads.write_bodies(cfg.work_dir / "bodies" / name, spec.input_name, x, spec.output_name)
        model_results: dict[str, Any] = {
            "package_bytes": (package / "model.onnx").stat().st_size,
            "setups": {},
        }
        results["models"][name] = model_results
        if "ceiling" in cfg.setups:
            model_results["setups"]["ceiling"] = measure_ceiling(package, cfg, log)
        servers: dict[str, list[str]] = {}
        for s in cfg.setups:
            if s != "ceiling":
                server, body = split(s)
                servers.setdefault(server, []).append(body)
        for server, wanted in servers.items():
            model_results["setups"].update(
                measure_server(server, wanted, package, spec, bodies, expected, cfg, log)
            )
        if "ceiling" in cfg.setups and servers:
            # the machine's speed drifts (a virtual machine's host has other tenants): the ceiling is
            # measured before and after the servers, and the table uses the mean of the two
            log("  ceiling again, after the servers")
            _merge_ceilings(model_results["setups"]["ceiling"], measure_ceiling(package, cfg, log))
        _save_partial(results, cfg)
    if cfg.overload:
        spec = MODELS["mlp"]
        package = ensure_package(cfg.work_dir, spec, cfg.server.max_batch_size)
        bodies = payloads.write_bodies(
            cfg.work_dir / "bodies" / "mlp", spec.input_name, spec.request_array(), spec.output_name
        )
        log("overload point")
        try:
            results["overload"] = measure_overload(package, spec, bodies, cfg, log)
        except (StartFailed, wrk.WrkFailed, OSError) as e:
            results["overload"] = {"status": "failed", "reason": str(e)}
    if cfg.cold_start:
        log("cold start (100 MB model)")
        try:
            results["cold_start"] = measure_cold_start(cfg, log)
        except (StartFailed, OSError, subprocess.CalledProcessError) as e:
            results["cold_start"] = {"status": "failed", "reason": str(e)}
    results["elapsed_s"] = time.perf_counter() - t_start
    results["load_average_end"] = os.getloadavg()
    return results


def _source_revision() -> dict[str, Any] | None:
    """The commit the benchmarked code comes from, and whether the runtime had local changes."""
    root = BENCH_DIR.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "runtime"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": head, "runtime_modified": bool(dirty)}


def _save_partial(results: dict[str, Any], cfg: Config) -> None:
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    (cfg.work_dir / "partial.json").write_text(json.dumps(results, indent=1))
