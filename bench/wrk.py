"""Drive a server with wrk (one thread, N connections, pinned to the load generator's core) and
read its result line (see lua/common.lua)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from inferstack.bench.payloads import Body

LUA_DIR = Path(__file__).resolve().parent / "lua"
MARKER = "BENCH_RESULT "


class WrkFailed(RuntimeError):
    pass


def available() -> str | None:
    """None when wrk can run here, else the reason it cannot."""
    if shutil.which("wrk") is None:
        return "wrk is not installed (Debian package 'wrk')"
    if shutil.which("taskset") is None:
        return "taskset is not installed (Debian package 'util-linux')"
    return None


def run(
    url: str,
    body: Body | None,
    connections: int,
    duration_s: float,
    core: int | None = 1,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """One wrk run (a GET when ``body`` is None); returns throughput, latency percentiles
    (microseconds) and error counts."""
    env = dict(os.environ, BENCH_LUA_DIR=str(LUA_DIR))
    if body is None:
        script = LUA_DIR / "get.lua"
    else:
        script = LUA_DIR / ("binary.lua" if body.header_length is not None else "json.lua")
        env["BENCH_BODY"] = str(body.path)
        if body.header_length is not None:
            env["BENCH_HEADER_LENGTH"] = str(body.header_length)
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        f"{timeout_s:g}s",
        "-s",
        str(script),
        url,
    ]
    if core is not None:
        argv = ["taskset", "-c", str(core), *argv]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration_s + timeout_s + 30)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(MARKER)), None)
    if proc.returncode != 0 or line is None:
        raise WrkFailed(f"wrk exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-400:]}")
    return summarize(json.loads(line[len(MARKER) :]))


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """wrk's numbers -> the benchmark's: non-2xx responses and socket errors both count as errors."""
    statuses = {int(k): int(v) for k, v in raw["statuses"].items()}
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    non_2xx = sum(n for s, n in statuses.items() if not 200 <= s < 300)
    e = raw["errors"]
    socket_errors = e["connect"] + e["read"] + e["write"] + e["timeout"]
    seconds = raw["duration_us"] / 1e6
    # no completed response: wrk's empty histogram reads 0, which is no latency at all
    pct = raw["latency_us"]["percentiles"] if raw["requests"] else dict.fromkeys(("50", "90", "99", "99.9"))
    return {
        "requests": raw["requests"],
        "ok": ok,
        "seconds": seconds,
        "throughput": ok / seconds if seconds else 0.0,  # successful responses per second
        "p50_us": pct["50"],
        "p90_us": pct["90"],
        "p99_us": pct["99"],
        "p999_us": pct["99.9"],
        "mean_us": raw["latency_us"]["mean"] if raw["requests"] else None,
        "max_us": raw["latency_us"]["max"] if raw["requests"] else None,
        "ok_p99_upper_us": raw["ok_p99_upper_us"] if ok else None,
        "errors": non_2xx + socket_errors,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "socket_errors": {k: e[k] for k in ("connect", "read", "write", "timeout")},
    }
