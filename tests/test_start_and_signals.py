"""Start-up waits for an unreachable database (READY only once connected); SIGTERM ends the wait;
SIGHUP is a graceful stop."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from structlog.testing import capture_logs

from delivery_worker import startup
from delivery_worker.systemd import Notifier
from tests.postgres import proxy_to_database
from tests.postgres import through as via
from tests.processes import STARTED, start_worker, wait_until, worker_env
from tests.rows import execute, insert_channel, insert_notification_job, job
from tests.servers.http import Reply
from tests.test_database_sessions import OutputLines
from tests.test_metrics_health import free_port
from tests.test_systemd_notify import notify_socket, received_lines

__all__ = ["notify_socket"]  # a fixture, used by name


def start_notifying_worker(dsn: str, socket_path: str) -> subprocess.Popen[str]:
    env = worker_env(dsn)
    env["NOTIFY_SOCKET"] = socket_path
    process = subprocess.Popen(
        [sys.executable, "-m", "delivery_worker", "--config", "/dev/null", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    STARTED.append(process)
    return process


def test_worker_started_with_the_database_down_waits_then_delivers_without_a_restart(
    database, http_server, notify_socket
):
    sock, path = notify_socket
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    job_id = insert_notification_job(database, channel)
    proxy = proxy_to_database()
    proxy.cut()  # every connection refused: the database is "down"
    worker = start_notifying_worker(via(proxy, database), path)
    out = OutputLines(worker)
    try:
        assert wait_until(lambda: out.count("database.waiting") == 1)
        waiting = received_lines(sock, until="STATUS=waiting for the database", timeout=10)
        time.sleep(3)  # several more tries, and still no READY
        waiting += received_lines(sock)
        assert worker.poll() is None, "the worker gave up instead of waiting"
        assert "READY=1" not in waiting
        assert any(line.startswith("EXTEND_TIMEOUT_USEC=") for line in waiting)
        assert out.count("database.waiting") == 1  # logged once, then at most every 60 s

        proxy.restore()
        assert wait_until(lambda: job(database, "notification_jobs", job_id)["status"] == "COMPLETED", 30)
        assert "READY=1" in received_lines(sock, until="READY=1", timeout=5)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        proxy.stop()
    assert worker.returncode == 0
    assert out.count("database.connected") == 1
    assert len(http_server.received("/hook")) == 1


def test_sigterm_while_waiting_for_the_database_exits_0_promptly(database):
    proxy = proxy_to_database()
    proxy.cut()
    worker = start_worker(via(proxy, database))
    out = OutputLines(worker)
    try:
        assert wait_until(lambda: out.count("database.waiting") == 1)
        time.sleep(2)  # inside a backoff wait
        worker.send_signal(signal.SIGTERM)
        started = time.monotonic()
        worker.wait(timeout=20)
        took = time.monotonic() - started
    finally:
        proxy.stop()
    assert worker.returncode == 0
    assert took < 3
    assert out.count("signal.received") == 1 and out.count("worker.stopped") == 1


def test_sighup_is_a_logged_graceful_stop_that_leaves_nothing_processing(database, http_server):
    http_server.script("/slow", Reply(200, delay=1.0))
    channel = insert_channel(database, "webhook", {"url": http_server.url("/slow")})
    job_id = insert_notification_job(database, channel)
    worker = start_worker(database)
    assert wait_until(lambda: len(http_server.received("/slow")) == 1)
    worker.send_signal(signal.SIGHUP)
    out, err = worker.communicate(timeout=30)

    assert worker.returncode == 0, err
    assert job(database, "notification_jobs", job_id)["status"] == "COMPLETED"
    assert '"signal.received"' in out and '"SIGHUP"' in out
    assert execute(database, "SELECT count(*) AS n FROM notification_jobs WHERE status = 'PROCESSING'") == [
        {"n": 0}
    ]


def test_a_database_without_the_schema_is_one_loud_line_and_exit_1(empty_database):
    worker = start_worker(empty_database, database_schema_wait_seconds="0")
    _out, err = worker.communicate(timeout=30)
    assert worker.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "run `delivery-worker migrate`" in lines[0]


def test_database_waiting_is_logged_at_once_then_at_most_once_a_minute(monkeypatch):
    """Clock steps 30 s per failed try: tries 1, 3 and 5 are logged; systemd hears of every try."""
    monkeypatch.setattr(startup, "FIRST_RETRY_SECONDS", 0.001)
    monkeypatch.setattr(startup, "MAX_RETRY_SECONDS", 0.001)
    stopping = threading.Event()
    sent: list[str] = []

    class CountingNotifier(Notifier):
        def notify(self, *lines: str) -> None:
            sent.extend(lines)
            if sum(line.startswith("EXTEND_TIMEOUT_USEC=") for line in sent) == 5:
                stopping.set()

    ticks = iter(range(0, 10_000, 30))
    with capture_logs() as logs:
        conn = startup.wait_for_database(
            f"postgresql://root@127.0.0.1:{free_port()}/x",
            stopping,
            CountingNotifier(None),
            clock=lambda: float(next(ticks)),
        )

    assert conn is None
    waiting = [entry for entry in logs if entry["event"] == "database.waiting"]
    assert [entry["attempts"] for entry in waiting] == [1, 3, 5]
    assert [entry["waited_s"] for entry in waiting] == [0.0, 60.0, 120.0]
    assert "Connection refused" in waiting[0]["error"]
    assert sent.count("STATUS=waiting for the database") == 5
