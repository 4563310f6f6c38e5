"""delivery_jobs end to end: integrations looked up by (tenant_id, integration_id), attempts recorded."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time

from tests.rows import (
    attempt_rows,
    drain,
    execute,
    insert_channel,
    insert_delivery_job,
    insert_integration,
    insert_notification_job,
    job,
    worker_settings,
)
from tests.servers.http import Reply


def test_webhook_integration_delivers_and_records_attempt(database, http_server):
    integration = insert_integration(
        database,
        "webhook",
        config_json={"url": http_server.url("/int"), "secret": "int-secret-123", "headers": {"X-A": "1"}},
    )
    job_id = insert_delivery_job(database, integration)

    drain(database)

    (request,) = http_server.received("/int")
    body = json.loads(request.body)
    assert body["summary"] == "Device offline for 10 minutes" and body["confidence"] == 0.93
    assert (
        request.header("X-Signature-SHA256")
        == hmac.new(b"int-secret-123", request.body, hashlib.sha256).hexdigest()
    )
    assert request.header("Idempotency-Key") == f"delivery_jobs:{job_id}"
    assert job(database, "delivery_jobs", job_id)["status"] == "COMPLETED"
    (attempt,) = attempt_rows(database, job_id)
    assert attempt["attempt_no"] == 1 and attempt["ok"] is True and attempt["http_status"] == 200
    assert attempt["error"] is None and attempt["latency_ms"] >= 0
    assert attempt["started_at"] <= attempt["finished_at"]
    assert attempt["tenant_id"] == "tenant-a"


def test_webhook_integration_body_template(database, http_server):
    template = {"text": "{severity}: {summary} on {device_id} (tenant {tenant_id})", "source": "pulse"}
    integration = insert_integration(
        database, "webhook", config_json={"url": http_server.url("/t"), "body_template": template}
    )
    insert_delivery_job(database, integration)

    drain(database)

    body = json.loads(http_server.received("/t")[0].body)
    assert body == {
        "text": "HIGH: Device offline for 10 minutes on sensor-9 (tenant tenant-a)",
        "source": "pulse",
    }


def test_integration_retry_then_final_failure_records_every_attempt(database, http_server):
    http_server.script("/down", *[Reply(500, b"oops")] * 5)
    integration = insert_integration(database, "webhook", config_json={"url": http_server.url("/down")})
    job_id = insert_delivery_job(database, integration)

    drain(database, worker={"max_attempts": 3})

    row = job(database, "delivery_jobs", job_id)
    assert row["status"] == "FAILED" and row["attempts"] == 3
    assert row["last_error"] == "webhook returned HTTP 500: oops"
    attempts = attempt_rows(database, job_id)
    assert [(a["attempt_no"], a["ok"], a["http_status"]) for a in attempts] == [
        (1, False, 500),
        (2, False, 500),
        (3, False, 500),
    ]
    assert all(a["error"] == "webhook returned HTTP 500: oops" for a in attempts)


def test_integration_retry_then_success(database, http_server):
    http_server.script("/flaky", Reply(503))
    integration = insert_integration(database, "webhook", config_json={"url": http_server.url("/flaky")})
    job_id = insert_delivery_job(database, integration)

    drain(database)

    assert job(database, "delivery_jobs", job_id)["status"] == "COMPLETED"
    assert [a["ok"] for a in attempt_rows(database, job_id)] == [False, True]


def test_missing_and_disabled_integration_fail_at_once(database, http_server):
    disabled = insert_integration(database, "webhook", enabled=False, config_json={"url": http_server.url()})
    deleted = insert_integration(database, "webhook", config_json={"url": http_server.url()})
    disabled_job = insert_delivery_job(database, disabled)
    missing_job = insert_delivery_job(database, deleted)
    # Production rows can outlive their integration; drop the FKs so the test can delete it.
    for constraint in (
        "delivery_jobs_tenant_id_integration_id_fkey",
        "integration_routes_tenant_id_integration_id_fkey",
    ):
        table = constraint.split("_tenant_id")[0]
        execute(database, f"ALTER TABLE {table} DROP CONSTRAINT {constraint}")
    execute(database, "DELETE FROM integrations WHERE integration_id = %s", (deleted,))
    # Lookup is by (tenant_id, integration_id): the same id under another tenant is not this job's.
    execute(
        database,
        "INSERT INTO integrations (tenant_id, integration_id, name, type, config_json)"
        " VALUES ('tenant-b', %s, 'theirs', 'webhook', %s)",
        (deleted, json.dumps({"url": http_server.url("/tenant-b")})),
    )

    drain(database)

    assert http_server.received() == []
    assert job(database, "delivery_jobs", disabled_job)["last_error"] == "Integration disabled"
    assert job(database, "delivery_jobs", missing_job)["last_error"] == "Integration not found"
    for job_id in (disabled_job, missing_job):
        assert job(database, "delivery_jobs", job_id)["status"] == "FAILED"
        assert [a["ok"] for a in attempt_rows(database, job_id)] == [False]


def test_unknown_integration_type_fails(database):
    execute(database, "ALTER TABLE integrations ALTER COLUMN type TYPE TEXT")
    integration = insert_integration(database, "fax", config_json={})
    job_id = insert_delivery_job(database, integration)

    drain(database)

    assert job(database, "delivery_jobs", job_id)["last_error"].startswith("unknown channel type 'fax'")


def test_flood_of_delivery_jobs_does_not_starve_notification_jobs(database, http_server):
    """2,000 queued delivery_jobs; a notification job inserted mid-flood is claimed within one batch."""
    http_server.script("/flood", *[Reply(200, delay=0.01)] * 2000)
    integration = insert_integration(database, "webhook", config_json={"url": http_server.url("/flood")})
    route_id = execute(
        database,
        "INSERT INTO integration_routes (tenant_id, route_id, integration_id, name)"
        " VALUES ('tenant-a', gen_random_uuid(), %s, 'flood') RETURNING route_id",
        (integration,),
    )[0]["route_id"]
    execute(
        database,
        "INSERT INTO delivery_jobs (tenant_id, alert_id, integration_id, route_id, payload_json)"
        " SELECT 'tenant-a', g, %s, %s, '{}'::jsonb FROM generate_series(1, 2000) AS g",
        (integration, route_id),
    )
    channel = insert_channel(database, "webhook", {"url": http_server.url("/urgent")})
    settings = worker_settings(database, worker={"threads": 8, "batch_size": 8})

    from delivery_worker.service import run_worker

    worker = threading.Thread(target=run_worker, args=(settings,), kwargs={"drain": True})
    worker.start()
    http_server.wait_for(50, timeout=20)
    flood_before = len(http_server.received("/flood"))
    insert_notification_job(database, channel)
    deadline = time.monotonic() + 20
    while not http_server.received("/urgent") and time.monotonic() < deadline:
        time.sleep(0.005)
    flood_delivered_meanwhile = len(http_server.received("/flood")) - flood_before
    worker.join(timeout=120)

    assert http_server.received("/urgent"), "the notification job was never delivered"
    # Only jobs already claimed (at most one batch per table per cycle) went ahead of it.
    assert flood_delivered_meanwhile <= 3 * 8
    rows = execute(database, "SELECT count(*) AS n FROM delivery_jobs WHERE status = 'COMPLETED'")
    assert rows[0]["n"] == 2000
