"""LISTEN/NOTIFY: an idle worker picks up a new job at once, not at its next poll."""

from __future__ import annotations

import signal
import time

from tests.processes import start_worker, wait_until
from tests.rows import execute, insert_channel, insert_notification_job


def test_idle_worker_is_woken_by_an_insert_long_before_its_poll_interval(database, http_server):
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    worker = start_worker(database, worker_poll_interval="30")
    try:
        # Let it start, claim nothing, and go to sleep on its 30 s poll interval.
        assert wait_until(lambda: _listening(database), timeout=15)
        time.sleep(0.3)
        latencies = []
        for _ in range(3):
            before = len(http_server.received("/hook"))
            started = time.monotonic()
            insert_notification_job(database, channel)
            assert wait_until(lambda n=before: len(http_server.received("/hook")) > n, timeout=10)
            latencies.append(time.monotonic() - started)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
    assert max(latencies) < 1.0, latencies


def test_platform_notify_new_delivery_job_also_wakes_the_worker(database, http_server):
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    worker = start_worker(database, worker_poll_interval="30")
    try:
        assert wait_until(lambda: _listening(database), timeout=15)
        time.sleep(0.3)
        # A producer that queues without our trigger (dropped here) but sends its own NOTIFY.
        execute(database, "DROP TRIGGER delivery_worker_notify_new_jobs ON notification_jobs")
        insert_notification_job(database, channel)
        execute(database, "NOTIFY new_delivery_job")
        assert wait_until(lambda: len(http_server.received("/hook")) == 1, timeout=5)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)


def _listening(dsn: str) -> bool:
    rows = execute(
        dsn,
        "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'delivery-worker'"
        " AND datname = current_database() AND query LIKE 'LISTEN%%'",
    )
    return bool(rows[0]["n"])
