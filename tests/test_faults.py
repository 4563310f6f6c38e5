"""Fault injection with real processes and the real PostgreSQL: nothing is lost, little is repeated.

kill -9 mid-batch, SIGTERM mid-batch, a second signal, connections cut under a running worker,
a delivered job whose COMPLETED write fails, and a hanging endpoint.
"""

from __future__ import annotations

import collections
import signal
import socket
import time

from tests.processes import start_worker, wait_until
from tests.rows import drain, execute, insert_channel, insert_notification_job, job
from tests.servers.http import Reply


def statuses(dsn: str) -> dict[str, int]:
    rows = execute(dsn, "SELECT status, count(*) AS n FROM notification_jobs GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


def test_kill_9_mid_batch_then_restart_completes_every_job(database, http_server):
    http_server.script("/hook", *[Reply(200, delay=0.5)] * 100)
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    job_ids = [insert_notification_job(database, channel) for _ in range(20)]
    settings = {"worker_threads": "4"}

    victim = start_worker(database, **settings)
    assert wait_until(lambda: len(http_server.received("/hook")) >= 2)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    in_flight_at_kill = statuses(database).get("PROCESSING", 0)
    assert 1 <= in_flight_at_kill <= 4
    # The dead worker's leases run out (`run` refuses a lease shorter than an attempt can last).
    execute(
        database,
        "UPDATE notification_jobs SET lease_expires_at = now() - interval '1 second'"
        " WHERE status = 'PROCESSING'",
    )

    survivor = start_worker(database, "--drain", **settings)
    out, err = survivor.communicate(timeout=60)

    assert survivor.returncode == 0, err
    assert statuses(database) == {"COMPLETED": 20}
    sent = collections.Counter(r.header("Idempotency-Key") for r in http_server.received("/hook"))
    assert set(sent) == {f"notification_jobs:{j}" for j in job_ids}
    duplicates = sum(n - 1 for n in sent.values())
    assert duplicates <= in_flight_at_kill
    assert '"jobs.reclaimed"' in out
    # The lost attempt counts: every job the dead worker held shows one attempt.
    counted = execute(database, "SELECT count(*) AS n FROM notification_jobs WHERE attempts = 1")
    assert counted[0]["n"] == in_flight_at_kill


def test_job_that_kills_its_worker_every_time_ends_failed(database):
    channel = insert_channel(database, "webhook", {"url": "http://127.0.0.1:9/never"})
    job_id = insert_notification_job(database, channel)
    # Simulate three workers that each died holding the job: leases long expired.
    for _ in range(3):
        execute(
            database,
            "UPDATE notification_jobs"
            " SET status = 'PROCESSING', lease_expires_at = now() - interval '1 minute'"
            " WHERE job_id = %s",
            (job_id,),
        )
        drain(database, worker={"max_attempts": 3, "lease_seconds": 1.0, "backoff_base_seconds": 3600.0})

    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "FAILED" and row["attempts"] == 3
    assert "lease expired" in row["last_error"]
    log = execute(database, "SELECT success FROM notification_log WHERE job_id = %s", (job_id,))
    assert log == [{"success": False}]


def test_sigterm_finishes_in_flight_and_exits_zero(database, http_server):
    http_server.script("/hook", *[Reply(200, delay=1.0)] * 100)
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    for _ in range(12):
        insert_notification_job(database, channel)

    worker = start_worker(database, worker_threads="4", worker_shutdown_timeout="10")
    assert wait_until(lambda: len(http_server.received("/hook")) == 4)  # four deliveries under way
    worker.send_signal(signal.SIGTERM)
    started = time.monotonic()
    out, err = worker.communicate(timeout=20)

    assert worker.returncode == 0, err
    assert time.monotonic() - started < 5
    final = statuses(database)
    assert final == {"COMPLETED": 4, "PENDING": 8}
    assert len(http_server.received("/hook")) == 4
    untouched = execute(
        database, "SELECT count(*) AS n FROM notification_jobs WHERE status = 'PENDING' AND attempts = 0"
    )
    assert untouched[0]["n"] == 8
    assert '"shutdown.started"' in out


def test_shutdown_timeout_puts_back_a_hanging_job_and_exits_in_time(database, http_server):
    http_server.script("/hang", Reply(200, delay=30.0))
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hang")})
    job_id = insert_notification_job(database, channel)

    worker = start_worker(database, worker_shutdown_timeout="1", http_read_timeout="60")
    assert wait_until(lambda: len(http_server.received("/hang")) == 1)
    worker.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _out, err = worker.communicate(timeout=15)

    assert worker.returncode == 0, err
    assert time.monotonic() - started < 4
    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "PENDING" and row["attempts"] == 1
    assert row["last_error"] == "worker shut down before the attempt finished"


def test_second_signal_exits_at_once(database, http_server):
    http_server.script("/hang", Reply(200, delay=30.0))
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hang")})
    insert_notification_job(database, channel)

    worker = start_worker(database, worker_shutdown_timeout="25", http_read_timeout="60")
    assert wait_until(lambda: len(http_server.received("/hang")) == 1)
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    worker.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _out, err = worker.communicate(timeout=10)

    assert time.monotonic() - started < 2
    assert worker.returncode == 1
    assert "second signal" in err


def terminate_worker_connections(dsn: str) -> int:
    rows = execute(
        dsn,
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity"
        " WHERE application_name = 'delivery-worker' AND datname = current_database()",
    )
    return int(rows[0]["n"])


def test_connections_cut_mid_run_worker_survives_and_completes_all(database, http_server):
    http_server.script("/hook", *[Reply(200, delay=0.05)] * 400)
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    for _ in range(150):
        insert_notification_job(database, channel)

    worker = start_worker(database, worker_threads="4")
    try:
        assert wait_until(lambda: len(http_server.received("/hook")) >= 20)
        for _ in range(3):
            assert terminate_worker_connections(database) >= 1
            time.sleep(0.4)
        assert wait_until(lambda: statuses(database) == {"COMPLETED": 150}, timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)

    assert worker.returncode == 0, err
    keys = collections.Counter(r.header("Idempotency-Key") for r in http_server.received("/hook"))
    assert len(keys) == 150 and set(keys.values()) == {1}, "a job was sent twice"
    assert out.count('"database.unavailable"') == out.count('"database.recovered"') >= 1


def test_delivered_job_is_not_resent_when_its_completed_write_fails(database, http_server):
    """The outcome waits in memory through the outage and is written once the database is back."""
    http_server.script("/slow", Reply(200, delay=1.5))
    channel = insert_channel(database, "webhook", {"url": http_server.url("/slow")})
    job_id = insert_notification_job(database, channel)

    worker = start_worker(database)
    try:
        assert wait_until(lambda: job(database, "notification_jobs", job_id)["status"] == "PROCESSING")
        # Cut the connection repeatedly while the delivery is in flight and just after it lands.
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            terminate_worker_connections(database)
            time.sleep(0.1)
        assert wait_until(lambda: job(database, "notification_jobs", job_id)["status"] == "COMPLETED")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)

    assert len(http_server.received("/slow")) == 1
    assert execute(database, "SELECT success FROM notification_log WHERE job_id = %s", (job_id,)) == [
        {"success": True}
    ]


def test_blackholed_endpoint_respects_the_read_timeout(database):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # accepts (via the backlog) and never answers
        port = silent.getsockname()[1]
        channel = insert_channel(database, "webhook", {"url": f"http://127.0.0.1:{port}/void"})
        job_id = insert_notification_job(database, channel)

        started = time.monotonic()
        drain(database, worker={"max_attempts": 2}, http={"read_timeout": 0.5})
        elapsed = time.monotonic() - started

    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "FAILED" and row["attempts"] == 2
    assert row["last_error"] == f"read timeout after 0.5 s waiting for 127.0.0.1:{port}"
    assert elapsed < 5


def test_400_fails_500_retries_429_honours_retry_after(database, http_server):
    http_server.script("/bad", Reply(400, b"unknown field"))
    http_server.script("/err", Reply(500, b"boom"))
    http_server.script("/limited", Reply(429, b"slow down", headers={"Retry-After": "120"}))
    ids = {}
    for path in ("/bad", "/err", "/limited"):
        channel = insert_channel(database, "webhook", {"url": http_server.url(path)})
        ids[path] = insert_notification_job(database, channel)

    drain(database, worker={"backoff_base_seconds": 10.0})

    bad, err, limited = (job(database, "notification_jobs", ids[p]) for p in ("/bad", "/err", "/limited"))
    assert (bad["status"], bad["attempts"], bad["last_error"]) == (
        "FAILED",
        1,
        "webhook returned HTTP 400: unknown field",
    )
    assert (err["status"], err["attempts"]) == ("PENDING", 1)
    assert 9 <= (err["next_run_at"] - err["updated_at"]).total_seconds() <= 11
    assert (limited["status"], limited["attempts"]) == ("PENDING", 1)
    assert 119 <= (limited["next_run_at"] - limited["updated_at"]).total_seconds() <= 121
    assert limited["last_error"] == "webhook returned HTTP 429: slow down"


def test_worker_keeps_running_while_the_database_is_unreachable(database, http_server):
    """Start-up needs the database; afterwards an outage is survived (connections refused by a proxy)."""
    from tests.servers.tcp_proxy import TcpProxy

    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    proxy = TcpProxy("127.0.0.1", 5432).start()
    proxied = database.replace("port=5432", f"port={proxy.port}")
    worker = start_worker(proxied)
    try:
        insert_notification_job(database, channel)
        assert wait_until(lambda: statuses(database) == {"COMPLETED": 1})
        proxy.cut()  # drop every connection and refuse new ones
        insert_notification_job(database, channel)
        time.sleep(1.5)
        assert worker.poll() is None, "the worker exited during the outage"
        proxy.restore()
        assert wait_until(lambda: statuses(database) == {"COMPLETED": 2}, timeout=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)
        proxy.stop()
    assert worker.returncode == 0, err
    assert out.count('"database.unavailable"') == 1
    assert out.count('"database.recovered"') == 1
