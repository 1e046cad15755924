"""Server processes under test: start pinned to a core, wait for readiness, sample memory, stop.

Each server runs in its own session (process group), so that stopping it also stops whatever it
spawned (Triton's server binary, stub processes) and its memory is counted over the whole group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path


class StartFailed(RuntimeError):
    """A server did not become ready; the message says why (exit status, log tail)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(core: int, argv: Sequence[str]) -> list[str]:
    """``argv`` under ``taskset -c core``: the process and everything it spawns stay on that core."""
    return ["taskset", "-c", str(core), *argv]


def http_get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def http_post(
    url: str, body: bytes, headers: dict[str, str], timeout: float = 30.0
) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return int(r.status), r.read(), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return int(e.code), e.read(), {k.lower(): v for k, v in e.headers.items()}


class Server:
    def __init__(
        self,
        argv: Sequence[str],
        base_url: str,
        log_path: Path,
        env: dict[str, str] | None = None,
        ready_path: str = "/v2/health/ready",
    ) -> None:
        self.argv = list(argv)
        self.ready_path = ready_path
        self.base_url = base_url
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120.0) -> float:
        """Start the server and return the seconds from process start to the first ready answer."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child keeps writing to it
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()
        deadline = t0 + timeout_s
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise StartFailed(f"exited with status {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError):
                if http_get(self.base_url + self.ready_path, timeout=1.0) == 200:
                    return time.perf_counter() - t0
            time.sleep(0.02)
        self.stop()
        raise StartFailed(f"not ready after {timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    def cpu_seconds(self) -> float:
        """CPU time the server's process group has used so far."""
        return group_cpu_seconds(self.proc.pid) if self.proc is not None else 0.0

    def rss_bytes(self) -> int:
        """Resident memory of the server's whole process group."""
        if self.proc is None:
            return 0
        return group_rss_bytes(self.proc.pid)

    def stop(self, grace_s: float = 10.0) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(grace_s)
        # whatever of the group is still there (the leader or its children) is killed
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _group_stats(pgid: int) -> list[tuple[Path, list[str]]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # fields after the parenthesised command: state ppid pgrp ...
        fields = stat[stat.rindex(")") + 2 :].split()
        if len(fields) > 12 and int(fields[2]) == pgid:
            found.append((entry, fields))
    return found


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU time of the live processes of a process group (all their threads)."""
    return sum(int(f[11]) + int(f[12]) for _, f in _group_stats(pgid)) / _TICKS


def group_rss_bytes(pgid: int) -> int:
    total = 0
    for entry, _ in _group_stats(pgid):
        try:
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except (OSError, ValueError, IndexError):
            continue
    return total
