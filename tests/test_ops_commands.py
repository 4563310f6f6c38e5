"""The operator commands (stats, requeue, prune, send-test) against real PostgreSQL rows.

Each runs through `delivery_worker.cli.main` as an operator would, with the configuration coming
from the environment only (`--config /dev/null`).
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from tests.ops_cli import count, set_job, statuses
from tests.rows import (
    execute,
    insert_channel,
    insert_delivery_job,
    insert_integration,
    insert_notification_job,
    job,
)
from tests.servers.http import RecordingServer, Reply

# --- stats ---------------------------------------------------------------------------------------


def test_stats_counts_statuses_oldest_due_job_and_recent_failures_by_type(database, cli):
    webhook = insert_channel(database, "webhook", {"url": "https://example.invalid/hook"})
    slack = insert_channel(database, "slack", {"webhook_url": "https://example.invalid/slack"})
    due = insert_notification_job(database, webhook)
    execute(
        database,
        "UPDATE notification_jobs SET next_run_at = now() - interval '10 minutes' WHERE job_id = %s",
        (due,),
    )
    later = insert_notification_job(database, webhook)
    execute(
        database,
        "UPDATE notification_jobs SET next_run_at = now() + interval '1 hour' WHERE job_id = %s",
        (later,),
    )
    set_job(database, "notification_jobs", insert_notification_job(database, webhook), "COMPLETED")
    set_job(database, "notification_jobs", insert_notification_job(database, webhook), "FAILED")
    set_job(database, "notification_jobs", insert_notification_job(database, slack), "FAILED")
    set_job(database, "notification_jobs", insert_notification_job(database, slack), "FAILED", age="3 hours")
    integration = insert_integration(database, "webhook", config_json={"url": "https://example.invalid/i"})
    set_job(database, "delivery_jobs", insert_delivery_job(database, integration), "FAILED")

    result = cli("stats", "--json")

    assert result.code == 0, result.err
    report = result.json()
    notification = report["tables"]["notification_jobs"]
    assert notification["by_status"] == {"PENDING": 2, "PROCESSING": 0, "COMPLETED": 1, "FAILED": 3}
    assert notification["due"] == 1
    assert 600 <= notification["oldest_due_age_seconds"] < 700
    assert report["tables"]["delivery_jobs"]["by_status"]["FAILED"] == 1
    assert report["tables"]["delivery_jobs"]["oldest_due_age_seconds"] is None
    assert report["failed_by_channel_type"] == {
        "notification_jobs": {"slack": 1, "webhook": 1},
        "delivery_jobs": {"webhook": 1},
    }

    table = cli("stats")
    assert table.code == 0
    lines = table.out.splitlines()
    assert lines[0].split() == [
        "table",
        "PENDING",
        "due",
        "PROCESSING",
        "COMPLETED",
        "FAILED",
        "oldest",
        "due",
        "oldest",
        "PROCESSING",
    ]
    assert lines[1].split()[:6] == ["notification_jobs", "2", "1", "0", "1", "3"]
    assert "failed in the last 1h, by channel type:" in table.out


def test_stats_on_an_unreachable_database_exits_1_with_one_line(cli, monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("DATABASE_URL", f"postgresql://root:hunter2@127.0.0.1:{port}/nothing")

    result = cli("stats")

    assert result.code == 1
    assert "cannot connect" in result.err and "hunter2" not in result.err


# --- requeue -------------------------------------------------------------------------------------


@pytest.fixture
def failed_jobs(database: str) -> dict[str, Any]:
    """Two channels and an integration, each with FAILED jobs, one of them failed long ago."""
    first = insert_channel(database, "webhook", {"url": "https://example.invalid/a"})
    second = insert_channel(database, "webhook", {"url": "https://example.invalid/b"})
    integration = insert_integration(database, "webhook", config_json={"url": "https://example.invalid/i"})
    jobs = {
        "first_recent": insert_notification_job(database, first),
        "first_old": insert_notification_job(database, first),
        "second": insert_notification_job(database, second),
        "completed": insert_notification_job(database, first),
        "integration": insert_delivery_job(database, integration),
    }
    for name in ("first_recent", "second"):
        set_job(database, "notification_jobs", jobs[name], "FAILED", attempts=5, last_error="HTTP 500")
    set_job(database, "notification_jobs", jobs["first_old"], "FAILED", age="2 days", attempts=5)
    set_job(database, "notification_jobs", jobs["completed"], "COMPLETED")
    set_job(database, "delivery_jobs", jobs["integration"], "FAILED", attempts=5)
    return {"first": first, "second": second, "integration_id": integration, **jobs}


def test_requeue_refuses_to_run_without_a_filter(database, cli, failed_jobs):
    before = statuses(database, "notification_jobs")

    result = cli("requeue")

    assert result.code == 2
    assert "--all" in result.err
    assert statuses(database, "notification_jobs") == before


def test_requeue_dry_run_lists_and_changes_nothing(database, cli, failed_jobs):
    before = statuses(database, "notification_jobs")

    result = cli("requeue", "--channel-id", str(failed_jobs["first"]), "--dry-run", "--json")

    assert result.code == 0, result.err
    report = result.json()
    assert report["dry_run"] is True and report["count"] == 2
    assert sorted(j["job_id"] for j in report["jobs"]) == sorted(
        [failed_jobs["first_recent"], failed_jobs["first_old"]]
    )
    assert {j["table"] for j in report["jobs"]} == {"notification_jobs"}
    assert statuses(database, "notification_jobs") == before

    table = cli("requeue", "--channel-id", str(failed_jobs["first"]), "--dry-run")
    assert "would requeue 2 job(s) (notification_jobs: 2)" in table.out


def test_requeue_by_channel_and_since_resets_only_matching_failed_jobs(database, cli, failed_jobs):
    result = cli("requeue", "--channel-id", str(failed_jobs["first"]), "--since", "1h")

    assert result.code == 0, result.err
    assert "requeued 1 job(s) (notification_jobs: 1)" in result.out
    row = job(database, "notification_jobs", failed_jobs["first_recent"])
    assert row["status"] == "PENDING" and row["attempts"] == 0
    assert (
        count(
            database,
            "SELECT count(*) AS n FROM notification_jobs WHERE job_id = %s AND next_run_at <= now()",
            (failed_jobs["first_recent"],),
        )
        == 1
    )
    assert job(database, "notification_jobs", failed_jobs["first_old"])["status"] == "FAILED"
    assert job(database, "notification_jobs", failed_jobs["second"])["status"] == "FAILED"
    assert job(database, "notification_jobs", failed_jobs["completed"])["status"] == "COMPLETED"
    assert job(database, "delivery_jobs", failed_jobs["integration"])["status"] == "FAILED"


def test_requeue_by_job_id_needs_a_table(database, cli, failed_jobs):
    assert cli("requeue", "--job-id", str(failed_jobs["second"])).code == 2

    result = cli(
        "requeue",
        "--table",
        "notification_jobs",
        "--job-id",
        str(failed_jobs["second"]),
        "--job-id",
        str(failed_jobs["first_old"]),
        "--json",
    )

    assert result.code == 0, result.err
    assert sorted(j["job_id"] for j in result.json()["jobs"]) == sorted(
        [failed_jobs["second"], failed_jobs["first_old"]]
    )
    assert job(database, "notification_jobs", failed_jobs["second"])["status"] == "PENDING"
    assert job(database, "notification_jobs", failed_jobs["first_recent"])["status"] == "FAILED"


def test_requeue_by_integration_and_all_per_table(database, cli, failed_jobs):
    result = cli("requeue", "--integration-id", failed_jobs["integration_id"], "--json")
    assert result.code == 0, result.err
    assert [j["job_id"] for j in result.json()["jobs"]] == [failed_jobs["integration"]]
    assert job(database, "delivery_jobs", failed_jobs["integration"])["status"] == "PENDING"
    assert (
        cli("requeue", "--table", "notification_jobs", "--integration-id", failed_jobs["integration_id"]).code
        == 2
    )

    everything = cli("requeue", "--all", "--table", "notification_jobs")

    assert everything.code == 0
    assert "requeued 3 job(s)" in everything.out
    assert count(database, "SELECT count(*) AS n FROM notification_jobs WHERE status = 'FAILED'") == 0


# --- prune ---------------------------------------------------------------------------------------


def test_prune_deletes_old_finished_jobs_and_their_history_in_batches(database, cli):
    channel = insert_channel(database, "webhook", {"url": "https://example.invalid/a"})
    old_finished = []
    for status in ("COMPLETED", "COMPLETED", "COMPLETED", "FAILED", "FAILED"):
        job_id = insert_notification_job(database, channel)
        set_job(database, "notification_jobs", job_id, status, age="40 days")
        execute(
            database,
            "INSERT INTO notification_log (channel_id, alert_id, job_id, success) VALUES (%s, 1, %s, %s)",
            (channel, job_id, status == "COMPLETED"),
        )
        old_finished.append(job_id)
    recent = insert_notification_job(database, channel)
    set_job(database, "notification_jobs", recent, "COMPLETED", age="2 days")
    execute(
        database,
        "INSERT INTO notification_log (channel_id, alert_id, job_id) VALUES (%s, 1, %s)",
        (channel, recent),
    )
    old_pending = insert_notification_job(database, channel)
    set_job(database, "notification_jobs", old_pending, "PENDING", age="40 days")
    execute(
        database,
        "INSERT INTO notification_log (channel_id, alert_id, sent_at)"
        " VALUES (%s, 1, now() - interval '90 days')",
        (channel,),
    )
    integration = insert_integration(database, "webhook", config_json={"url": "https://example.invalid/i"})
    old_delivery = insert_delivery_job(database, integration)
    set_job(database, "delivery_jobs", old_delivery, "COMPLETED", age="31 days")
    for attempt in (1, 2):
        execute(
            database,
            "INSERT INTO delivery_attempts (tenant_id, job_id, attempt_no, ok)"
            " VALUES ('tenant-a', %s, %s, %s)",
            (old_delivery, attempt, attempt == 2),
        )

    dry = cli("prune", "--older-than", "30d", "--dry-run", "--json")

    assert dry.code == 0, dry.err
    assert dry.json()["tables"] == {
        "notification_jobs": {"jobs": 5, "notification_log": 5},
        "delivery_jobs": {"jobs": 1, "delivery_attempts": 2},
    }
    assert dry.json()["orphan_log_rows"] == {"rows": 1}
    assert count(database, "SELECT count(*) AS n FROM notification_jobs") == 7

    result = cli("prune", "--older-than", "30d", "--batch-size", "2", "--json")

    assert result.code == 0, result.err
    assert result.json()["tables"] == {
        "notification_jobs": {"jobs": 5, "notification_log": 5, "batches": 3},
        "delivery_jobs": {"jobs": 1, "delivery_attempts": 2, "batches": 1},
    }
    assert result.json()["orphan_log_rows"] == {"rows": 1, "batches": 1}
    remaining = {row["job_id"] for row in execute(database, "SELECT job_id FROM notification_jobs")}
    assert remaining == {recent, old_pending}
    assert count(database, "SELECT count(*) AS n FROM notification_log WHERE job_id = %s", (recent,)) == 1
    assert count(database, "SELECT count(*) AS n FROM notification_log WHERE job_id IS NULL") == 0
    assert count(database, "SELECT count(*) AS n FROM delivery_jobs") == 0
    assert count(database, "SELECT count(*) AS n FROM delivery_attempts") == 0

    again = cli("prune", "--older-than", "30d")
    assert again.code == 0
    assert "deleted: COMPLETED jobs last updated before" in again.out
    assert again.out.splitlines()[2].split()[:2] == ["notification_jobs", "0"]


def test_prune_refuses_a_cutoff_under_an_hour(cli):
    with pytest.raises(SystemExit) as exited:
        cli("prune", "--older-than", "10m")
    assert exited.value.code == 2


# --- send-test -----------------------------------------------------------------------------------


def test_send_test_delivers_a_sample_alert_to_a_webhook_channel(database, cli, http_server: RecordingServer):
    channel = insert_channel(
        database, "webhook", {"url": http_server.url("/hook"), "secret": "whsec-0123456789"}
    )

    result = cli("send-test", "--channel-id", str(channel))

    assert result.code == 0, result.err
    assert "delivered" in result.out and "200" in result.out
    (request,) = http_server.received("/hook")
    body = json.loads(request.body)
    assert body["device_id"] == "delivery-worker-test"
    assert body["message"] == "Test notification from delivery-worker"
    assert request.header("X-Signature-SHA256")
    assert (request.header("Idempotency-Key") or "").startswith("send-test:")
    assert count(database, "SELECT count(*) AS n FROM notification_jobs") == 0
    assert count(database, "SELECT count(*) AS n FROM notification_log") == 0


def test_send_test_reports_a_permanent_failure_without_leaking_the_webhook_path(database, cli, http_server):
    secret_path = "/services/T0000/B0000/s3cr3tT0kenValue"
    http_server.script(secret_path, Reply(404, body=f"no such hook {secret_path}".encode()))
    channel = insert_channel(database, "slack", {"webhook_url": http_server.url(secret_path)})

    result = cli("send-test", "--channel-id", str(channel), "--json")

    assert result.code == 1
    report = result.json()
    assert report["status"] == "failed" and report["failure"] == "permanent"
    assert report["http_status"] == 404
    assert "s3cr3tT0kenValue" not in result.out + result.err
    assert len(http_server.received(secret_path)) == 1


def test_send_test_reports_a_transient_failure(database, cli, http_server):
    http_server.script("/busy", Reply(503, body=b"maintenance"))
    channel = insert_channel(database, "webhook", {"url": http_server.url("/busy")})

    result = cli("send-test", "--channel-id", str(channel))

    assert result.code == 1
    assert "failed (transient)" in result.out
    assert "503" in result.out


def test_send_test_to_an_integration_and_to_a_missing_channel(database, cli, http_server):
    integration = insert_integration(
        database, "webhook", tenant_id="acme", config_json={"url": http_server.url("/i")}
    )

    result = cli("send-test", "--integration", f"acme:{integration}", "--json")

    assert result.code == 0, result.err
    assert result.json()["status"] == "delivered"
    assert result.json()["target"] == f"integration acme:{integration}"
    assert json.loads(http_server.received("/i")[0].body)["tenant_id"] == "acme"

    missing = cli("send-test", "--channel-id", "999999")
    assert missing.code == 1
    assert "failed (permanent)" in missing.out and "Channel not found" in missing.out
