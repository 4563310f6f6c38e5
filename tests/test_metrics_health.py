"""Metrics and health: counters after known outcomes, queue sampling, /metrics and /healthz over HTTP."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from delivery_worker.health import HealthCheck, HealthServer, staleness_bound
from delivery_worker.jobs import Destination, Job, Outcome, Table, Verdict
from delivery_worker.metrics import QueueSampler, WorkerMetrics
from delivery_worker.service import CannotListen, ProcessEnvironment, listen_address, run_worker
from tests.rows import (
    execute,
    insert_channel,
    insert_delivery_job,
    insert_integration,
    insert_notification_job,
)
from tests.servers.http import RecordingServer, Reply
from tests.support import make_settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def wait_for(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_worker_exports_counters_histogram_and_health_over_http(database, http_server: RecordingServer):
    http_server.script("/flaky", Reply(500), Reply(200))
    http_server.script("/bad", Reply(400, body=b"rejected"))
    ok = insert_channel(database, "webhook", {"url": http_server.url("/ok")})
    flaky = insert_channel(database, "webhook", {"url": http_server.url("/flaky")})
    bad = insert_channel(database, "webhook", {"url": http_server.url("/bad")})
    for _ in range(3):
        insert_notification_job(database, ok)
    insert_notification_job(database, flaky)
    insert_notification_job(database, bad)
    port = free_port()
    settings = make_settings(
        database={"dsn": database, "migrate_dsn": database},
        worker={"backoff_base_seconds": 0.0, "poll_interval": 0.05, "quick_retries": 0, "threads": 4},
        metrics={"port": port, "host": "127.0.0.1", "queue_sample_seconds": 1.0},
    )
    stopping = threading.Event()
    worker = threading.Thread(
        target=run_worker,
        args=(settings,),
        kwargs={"environment": ProcessEnvironment(), "stopping": stopping},
    )
    worker.start()
    try:

        def finished() -> bool:
            rows = execute(
                database,
                "SELECT count(*) AS n FROM notification_jobs WHERE status IN ('PENDING', 'PROCESSING')",
            )
            return rows[0]["n"] == 0

        wait_for(finished)
        base = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: (
                value(
                    samples(get(f"{base}/metrics")[1]),
                    "delivery_worker_jobs_completed_total",
                    table="notification_jobs",
                    channel_type="webhook",
                )
                == 4
            )
        )
        status, text = get(f"{base}/metrics")
        health_status, health_body = get(f"{base}/healthz")
        missing_status, _ = get(f"{base}/nothing")
    finally:
        stopping.set()
        worker.join(timeout=30)
    assert not worker.is_alive()

    assert status == 200
    found = samples(text)
    labels = {"table": "notification_jobs", "channel_type": "webhook"}
    assert value(found, "delivery_worker_jobs_claimed_total", **labels) == 6
    assert value(found, "delivery_worker_jobs_completed_total", **labels) == 4
    assert value(found, "delivery_worker_jobs_retried_total", **labels) == 1
    assert value(found, "delivery_worker_jobs_failed_total", **labels) == 1
    for outcome, count in (("completed", 4), ("retry", 1), ("failed", 1)):
        assert (
            value(
                found,
                "delivery_worker_delivery_duration_seconds_count",
                channel_type="webhook",
                outcome=outcome,
            )
            == count
        )
    assert value(found, "delivery_worker_jobs_in_flight") == 0
    assert value(found, "delivery_worker_database_up") == 1
    assert abs(value(found, "delivery_worker_last_poll_timestamp_seconds") - time.time()) < 30
    assert ("delivery_worker_queue_due_jobs", frozenset({("table", "delivery_jobs")})) in found
    assert not any("tenant" in key for _, labels_ in found for key, _ in labels_)
    assert health_status == 200
    assert json.loads(health_body)["status"] == "ok"
    assert json.loads(health_body)["database"] == "ok"
    assert missing_status == 404
    with pytest.raises(OSError):  # the listener stopped with the worker
        urllib.request.urlopen(f"{base}/healthz", timeout=2)


def test_queue_sampler_reads_depth_and_oldest_due_age(database):
    channel = insert_channel(database, "webhook", {"url": "https://example.invalid/"})
    due = insert_notification_job(database, channel)
    execute(
        database,
        "UPDATE notification_jobs SET next_run_at = now() - interval '90 seconds' WHERE job_id = %s",
        (due,),
    )
    insert_notification_job(database, channel)  # due now
    later = insert_notification_job(database, channel)
    execute(
        database,
        "UPDATE notification_jobs SET next_run_at = now() + interval '1 hour' WHERE job_id = %s",
        (later,),
    )
    done = insert_notification_job(database, channel)
    execute(database, "UPDATE notification_jobs SET status = 'COMPLETED' WHERE job_id = %s", (done,))
    integration = insert_integration(database, "webhook", config_json={"url": "https://example.invalid/"})
    insert_delivery_job(database, integration)
    metrics = WorkerMetrics(["webhook"])

    assert QueueSampler(metrics, database, interval=60).sample_once()

    found = samples(_scrape(metrics))
    assert value(found, "delivery_worker_queue_pending_jobs", table="notification_jobs") == 3
    assert value(found, "delivery_worker_queue_due_jobs", table="notification_jobs") == 2
    assert 90 <= value(found, "delivery_worker_queue_oldest_due_age_seconds", table="notification_jobs") < 150
    assert value(found, "delivery_worker_queue_pending_jobs", table="delivery_jobs") == 1
    assert value(found, "delivery_worker_queue_sampled_timestamp_seconds") > 0


def test_queue_sampler_survives_an_unreachable_database():
    metrics = WorkerMetrics()
    sampler = QueueSampler(metrics, f"postgresql://root@127.0.0.1:{free_port()}/x", interval=60)

    assert sampler.sample_once() is False
    assert value(samples(_scrape(metrics)), "delivery_worker_queue_sampled_timestamp_seconds") == 0


def _scrape(metrics: WorkerMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


def _job(channel_type: str | None) -> Job:
    destination = None
    if channel_type is not None:
        destination = Destination("1", "tenant-secret", channel_type, True, {})
    return Job(Table.DELIVERY_JOBS, 1, "tenant-secret", 1, "OPEN", 0, {}, destination)


def test_labels_stay_bounded_whatever_the_rows_say():
    metrics = WorkerMetrics(["webhook"])
    now = datetime.now(UTC)
    jobs = [_job("webhook"), _job("made-up-by-a-tenant"), _job(None)]

    metrics.jobs_claimed(jobs)
    metrics.outcomes_recorded([Outcome(job, Verdict.FAILED, now, now, error="x") for job in jobs])

    found = samples(_scrape(metrics))
    for channel_type in ("webhook", "other", "none"):
        assert (
            value(
                found, "delivery_worker_jobs_failed_total", table="delivery_jobs", channel_type=channel_type
            )
            == 1
        )
    assert "tenant-secret" not in _scrape(metrics)


def start_health(dsn: str, metrics: WorkerMetrics, stale_after: float = 30.0) -> HealthServer:
    return HealthServer(
        "127.0.0.1", 0, metrics.registry, HealthCheck(dsn, metrics.last_poll_age, stale_after)
    ).start()


def test_healthz_is_200_with_a_database_and_a_fresh_loop(database):
    metrics = WorkerMetrics()
    metrics.poll_ticked(database_ok=True, in_flight=0)
    server = start_health(database, metrics)
    try:
        status, body = get(f"http://127.0.0.1:{server.port}/healthz")
    finally:
        server.stop()

    assert status == 200
    report = json.loads(body)
    assert report["status"] == "ok" and report["database"] == "ok"
    assert 0 <= report["last_poll_age_s"] < 5


def test_healthz_is_503_when_the_database_is_unreachable():
    metrics = WorkerMetrics()
    metrics.poll_ticked(database_ok=True, in_flight=0)
    server = start_health(f"postgresql://root:hunter2@127.0.0.1:{free_port()}/x", metrics)
    try:
        status, body = get(f"http://127.0.0.1:{server.port}/healthz")
    finally:
        server.stop()

    assert status == 503
    report = json.loads(body)
    assert report["status"] == "unhealthy"
    assert "Connection refused" in report["database"] and "hunter2" not in report["database"]


def test_healthz_is_503_when_the_loop_is_stale(database):
    now = [1000.0]
    metrics = WorkerMetrics(clock=lambda: now[0])
    metrics.poll_ticked(database_ok=True, in_flight=0)
    now[0] += 31
    server = start_health(database, metrics, stale_after=staleness_bound(poll_interval=1.0))
    try:
        status, body = get(f"http://127.0.0.1:{server.port}/healthz")
    finally:
        server.stop()

    assert status == 503
    assert json.loads(body) == {"status": "unhealthy", "database": "ok", "last_poll_age_s": 31.0}


def test_staleness_bound_is_three_polls_but_never_under_30_seconds():
    assert staleness_bound(1.0) == 30.0
    assert staleness_bound(20.0) == 60.0


def test_listener_address_from_settings_or_port_variable():
    settings = make_settings()
    assert listen_address(settings, ProcessEnvironment()) is None
    assert listen_address(settings, ProcessEnvironment.read({"PORT": "5000"})) == ("0.0.0.0", 5000)
    configured = dataclasses.replace(settings, metrics=dataclasses.replace(settings.metrics, port=9464))
    assert listen_address(configured, ProcessEnvironment(port=5000)) == ("127.0.0.1", 9464)
    with pytest.raises(CannotListen):
        ProcessEnvironment.read({"PORT": "web"})
