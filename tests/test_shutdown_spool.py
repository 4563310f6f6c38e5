"""Shutdown ends within shutdown_timeout whatever the database does, and nothing delivered is sent again.

Outcomes that cannot be written at exit go to the spool in ``[worker] state_dir`` and are written first
at the next start. The database is cut with tests/servers/tcp_proxy.py (refused, or silently frozen).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import pytest

from delivery_worker.jobs import Job, Outcome, Table, Verdict
from delivery_worker.spool import SpooledOutcome, from_line, to_line
from tests.postgres import proxy_to_database, through
from tests.processes import start_worker, wait_until
from tests.rows import execute, insert_channel, insert_notification_job, job, log_rows
from tests.servers.http import Reply
from tests.servers.tcp_proxy import TcpProxy


class FreezingProxy(TcpProxy):
    """Also freezes: connections stay open but no byte passes (a silent network partition)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__(target_host, target_port)
        self.frozen = threading.Event()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                while self.frozen.is_set() and not self.stopped.is_set():
                    time.sleep(0.05)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


@pytest.fixture
def proxy() -> Iterator[FreezingProxy]:
    started = proxy_to_database(FreezingProxy)
    yield started
    started.frozen.clear()
    started.stop()


def statuses(dsn: str) -> dict[str, int]:
    rows = execute(dsn, "SELECT status, count(*) AS n FROM notification_jobs GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


def spooled_lines(state_dir: Path) -> list[str]:
    return [
        line for path in sorted(state_dir.glob("outcomes-*.jsonl")) for line in path.read_text().splitlines()
    ]


def test_sigterm_during_an_outage_spools_and_the_restart_sends_nothing_twice(
    database, http_server, proxy, tmp_path
):
    http_server.script("/hook", *[Reply(200, delay=1.5)] * 10)
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    job_ids = [insert_notification_job(database, channel) for _ in range(10)]
    settings = {
        "worker_threads": "10",
        "worker_max_in_flight_per_destination": "0",  # all ten under way at once
        "worker_state_dir": str(tmp_path),
        "worker_shutdown_timeout": "8",
    }

    worker = start_worker(through(proxy, database), **settings)
    assert wait_until(lambda: len(http_server.received("/hook")) == 10)
    proxy.cut()  # the database goes away while all ten deliveries are under way
    worker.send_signal(signal.SIGTERM)
    started = time.monotonic()
    out, err = worker.communicate(timeout=30)

    assert worker.returncode == 0, err
    assert time.monotonic() - started < 8
    assert statuses(database) == {"PROCESSING": 10}
    assert len(spooled_lines(tmp_path)) == 10
    assert '"spool.saved"' in out

    restarted = start_worker(database, "--drain", **settings)
    out, err = restarted.communicate(timeout=60)

    assert restarted.returncode == 0, err
    assert statuses(database) == {"COMPLETED": 10}
    sent = collections.Counter(r.header("Idempotency-Key") for r in http_server.received("/hook"))
    assert sent == collections.Counter({f"notification_jobs:{j}": 1 for j in job_ids})
    assert all([r["success"] for r in log_rows(database, j)] == [True] for j in job_ids)
    assert spooled_lines(tmp_path) == []
    assert '"spool.replayed"' in out


def test_a_spooled_completion_wins_over_a_reap_that_has_not_been_resent(
    database, http_server, proxy, tmp_path
):
    """While the worker was down its leases ran out and another worker reaped the jobs (PENDING,
    waiting for their backoff): the spooled outcomes still win at the restart."""
    http_server.script("/hook", *[Reply(200, delay=1.0)] * 3)
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    job_ids = [insert_notification_job(database, channel) for _ in range(3)]
    settings = {
        "worker_lease_seconds": "4",
        "worker_job_timeout_seconds": "2",
        "worker_state_dir": str(tmp_path),
        "worker_shutdown_timeout": "4",
    }

    worker = start_worker(through(proxy, database), **settings)
    assert wait_until(lambda: len(http_server.received("/hook")) == 3)
    proxy.cut()
    worker.send_signal(signal.SIGTERM)
    worker.communicate(timeout=30)
    time.sleep(4.5)  # the leases run out while the worker is down
    reaper = start_worker(
        database,
        "--drain",
        worker_lease_seconds="4",
        worker_job_timeout_seconds="2",
        worker_backoff_base_seconds="3600",
        worker_state_dir=str(tmp_path / "elsewhere"),
    )
    reaper.communicate(timeout=60)
    assert statuses(database) == {"PENDING": 3}

    restarted = start_worker(database, "--drain", **settings)
    _out, err = restarted.communicate(timeout=60)

    assert restarted.returncode == 0, err
    rows = [job(database, "notification_jobs", j) for j in job_ids]
    assert [(r["status"], r["attempts"]) for r in rows] == [("COMPLETED", 0)] * 3
    assert len(http_server.received("/hook")) == 3


# With threads free, the poll loop keeps claiming, so it is blocked in a statement when the
# database freezes: SIGTERM must still be handled at once (the loop runs off the main thread).
@pytest.mark.parametrize("threads", ["4", "6"])
def test_shutdown_ends_within_shutdown_timeout_with_hung_deliveries_and_a_frozen_database(
    database, http_server, proxy, tmp_path, threads
):
    http_server.script("/hang", *[Reply(200, delay=60.0)] * 4)
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hang")})
    for _ in range(4):
        insert_notification_job(database, channel)

    worker = start_worker(
        through(proxy, database),
        worker_threads=threads,
        worker_shutdown_timeout="5",
        worker_state_dir=str(tmp_path),
        http_read_timeout="120",
        worker_job_timeout_seconds="120",
    )
    assert wait_until(lambda: len(http_server.received("/hang")) == 4)
    proxy.frozen.set()  # no byte reaches PostgreSQL any more, and no error either
    time.sleep(0.5)
    worker.send_signal(signal.SIGTERM)
    started = time.monotonic()
    out, err = worker.communicate(timeout=30)
    elapsed = time.monotonic() - started

    assert worker.returncode == 0, err
    assert elapsed < 5.5, f"shutdown took {elapsed:.1f} s"
    records = [json.loads(line) for line in spooled_lines(tmp_path)]
    assert len(records) == 4
    assert {r["verdict"] for r in records} == {"retry"}
    assert '"shutdown.abandoned"' in out


def test_a_corrupt_spool_line_is_logged_and_skipped(database, http_server, tmp_path):
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    job_id = insert_notification_job(database, channel)
    claimed = execute(
        database,
        "UPDATE notification_jobs SET status = 'PROCESSING', lease_expires_at = now() + interval '5 minutes'"
        " WHERE job_id = %s RETURNING alert_id, lease_expires_at",
        (job_id,),
    )[0]
    now = datetime.now(UTC)
    delivered = Outcome(
        Job(
            Table.NOTIFICATION_JOBS,
            job_id,
            "tenant-a",
            claimed["alert_id"],
            "OPEN",
            0,
            None,
            None,
            channel,
            claimed["lease_expires_at"],
        ),
        Verdict.COMPLETED,
        now,
        now,
    )
    database_name = execute(database, "SELECT current_database() AS name")[0]["name"]
    lines = [
        '{"v": 1, "job_id": ',
        to_line(SpooledOutcome(database_name, delivered)),
        "\x00\xff not json",
        json.dumps({"v": 1, "database": database_name, "table": "notification_jobs", "job_id": "x"}),
    ]
    (tmp_path / "outcomes-1-1.jsonl").write_text("\n".join(lines) + "\n")

    worker = start_worker(database, "--drain", worker_state_dir=str(tmp_path))
    out, err = worker.communicate(timeout=60)

    assert worker.returncode == 0, err
    assert job(database, "notification_jobs", job_id)["status"] == "COMPLETED"
    assert http_server.received("/hook") == []
    assert [r["success"] for r in log_rows(database, job_id)] == [True]
    assert out.count('"spool.corrupt_line"') == 3
    assert list(tmp_path.glob("outcomes-*")) == []


def test_spool_lines_round_trip_without_payload_or_channel_config():
    now = datetime.now(UTC)
    job = Job(Table.DELIVERY_JOBS, 7, "tenant-b", 42, "CLOSED", 2, {"secret": "s3cr3t"}, None, None, now)
    outcome = Outcome(
        job, Verdict.RETRY, now, now, error="HTTP 503", http_status=503, retry_delay_seconds=60.0
    )

    line = to_line(SpooledOutcome("db1", outcome))
    back = from_line(line)

    assert "s3cr3t" not in line
    assert back.database == "db1"
    assert back.outcome == Outcome(
        Job(Table.DELIVERY_JOBS, 7, "tenant-b", 42, "CLOSED", 2, None, None, None, now),
        Verdict.RETRY,
        now,
        now,
        error="HTTP 503",
        http_status=503,
        retry_delay_seconds=60.0,
    )


def test_sigterm_with_a_row_lock_held_elsewhere_exits_in_time_and_sends_nothing_twice(
    database, http_server, tmp_path
):
    """Another session locks the row of a job in flight: the worker neither stalls nor ignores SIGTERM;
    the outcome it cannot write goes to the spool and is written at the next start."""
    http_server.script("/slow", Reply(200, delay=1.0))
    channel = insert_channel(database, "webhook", {"url": http_server.url("/slow")})
    job_id = insert_notification_job(database, channel)
    settings = {"worker_shutdown_timeout": "4", "worker_state_dir": str(tmp_path)}

    worker = start_worker(database, **settings)
    assert wait_until(lambda: len(http_server.received("/slow")) == 1)
    holder = psycopg2.connect(database)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT 1 FROM notification_jobs WHERE job_id = %s FOR UPDATE", (job_id,))
        time.sleep(1.5)  # delivered; its outcome now waits for the locked row
        worker.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _out, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, err
        assert time.monotonic() - started < 4.5
        assert len(spooled_lines(tmp_path)) == 1
    finally:
        holder.rollback()
        holder.close()

    restarted = start_worker(database, "--drain", **settings)
    _out, err = restarted.communicate(timeout=60)

    assert restarted.returncode == 0, err
    assert job(database, "notification_jobs", job_id)["status"] == "COMPLETED"
    assert len(http_server.received("/slow")) == 1
    assert spooled_lines(tmp_path) == []


def test_spooled_outcomes_of_another_database_are_kept_for_it(database, tmp_path):
    now = datetime.now(UTC)
    foreign = Outcome(
        Job(Table.NOTIFICATION_JOBS, 1, "tenant-a", 1, "OPEN", 0, None, None, 1, now),
        Verdict.COMPLETED,
        now,
        now,
    )
    line = to_line(SpooledOutcome("some_other_database", foreign))
    (tmp_path / "outcomes-1-1.jsonl").write_text(line + "\n")

    worker = start_worker(database, "--drain", worker_state_dir=str(tmp_path))
    out, err = worker.communicate(timeout=60)

    assert worker.returncode == 0, err
    assert spooled_lines(tmp_path) == [line]
    assert '"spool.other_database"' in out


def test_state_dir_defaults_to_the_systemd_state_directory_when_writable(tmp_path, monkeypatch):
    from delivery_worker import spool

    assert spool.resolve_state_dir("/srv/dw") == Path("/srv/dw")
    monkeypatch.setattr(spool, "DEFAULT_STATE_DIR", tmp_path)
    assert spool.resolve_state_dir("") == tmp_path
    monkeypatch.setattr(spool, "DEFAULT_STATE_DIR", tmp_path / "missing")
    assert spool.resolve_state_dir("") == Path("state")


def test_files_taken_by_a_worker_that_died_are_taken_again_not_those_of_a_live_one(tmp_path):
    from delivery_worker.spool import Spool

    now = datetime.now(UTC)
    lines = {}
    for job_id, holder in ((1, 999_999_999), (2, os.getppid())):  # no such pid; the test runner's parent
        outcome = Outcome(
            Job(Table.DELIVERY_JOBS, job_id, "t", 1, "OPEN", 0, None, None, None, now),
            Verdict.COMPLETED,
            now,
            now,
        )
        lines[job_id] = to_line(SpooledOutcome("db", outcome))
        (tmp_path / f"outcomes-7-{job_id}.jsonl.taken-{holder}").write_text(lines[job_id] + "\n")

    taken = Spool(tmp_path).take()

    assert [entry.outcome.job.job_id for entry in taken] == [1]
    assert (tmp_path / f"outcomes-7-1.jsonl.taken-{os.getpid()}").exists()
    assert (tmp_path / f"outcomes-7-2.jsonl.taken-{os.getppid()}").exists()
