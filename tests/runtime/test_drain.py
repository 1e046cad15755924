"""SIGTERM under load loses nothing: keep-alive clients that never retry write requests up to the
moment the server exits, and every request written is answered with a 200. Answers after SIGTERM
carry ``Connection: close``; an idle keep-alive connection is never closed under a client that may
be writing on it."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from pathlib import Path

import pytest

BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                              "data": [0.25] * 16}]}).encode()
HEADERS = {"Content-Type": "application/json"}


class Client(threading.Thread):
    """One keep-alive connection (http.client): POST in a loop, no retries. ``sent``: requests
    written in full; ``answered``: 200s read; ``lost``: written, then no answer."""

    def __init__(self, host: str, port: int, think_s: float) -> None:
        super().__init__(daemon=True)
        self.host, self.port, self.think_s = host, port, think_s
        self.sent = self.answered = self.lost = self.closes = 0
        self.errors: list[str] = []
        self.stop = False

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
        while not self.stop:
            try:
                if conn.sock is None:
                    conn.connect()
            except OSError:  # the listener is gone: nothing was written
                break
            try:
                conn.request("POST", "/v2/models/mlp/infer", body=BODY, headers=HEADERS)
            except OSError as e:  # the write failed: the server had closed this connection
                self.errors.append(f"write: {e!r}")
                self.lost += 1
                conn.close()
                continue
            self.sent += 1
            try:
                r = conn.getresponse()
                r.read()
            except (OSError, http.client.HTTPException) as e:
                self.errors.append(f"read: {e!r}")
                self.lost += 1
                conn.close()
                continue
            if r.status == 200:
                self.answered += 1
            else:
                self.errors.append(f"status {r.status}")
            if (r.getheader("connection") or "").lower() == "close":
                self.closes += 1
                conn.close()
            if self.think_s:
                time.sleep(self.think_s)
        conn.close()


@pytest.mark.parametrize("drain_delay", ["0", "0.5"])
def test_sigterm_with_32_keep_alive_clients_loses_nothing(serve, mlp_package: Path, drain_delay: str) -> None:
    s = serve(mlp_package, "--drain-delay-s", drain_delay)
    # half the clients send back to back, half pause 20 ms between requests (idle connections)
    clients = [Client(s.host, s.port, 0.0 if i % 2 else 0.02) for i in range(32)]
    for c in clients:
        c.start()
    time.sleep(1.0)
    assert all(c.answered > 0 for c in clients), "not every client got going"
    s.proc.send_signal(signal.SIGTERM)
    assert s.wait_exit(30) == 0
    for c in clients:
        c.stop = True
    for c in clients:
        c.join(20)
    sent = sum(c.sent for c in clients)
    answered = sum(c.answered for c in clients)
    lost = sum(c.lost for c in clients)
    errors = [e for c in clients for e in c.errors]
    assert lost == 0 and answered == sent, f"{sent} sent, {answered} answered, {lost} lost: {errors[:5]}"
    # every connection was told to close by an answer, none was closed under its client
    assert all(c.closes >= 1 for c in clients), [c.closes for c in clients]
    assert sent > 100
