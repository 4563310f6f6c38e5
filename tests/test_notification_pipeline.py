"""notification_jobs end to end: real PostgreSQL, real local HTTP servers, the real poller."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time

from tests.rows import (
    drain,
    execute,
    insert_channel,
    insert_notification_job,
    job,
    log_rows,
    worker_settings,
)
from tests.servers.http import RecordingServer, Reply
from tests.support import SAMPLE_PAYLOAD


def test_webhook_delivers_exact_payload_with_verifiable_signature(database, http_server):
    secret = "whsec-test-0123456789"
    channel = insert_channel(
        database,
        "webhook",
        {"url": http_server.url("/hook"), "headers": {"X-Tenant": "acme"}, "secret": secret},
    )
    job_id = insert_notification_job(database, channel, dict(SAMPLE_PAYLOAD))

    drain(database)

    (request,) = http_server.received("/hook")
    assert request.method == "POST"
    assert json.loads(request.body) == SAMPLE_PAYLOAD
    expected = hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.header("X-Signature-SHA256") == expected
    assert request.header("X-Tenant") == "acme"
    assert request.header("Idempotency-Key") == f"notification_jobs:{job_id}"
    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "COMPLETED"
    (log,) = log_rows(database, job_id)
    assert log["success"] is True and log["channel_id"] == channel and log["error_msg"] is None


def test_http_channel_type_uses_configured_method_without_signature(database, http_server):
    channel = insert_channel(database, "http", {"url": http_server.url("/put"), "method": "PUT"})
    job_id = insert_notification_job(database, channel)

    drain(database)

    (request,) = http_server.received("/put")
    assert request.method == "PUT"
    assert request.header("X-Signature-SHA256") is None
    assert job(database, "notification_jobs", job_id)["status"] == "COMPLETED"


def test_slack_message_carries_severity_colour_device_and_type(database, http_server):
    channel = insert_channel(database, "slack", {"webhook_url": http_server.url("/services/T0/B0/secret")})
    job_id = insert_notification_job(database, channel)

    drain(database)

    (request,) = http_server.received("/services/T0/B0/secret")
    message = json.loads(request.body)
    assert message["text"] == "🔴 CRITICAL: Temperature 92.5C above 85C"
    attachment = message["attachments"][0]
    assert attachment["color"] == "#e94560"
    rendered = json.dumps(attachment["blocks"])
    assert "sensor-17" in rendered and "THRESHOLD" in rendered
    assert job(database, "notification_jobs", job_id)["status"] == "COMPLETED"


def test_pagerduty_trigger_event(database, http_server):
    channel = insert_channel(database, "pagerduty", {"integration_key": "R0UT1NGKEY0000000000000000000000"})
    job_id = insert_notification_job(
        database, channel, dict(SAMPLE_PAYLOAD, message="x" * 2000), alert_id=1001
    )

    drain(database, pagerduty={"events_url": http_server.url("/v2/enqueue")})

    (request,) = http_server.received("/v2/enqueue")
    event = json.loads(request.body)
    assert event["routing_key"] == "R0UT1NGKEY0000000000000000000000"
    assert event["event_action"] == "trigger"
    assert event["dedup_key"] == "pulse-alert-1001"
    assert event["payload"]["severity"] == "critical"
    assert event["payload"]["source"] == "sensor-17"
    assert len(event["payload"]["summary"]) == 1024
    assert event["payload"]["custom_details"]["metric"] == "temp_c"
    assert job(database, "notification_jobs", job_id)["status"] == "COMPLETED"


def test_teams_message_card(database, http_server):
    channel = insert_channel(
        database, "teams", {"webhook_url": http_server.url("/teams"), "format": "messagecard"}
    )
    job_id = insert_notification_job(database, channel, dict(SAMPLE_PAYLOAD, severity=3))

    drain(database)

    card = json.loads(http_server.received("/teams")[0].body)
    assert card["@type"] == "MessageCard"
    assert card["themeColor"] == "ff9800"
    assert card["title"].startswith("🟠 HIGH: Temperature")
    assert "sensor-17" in card["text"]
    assert job(database, "notification_jobs", job_id)["status"] == "COMPLETED"


def test_retry_then_success_records_one_failed_attempt(database, http_server):
    http_server.script("/flaky", Reply(503, b"maintenance"))
    channel = insert_channel(database, "webhook", {"url": http_server.url("/flaky")})
    job_id = insert_notification_job(database, channel)

    drain(database)

    assert len(http_server.received("/flaky")) == 2
    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "COMPLETED"
    assert row["attempts"] == 1
    assert "HTTP 503" in row["last_error"]
    assert [r["success"] for r in log_rows(database, job_id)] == [True]


def test_retry_uses_contract_backoff(database, http_server):
    http_server.script("/down", Reply(500))
    channel = insert_channel(database, "webhook", {"url": http_server.url("/down")})
    job_id = insert_notification_job(database, channel)

    drain(database, worker={"backoff_base_seconds": 30.0})

    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "PENDING" and row["attempts"] == 1
    delay = (row["next_run_at"] - row["updated_at"]).total_seconds()
    assert 29 <= delay <= 31
    assert log_rows(database, job_id) == []


def test_retries_exhausted_fail_with_log_row(database, http_server):
    http_server.script("/dead", *[Reply(502, b"bad gateway")] * 10)
    channel = insert_channel(database, "webhook", {"url": http_server.url("/dead")})
    job_id = insert_notification_job(database, channel)

    drain(database, worker={"max_attempts": 3})

    assert len(http_server.received("/dead")) == 3
    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "FAILED" and row["attempts"] == 3
    assert row["last_error"] == "webhook returned HTTP 502: bad gateway"
    (log,) = log_rows(database, job_id)
    assert log["success"] is False and log["error_msg"] == row["last_error"]


def test_client_error_fails_at_once_with_status_and_excerpt(database, http_server):
    http_server.script("/reject", Reply(400, b'{"error": "invalid payload"}'))
    channel = insert_channel(database, "webhook", {"url": http_server.url("/reject")})
    job_id = insert_notification_job(database, channel)

    drain(database)

    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "FAILED" and row["attempts"] == 1
    assert row["last_error"] == 'webhook returned HTTP 400: {"error": "invalid payload"}'


def test_missing_and_disabled_channel_fail_at_once(database, http_server):
    disabled = insert_channel(database, "webhook", {"url": http_server.url()}, enabled=False)
    doomed = insert_channel(database, "webhook", {"url": http_server.url()})
    disabled_job = insert_notification_job(database, disabled)
    missing_job = insert_notification_job(database, doomed)
    # The FK cascades on delete, so a missing channel is a job whose row outlived it (FK dropped).
    execute(database, "ALTER TABLE notification_jobs DROP CONSTRAINT notification_jobs_channel_id_fkey")
    execute(database, "DELETE FROM notification_channels WHERE channel_id = %s", (doomed,))

    drain(database)

    assert http_server.received() == []
    assert job(database, "notification_jobs", disabled_job)["last_error"] == "Channel disabled"
    assert job(database, "notification_jobs", missing_job)["last_error"] == "Channel not found"
    for job_id in (disabled_job, missing_job):
        assert job(database, "notification_jobs", job_id)["status"] == "FAILED"
        assert [r["success"] for r in log_rows(database, job_id)] == [False]


def test_unknown_channel_type_fails_with_clear_error(database):
    channel = insert_channel(database, "carrier-pigeon", {})
    job_id = insert_notification_job(database, channel)

    drain(database)

    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "FAILED"
    assert row["last_error"].startswith("unknown channel type 'carrier-pigeon'")


def test_payload_as_json_string_is_delivered(database, http_server):
    channel = insert_channel(database, "webhook", {"url": http_server.url()})
    text = json.dumps({"message": "from a string", "severity": "4"})
    job_id = insert_notification_job(database, channel, raw_payload_sql=f"to_jsonb({text!r}::text)")

    drain(database)

    assert json.loads(http_server.received()[0].body) == {"message": "from a string", "severity": "4"}
    assert job(database, "notification_jobs", job_id)["status"] == "COMPLETED"


def test_malformed_payloads_fail_readably_and_worker_continues(database, http_server):
    channel = insert_channel(database, "slack", {"webhook_url": http_server.url("/slack")})
    not_json = insert_notification_job(database, channel, raw_payload_sql="'\"{not json\"'::jsonb")
    a_list = insert_notification_job(database, channel, [1, 2, 3])
    empty = insert_notification_job(database, channel, {})

    drain(database)

    assert job(database, "notification_jobs", not_json)["last_error"].startswith(
        "payload is a string that is not valid JSON"
    )
    assert (
        job(database, "notification_jobs", a_list)["last_error"] == "payload must be a JSON object, got list"
    )
    # A payload with every key missing still renders a sensible message.
    assert job(database, "notification_jobs", empty)["status"] == "COMPLETED"
    (request,) = http_server.received("/slack")
    assert json.loads(request.body)["text"] == "🔵 UNKNOWN: Alert"


def test_invalid_channel_config_fails_naming_the_key(database):
    channel = insert_channel(database, "webhook", {"url": "ftp://example.invalid/x"})
    no_url = insert_channel(database, "slack", {"webhook": "typo"})
    job_a = insert_notification_job(database, channel)
    job_b = insert_notification_job(database, no_url)

    drain(database)

    assert (
        job(database, "notification_jobs", job_a)["last_error"]
        == "config.url must be an absolute http(s) URL"
    )
    assert job(database, "notification_jobs", job_b)["last_error"] == "config.webhook_url is missing"


def test_slow_endpoint_does_not_delay_the_rest_of_its_batch(database):
    slow, fast = RecordingServer().start(), RecordingServer().start()
    try:
        slow.script("/slow", Reply(200, delay=3.0))
        slow_channel = insert_channel(database, "webhook", {"url": slow.url("/slow")})
        fast_channel = insert_channel(database, "webhook", {"url": fast.url("/fast")})
        slow_job = insert_notification_job(database, slow_channel)
        fast_jobs = [insert_notification_job(database, fast_channel) for _ in range(10)]

        worker = threading.Thread(target=drain, args=(database,))
        started = time.monotonic()
        worker.start()
        fast.wait_for(10, timeout=5)
        # The fast jobs are COMPLETED in the database while the slow one is still in flight.
        while time.monotonic() - started < 2.5:
            rows = execute(
                database,
                "SELECT count(*) AS n FROM notification_jobs WHERE status = 'COMPLETED' AND job_id = ANY(%s)",
                (fast_jobs,),
            )
            if rows[0]["n"] == 10:
                break
            time.sleep(0.05)
        assert rows[0]["n"] == 10
        assert job(database, "notification_jobs", slow_job)["status"] == "PROCESSING"
        worker.join(timeout=10)
        assert job(database, "notification_jobs", slow_job)["status"] == "COMPLETED"
    finally:
        slow.stop()
        fast.stop()


def test_claims_never_exceed_the_threads_plus_as_many_queued_ahead(database, http_server):
    http_server.script("/hook", *[Reply(200, delay=0.3)] * 20)
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    for _ in range(12):
        insert_notification_job(database, channel)
    settings = worker_settings(database, worker={"threads": 3, "batch_size": 50})

    from delivery_worker.service import run_worker

    worker = threading.Thread(target=run_worker, args=(settings,), kwargs={"drain": True})
    worker.start()
    peak = 0
    while worker.is_alive():
        rows = execute(database, "SELECT count(*) AS n FROM notification_jobs WHERE status = 'PROCESSING'")
        peak = max(peak, rows[0]["n"])
        time.sleep(0.02)
    assert 1 <= peak <= 6  # 3 running, at most 3 claimed ahead (delivery_worker/claim_ahead.py)
    assert len(http_server.received()) == 12
