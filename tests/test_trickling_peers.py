"""Issue 12, trickling peers: one tenant's endpoint that drags its answer out byte by byte is sent to
exactly once per attempt and cut at the attempt deadline, while another tenant's jobs keep flowing.

A real worker process (4 threads, 3 s attempts, 6 s lease) against the real PostgreSQL. Tenant A's
two jobs (delivery_jobs, so every attempt has its row in delivery_attempts) go to a peer that sends
one byte of its reply every 0.5 s: a whole reply would take half a minute, far past a lease. Tenant
B's jobs go to an ordinary local webhook. What a user would check: B's rows COMPLETED while A's peer is
still trickling; what A's peer received per job; how long each attempt took; A's ``last_error``.
"""

from __future__ import annotations

import collections
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from tests.processes import start_worker, wait_until
from tests.rows import (
    attempt_rows,
    execute,
    insert_channel,
    insert_delivery_job,
    insert_integration,
    insert_notification_job,
    job,
)
from tests.servers.http import RecordingServer
from tests.servers.raw_http import RawConnection, raw_http_server
from tests.servers.smtp import smtp_config, trickling_server

TRICKLE_EVERY = 0.5  # seconds between two bytes of tenant A's reply
JOB_TIMEOUT = 3.0
MAX_ATTEMPTS = 2
SETTINGS = {
    "worker_threads": "4",
    "worker_job_timeout_seconds": str(JOB_TIMEOUT),
    "worker_lease_seconds": "6",
    "worker_max_attempts": str(MAX_ATTEMPTS),
    "worker_quick_retries": "2",  # a cut attempt must not be retried inside itself (no second send)
    "http_read_timeout": "30",  # per read: each trickled byte would reset it; only the deadline cuts
    "smtp_timeout": "30",
}
# Cut by the deadline means about JOB_TIMEOUT; the slack covers a loaded machine, not a trickle
# (a whole trickled reply takes over 30 s, and a second lease would start at 6 s).
LONGEST_ATTEMPT = JOB_TIMEOUT + 2.0
DEADLINE_ERROR = re.compile(r"deadline|timed? ?out", re.IGNORECASE)
TRICKLED_REPLY = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
B_JOBS = 8
OVERLAP_GRACE = 1.0  # seconds


@dataclass
class TricklingWebhook:
    """Per Idempotency-Key: how many requests arrived, and whether one arrived while the client still
    held another connection with the same key open (a second send inside one attempt)."""

    received: collections.Counter[str] = field(default_factory=collections.Counter)
    overlapping: list[str] = field(default_factory=list)
    open_keys: set[str] = field(default_factory=set)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def answer(self, conn: RawConnection) -> None:
        key = idempotency_key(conn.request)
        with self.changed:
            self.received[key] += 1
            # The previous attempt's close may still be on its way to this server: allow it a moment.
            if not self.changed.wait_for(lambda: key not in self.open_keys, timeout=OVERLAP_GRACE):
                self.overlapping.append(key)
            self.open_keys.add(key)
        try:
            trickle_until_closed(conn)
        finally:
            with self.changed:
                self.open_keys.discard(key)
                self.changed.notify_all()


def trickle_until_closed(conn: RawConnection) -> None:
    """One byte every TRICKLE_EVERY seconds; returns as soon as the client closes the connection."""
    conn.sock.settimeout(TRICKLE_EVERY)
    for i in range(len(TRICKLED_REPLY)):
        if conn.stopping.is_set():
            return
        conn.send(TRICKLED_REPLY[i : i + 1])
        try:
            if conn.sock.recv(1) == b"":
                return
        except TimeoutError:
            continue


def idempotency_key(request: bytes) -> str:
    for line in request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"idempotency-key":
            return value.strip().decode()
    raise AssertionError(f"a request without Idempotency-Key: {request[:300]!r}")


@contextmanager
def trickling_webhook() -> Iterator[tuple[TricklingWebhook, str]]:
    webhook = TricklingWebhook()
    with raw_http_server(webhook.answer) as server:
        yield webhook, server.url("/slow")


def statuses(dsn: str, table: str, job_ids: list[int]) -> list[str]:
    rows = execute(dsn, f"SELECT status FROM {table} WHERE job_id = ANY(%s) ORDER BY job_id", (job_ids,))
    return [row["status"] for row in rows]


def insert_b_jobs(dsn: str, http_server: RecordingServer, count: int) -> list[int]:
    channel = insert_channel(dsn, "webhook", {"url": http_server.url("/b")}, tenant_id="tenant-b")
    return [insert_notification_job(dsn, channel, tenant_id="tenant-b") for _ in range(count)]


def assert_b_flows_while_a_trickles(dsn: str, a_jobs: list[int], b_jobs: list[int]) -> None:
    """B's jobs all end COMPLETED while every A job is still within its attempts (none finished)."""
    assert wait_until(lambda: statuses(dsn, "notification_jobs", b_jobs) == ["COMPLETED"] * len(b_jobs))
    assert "FAILED" not in statuses(dsn, "delivery_jobs", a_jobs), "tenant B waited for tenant A"
    for job_id in a_jobs:
        assert len(attempt_rows(dsn, job_id)) < MAX_ATTEMPTS, "tenant B waited for tenant A"


def assert_each_attempt_cut_at_the_deadline(dsn: str, a_jobs: list[int]) -> None:
    assert wait_until(lambda: statuses(dsn, "delivery_jobs", a_jobs) == ["FAILED"] * len(a_jobs), timeout=30)
    for job_id in a_jobs:
        row = job(dsn, "delivery_jobs", job_id)
        assert row["attempts"] == MAX_ATTEMPTS
        assert DEADLINE_ERROR.search(row["last_error"] or ""), row["last_error"]
        attempts = attempt_rows(dsn, job_id)
        assert [a["attempt_no"] for a in attempts] == list(range(1, MAX_ATTEMPTS + 1))
        for attempt in attempts:
            assert attempt["ok"] is False
            assert DEADLINE_ERROR.search(attempt["error"] or ""), attempt["error"]
            took = seconds(attempt["started_at"], attempt["finished_at"])
            assert JOB_TIMEOUT - 0.5 <= took <= LONGEST_ATTEMPT, f"attempt took {took:.1f} s"
        first, second = attempts
        assert second["started_at"] >= first["finished_at"], "two attempts of one job overlapped"


def seconds(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds()


def assert_worker_still_delivers(
    dsn: str, worker: subprocess.Popen[str], http_server: RecordingServer
) -> int:
    """The worker is still running and delivers a job inserted now; it stops cleanly on SIGTERM."""
    assert worker.poll() is None, worker.communicate()[1]
    (late,) = insert_b_jobs(dsn, http_server, 1)
    assert wait_until(lambda: job(dsn, "notification_jobs", late)["status"] == "COMPLETED")
    worker.send_signal(signal.SIGTERM)
    _out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    return late


def assert_b_sent_once_each(http_server: RecordingServer, b_jobs: list[int]) -> None:
    keys = collections.Counter(r.header("Idempotency-Key") for r in http_server.received("/b"))
    assert keys == {f"notification_jobs:{j}": 1 for j in b_jobs}


def test_a_trickling_webhook_is_sent_once_per_attempt_and_cut_while_another_tenant_flows(
    database: str, http_server: RecordingServer
) -> None:
    with trickling_webhook() as (webhook, url):
        integration = insert_integration(database, "webhook", config_json={"url": url})
        a_jobs = [insert_delivery_job(database, integration) for _ in range(2)]  # claimed first
        b_jobs = insert_b_jobs(database, http_server, B_JOBS)
        started = time.monotonic()
        worker = start_worker(database, **SETTINGS)

        assert_b_flows_while_a_trickles(database, a_jobs, b_jobs)
        assert_each_attempt_cut_at_the_deadline(database, a_jobs)
        assert time.monotonic() - started < MAX_ATTEMPTS * LONGEST_ATTEMPT + 15

        assert webhook.received == {f"delivery_jobs:{j}": MAX_ATTEMPTS for j in a_jobs}, (
            "not once per attempt"
        )
        assert webhook.overlapping == [], "a job was sent again while its attempt was still running"
        late = assert_worker_still_delivers(database, worker, http_server)
    assert_b_sent_once_each(http_server, [*b_jobs, late])


def test_a_trickling_smtp_server_gets_one_message_per_attempt_and_is_cut_while_another_tenant_flows(
    database: str, http_server: RecordingServer
) -> None:
    """The SMTP peer accepts the message, then drags out its reply to the end of DATA: the one case
    where a resend is a second e-mail, so it must happen once per attempt and no more."""
    with trickling_server(after="data", interval=TRICKLE_EVERY) as peer:
        integration = insert_integration(
            database,
            "email",
            email_config=smtp_config(peer.port),
            email_recipients={"to": ["oncall@tenant-a.test"]},
        )
        a_jobs = [insert_delivery_job(database, integration) for _ in range(2)]
        b_jobs = insert_b_jobs(database, http_server, B_JOBS)
        worker = start_worker(database, **SETTINGS)

        assert_b_flows_while_a_trickles(database, a_jobs, b_jobs)
        assert_each_attempt_cut_at_the_deadline(database, a_jobs)

        assert peer.data_received == len(a_jobs) * MAX_ATTEMPTS, "not one message per attempt"
        assert peer.closed_by_client.is_set()
        late = assert_worker_still_delivers(database, worker, http_server)
    assert_b_sent_once_each(http_server, [*b_jobs, late])
