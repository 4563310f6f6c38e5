"""Storm digests through a real worker process, the real PostgreSQL and a local Slack stand-in.

A flood of alerts to one rate-limited chat destination arrives as a few summary messages, each job
still ending COMPLETED with its own log row; single alerts, machines' channels and a worker with
``[digest] enabled = false`` are delivered one message per alert as before.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
from typing import Any

from tests.processes import start_worker, wait_until
from tests.rows import (
    attempt_rows,
    execute,
    insert_channel,
    insert_delivery_job,
    insert_email_integration,
    insert_notification_job,
    integration_payload,
    log_rows,
)
from tests.servers.http import RecordingServer, Reply
from tests.servers.smtp import smtp_server
from tests.support import SAMPLE_PAYLOAD

SLACK_PATH = "/services/T0/B0/storm"


def statuses(dsn: str) -> dict[str, int]:
    rows = execute(dsn, "SELECT status, count(*) AS n FROM notification_jobs GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


def stop(worker: subprocess.Popen[str]) -> list[dict[str, Any]]:
    """SIGTERM the worker; return its JSON log lines."""
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def low_alert(n: int) -> dict[str, Any]:
    return dict(SAMPLE_PAYLOAD, severity=1, message=f"Door sensor {n} offline", device_id=f"door-{n}")


def slack_texts(server: RecordingServer, path: str = SLACK_PATH) -> list[str]:
    return [json.loads(r.body)["text"] for r in server.received(path)]


def test_sixty_alerts_to_one_slack_webhook_arrive_as_a_few_paced_digests(database, http_server):
    channel = insert_channel(database, "slack", {"webhook_url": http_server.url(SLACK_PATH)})
    worker = start_worker(database)  # [rate_limits] slack = 1 and [digest] enabled by default
    jobs = []
    for n in range(60):
        payload = low_alert(n)
        if n == 40:
            payload = dict(SAMPLE_PAYLOAD, severity=5, message="Main breaker tripped", device_id="ups-1")
        jobs.append(insert_notification_job(database, channel, payload))
    try:
        assert wait_until(lambda: statuses(database) == {"COMPLETED": 60}, timeout=25)
    finally:
        logs = stop(worker)

    posts = http_server.received(SLACK_PATH)
    assert 1 <= len(posts) <= 15
    arrivals = [post.received_at for post in posts]
    assert all(later - earlier >= 0.95 for earlier, later in itertools.pairwise(arrivals))
    bodies = [post.body.decode() for post in posts]
    assert any("[CRITICAL] Main breaker tripped" in body for body in bodies)
    for job_id in jobs:
        assert [(row["success"], row["error_msg"]) for row in log_rows(database, job_id)] == [(True, None)]
    covered = [job_id for line in logs if line["event"] == "digest.sent" for job_id in line["job_ids"]]
    singles = [line["job_id"] for line in logs if line["event"] == "job.completed"]
    assert sorted(covered + singles) == sorted(jobs)
    assert len([line for line in logs if line["event"] == "digest.sent"]) + len(singles) == len(posts)


def test_a_single_alert_is_sent_as_a_normal_message(database, http_server):
    channel = insert_channel(database, "slack", {"webhook_url": http_server.url(SLACK_PATH)})
    job_id = insert_notification_job(database, channel)
    worker = start_worker(database)
    try:
        assert wait_until(lambda: statuses(database) == {"COMPLETED": 1})
    finally:
        logs = stop(worker)

    assert slack_texts(http_server) == ["🔴 CRITICAL: Temperature 92.5C above 85C"]
    assert [row["success"] for row in log_rows(database, job_id)] == [True]
    assert not [line for line in logs if line["event"].startswith("digest.")]


def test_digests_disabled_send_one_message_per_alert(database, http_server):
    channel = insert_channel(database, "slack", {"webhook_url": http_server.url(SLACK_PATH)})
    for n in range(4):
        insert_notification_job(database, channel, low_alert(n))
    worker = start_worker(database, digest_enabled="false")
    try:
        assert wait_until(lambda: statuses(database) == {"COMPLETED": 4}, timeout=20)
    finally:
        stop(worker)

    assert sorted(slack_texts(http_server)) == [f"🔵 LOW: Door sensor {n} offline" for n in range(4)]


def test_pagerduty_and_webhook_floods_are_never_summarised(database, http_server):
    hook = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    pager = insert_channel(database, "pagerduty", {"integration_key": "R0UT1NGKEY0000000000000000000000"})
    for n in range(12):
        insert_notification_job(database, hook, low_alert(n))
        insert_notification_job(database, pager, low_alert(n))
    worker = start_worker(
        database,
        pagerduty_events_url=http_server.url("/v2/enqueue"),
        rate_limits_webhook="10",  # rate limited like a chat destination, still never summarised
        rate_limits_pagerduty="10",
    )
    try:
        assert wait_until(lambda: statuses(database) == {"COMPLETED": 24}, timeout=30)
    finally:
        logs = stop(worker)

    assert sorted(json.loads(r.body)["message"] for r in http_server.received("/hook")) == sorted(
        f"Door sensor {n} offline" for n in range(12)
    )
    events = [json.loads(r.body) for r in http_server.received("/v2/enqueue")]
    summaries = [e["payload"]["summary"] for e in events]
    assert len(summaries) == 12
    assert all(sum(f"Door sensor {n} offline" in s for s in summaries) == 1 for n in range(12))
    assert not [line for line in logs if line["event"].startswith("digest.")]


def test_jobs_that_cannot_be_summarised_fail_alone_and_the_rest_go_in_the_digest(database, http_server):
    channel = insert_channel(database, "slack", {"webhook_url": http_server.url(SLACK_PATH)})
    good = [insert_notification_job(database, channel, low_alert(n)) for n in range(5)]
    unreadable = insert_notification_job(database, channel, raw_payload_sql="'[1, 2]'::jsonb")
    foreign = insert_notification_job(database, channel, low_alert(9), tenant_id="tenant-b")
    worker = start_worker(database)
    try:
        assert wait_until(lambda: statuses(database) == {"COMPLETED": 5, "FAILED": 2}, timeout=20)
    finally:
        stop(worker)

    (post,) = http_server.received(SLACK_PATH)
    assert json.loads(post.body)["text"] == "5 alerts: 5 low"
    for job_id in good:
        assert [row["success"] for row in log_rows(database, job_id)] == [True]
    (row,) = log_rows(database, unreadable)
    assert row["success"] is False and "payload" in row["error_msg"]
    (row,) = log_rows(database, foreign)
    assert row["success"] is False and row["error_msg"] == "Channel belongs to another tenant"


def test_a_refused_digest_is_retried_per_job_then_delivered(database, http_server):
    http_server.script(SLACK_PATH, Reply(500, b"oops"))
    channel = insert_channel(database, "slack", {"webhook_url": http_server.url(SLACK_PATH)})
    jobs = [insert_notification_job(database, channel, low_alert(n)) for n in range(6)]
    worker = start_worker(database)
    try:
        assert wait_until(lambda: statuses(database) == {"COMPLETED": 6}, timeout=20)
    finally:
        logs = stop(worker)

    texts = slack_texts(http_server)
    assert texts == ["6 alerts: 6 low", "6 alerts: 6 low"]
    attempts = execute(database, "SELECT attempts FROM notification_jobs")
    assert [r["attempts"] for r in attempts] == [1] * 6
    for job_id in jobs:
        assert [row["success"] for row in log_rows(database, job_id)] == [True]
        history = execute(
            database,
            "SELECT attempt_no, outcome, http_status FROM notification_job_attempts"
            " WHERE job_id = %s ORDER BY attempt_id",
            (job_id,),
        )
        assert [tuple(row.values()) for row in history] == [(1, "retry", 500), (2, "completed", 200)]
    (failed,) = [line for line in logs if line["event"] == "digest.failed"]
    assert failed["outcomes"] == {"retry": 6, "failed": 0} and "500" in failed["error"]


def test_a_storm_of_one_tenant_never_delays_or_absorbs_another_tenants_alert(database, http_server):
    noisy = insert_channel(database, "slack", {"webhook_url": http_server.url(SLACK_PATH)})
    quiet = insert_channel(database, "slack", {"webhook_url": http_server.url("/quiet")}, tenant_id="vip")
    for n in range(40):
        insert_notification_job(database, noisy, low_alert(n))
    vip = insert_notification_job(database, quiet, tenant_id="vip")
    worker = start_worker(database)
    try:
        assert wait_until(lambda: statuses(database) == {"COMPLETED": 41}, timeout=20)
    finally:
        stop(worker)

    assert slack_texts(http_server, "/quiet") == ["🔴 CRITICAL: Temperature 92.5C above 85C"]
    assert all("Temperature" not in text for text in slack_texts(http_server))
    assert [row["success"] for row in log_rows(database, vip)] == [True]


def test_email_integration_storm_is_one_digest_email_when_email_is_rate_limited(database):
    with smtp_server() as server:
        integration = insert_email_integration(database, server.port, email_template={"format": "html"})
        jobs = [insert_delivery_job(database, integration) for _ in range(8)]
        critical = dict(integration_payload(1), severity=5, summary="Cooling failed <b>now</b>")
        jobs.append(insert_delivery_job(database, integration, critical))
        worker = start_worker(database, rate_limits_email="0.2")
        try:
            assert wait_until(
                lambda: (
                    {r["status"] for r in execute(database, "SELECT status FROM delivery_jobs")}
                    == {"COMPLETED"}
                )
            )
        finally:
            stop(worker)
        (received,) = server.messages

    message = received.message()
    assert message["Subject"] == "[PULSE] 9 alerts: 1 critical, 8 high"
    plain = message.get_body(("plain",)).get_content()
    assert plain.splitlines()[2] == "[CRITICAL] Cooling failed <b>now</b>"
    assert "Cooling failed &lt;b&gt;now&lt;/b&gt;" in message.get_body(("html",)).get_content()
    for job_id in jobs:
        assert [a["ok"] for a in attempt_rows(database, job_id)] == [True]


def test_email_integrations_without_a_rate_limit_send_one_email_per_alert(database):
    with smtp_server() as server:
        integration = insert_email_integration(database, server.port)
        for _ in range(3):
            insert_delivery_job(database, integration)
        worker = start_worker(database)  # [rate_limits] email = 0: no digests
        try:
            assert wait_until(lambda: len(server.messages) == 3)
        finally:
            stop(worker)
        subjects = [received.message()["Subject"] for received in server.messages]

    assert subjects == ["[HIGH] OFFLINE on sensor-9"] * 3


def test_teams_storm_is_one_adaptive_card(database, http_server):
    channel = insert_channel(database, "teams", {"webhook_url": http_server.url("/teams")})
    for n in range(9):
        insert_notification_job(database, channel, low_alert(n))
    insert_notification_job(database, channel, event="CLOSED")
    worker = start_worker(database)  # [rate_limits] teams = 4: more than 4 waiting is a digest
    try:
        assert wait_until(lambda: statuses(database) == {"COMPLETED": 10})
    finally:
        stop(worker)

    (post,) = http_server.received("/teams")
    card = json.loads(post.body)["attachments"][0]["content"]
    assert card["type"] == "AdaptiveCard"
    assert card["body"][0]["items"][0]["text"] == "10 alerts: 9 low, 1 resolved"
