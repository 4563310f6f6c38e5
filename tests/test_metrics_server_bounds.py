"""The metrics listener stays bounded: idle sockets hold no threads and cannot lock out a probe."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from delivery_worker.bounded_http import BoundedHTTPServer
from delivery_worker.health import (
    HANDLER_THREADS,
    MAX_CONNECTIONS,
    HealthServer,
    LoopLiveness,
    ReadinessCheck,
)
from delivery_worker.metrics import WorkerMetrics
from tests.test_metrics_health import get


@pytest.fixture
def health_server(database: str) -> Iterator[HealthServer]:
    metrics = WorkerMetrics()
    server = HealthServer("127.0.0.1", 0, metrics.registry, LoopLiveness(30), ReadinessCheck(database))
    server.start()
    yield server
    server.stop()


def test_300_idle_connections_hold_no_threads_and_readyz_answers(health_server: HealthServer):
    threads_before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", health_server.port), timeout=10) for _ in range(300)]
    try:
        status, body = get(f"http://127.0.0.1:{health_server.port}/readyz")
        metrics_status, text = get(f"http://127.0.0.1:{health_server.port}/metrics")

        assert status == 200 and json.loads(body)["status"] == "ok"
        assert metrics_status == 200 and "delivery_worker_jobs_in_flight" in text
        # The handler pool, plus the shared deadline watchdog: never a thread per socket.
        assert threading.active_count() <= threads_before + HANDLER_THREADS + 1
        assert health_server.httpd.open_connections() <= MAX_CONNECTIONS
        # The server closed the idle sockets it had to drop to stay under its cap: they read EOF.
        closed = 0
        for sock in idle[:100]:
            sock.settimeout(5)
            try:
                closed += sock.recv(1) == b""
            except OSError:
                closed += 1
        assert closed >= 100 - MAX_CONNECTIONS
    finally:
        for sock in idle:
            sock.close()


class Hello(BaseHTTPRequestHandler):
    timeout = 1.0

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"hi")

    def log_message(self, format: str, *args: object) -> None:
        pass  # "Request timed out" lines are expected here


@pytest.fixture
def small_server() -> Iterator[BoundedHTTPServer]:
    server = BoundedHTTPServer(("127.0.0.1", 0), Hello, threads=2, max_connections=4, idle_timeout=0.5)
    threading.Thread(target=server.serve, daemon=True).start()
    yield server
    server.stop()


def test_an_idle_connection_is_closed_after_the_idle_timeout(small_server: BoundedHTTPServer):
    with socket.create_connection(small_server.server_address[:2], timeout=10) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""  # EOF from the server, not our 10 s timeout
        assert time.monotonic() - started < 8
    deadline = time.monotonic() + 10
    while small_server.open_connections() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert small_server.open_connections() == 0


def test_a_client_that_stops_mid_request_is_cut_and_others_are_answered(small_server: BoundedHTTPServer):
    address = small_server.server_address[:2]
    stalled = [socket.create_connection(address, timeout=10) for _ in range(2)]
    for sock in stalled:
        sock.sendall(b"GET / HTTP/1.1\r\n")  # and never the rest: both handler threads wait on it
    try:
        status, body = get(f"http://{address[0]}:{address[1]}/")
        assert (status, body) == (200, "hi")
        for sock in stalled:
            assert sock.recv(100) == b""  # cut after the handler's 1 s read timeout
    finally:
        for sock in stalled:
            sock.close()
