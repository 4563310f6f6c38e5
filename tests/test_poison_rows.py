"""Rows no parser should be trusted with (issue 12, item 1): JSON nested 1,000 deep or an integer of
4,301+ digits in a payload, a channel config or any integrations JSONB column. Each such job ends
FAILED with a readable error and its log row; the worker keeps delivering everyone else's jobs."""

from __future__ import annotations

import json
import signal

import pytest

from tests.processes import start_worker, wait_until
from tests.rows import (
    attempt_rows,
    drain,
    execute,
    insert_channel,
    insert_delivery_job,
    insert_integration,
    insert_notification_job,
    log_rows,
)
from tests.support import SAMPLE_PAYLOAD

DEEP_SQL = "(repeat('[', 1000) || repeat(']', 1000))::jsonb"  # valid JSON, 1,000 levels deep
LONG_INT_SQL = "('{\"severity\": 4, \"n\": ' || repeat('9', 4301) || '}')::jsonb"

POISONS = {
    "deep": (DEEP_SQL, "nested deeper than 64 levels"),
    "long integer": (LONG_INT_SQL, "holds a number of more than 1000 digits"),
}


def job(dsn: str, table: str, job_id: int) -> dict[str, object]:
    """Status and last_error only: the test's own client would choke on the poisoned payload too."""
    return execute(dsn, f"SELECT status, last_error FROM {table} WHERE job_id = %s", (job_id,))[0]


def statuses(dsn: str, *job_ids: int) -> set[object]:
    return {job(dsn, "notification_jobs", job_id)["status"] for job_id in job_ids}


def poison(dsn: str, table: str, column: str, key: str, key_value: object, poison_sql: str) -> None:
    execute(dsn, f"UPDATE {table} SET {column} = {poison_sql} WHERE {key} = %s", (key_value,))


@pytest.mark.parametrize("kind", POISONS)
def test_poisoned_payload_or_channel_config_fails_with_a_readable_error(database, http_server, kind):
    poison_sql, reason = POISONS[kind]
    good_channel = insert_channel(database, "webhook", {"url": http_server.url("/good")})
    bad_channel = insert_channel(database, "webhook", {"url": http_server.url("/bad-config")})
    bad_payload = insert_notification_job(database, good_channel, raw_payload_sql=poison_sql)
    bad_config = insert_notification_job(database, bad_channel)
    poison(database, "notification_channels", "config", "channel_id", bad_channel, poison_sql)
    good = insert_notification_job(database, good_channel)

    drain(database)

    assert (
        job(database, "notification_jobs", bad_payload)["last_error"]
        == f"payload_json is not readable: {reason}"
    )
    assert (
        job(database, "notification_jobs", bad_config)["last_error"]
        == f"notification_channels.config is not readable: {reason}"
    )
    for job_id in (bad_payload, bad_config):
        assert job(database, "notification_jobs", job_id)["status"] == "FAILED"
        (log,) = log_rows(database, job_id)
        assert log["success"] is False and "is not readable" in log["error_msg"]
    assert job(database, "notification_jobs", good)["status"] == "COMPLETED"
    assert len(http_server.received("/good")) == 1
    assert http_server.received("/bad-config") == []


@pytest.mark.parametrize(
    "column",
    ["config_json", "snmp_config", "email_config", "email_recipients", "email_template", "mqtt_config"],
)
def test_poisoned_integration_column_fails_the_job_with_its_attempt_row(database, column):
    kind = {"snmp_config": "snmp", "mqtt_config": "mqtt"}.get(
        column, "email" if "email" in column else "webhook"
    )
    integration = insert_integration(database, kind, config_json={"url": "http://127.0.0.1:9/x"})
    poison(database, "integrations", column, "integration_id", integration, DEEP_SQL)
    job_id = insert_delivery_job(database, integration)

    drain(database)

    row = job(database, "delivery_jobs", job_id)
    assert row["status"] == "FAILED"
    assert row["last_error"] == f"integrations.{column} is not readable: nested deeper than 64 levels"
    (attempt,) = attempt_rows(database, job_id)
    assert attempt["ok"] is False and attempt["error"] == row["last_error"]


def test_one_worker_fails_tenant_a_poison_and_delivers_tenant_b(database, http_server):
    a_channel = insert_channel(database, "webhook", {"url": http_server.url("/a")}, tenant_id="tenant-a")
    b_channel = insert_channel(database, "webhook", {"url": http_server.url("/b")}, tenant_id="tenant-b")
    poisoned = insert_notification_job(
        database, a_channel, tenant_id="tenant-a", raw_payload_sql=LONG_INT_SQL
    )
    deep = insert_notification_job(database, a_channel, tenant_id="tenant-a", raw_payload_sql=DEEP_SQL)
    worker = start_worker(database, worker_threads="4")
    try:
        good = insert_notification_job(
            database, b_channel, dict(SAMPLE_PAYLOAD, tenant_id="tenant-b"), tenant_id="tenant-b"
        )
        assert wait_until(lambda: job(database, "notification_jobs", good)["status"] == "COMPLETED", 30)
        assert wait_until(
            lambda: {job(database, "notification_jobs", j)["status"] for j in (poisoned, deep)} == {"FAILED"},
            30,
        )
        later = insert_notification_job(
            database, b_channel, dict(SAMPLE_PAYLOAD, tenant_id="tenant-b"), tenant_id="tenant-b"
        )
        assert wait_until(lambda: job(database, "notification_jobs", later)["status"] == "COMPLETED", 30)
        assert worker.poll() is None  # still running
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)

    assert job(database, "notification_jobs", poisoned)["last_error"] == (
        "payload_json is not readable: holds a number of more than 1000 digits"
    )
    assert job(database, "notification_jobs", deep)["last_error"] == (
        "payload_json is not readable: nested deeper than 64 levels"
    )
    assert [log["success"] for log in log_rows(database, poisoned)] == [False]
    assert len(http_server.received("/b")) == 2
    assert http_server.received("/a") == []


def test_an_absurd_severity_fails_at_once_with_a_clear_error(database, http_server):
    channel = insert_channel(database, "slack", {"webhook_url": http_server.url("/slack")})
    absurd = insert_notification_job(database, channel, dict(SAMPLE_PAYLOAD, severity="inf"))
    negative = insert_notification_job(database, channel, dict(SAMPLE_PAYLOAD, severity=-1))

    drain(database)

    row = execute(
        database, "SELECT status, attempts, last_error FROM notification_jobs WHERE job_id = %s", (absurd,)
    )
    assert row == [{"status": "FAILED", "attempts": 1, "last_error": "severity 'inf' is not a finite number"}]
    assert job(database, "notification_jobs", negative)["status"] == "COMPLETED"
    (sent,) = http_server.received("/slack")
    assert json.loads(sent.body)["text"].startswith("\N{LARGE BLUE CIRCLE} UNKNOWN:")
