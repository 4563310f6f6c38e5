"""Worker sessions are bounded: a lock held by another session or a silent partition is noticed in
seconds and named for what it is, and SIGTERM is honoured whatever the database does."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import psycopg2
import pytest

from delivery_worker.db import DatabaseBusy, DatabaseUnavailable, connect, transaction
from tests.postgres import proxy_to_database, through
from tests.processes import start_worker, wait_until
from tests.rows import execute, insert_channel, insert_notification_job, job
from tests.servers.http import Reply
from tests.servers.tcp_proxy import TcpProxy


class OutputLines:
    """Collects a child's stdout lines as they come (the worker logs JSON lines there)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert process.stdout is not None
        self.thread = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self.thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.append(line)

    def count(self, event: str) -> int:
        return sum(f'"{event}"' in line for line in list(self.lines))


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    proxy = proxy_to_database()
    yield proxy
    proxy.stop()


via = through  # the DSN of a test database, routed through the proxy


def test_worker_sessions_carry_timeouts_and_keepalives(database):
    conn = connect(database)
    try:
        with transaction(conn) as cur:
            shown = {}
            for name in ("lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout"):
                cur.execute(f"SHOW {name}")
                shown[name] = cur.fetchone()[0]
        parameters = conn.get_dsn_parameters()
    finally:
        conn.close()
    assert shown == {
        "lock_timeout": "5s",
        "statement_timeout": "15s",
        "idle_in_transaction_session_timeout": "1min",
    }
    assert parameters["keepalives"] == "1" and parameters["tcp_user_timeout"] == "20000"


def test_a_lock_held_by_another_session_is_busy_not_unavailable(database):
    channel = insert_channel(database, "webhook", {"url": "http://127.0.0.1:9/x"})
    job_id = insert_notification_job(database, channel)
    holder = psycopg2.connect(database)
    conn = connect(database)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT job_id FROM notification_jobs WHERE job_id = %s FOR UPDATE", (job_id,))
        started = time.monotonic()
        with pytest.raises(DatabaseBusy, match="lock timeout"), transaction(conn) as cur:
            cur.execute("UPDATE notification_jobs SET attempts = 1 WHERE job_id = %s", (job_id,))
        assert time.monotonic() - started < 10
        with transaction(conn) as cur:  # the session itself is fine
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        holder.close()
        conn.close()


def test_a_silent_partition_is_cut_client_side_as_unavailable(database, proxy):
    conn = connect(via(proxy, database))
    conn.client_limit = 1.0  # the worker's is statement_timeout + 5 s; 1 s keeps the test short
    try:
        proxy.stall()
        started = time.monotonic()
        with (
            pytest.raises(DatabaseUnavailable, match="no answer from the database") as caught,
            transaction(conn) as cur,
        ):
            cur.execute("SELECT 1")
        assert not isinstance(caught.value, DatabaseBusy)
        assert time.monotonic() - started < 8
        assert conn.closed
    finally:
        conn.close()


def test_worker_notices_a_silent_partition_in_seconds_and_recovers(database, http_server, proxy):
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    first = insert_notification_job(database, channel)
    worker = start_worker(via(proxy, database))
    out = OutputLines(worker)
    try:
        assert wait_until(lambda: job(database, "notification_jobs", first)["status"] == "COMPLETED")
        proxy.stall()
        stalled_at = time.monotonic()
        assert wait_until(lambda: out.count("database.unavailable") == 1, timeout=60)
        noticed_after = time.monotonic() - stalled_at
        second = insert_notification_job(database, channel)
        proxy.restore()
        assert wait_until(lambda: job(database, "notification_jobs", second)["status"] == "COMPLETED", 60)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=40)
    assert worker.returncode == 0
    assert noticed_after < 30  # statement_timeout 15 s + 5 s grace, plus one poll
    assert out.count("database.recovered") == 1
    assert len(http_server.received("/hook")) == 2


def test_a_row_lock_on_an_in_flight_job_stops_nothing_else_and_sigterm_exits_in_time(database, http_server):
    http_server.script("/slow", Reply(200, delay=1.0))
    slow = insert_channel(database, "webhook", {"url": http_server.url("/slow")}, tenant_id="tenant-a")
    other = insert_channel(database, "webhook", {"url": http_server.url("/other")}, tenant_id="tenant-b")
    locked_job = insert_notification_job(database, slow, tenant_id="tenant-a")
    worker = start_worker(database, worker_shutdown_timeout="5")
    holder = psycopg2.connect(database)
    try:
        assert wait_until(lambda: len(http_server.received("/slow")) == 1)
        with holder.cursor() as cur:  # an operator's session holds the running job's row
            cur.execute("SELECT job_id FROM notification_jobs WHERE job_id = %s FOR UPDATE", (locked_job,))
        time.sleep(2)  # the delivery has finished: its outcome write now waits for the lock
        others = [insert_notification_job(database, other, tenant_id="tenant-b") for _ in range(5)]

        def others_completed() -> int:
            rows = execute(
                database,
                "SELECT count(*) AS n FROM notification_jobs WHERE job_id = ANY(%s) AND status = 'COMPLETED'",
                (others,),
            )
            return int(rows[0]["n"])

        assert wait_until(lambda: others_completed() == 5, timeout=30), others_completed()
        worker.send_signal(signal.SIGTERM)
        started = time.monotonic()
        worker.wait(timeout=40)
        assert time.monotonic() - started < 5 + 3
    finally:
        holder.close()
    assert len(http_server.received("/slow")) == 1
