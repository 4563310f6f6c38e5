"""systemd notifications: a real AF_UNIX datagram socket stands in for systemd's $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from delivery_worker.systemd import Notifier, SystemdObserver, watchdog_interval
from tests.rows import drain, insert_channel, insert_notification_job, job


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket; its path is short enough for AF_UNIX whatever the tmp dir."""
    folder = tempfile.mkdtemp(prefix="dw-sd-")
    path = str(Path(folder) / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield sock, path
    sock.close()
    os.unlink(path)
    os.rmdir(folder)


def received_lines(sock: socket.socket, *, until: str | None = None, timeout: float = 0.0) -> list[str]:
    """Every line of every datagram waiting; with ``until``, first wait (up to ``timeout``) for it."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        waiting = until is not None and until not in lines and time.monotonic() < deadline
        sock.settimeout(max(0.01, deadline - time.monotonic()) if waiting else 0.01)
        try:
            lines += sock.recv(4096).decode().splitlines()
        except (TimeoutError, BlockingIOError):
            if not waiting:
                return lines


def test_worker_sends_ready_then_watchdog_then_stopping(database, http_server, notify_socket, monkeypatch):
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("PORT", raising=False)
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    job_id = insert_notification_job(database, channel)

    drain(database)

    lines = received_lines(sock)
    assert job(database, "notification_jobs", job_id)["status"] == "COMPLETED"
    for expected in ("READY=1", "WATCHDOG=1", "STOPPING=1"):
        assert expected in lines, lines
    assert lines.index("READY=1") < lines.index("WATCHDOG=1") < lines.index("STOPPING=1")
    assert any(line.startswith("STATUS=") for line in lines)


def test_sigterm_sends_stopping_and_the_worker_exits_0(database, notify_socket):
    sock, path = notify_socket
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DATABASE_URL": database,
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": "1000000",
        "DELIVERY_WORKER_WORKER_POLL_INTERVAL": "0.05",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "delivery_worker", "--config", "/dev/null", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        before = received_lines(sock, until="WATCHDOG=1", timeout=20)
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=20)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    after = received_lines(sock, until="STOPPING=1", timeout=5)

    assert code == 0, worker.stderr.read() if worker.stderr else ""
    assert before.index("READY=1") < before.index("WATCHDOG=1")
    assert "STOPPING=1" in after


def test_abstract_namespace_socket():
    name = f"dw-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        Notifier(f"@{name}").notify("READY=1", "STATUS=hello")
        assert received_lines(sock, until="STATUS=hello", timeout=5) == ["READY=1", "STATUS=hello"]


def test_without_notify_socket_nothing_is_sent_and_nothing_fails():
    notifier = Notifier(None)
    assert not notifier.enabled
    notifier.notify("READY=1")
    Notifier("/nonexistent/dir/notify").notify("READY=1")  # a broken socket is logged, not raised


def test_watchdog_pings_at_most_every_half_interval():
    sent: list[str] = []
    notifier = Notifier(None)
    notifier.notify = lambda *lines: sent.extend(lines)  # type: ignore[method-assign]
    now = [0.0]
    observer = SystemdObserver(notifier, ping_every=10.0, stopping=threading.Event(), clock=lambda: now[0])

    for moment in (0.0, 5.0, 9.9, 10.0, 12.0, 20.5):
        now[0] = moment
        observer.poll_ticked(database_ok=True, in_flight=0)

    assert sent.count("WATCHDOG=1") == 3
    assert sent.count("STATUS=delivering") == 1


def test_stopping_is_sent_once_on_the_first_tick_after_a_signal():
    sent: list[str] = []
    notifier = Notifier(None)
    notifier.notify = lambda *lines: sent.extend(lines)  # type: ignore[method-assign]
    stopping = threading.Event()
    observer = SystemdObserver(notifier, ping_every=None, stopping=stopping)

    observer.poll_ticked(database_ok=False, in_flight=2)
    stopping.set()
    observer.poll_ticked(database_ok=True, in_flight=2)
    observer.stopping()

    assert sent == [
        "STATUS=database unavailable, reconnecting",
        "STOPPING=1",
        "STATUS=stopping, 2 job(s) in flight",
    ]


def test_watchdog_interval_from_the_environment_values():
    assert watchdog_interval("30000000", None, pid=42) == 15.0
    assert watchdog_interval("30000000", "42", pid=42) == 15.0
    assert watchdog_interval("30000000", "7", pid=42) is None
    assert watchdog_interval(None, None, pid=42) is None
    assert watchdog_interval("soon", None, pid=42) is None
