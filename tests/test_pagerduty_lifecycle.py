"""An alert's PagerDuty lifecycle through the worker, against a local Events API v2 stand-in.

The stand-in answers as PagerDuty documents: 202 with {"status", "message", "dedup_key"} when it
accepts an event, 400 for an invalid event (never retried), 429 when throttled and 5xx on its own
failures (both retried later).
"""

from __future__ import annotations

import json

import pytest

from tests.rows import drain, insert_channel, insert_notification_job, job, log_rows
from tests.servers.http import RecordingServer, Reply
from tests.support import SAMPLE_PAYLOAD

ROUTING_KEY = "R0UT1NGKEY0000000000000000000042"
PATH = "/v2/enqueue"


def accepted(dedup_key: str) -> Reply:
    body = {"status": "success", "message": "Event processed", "dedup_key": dedup_key}
    return Reply(202, json.dumps(body).encode(), headers={"Content-Type": "application/json"})


def events_url(server: RecordingServer) -> dict[str, str]:
    return {"events_url": server.url(PATH)}


def test_trigger_then_resolve_share_the_dedup_key(database, http_server):
    alert_id = 4242
    dedup_key = f"pulse-alert-{alert_id}"
    http_server.script(PATH, accepted(dedup_key), accepted(dedup_key))
    channel = insert_channel(database, "pagerduty", {"integration_key": ROUTING_KEY})
    payload = dict(SAMPLE_PAYLOAD, alert_id=alert_id)

    opened = insert_notification_job(database, channel, payload, alert_id=alert_id, event="OPEN")
    drain(database, pagerduty=events_url(http_server))
    closed = insert_notification_job(
        database, channel, dict(payload, event_type="CLOSED"), alert_id=alert_id, event="CLOSED"
    )
    drain(database, pagerduty=events_url(http_server))

    trigger, resolve = (json.loads(r.body) for r in http_server.received(PATH))
    assert [trigger["event_action"], resolve["event_action"]] == ["trigger", "resolve"]
    assert trigger["dedup_key"] == resolve["dedup_key"] == dedup_key
    assert trigger["routing_key"] == resolve["routing_key"] == ROUTING_KEY
    assert trigger["client"] == "delivery-worker"
    assert trigger["payload"] == {
        "summary": "[CRITICAL] Temperature 92.5C above 85C",
        "severity": "critical",
        "source": "sensor-17",
        "timestamp": "2026-11-29T03:00:00+00:00",
        "class": "THRESHOLD",
        "group": "plant-3",
        "custom_details": {
            "metric": "temp_c",
            "value": 92.5,
            "alert_id": "4242",
            "tenant_id": "tenant-a",
            "site_id": "plant-3",
            "alert_type": "THRESHOLD",
        },
    }
    assert resolve == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": dedup_key}
    for job_id in (opened, closed):
        assert job(database, "notification_jobs", job_id)["status"] == "COMPLETED"
        assert [row["success"] for row in log_rows(database, job_id)] == [True]


def test_timestamp_is_left_out_when_triggered_at_is_not_iso_8601(database, http_server):
    http_server.script(PATH, accepted("pulse-alert-7"))
    channel = insert_channel(database, "pagerduty", {"integration_key": ROUTING_KEY})
    insert_notification_job(database, channel, dict(SAMPLE_PAYLOAD, triggered_at="yesterday"), alert_id=7)

    drain(database, pagerduty=events_url(http_server))

    (request,) = http_server.received(PATH)
    assert "timestamp" not in json.loads(request.body)["payload"]


@pytest.mark.parametrize("status", [429, 500, 503])
def test_throttling_and_server_errors_put_the_job_back(database, http_server, status):
    http_server.script(PATH, Reply(status, b'{"status":"throttle event","message":"Too many events"}'))
    channel = insert_channel(database, "pagerduty", {"integration_key": ROUTING_KEY})
    job_id = insert_notification_job(database, channel)

    drain(database, pagerduty=events_url(http_server), worker={"backoff_base_seconds": 30.0})

    assert len(http_server.received(PATH)) == 1
    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "PENDING" and row["attempts"] == 1
    assert row["last_error"].startswith(f"PagerDuty returned HTTP {status}: ")
    assert (row["next_run_at"] - row["updated_at"]).total_seconds() > 20
    assert log_rows(database, job_id) == []


def test_rejected_event_fails_at_once_with_the_excerpt(database, http_server):
    rejection = {
        "status": "invalid event",
        "message": "Event object is invalid",
        "errors": ["Length of 'routing_key' is incorrect (should be 32 characters)"],
    }
    http_server.script(PATH, Reply(400, json.dumps(rejection).encode()))
    channel = insert_channel(database, "pagerduty", {"integration_key": "short-key"})
    job_id = insert_notification_job(database, channel)

    drain(database, pagerduty=events_url(http_server))

    assert len(http_server.received(PATH)) == 1
    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "FAILED" and row["attempts"] == 1
    assert row["last_error"] == f"PagerDuty returned HTTP 400: {json.dumps(rejection)}"
    (log,) = log_rows(database, job_id)
    assert log["success"] is False and log["error_msg"] == row["last_error"]
