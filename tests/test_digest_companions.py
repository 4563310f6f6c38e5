"""The companion claim and the digest planner against the real PostgreSQL (no worker, no network)."""

from __future__ import annotations

from channels.registry import build_registry
from delivery_worker.db import connect, transaction
from delivery_worker.digest import DigestPlanner
from delivery_worker.jobs import Job
from delivery_worker.queues import build_queues
from delivery_worker.queues.companions import claim_companions
from delivery_worker.queues.delivery_jobs import DeliveryJobs
from delivery_worker.queues.notification_jobs import NotificationJobs
from delivery_worker.retry import RetryPolicy
from tests.rows import (
    execute,
    insert_channel,
    insert_delivery_job,
    insert_integration,
    insert_notification_job,
)
from tests.support import make_settings


def claim_with_companions(dsn: str, limit: int = 100) -> tuple[Job, list[Job]]:
    settings = make_settings(database={"dsn": dsn, "migrate_dsn": dsn})
    queue = NotificationJobs(lease_seconds=60, policy=RetryPolicy.from_settings(settings.worker))
    conn = connect(dsn)
    try:
        with transaction(conn) as cur:
            (lead,) = queue.claim(cur, 1)
            return lead, claim_companions(cur, queue, lead, limit)
    finally:
        conn.close()


def test_companions_are_the_due_pending_jobs_of_the_same_channel_and_tenant(database):
    channel = insert_channel(database, "slack", {"webhook_url": "https://hooks.slack.test/x"})
    other_channel = insert_channel(database, "slack", {"webhook_url": "https://hooks.slack.test/y"})
    lead_id = insert_notification_job(database, channel)
    same = [insert_notification_job(database, channel) for _ in range(3)]
    insert_notification_job(database, other_channel)
    insert_notification_job(database, channel, tenant_id="tenant-b")
    later = insert_notification_job(database, channel)
    execute(
        database,
        "UPDATE notification_jobs SET next_run_at = now() + interval '1 hour' WHERE job_id = %s",
        (later,),
    )

    lead, companions = claim_with_companions(database)

    assert lead.job_id == lead_id
    assert [job.job_id for job in companions] == same
    assert all(job.destination == lead.destination and job.lease == lead.lease for job in companions)
    rows = execute(database, "SELECT job_id, status FROM notification_jobs WHERE job_id = ANY(%s)", (same,))
    assert {r["status"] for r in rows} == {"PROCESSING"}


def test_a_later_event_waits_while_an_earlier_event_of_its_alert_is_open(database):
    channel = insert_channel(database, "slack", {"webhook_url": "https://hooks.slack.test/x"})
    insert_notification_job(database, channel, alert_id=1)  # the lead
    opened = insert_notification_job(database, channel, alert_id=7)
    acked = insert_notification_job(database, channel, alert_id=7, event="ACKNOWLEDGED")
    closed = insert_notification_job(database, channel, alert_id=7, event="CLOSED")
    closed_alone = insert_notification_job(database, channel, alert_id=8, event="CLOSED")

    _, companions = claim_with_companions(database)

    ids = [job.job_id for job in companions]
    assert opened in ids and closed_alone in ids
    assert acked not in ids and closed not in ids


def test_companions_stop_at_the_limit(database):
    channel = insert_channel(database, "slack", {"webhook_url": "https://hooks.slack.test/x"})
    jobs = [insert_notification_job(database, channel) for _ in range(10)]

    _, companions = claim_with_companions(database, limit=4)

    assert [job.job_id for job in companions] == jobs[1:5]


def test_planner_groups_chat_jobs_and_leaves_machines_and_broken_jobs_alone(database):
    settings = make_settings(database={"dsn": database, "migrate_dsn": database})
    slack = insert_channel(database, "slack", {"webhook_url": "https://hooks.slack.test/x"})
    teams = insert_channel(database, "teams", {"webhook_url": "https://example.webhook.office.com/t"})
    hook = insert_channel(database, "webhook", {"url": "https://example.test/hook"})
    disabled = insert_channel(database, "slack", {"webhook_url": "https://hooks.slack.test/d"}, enabled=False)
    slack_jobs = [insert_notification_job(database, slack) for _ in range(3)]
    teams_jobs = [insert_notification_job(database, teams) for _ in range(3)]  # 3 <= 4/s: sent alone
    hook_jobs = [insert_notification_job(database, hook) for _ in range(3)]
    disabled_jobs = [insert_notification_job(database, disabled) for _ in range(2)]
    queues = build_queues(settings)
    registry = build_registry(settings)
    planner = DigestPlanner(settings, registry, queues)
    conn = connect(database)
    try:
        with transaction(conn) as cur:
            tasks = planner.plan(cur, queues[0].claim(cur, 50))
    finally:
        conn.close()
        registry.close()

    as_ids = sorted(tuple(job.job_id for job in task) for task in tasks)
    assert tuple(slack_jobs) in as_ids
    for job_id in teams_jobs + hook_jobs + disabled_jobs:
        assert (job_id,) in as_ids


def test_integration_email_jobs_are_summarised_only_when_email_is_rate_limited(database):
    integration = insert_integration(
        database,
        "email",
        email_config={"host": "127.0.0.1", "port": 2525, "use_tls": False, "from_address": "a@pulse.test"},
        email_recipients={"to": ["ops@acme.test"]},
    )
    jobs = [insert_delivery_job(database, integration) for _ in range(3)]

    def plan(email_rate: float) -> list[tuple[int, ...]]:
        settings = make_settings(
            database={"dsn": database, "migrate_dsn": database}, rate_limits={"email": email_rate}
        )
        queues = build_queues(settings)
        registry = build_registry(settings)
        conn = connect(database)
        try:
            with transaction(conn) as cur:
                delivery_jobs = next(q for q in queues if isinstance(q, DeliveryJobs))
                tasks = DigestPlanner(settings, registry, queues).plan(cur, delivery_jobs.claim(cur, 1))
                conn.rollback()  # leave the jobs PENDING for the next plan
        finally:
            conn.close()
            registry.close()
        return [tuple(job.job_id for job in task) for task in tasks]

    assert plan(0) == [(jobs[0],)]
    assert plan(0.5) == [tuple(jobs)]
