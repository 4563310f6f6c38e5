"""`prune` with separate retention for COMPLETED and FAILED jobs, and notification_log rows whose job
is gone (orphans), across two tenants."""

from __future__ import annotations

import pytest

from tests.ops_cli import count, set_job
from tests.rows import (
    execute,
    insert_channel,
    insert_delivery_job,
    insert_integration,
    insert_notification_job,
)


def add_log_row(dsn: str, channel: int, job_id: int | None, *, success: bool, age: str) -> int:
    rows = execute(
        dsn,
        "INSERT INTO notification_log (channel_id, alert_id, job_id, success, sent_at)"
        " VALUES (%s, 1, %s, %s, now() - %s::interval) RETURNING log_id",
        (channel, job_id, success, age),
    )
    return int(rows[0]["log_id"])


def finished_job(dsn: str, channel: int, tenant: str, status: str, age: str) -> int:
    job_id = insert_notification_job(dsn, channel, tenant_id=tenant)
    set_job(dsn, "notification_jobs", job_id, status, age=age)
    add_log_row(dsn, channel, job_id, success=status == "COMPLETED", age=age)
    return job_id


def remaining_jobs(dsn: str, table: str) -> set[int]:
    return {row["job_id"] for row in execute(dsn, f"SELECT job_id FROM {table}")}


def remaining_log_rows(dsn: str) -> set[int]:
    return {row["log_id"] for row in execute(dsn, "SELECT log_id FROM notification_log")}


def test_failed_jobs_are_kept_longer_than_completed_ones(database, cli):
    acme = insert_channel(database, "webhook", {"url": "https://a.invalid/h"}, tenant_id="acme")
    globex = insert_channel(database, "slack", {"webhook_url": "https://g.invalid/s"}, tenant_id="globex")
    completed_40d = finished_job(database, acme, "acme", "COMPLETED", "40 days")
    completed_10d = finished_job(database, globex, "globex", "COMPLETED", "10 days")
    failed_40d = finished_job(database, acme, "acme", "FAILED", "40 days")
    failed_100d = finished_job(database, globex, "globex", "FAILED", "100 days")
    integration = insert_integration(
        database, "webhook", tenant_id="globex", config_json={"url": "https://g/i"}
    )
    delivery_failed_40d = insert_delivery_job(database, integration, tenant_id="globex")
    set_job(database, "delivery_jobs", delivery_failed_40d, "FAILED", age="40 days")
    delivery_completed_40d = insert_delivery_job(database, integration, tenant_id="globex")
    set_job(database, "delivery_jobs", delivery_completed_40d, "COMPLETED", age="40 days")

    dry = cli("prune", "--older-than", "30d", "--failed-older-than", "90d", "--dry-run", "--json")

    assert dry.code == 0, dry.err
    assert dry.json()["tables"]["notification_jobs"] == {"jobs": 2, "notification_log": 2}
    assert dry.json()["failed_older_than"] == "90d"

    result = cli("prune", "--older-than", "30d", "--failed-older-than", "90d")

    assert result.code == 0, result.err
    assert "COMPLETED jobs last updated before" in result.out and "(older than 90d)" in result.out
    assert remaining_jobs(database, "notification_jobs") == {completed_10d, failed_40d}
    assert remaining_jobs(database, "delivery_jobs") == {delivery_failed_40d}
    assert count(database, "SELECT count(*) AS n FROM notification_log WHERE job_id IS NULL") == 0
    assert {row["job_id"] for row in execute(database, "SELECT job_id FROM notification_log")} == {
        completed_10d,
        failed_40d,
    }
    assert completed_40d not in remaining_jobs(database, "notification_jobs")
    assert failed_100d not in remaining_jobs(database, "notification_jobs")


def test_without_failed_older_than_both_share_one_retention(database, cli):
    channel = insert_channel(database, "webhook", {"url": "https://a.invalid/h"}, tenant_id="acme")
    failed_40d = finished_job(database, channel, "acme", "FAILED", "40 days")
    completed_40d = finished_job(database, channel, "acme", "COMPLETED", "40 days")
    kept = finished_job(database, channel, "acme", "FAILED", "20 days")

    result = cli("prune", "--older-than", "30d", "--json")

    assert result.code == 0, result.err
    assert result.json()["tables"]["notification_jobs"]["jobs"] == 2
    assert remaining_jobs(database, "notification_jobs") == {kept}
    assert {failed_40d, completed_40d}.isdisjoint(remaining_jobs(database, "notification_jobs"))


def test_failed_retention_shorter_than_completed_is_refused(database, cli):
    channel = insert_channel(database, "webhook", {"url": "https://a.invalid/h"})
    job_id = finished_job(database, channel, "tenant-a", "FAILED", "40 days")

    result = cli("prune", "--older-than", "60d", "--failed-older-than", "30d")

    assert result.code == 2
    assert "--failed-older-than must be at least --older-than" in result.err
    assert remaining_jobs(database, "notification_jobs") == {job_id}


def test_orphan_log_rows_go_in_batches_after_their_outcome_retention(database, cli):
    acme = insert_channel(database, "webhook", {"url": "https://a.invalid/h"}, tenant_id="acme")
    globex = insert_channel(database, "webhook", {"url": "https://g.invalid/h"}, tenant_id="globex")
    live_job = insert_notification_job(database, acme, tenant_id="acme")
    old_success = [add_log_row(database, acme, None, success=True, age="40 days") for _ in range(3)]
    old_failure = add_log_row(database, globex, None, success=False, age="40 days")
    older_failure = add_log_row(database, globex, None, success=False, age="100 days")
    recent_success = add_log_row(database, acme, None, success=True, age="5 days")
    old_row_of_live_job = add_log_row(database, acme, live_job, success=False, age="200 days")
    # A platform database may lack the foreign key: a job_id can then name a job that is gone.
    execute(database, "ALTER TABLE notification_log DROP CONSTRAINT notification_log_job_id_fkey")
    dangling = add_log_row(database, globex, 987654321, success=True, age="40 days")

    dry = cli("prune", "--older-than", "30d", "--failed-older-than", "90d", "--dry-run", "--json")

    assert dry.code == 0, dry.err
    assert dry.json()["orphan_log_rows"] == {"rows": 5}
    assert len(remaining_log_rows(database)) == 8

    result = cli("prune", "--older-than", "30d", "--failed-older-than", "90d", "--batch-size", "2", "--json")

    assert result.code == 0, result.err
    assert result.json()["orphan_log_rows"] == {"rows": 5, "batches": 3}
    assert remaining_log_rows(database) == {old_failure, recent_success, old_row_of_live_job}
    assert {*old_success, older_failure, dangling}.isdisjoint(remaining_log_rows(database))
    assert remaining_jobs(database, "notification_jobs") == {live_job}


def test_pruning_delivery_jobs_only_leaves_notification_log_alone(database, cli):
    channel = insert_channel(database, "webhook", {"url": "https://a.invalid/h"})
    orphan = add_log_row(database, channel, None, success=True, age="40 days")

    result = cli("prune", "--older-than", "30d", "--table", "delivery_jobs", "--json")

    assert result.code == 0, result.err
    assert result.json()["orphan_log_rows"] is None
    assert remaining_log_rows(database) == {orphan}


@pytest.mark.parametrize("retention", ["10m", "0h"])
def test_a_failed_retention_under_an_hour_is_refused(cli, retention):
    with pytest.raises(SystemExit) as exited:
        cli("prune", "--older-than", "1d", "--failed-older-than", retention)
    assert exited.value.code == 2
