"""`requeue` filters with two tenants: every filter must hold (AND), within and across the tables.

The issue's case first: `--channel-id 30 --integration-id …` requeued both tables' jobs (OR).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.ops_cli import set_job, statuses
from tests.rows import insert_channel, insert_delivery_job, insert_integration, insert_notification_job


@pytest.fixture
def fleet(database: str) -> dict[str, Any]:
    """Two tenants, each with webhook channels, a slack channel or an integration, and FAILED jobs."""
    acme_hook = insert_channel(database, "webhook", {"url": "https://a.invalid/h"}, tenant_id="acme")
    acme_slack = insert_channel(database, "slack", {"webhook_url": "https://a.invalid/s"}, tenant_id="acme")
    globex_hook = insert_channel(database, "webhook", {"url": "https://g.invalid/h"}, tenant_id="globex")
    acme_int = insert_integration(database, "webhook", tenant_id="acme", config_json={"url": "https://a/i"})
    globex_int = insert_integration(database, "snmp", tenant_id="globex", snmp_host="127.0.0.1")

    def failed_notification(channel: int, tenant: str, error: str) -> int:
        job_id = insert_notification_job(database, channel, tenant_id=tenant)
        set_job(database, "notification_jobs", job_id, "FAILED", attempts=5, last_error=error)
        return job_id

    def failed_delivery(integration: str, tenant: str, error: str) -> int:
        job_id = insert_delivery_job(database, integration, tenant_id=tenant)
        set_job(database, "delivery_jobs", job_id, "FAILED", attempts=5, last_error=error)
        return job_id

    return {
        "acme_hook": acme_hook,
        "acme_slack": acme_slack,
        "globex_hook": globex_hook,
        "acme_int": acme_int,
        "globex_int": globex_int,
        "n_acme_503": failed_notification(acme_hook, "acme", "webhook returned HTTP 503: upstream down"),
        "n_acme_400": failed_notification(acme_hook, "acme", "webhook returned HTTP 400: bad request"),
        "n_acme_slack_503": failed_notification(acme_slack, "acme", "Slack returned HTTP 503"),
        "n_globex_503": failed_notification(globex_hook, "globex", "webhook returned HTTP 503: down"),
        "d_acme_503": failed_delivery(acme_int, "acme", "Webhook Returned HTTP 503"),
        "d_globex_timeout": failed_delivery(globex_int, "globex", "SNMP send timed out"),
    }


def requeued(database: str, fleet: dict[str, Any]) -> set[str]:
    """The fleet's job names that are no longer FAILED."""
    now = {
        ("notification_jobs", job_id): status
        for job_id, (status, _) in statuses(database, "notification_jobs").items()
    }
    now |= {
        ("delivery_jobs", job_id): status
        for job_id, (status, _) in statuses(database, "delivery_jobs").items()
    }
    table = {"n": "notification_jobs", "d": "delivery_jobs"}
    return {
        name
        for name, value in fleet.items()
        if name[:2] in ("n_", "d_") and now[(table[name[0]], value)] == "PENDING"
    }


def test_channel_id_and_integration_id_together_match_nothing_and_change_nothing(database, cli, fleet):
    result = cli("requeue", "--channel-id", str(fleet["acme_hook"]), "--integration-id", fleet["acme_int"])

    assert result.code == 2
    assert (
        "--channel-id (notification_jobs) and --integration-id (delivery_jobs) cannot both match"
        in result.err
    )
    assert requeued(database, fleet) == set()


def test_a_one_table_filter_restricts_to_that_table_and_ands_with_the_others(database, cli, fleet):
    by_channel = cli("requeue", "--channel-id", str(fleet["acme_hook"]), "--error", "503", "--json")

    assert by_channel.code == 0, by_channel.err
    assert [(j["table"], j["job_id"]) for j in by_channel.json()["jobs"]] == [
        ("notification_jobs", fleet["n_acme_503"])
    ]
    assert requeued(database, fleet) == {"n_acme_503"}

    other_tenant = cli("requeue", "--integration-id", fleet["acme_int"], "--tenant", "globex")
    assert other_tenant.code == 0
    assert "requeued 0 job(s)" in other_tenant.out
    assert requeued(database, fleet) == {"n_acme_503"}


def test_tenant_channel_type_and_error_filters_apply_to_both_tables(database, cli, fleet):
    result = cli("requeue", "--tenant", "acme", "--channel-type", "webhook", "--error", "http 503", "--json")

    assert result.code == 0, result.err
    assert sorted((j["table"], j["job_id"]) for j in result.json()["jobs"]) == sorted(
        [("notification_jobs", fleet["n_acme_503"]), ("delivery_jobs", fleet["d_acme_503"])]
    )
    assert requeued(database, fleet) == {"n_acme_503", "d_acme_503"}

    by_type = cli("requeue", "--channel-type", "snmp")
    assert by_type.code == 0
    assert "requeued 1 job(s) (delivery_jobs: 1)" in by_type.out
    assert requeued(database, fleet) == {"n_acme_503", "d_acme_503", "d_globex_timeout"}


def test_error_text_is_a_plain_substring_not_a_pattern(database, cli, fleet):
    wildcard = cli("requeue", "--error", "HTTP 50_", "--dry-run", "--json")

    assert wildcard.code == 0, wildcard.err
    assert wildcard.json()["count"] == 0

    quoted = cli("requeue", "--error", "'; DELETE FROM notification_jobs; --", "--json")
    assert quoted.code == 0 and quoted.json()["count"] == 0
    assert len(statuses(database, "notification_jobs")) == 4


def test_job_id_takes_several_values_and_repeats(database, cli, fleet):
    result = cli(
        "requeue",
        "--table",
        "notification_jobs",
        "--job-id",
        str(fleet["n_acme_503"]),
        str(fleet["n_acme_400"]),
        "--job-id",
        str(fleet["n_globex_503"]),
        "--json",
    )

    assert result.code == 0, result.err
    assert result.json()["count"] == 3
    assert requeued(database, fleet) == {"n_acme_503", "n_acme_400", "n_globex_503"}


def test_job_id_with_a_channel_filter_needs_no_table_and_must_match_both(database, cli, fleet):
    result = cli(
        "requeue",
        "--channel-id",
        str(fleet["acme_hook"]),
        "--job-id",
        str(fleet["n_acme_400"]),
        str(fleet["n_globex_503"]),
    )

    assert result.code == 0, result.err
    assert "requeued 1 job(s) (notification_jobs: 1)" in result.out
    assert requeued(database, fleet) == {"n_acme_400"}


def test_job_id_across_both_tables_is_refused(database, cli, fleet):
    result = cli("requeue", "--job-id", str(fleet["n_acme_503"]), "--tenant", "acme")

    assert result.code == 2
    assert "--job-id needs --table" in result.err
    assert requeued(database, fleet) == set()


def test_an_empty_filter_is_refused_rather_than_matching_everything(cli, fleet):
    with pytest.raises(SystemExit) as exited:
        cli("requeue", "--error", "")
    assert exited.value.code == 2
