"""`stats --by channel` and `--by tenant` with two tenants: counts per group, the top failing groups
with their newest error, and the PROCESSING jobs held longest with their lease."""

from __future__ import annotations

from typing import Any

import pytest

from tests.ops_cli import set_job
from tests.rows import (
    execute,
    insert_channel,
    insert_delivery_job,
    insert_integration,
    insert_notification_job,
)


def processing(dsn: str, table: str, job_id: int, *, held: str, lease: str) -> None:
    execute(
        dsn,
        f"UPDATE {table} SET status = 'PROCESSING', updated_at = now() - %s::interval,"
        " lease_expires_at = now() + %s::interval WHERE job_id = %s",
        (held, lease, job_id),
    )


@pytest.fixture
def fleet(database: str) -> dict[str, Any]:
    acme_hook = insert_channel(database, "webhook", {"url": "https://a.invalid/h"}, tenant_id="acme")
    acme_slack = insert_channel(database, "slack", {"webhook_url": "https://a.invalid/s"}, tenant_id="acme")
    globex_hook = insert_channel(database, "webhook", {"url": "https://g.invalid/h"}, tenant_id="globex")
    globex_int = insert_integration(
        database, "webhook", tenant_id="globex", config_json={"url": "https://g/i"}
    )

    def notification(channel: int, tenant: str, status: str, **columns: Any) -> int:
        job_id = insert_notification_job(database, channel, tenant_id=tenant)
        set_job(database, "notification_jobs", job_id, status, **columns)
        return job_id

    # acme's webhook: 3 recent failures, the newest with "HTTP 503", and one failure a day ago.
    for error, age in (("HTTP 500 first", "30 minutes"), ("HTTP 502 second", "20 minutes")):
        notification(acme_hook, "acme", "FAILED", age=age, last_error=error)
    notification(acme_hook, "acme", "FAILED", age="5 minutes", last_error="webhook returned HTTP 503: down")
    notification(acme_hook, "acme", "FAILED", age="1 day", last_error="old failure")
    notification(acme_hook, "acme", "PENDING")
    stuck = notification(acme_hook, "acme", "PENDING")
    processing(database, "notification_jobs", stuck, held="10 minutes", lease="-2 minutes")
    # acme's slack: 1 recent failure; completed jobs.
    notification(
        acme_slack, "acme", "FAILED", age="10 minutes", last_error="Slack returned HTTP 404: no_service"
    )
    notification(acme_slack, "acme", "COMPLETED")
    notification(acme_slack, "acme", "COMPLETED")
    # globex: a healthy channel and an integration failing twice, one job held briefly.
    notification(globex_hook, "globex", "COMPLETED")
    for age in ("1 minute", "2 minutes"):
        job_id = insert_delivery_job(database, globex_int, tenant_id="globex")
        set_job(
            database, "delivery_jobs", job_id, "FAILED", age=age, last_error=f"connect timeout after {age}"
        )
    held = insert_delivery_job(database, globex_int, tenant_id="globex")
    processing(database, "delivery_jobs", held, held="30 seconds", lease="60 seconds")
    return {
        "acme_hook": acme_hook,
        "acme_slack": acme_slack,
        "globex_hook": globex_hook,
        "globex_int": globex_int,
        "stuck": stuck,
        "held": held,
    }


def test_by_channel_counts_each_channel_and_integration(cli, fleet):
    result = cli("stats", "--by", "channel", "--json")

    assert result.code == 0, result.err
    report = result.json()
    groups = {(g["table"], g["key"]): g for g in report["groups"]}
    acme_hook = groups[("notification_jobs", str(fleet["acme_hook"]))]
    assert acme_hook["channel_id"] == fleet["acme_hook"]
    assert (acme_hook["tenant_id"], acme_hook["channel_type"]) == ("acme", "webhook")
    assert acme_hook["by_status"] == {"PENDING": 1, "PROCESSING": 1, "COMPLETED": 0, "FAILED": 4}
    assert acme_hook["due"] == 1
    assert acme_hook["failed_in_window"] == 3
    assert acme_hook["last_error"] == "webhook returned HTTP 503: down"
    assert acme_hook["expired_leases"] == 1
    assert 590 <= acme_hook["oldest_processing_age_seconds"] < 700
    integration = groups[("delivery_jobs", fleet["globex_int"])]
    assert integration["integration_id"] == fleet["globex_int"]
    assert (integration["tenant_id"], integration["channel_type"]) == ("globex", "webhook")
    assert integration["failed_in_window"] == 2
    assert integration["last_error"] == "connect timeout after 1 minute"
    healthy = groups[("notification_jobs", str(fleet["globex_hook"]))]
    assert healthy["failed_in_window"] == 0 and healthy["last_error"] is None
    assert [g["key"] for g in report["top_failing"]] == [
        str(fleet["acme_hook"]),
        fleet["globex_int"],
        str(fleet["acme_slack"]),
    ]
    assert "config" not in result.out and "https://a.invalid" not in result.out


def test_by_channel_table_lists_the_top_failing_with_their_last_error(cli, fleet):
    result = cli("stats", "--by", "channel", "--top", "2")

    assert result.code == 0, result.err
    top = result.out.split("top failing in the last 1h:\n")[1].split("\n\n")[0].splitlines()
    assert top[0].split() == [
        "table",
        "destination",
        "tenant_id",
        "type",
        "failed",
        "last",
        "failed",
        "last",
        "error",
    ]
    assert len(top) == 3
    assert top[1].split()[:5] == ["notification_jobs", str(fleet["acme_hook"]), "acme", "webhook", "3"]
    assert top[1].endswith("webhook returned HTTP 503: down")
    assert top[2].split()[:5] == ["delivery_jobs", fleet["globex_int"], "globex", "webhook", "2"]
    assert "Slack returned HTTP 404" not in result.out
    first_group = result.out.splitlines()[1].split()
    assert first_group[:4] == ["notification_jobs", str(fleet["acme_hook"]), "acme", "webhook"]


def test_by_tenant_sums_each_tenants_jobs_per_table(cli, fleet):
    result = cli("stats", "--by", "tenant", "--json")

    assert result.code == 0, result.err
    report = result.json()
    groups = {(g["table"], g["tenant_id"]): g for g in report["groups"]}
    assert set(groups) == {
        ("notification_jobs", "acme"),
        ("notification_jobs", "globex"),
        ("delivery_jobs", "globex"),
    }
    acme = groups[("notification_jobs", "acme")]
    assert acme["by_status"] == {"PENDING": 1, "PROCESSING": 1, "COMPLETED": 2, "FAILED": 5}
    assert acme["failed_in_window"] == 4
    assert acme["last_error"] == "webhook returned HTTP 503: down"
    assert "channel_type" not in acme
    assert groups[("notification_jobs", "globex")]["by_status"]["COMPLETED"] == 1
    assert [(g["table"], g["tenant_id"]) for g in report["top_failing"]] == [
        ("notification_jobs", "acme"),
        ("delivery_jobs", "globex"),
    ]

    table = cli("stats", "--by", "tenant", "--window", "15m")
    assert table.code == 0
    assert table.out.splitlines()[0].split()[:3] == ["table", "tenant_id", "PENDING"]
    assert "failed 15m" in table.out.splitlines()[0]
    top = table.out.split("top failing in the last 15m:\n")[1].splitlines()
    # Two failures each within 15m: the tenant that failed last comes first.
    assert top[1].split()[:3] == ["delivery_jobs", "globex", "2"]
    assert top[1].endswith("connect timeout after 1 minute")
    assert top[2].split()[:3] == ["notification_jobs", "acme", "2"]
    assert top[2].endswith("webhook returned HTTP 503: down")


def test_processing_jobs_show_how_long_they_are_held_and_their_lease(cli, fleet):
    report = cli("stats", "--json").json()

    assert [(j["table"], j["job_id"]) for j in report["processing"]] == [
        ("notification_jobs", fleet["stuck"]),
        ("delivery_jobs", fleet["held"]),
    ]
    stuck = report["processing"][0]
    assert stuck["destination"] == str(fleet["acme_hook"]) and stuck["tenant_id"] == "acme"
    assert 590 <= stuck["held_seconds"] < 700
    assert stuck["lease_left_seconds"] < 0
    assert report["processing"][1]["lease_left_seconds"] > 0
    assert report["tables"]["notification_jobs"]["expired_leases"] == 1
    assert 590 <= report["tables"]["notification_jobs"]["oldest_processing_age_seconds"] < 700

    table = cli("stats", "--top", "1").out
    section = table.split("PROCESSING, held longest:\n")[1].splitlines()
    assert len(section) == 2
    assert section[1].split()[:4] == [
        "notification_jobs",
        str(fleet["stuck"]),
        "acme",
        str(fleet["acme_hook"]),
    ]
    assert "expired" in section[1] and "ago" in section[1]


def test_by_channel_on_empty_queues_says_so(cli):
    result = cli("stats", "--by", "channel")

    assert result.code == 0, result.err
    assert result.out.startswith("no jobs")
    assert "failed in the last 1h: none" in result.out
