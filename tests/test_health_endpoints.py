"""/livez, /readyz and /healthz as an orchestrator sees them: status codes, HEAD, short bodies that
never show where the database is, and liveness that survives a database outage."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from delivery_worker import health, poller, startup
from delivery_worker.health import HealthServer, LoopLiveness, ReadinessCheck, staleness_bound
from delivery_worker.metrics import WorkerMetrics
from delivery_worker.service import ProcessEnvironment, run_worker
from tests.postgres import proxy_to_database, server_address, through
from tests.processes import STARTED, wait_until, worker_env
from tests.rows import execute
from tests.support import make_settings
from tests.test_database_sessions import OutputLines
from tests.test_metrics_health import free_port


def request(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def probe(port: int, path: str) -> tuple[int, dict[str, object]]:
    status, _, body = request(port, path)
    return status, json.loads(body)


def serve(
    dsn: str, liveness: LoopLiveness | None = None, stopping: threading.Event | None = None
) -> HealthServer:
    readiness = ReadinessCheck(dsn, stopping)
    return HealthServer(
        "127.0.0.1", 0, WorkerMetrics().registry, liveness or LoopLiveness(60), readiness
    ).start()


@pytest.fixture
def ready_server(database: str) -> Iterator[HealthServer]:
    server = serve(database)
    yield server
    server.stop()


def test_a_fresh_worker_with_a_current_schema_is_live_and_ready(ready_server):
    assert probe(ready_server.port, "/readyz") == (
        200,
        {"status": "ok", "database": "ok", "schema": "current"},
    )
    status, body = probe(ready_server.port, "/livez")
    assert status == 200 and body["status"] == "ok"
    assert probe(ready_server.port, "/healthz")[1].keys() == body.keys()  # /healthz is /livez


@pytest.mark.parametrize("path", ["/metrics", "/livez", "/readyz", "/healthz", "/nothing"])
def test_head_answers_like_get_without_a_body(ready_server, path):
    get_status, get_headers, get_body = request(ready_server.port, path)
    head_status, head_headers, head_body = request(ready_server.port, path, "HEAD")
    assert head_status == get_status != 501
    assert head_body == b""
    assert head_headers["Content-Type"] == get_headers["Content-Type"]
    if path != "/metrics":  # a scrape's size changes between two requests (process CPU seconds)
        assert head_headers["Content-Length"] == get_headers["Content-Length"] == str(len(get_body))


def test_other_methods_are_405_with_allow(ready_server):
    status, headers, _ = request(ready_server.port, "/readyz", "POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"


def test_readyz_is_503_naming_no_host_when_the_database_is_unreachable():
    port = free_port()
    server = serve(f"postgresql://root:hunter2@127.0.0.1:{port}/nothing")
    try:
        status, _, raw = request(server.port, "/readyz")
        live_status, _ = probe(server.port, "/livez")
    finally:
        server.stop()
    assert status == 503
    assert json.loads(raw) == {"status": "not ready", "database": "unreachable", "schema": "unknown"}
    assert b"127.0.0.1" not in raw and str(port).encode() not in raw and b"hunter2" not in raw
    assert live_status == 200  # an unreachable database is no reason to restart the worker


def test_readyz_is_503_while_migrations_are_pending(database):
    execute(
        database,
        "DELETE FROM delivery_worker_migrations"
        " WHERE name = (SELECT max(name) FROM delivery_worker_migrations)",
    )
    server = serve(database)
    try:
        status, body = probe(server.port, "/readyz")
        live_status, _ = probe(server.port, "/livez")
    finally:
        server.stop()
    assert (status, body) == (
        503,
        {"status": "not ready", "database": "ok", "schema": "1 migration(s) pending"},
    )
    assert live_status == 200


def test_readyz_is_503_once_the_worker_is_stopping(database):
    stopping = threading.Event()
    server = serve(database, stopping=stopping)
    try:
        before, _ = probe(server.port, "/readyz")
        stopping.set()
        after = probe(server.port, "/readyz")
    finally:
        server.stop()
    assert before == 200
    assert after == (503, {"status": "stopping"})


def test_livez_and_healthz_are_503_when_the_loop_stopped_ticking(database):
    now = [1000.0]
    liveness = LoopLiveness(staleness_bound(poll_interval=1.0), clock=lambda: now[0])
    server = serve(database, liveness)
    try:
        fresh, _ = probe(server.port, "/livez")
        now[0] += 61
        stale = probe(server.port, "/livez")
        healthz, _ = probe(server.port, "/healthz")
        liveness.poll_ticked(database_ok=False, in_flight=0)  # a tick, even one that found no database
        again, _ = probe(server.port, "/livez")
    finally:
        server.stop()
    assert fresh == 200
    assert stale == (503, {"status": "stale", "last_tick_age_s": 61.0, "stale_after_s": 60.0})
    assert healthz == 503
    assert again == 200


def test_staleness_bound_is_three_polls_but_never_under_the_longest_outage_gap():
    assert staleness_bound(1.0) == 60.0
    assert staleness_bound(30.0) == 90.0


def test_livez_stays_200_and_readyz_503_through_a_proxied_database_outage(database, monkeypatch):
    """At start (database down) and later (connections cut), for several staleness bounds each.

    The bounds are scaled down together (production: 60 s bound, 15 s longest wait) so that a loop
    that stopped ticking during an outage would show as 503 within the test."""
    monkeypatch.setattr(health, "MIN_STALE_AFTER_SECONDS", 2.0)
    monkeypatch.setattr(startup, "MAX_RETRY_SECONDS", 0.5)
    monkeypatch.setattr(poller, "RECONNECT_MAX_SECONDS", 0.5)
    proxy = proxy_to_database()
    proxy.cut()
    port = free_port()
    proxied = through(proxy, database)
    settings = make_settings(
        database={"dsn": proxied, "migrate_dsn": proxied},
        worker={"poll_interval": 0.05},
        metrics={"port": port, "host": "127.0.0.1"},
    )
    stopping = threading.Event()
    worker = threading.Thread(
        target=run_worker,
        args=(settings,),
        kwargs={"environment": ProcessEnvironment(), "stopping": stopping},
    )
    worker.start()

    def watch(seconds: float) -> tuple[set[int], set[bytes]]:
        """Every /livez status and every distinct /readyz answer seen over ``seconds``."""
        live, ready = set(), set()
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            live.add(request(port, "/livez", "HEAD")[0])
            status, _, body = request(port, "/readyz")
            ready.add(b"%d %s" % (status, body))
            time.sleep(0.2)
        return live, ready

    unreachable = b'503 {"status": "not ready", "database": "unreachable", "schema": "unknown"}\n'
    ready = b'200 {"status": "ok", "database": "ok", "schema": "current"}\n'
    try:
        assert wait_until(lambda: _answers(port))
        at_start = watch(5.0)
        proxy.restore()
        assert wait_until(lambda: request(port, "/readyz")[0] == 200, timeout=20)
        proxy.cut()
        assert wait_until(lambda: request(port, "/readyz")[0] == 503, timeout=20)
        in_outage = watch(5.0)
        proxy.restore()
        assert wait_until(lambda: request(port, "/readyz")[0] == 200, timeout=20)
        _, _, back = request(port, "/readyz")
    finally:
        stopping.set()
        worker.join(timeout=30)
        proxy.stop()
    assert not worker.is_alive()
    assert at_start == ({200}, {unreachable})
    assert in_outage == ({200}, {unreachable})
    assert b"%d %s" % (200, back) == ready


def _answers(port: int) -> bool:
    try:
        request(port, "/livez")
    except OSError:
        return False
    return True


def test_port_variable_listener_shows_no_database_address_while_it_is_awaited(database):
    """The case of the issue: a Procfile platform's $PORT faces the outside; the body stays short."""
    proxy = proxy_to_database()
    proxy.cut()
    port = free_port()
    env = worker_env(through(proxy, database))
    env["PORT"] = str(port)
    worker = subprocess.Popen(
        [sys.executable, "-m", "delivery_worker", "--config", "/dev/null", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    STARTED.append(worker)
    out = OutputLines(worker)
    try:
        assert wait_until(lambda: out.count("database.waiting") == 1)
        ready_status, _, ready_body = request(port, "/readyz")
        live_status, _, _ = request(port, "/livez")
        head_status, _, head_body = request(port, "/healthz", "HEAD")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=20)
        proxy.stop()
    host, db_port = server_address()
    assert ready_status == 503
    assert json.loads(ready_body)["database"] == "unreachable"
    for hidden in (host, str(db_port), str(proxy.port), "127.0.0.1"):
        assert hidden.encode() not in ready_body
    assert (live_status, head_status, head_body) == (200, 200, b"")
    assert worker.returncode == 0
    assert out.count("health.not_ready") == 1  # the detail went to the log, once
