"""The series a running worker exports (scraped over HTTP), as alert rules and dashboards read them.

Every labelled series exists at 0 before any job; latency, outcome, reason, quick-retry and circuit
series move after real deliveries; the database-side gauges are withdrawn during a database outage.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extensions

from delivery_worker import __version__
from delivery_worker.metrics import QUEUE_SAMPLE, QueueSampler, WorkerMetrics
from delivery_worker.service import ProcessEnvironment, run_worker
from tests.rows import (
    execute,
    insert_channel,
    insert_delivery_job,
    insert_integration,
    insert_notification_job,
    job,
)
from tests.servers.http import RecordingServer, Reply
from tests.servers.tcp_proxy import TcpProxy
from tests.support import make_settings
from tests.test_metrics_health import free_port, get, samples, value, wait_for

TABLES = ("notification_jobs", "delivery_jobs")
CHANNEL_TYPES = ("email", "http", "mqtt", "pagerduty", "slack", "snmp", "teams", "webhook", "other", "none")
QUEUE_GAUGES = (
    "delivery_worker_queue_pending_jobs",
    "delivery_worker_queue_due_jobs",
    "delivery_worker_queue_oldest_due_age_seconds",
    "delivery_worker_queue_retry_backlog_jobs",
    "delivery_worker_queue_failed_recent_jobs",
    "delivery_worker_queue_oldest_processing_age_seconds",
)
Found = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Worker:
    """A worker running in a thread with its listener on a free port."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def scrape(self) -> Found:
        status, text = get(f"{self.base}/metrics")
        assert status == 200
        return samples(text)

    def text(self) -> str:
        return get(f"{self.base}/metrics")[1]

    def wait_for(self, name: str, expected: float, **labels: str) -> Found:
        """Scrape until ``name{labels}`` reaches ``expected``; return that scrape."""
        found: list[Found] = [{}]

        def reached() -> bool:
            found[0] = self.scrape()
            return value(found[0], name, **labels) >= expected

        wait_for(reached)
        return found[0]


@contextmanager
def running_worker(dsn: str, **sections: dict[str, Any]) -> Iterator[Worker]:
    port = free_port()
    worker_section = {"backoff_base_seconds": 0.0, "poll_interval": 0.05, "quick_retries": 0, "threads": 4}
    worker_section.update(sections.pop("worker", {}))
    metrics = {"port": port, "host": "127.0.0.1", "queue_sample_seconds": 1.0, **sections.pop("metrics", {})}
    settings = make_settings(
        database={"dsn": dsn, "migrate_dsn": dsn}, worker=worker_section, metrics=metrics, **sections
    )
    stopping = threading.Event()
    thread = threading.Thread(
        target=run_worker,
        args=(settings,),
        kwargs={"environment": ProcessEnvironment(), "stopping": stopping},
    )
    thread.start()
    try:
        worker = Worker(port)
        wait_for(lambda: _answers(worker))
        yield worker
    finally:
        stopping.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


def _answers(worker: Worker) -> bool:
    try:
        return get(f"{worker.base}/metrics")[0] == 200
    except OSError:
        return False


def present(found: Found, name: str, **labels: str) -> bool:
    return (name, frozenset(labels.items())) in found


def test_every_series_exists_at_zero_before_any_job(database):
    with running_worker(database) as worker:
        found = worker.wait_for("delivery_worker_queue_sample_up", 1)
        text = worker.text()

    for table in TABLES:
        for kind in CHANNEL_TYPES:
            labels = {"table": table, "channel_type": kind}
            for name in ("claimed", "completed", "retried", "failed"):
                assert present(found, f"delivery_worker_jobs_{name}_total", **labels), (name, labels)
                assert value(found, f"delivery_worker_jobs_{name}_total", **labels) == 0
            for reason in ("shutdown", "rate_limited", "circuit_open", "destination_busy"):
                assert present(found, "delivery_worker_jobs_deferred_total", **labels, reason=reason)
            assert present(found, "delivery_worker_delivery_latency_seconds_count", **labels)
            assert present(found, "delivery_worker_delivery_latency_seconds_bucket", **labels, le="3600.0")
    for kind in CHANNEL_TYPES:
        assert present(found, "delivery_worker_quick_retries_total", channel_type=kind)
        for outcome in ("completed", "retry", "failed"):
            assert present(
                found, "delivery_worker_delivery_duration_seconds_count", channel_type=kind, outcome=outcome
            )
    for kind in CHANNEL_TYPES[:-1]:  # a job without a channel never reaches a circuit
        assert present(found, "delivery_worker_circuits_open", channel_type=kind)
        assert value(found, "delivery_worker_circuits_open", channel_type=kind) == 0
    for table in TABLES:
        for name in QUEUE_GAUGES:
            assert present(found, name, table=table), name
            assert value(found, name, table=table) == 0
    assert (
        value(found, "delivery_worker_build_info", version=__version__, python=platform.python_version()) == 1
    )
    assert "_created" not in text
    assert not any("tenant" in key for _, labels in found for key, _ in labels)


def test_latency_histogram_after_deliveries_from_both_tables(database, http_server: RecordingServer):
    channel = insert_channel(database, "webhook", {"url": http_server.url("/ok")})
    notification = insert_notification_job(database, channel)
    integration = insert_integration(database, "webhook", config_json={"url": http_server.url("/ok")})
    delivery = insert_delivery_job(database, integration)
    for table, job_id in (("notification_jobs", notification), ("delivery_jobs", delivery)):
        execute(
            database,
            f"UPDATE {table} SET created_at = now() - interval '90 seconds' WHERE job_id = %s",
            (job_id,),
        )

    with running_worker(database) as worker:
        worker.wait_for(
            "delivery_worker_jobs_completed_total", 1, table="notification_jobs", channel_type="webhook"
        )
        found = worker.wait_for(
            "delivery_worker_jobs_completed_total", 1, table="delivery_jobs", channel_type="webhook"
        )

    for table in TABLES:
        labels = {"table": table, "channel_type": "webhook"}
        assert value(found, "delivery_worker_delivery_latency_seconds_count", **labels) == 1
        assert 90 <= value(found, "delivery_worker_delivery_latency_seconds_sum", **labels) < 150
        assert value(found, "delivery_worker_delivery_latency_seconds_bucket", **labels, le="60.0") == 0
        assert value(found, "delivery_worker_delivery_latency_seconds_bucket", **labels, le="120.0") == 1
    assert (
        value(
            found,
            "delivery_worker_delivery_duration_seconds_count",
            channel_type="webhook",
            outcome="completed",
        )
        == 2
    )


def test_failure_quick_retries_and_open_circuit_show_by_outcome_and_reason(
    database, http_server: RecordingServer
):
    http_server.script("/down", Reply(500), Reply(500), Reply(500))
    channel = insert_channel(database, "webhook", {"url": http_server.url("/down")})
    first = insert_notification_job(database, channel)

    with running_worker(
        database,
        worker={"quick_retries": 2, "max_attempts": 1},
        circuit_breaker={"failure_threshold": 1, "cooldown_seconds": 600},
    ) as worker:
        labels = {"table": "notification_jobs", "channel_type": "webhook"}
        failed = worker.wait_for("delivery_worker_jobs_failed_total", 1, **labels)
        second = insert_notification_job(database, channel)  # its destination's circuit is open now
        deferred = worker.wait_for("delivery_worker_jobs_deferred_total", 1, **labels, reason="circuit_open")

    assert job(database, "notification_jobs", first)["status"] == "FAILED"
    assert len(http_server.received("/down")) == 3  # one attempt: the first try and two quick retries
    assert (
        value(
            failed,
            "delivery_worker_delivery_duration_seconds_count",
            channel_type="webhook",
            outcome="failed",
        )
        == 1
    )
    assert (
        value(
            failed, "delivery_worker_delivery_duration_seconds_count", channel_type="webhook", outcome="retry"
        )
        == 0
    )
    assert value(failed, "delivery_worker_quick_retries_total", channel_type="webhook") == 2
    assert value(deferred, "delivery_worker_circuits_open", channel_type="webhook") == 1
    assert value(deferred, "delivery_worker_jobs_deferred_total", **labels, reason="rate_limited") == 0
    row = job(database, "notification_jobs", second)
    assert row["status"] == "PENDING" and row["attempts"] == 0


def test_rate_limit_deferral_is_counted_by_reason(database, http_server: RecordingServer):
    channel = insert_channel(database, "webhook", {"url": http_server.url("/paced")})
    for _ in range(3):
        insert_notification_job(database, channel)

    with running_worker(database, rate_limits={"webhook": 0.01}) as worker:  # one request per 100 s
        labels = {"table": "notification_jobs", "channel_type": "webhook"}
        found = worker.wait_for("delivery_worker_jobs_deferred_total", 2, **labels, reason="rate_limited")

    assert value(found, "delivery_worker_jobs_completed_total", **labels) == 1
    assert value(found, "delivery_worker_jobs_deferred_total", **labels, reason="circuit_open") == 0
    assert value(found, "delivery_worker_jobs_deferred_total", **labels, reason="shutdown") == 0
    assert len(http_server.received("/paced")) == 1


def through_proxy(dsn: str) -> tuple[TcpProxy, str]:
    params = psycopg2.extensions.parse_dsn(dsn)
    proxy = TcpProxy(params.get("host", "127.0.0.1"), int(params.get("port", 5432))).start()
    return proxy, psycopg2.extensions.make_dsn(dsn, host="127.0.0.1", port=proxy.port)


def test_queue_gauges_are_withdrawn_during_a_database_outage_and_return_after(database):
    channel = insert_channel(database, "webhook", {"url": "https://example.invalid/"})
    later = insert_notification_job(database, channel)
    execute(
        database,
        "UPDATE notification_jobs SET next_run_at = now() + interval '1 hour' WHERE job_id = %s",
        (later,),
    )
    proxy, dsn = through_proxy(database)
    try:
        with running_worker(dsn) as worker:
            before = worker.wait_for("delivery_worker_queue_pending_jobs", 1, table="notification_jobs")
            proxy.cut()
            during: list[Found] = [{}]

            def withdrawn() -> bool:
                during[0] = worker.scrape()
                return (
                    present(during[0], "delivery_worker_queue_sample_up")
                    and value(during[0], "delivery_worker_queue_sample_up") == 0
                )

            wait_for(withdrawn)
            proxy.restore()
            after = worker.wait_for("delivery_worker_queue_sample_up", 1)
    finally:
        proxy.stop()

    assert value(before, "delivery_worker_queue_sample_up") == 1
    for name in QUEUE_GAUGES:
        for table in TABLES:
            assert present(before, name, table=table)
            assert not present(during[0], name, table=table), f"{name} still exported during the outage"
            assert present(after, name, table=table)
    assert value(during[0], "delivery_worker_queue_sampled_timestamp_seconds") > 0  # when it last worked
    assert value(after, "delivery_worker_queue_pending_jobs", table="notification_jobs") == 1


def test_sampler_reads_retry_backlog_recent_failures_and_oldest_processing(database):
    channel = insert_channel(database, "webhook", {"url": "https://example.invalid/"})
    ids = [insert_notification_job(database, channel) for _ in range(6)]
    changes = [
        "attempts = 2, next_run_at = now() + interval '1 hour'",  # retry backlog, not due
        "attempts = 1",  # retry backlog, due
        "status = 'FAILED', updated_at = now() - interval '5 minutes'",  # within the window
        "status = 'FAILED', updated_at = now() - interval '2 hours'",  # before it
        "status = 'PROCESSING', updated_at = now() - interval '400 seconds'",  # claimed 400 s ago
        "status = 'PROCESSING', updated_at = now() - interval '10 seconds'",
    ]
    for change, job_id in zip(changes, ids, strict=True):
        execute(database, f"UPDATE notification_jobs SET {change} WHERE job_id = %s", (job_id,))
    metrics = WorkerMetrics(["webhook"])

    assert QueueSampler(metrics, database, interval=60, failed_window=900).sample_once()

    from prometheus_client import generate_latest

    found = samples(generate_latest(metrics.registry).decode())
    table = {"table": "notification_jobs"}
    assert value(found, "delivery_worker_queue_pending_jobs", **table) == 2
    assert value(found, "delivery_worker_queue_retry_backlog_jobs", **table) == 2
    assert value(found, "delivery_worker_queue_failed_recent_jobs", **table) == 1  # not the 2-hour-old one
    assert 400 <= value(found, "delivery_worker_queue_oldest_processing_age_seconds", **table) < 460
    assert value(found, "delivery_worker_queue_oldest_processing_age_seconds", table="delivery_jobs") == 0
    assert value(found, "delivery_worker_queue_sample_up") == 1


def test_sample_reads_only_partial_indexes_never_the_whole_table(database):
    """Each part of the sample can use a partial index (with sequential scans priced out, a part that
    could not would still show a Seq Scan), so its cost never grows with finished rows."""
    conn = psycopg2.connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute("SET enable_seqscan = off")
            for table in TABLES:
                cur.execute("EXPLAIN " + QUEUE_SAMPLE.format(table=table), {"failed_window": 900})
                plan = "\n".join(row[0] for row in cur.fetchall())
                assert "Seq Scan" not in plan, plan
                assert f"{table}_failed_updated_idx" in plan, plan
    finally:
        conn.close()
