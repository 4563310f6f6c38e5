"""The claim order on the real PostgreSQL: severity with aging, tenants in turn, each alert's events in
order, the per-destination share, and the SQL severity rank agreeing with the Python parser."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from channels.alert import severity_rank
from delivery_worker.db import Connection, connect, transaction
from delivery_worker.jobs import Job
from delivery_worker.queues import build_queues
from delivery_worker.queues.claim_order import ClaimOrder, running_by_destination
from delivery_worker.queues.delivery_jobs import DeliveryJobs
from delivery_worker.queues.notification_jobs import NotificationJobs
from delivery_worker.retry import RetryPolicy
from tests.processes import start_worker, wait_until
from tests.rows import (
    execute,
    insert_channel,
    insert_delivery_job,
    insert_integration,
    insert_notification_job,
    job,
)
from tests.servers.http import Reply
from tests.support import SAMPLE_PAYLOAD, make_settings

POLICY = RetryPolicy(
    max_attempts=5,
    backoff_base_seconds=0,
    backoff_max_seconds=0,
    quick_retries=0,
    quick_retry_budget_seconds=0,
)
NO_CAP = ClaimOrder(max_priority_wait_seconds=60, max_in_flight_per_destination=100)


@pytest.fixture
def conn(database: str) -> Iterator[Connection]:
    connection = connect(database)
    yield connection
    connection.close()


def notification_queue(order: ClaimOrder = NO_CAP) -> NotificationJobs:
    return NotificationJobs(lease_seconds=300, policy=POLICY, order=order)


def claim(conn: Connection, queue: Any, limit: int, running: dict[str, int] | None = None) -> list[Job]:
    with transaction(conn) as cur:
        return list(queue.claim(cur, limit, running))


def claim_ids(conn: Connection, queue: Any, limit: int, running: dict[str, int] | None = None) -> set[int]:
    return {job.job_id for job in claim(conn, queue, limit, running)}


def webhook(dsn: str, tenant: str = "tenant-a") -> int:
    return insert_channel(dsn, "webhook", {"url": "http://127.0.0.1:9/x"}, tenant_id=tenant)


def job_with(dsn: str, channel: int, severity: Any, *, tenant: str = "tenant-a", **kwargs: Any) -> int:
    payload = dict(SAMPLE_PAYLOAD, severity=severity, tenant_id=tenant)
    return insert_notification_job(dsn, channel, payload, tenant_id=tenant, **kwargs)


def set_status(dsn: str, table: str, job_id: int, status: str) -> None:
    execute(dsn, f"UPDATE {table} SET status = %s WHERE job_id = %s", (status, job_id))


# --- the severity rank: SQL and Python agree ---------------------------------------------------

SEVERITIES: list[Any] = [
    0, 1, 2, 3, 4, 5, 6, 1000, 1001, -1, -0.0, 3.7, 4.0, 0.5, -0.5, 1e308, 10**30,
    "0", "3", " 4 ", "\t5\n", "3.7", "+2", "-1", "-0", ".5", "4.", "1e0", "1E1", "2e-1", "1e999",
    "1e-400", "9" * 5000, "critical", "CRITICAL", " High ", "medium", "low", "info", "warning",
    "inf", "-inf", "nan", "Infinity", "1_0", "٣", "0x10", "", "  ", "4\u00a0", None, True, False,
    [4], {"level": 4},
]  # fmt: skip


def payloads() -> list[Any]:
    cases: list[Any] = [{**SAMPLE_PAYLOAD, "severity": value} for value in SEVERITIES]
    cases += [{"message": "no severity"}, [1, 2], "not json", 42, None]
    cases += [json.dumps({"severity": 4}), json.dumps({"severity": "high"}), json.dumps([4]), "{broken"]
    return cases


def test_sql_severity_rank_agrees_with_python_for_every_input(database):
    conn = connect(database)
    try:
        with transaction(conn) as cur:
            for payload in payloads():
                cur.execute("SELECT delivery_worker_severity_rank(%s::jsonb)", (json.dumps(payload),))
                (sql_rank,) = cur.fetchone()
                assert sql_rank == severity_rank(payload), f"payload severity {str(payload)[:60]!r}"
    finally:
        conn.close()


def test_trigger_stores_the_rank_on_insert_and_on_payload_update(database):
    channel = webhook(database)
    job_id = job_with(database, channel, "critical")
    assert execute(database, "SELECT severity_rank FROM notification_jobs WHERE job_id = %s", (job_id,)) == [
        {"severity_rank": 5}
    ]
    execute(
        database,
        "UPDATE notification_jobs SET payload_json = '{\"severity\": 1}' WHERE job_id = %s",
        (job_id,),
    )
    (row,) = execute(database, "SELECT severity_rank FROM notification_jobs WHERE job_id = %s", (job_id,))
    assert row["severity_rank"] == 2


# --- severity first, with aging ----------------------------------------------------------------


def test_more_severe_jobs_are_claimed_first_and_equal_ones_oldest_first(database, conn):
    channel = webhook(database)
    minor = [job_with(database, channel, 1) for _ in range(3)]
    unknown = job_with(database, channel, "whatever")
    critical_old = job_with(database, channel, 4)
    critical_new = job_with(database, channel, "critical")
    worst = job_with(database, channel, 5)
    queue = notification_queue()

    order = [claim_ids(conn, queue, 1) for _ in range(7)]

    assert order == [{worst}, {critical_old}, {critical_new}, *({m} for m in minor), {unknown}]


def test_a_job_due_longer_than_the_wait_ranks_with_the_most_severe(database, conn):
    channel = webhook(database)
    old_minor = job_with(database, channel, 0)
    execute(database, "UPDATE notification_jobs SET next_run_at = now() - interval '10 minutes'")
    fresh_critical = job_with(database, channel, 5)

    aging = notification_queue(ClaimOrder(max_priority_wait_seconds=60, max_in_flight_per_destination=100))
    assert claim_ids(conn, aging, 1) == {old_minor}
    assert claim_ids(conn, aging, 1) == {fresh_critical}


def test_without_aging_the_fresh_critical_job_goes_first(database, conn):
    channel = webhook(database)
    old_minor = job_with(database, channel, 0)
    execute(database, "UPDATE notification_jobs SET next_run_at = now() - interval '10 minutes'")
    fresh_critical = job_with(database, channel, 5)

    patient = notification_queue(
        ClaimOrder(max_priority_wait_seconds=3600, max_in_flight_per_destination=100)
    )
    assert claim_ids(conn, patient, 1) == {fresh_critical}
    assert claim_ids(conn, patient, 1) == {old_minor}


def test_jobs_not_yet_due_are_never_claimed(database, conn):
    channel = webhook(database)
    job_with(database, channel, 5)
    execute(database, "UPDATE notification_jobs SET next_run_at = now() + interval '1 hour'")
    assert claim_ids(conn, notification_queue(), 10) == set()


# --- tenants take turns --------------------------------------------------------------------------


def test_tenants_take_turns_within_one_claim(database, conn):
    noisy = webhook(database, "noisy")
    quiet = webhook(database, "quiet")
    vip = webhook(database, "vip")
    flood = [job_with(database, noisy, 5, tenant="noisy") for _ in range(20)]
    quiet_jobs = [job_with(database, quiet, 1, tenant="quiet") for _ in range(2)]
    vip_job = job_with(database, vip, 0, tenant="vip")

    claimed = claim(conn, notification_queue(), 6)

    by_tenant = Counter(job.tenant_id for job in claimed)
    assert by_tenant == {"noisy": 3, "quiet": 2, "vip": 1}
    assert {job.job_id for job in claimed} >= {*quiet_jobs, vip_job}
    assert {job.job_id for job in claimed if job.tenant_id == "noisy"} == set(flood[:3])


def test_a_lone_tenant_gets_the_whole_claim(database, conn):
    channels = [webhook(database, "alone") for _ in range(2)]
    for channel in channels:
        for _ in range(10):
            job_with(database, channel, 2, tenant="alone")

    assert len(claim(conn, notification_queue(), 16)) == 16


def test_the_integrations_queue_interleaves_tenants_too(database, conn):
    noisy = insert_integration(
        database, "webhook", tenant_id="noisy", config_json={"url": "http://127.0.0.1:9"}
    )
    vip = insert_integration(database, "webhook", tenant_id="vip", config_json={"url": "http://127.0.0.1:9"})
    for _ in range(10):
        insert_delivery_job(database, noisy, tenant_id="noisy")
    vip_job = insert_delivery_job(database, vip, tenant_id="vip")
    queue = DeliveryJobs(lease_seconds=300, policy=POLICY, order=NO_CAP)

    claimed = claim(conn, queue, 2)

    assert Counter(job.tenant_id for job in claimed) == {"noisy": 1, "vip": 1}
    assert vip_job in {job.job_id for job in claimed}


# --- one alert's events in order -----------------------------------------------------------------


def test_a_later_event_waits_for_the_earlier_one_of_the_same_alert_and_channel(database, conn):
    channel = webhook(database)
    other = webhook(database)
    closed = job_with(database, channel, 4, alert_id=77, event="CLOSED")
    opened = job_with(database, channel, 1, alert_id=77, event="OPEN")
    elsewhere = job_with(database, other, 1, alert_id=77, event="CLOSED")  # another channel: free
    queue = notification_queue()

    assert claim_ids(conn, queue, 10) == {opened, elsewhere}
    assert claim_ids(conn, queue, 10) == set()  # OPEN is PROCESSING: CLOSED still waits
    set_status(database, "notification_jobs", opened, "PENDING")  # e.g. a retry after a 5xx
    assert claim_ids(conn, queue, 10) == {opened}
    set_status(database, "notification_jobs", opened, "COMPLETED")
    assert claim_ids(conn, queue, 10) == {closed}


def test_acknowledged_goes_before_closed_and_a_failed_earlier_event_no_longer_blocks(database, conn):
    channel = webhook(database)
    closed = job_with(database, channel, 4, alert_id=5, event="CLOSED")
    acked = job_with(database, channel, 4, alert_id=5, event="ACKNOWLEDGED")
    queue = notification_queue()

    assert claim_ids(conn, queue, 10) == {acked}
    set_status(database, "notification_jobs", acked, "FAILED")
    assert claim_ids(conn, queue, 10) == {closed}


def test_event_order_on_the_integrations_queue(database, conn):
    integration = insert_integration(database, "webhook", config_json={"url": "http://127.0.0.1:9"})
    closed = insert_delivery_job(database, integration, alert_id=9, event="CLOSED")
    opened = insert_delivery_job(database, integration, alert_id=9, event="OPEN")
    queue = DeliveryJobs(lease_seconds=300, policy=POLICY, order=NO_CAP)

    assert claim_ids(conn, queue, 10) == {opened}
    set_status(database, "delivery_jobs", opened, "COMPLETED")
    assert claim_ids(conn, queue, 10) == {closed}


def test_two_workers_claiming_at_once_keep_the_order(database):
    channel = webhook(database)
    closed = job_with(database, channel, 4, alert_id=3, event="CLOSED")
    opened = job_with(database, channel, 4, alert_id=3, event="OPEN")
    queue = notification_queue()
    first, second = connect(database), connect(database)
    try:
        with transaction(first) as cur_first:
            taken = {job.job_id for job in queue.claim(cur_first, 10)}
            # The first claim is not committed yet: the second worker claims meanwhile.
            with transaction(second) as cur_second:
                meanwhile = {job.job_id for job in queue.claim(cur_second, 10)}
        assert taken == {opened}
        assert meanwhile == set()
        assert claim_ids(second, queue, 10) == set()  # OPEN is PROCESSING now
        set_status(database, "notification_jobs", opened, "COMPLETED")
        assert claim_ids(second, queue, 10) == {closed}
    finally:
        first.close()
        second.close()


# --- a share per destination ---------------------------------------------------------------------


def test_one_destination_gets_at_most_its_cap_minus_what_runs_there(database, conn):
    busy = webhook(database)
    calm = webhook(database)
    for _ in range(10):
        job_with(database, busy, 5)
    calm_jobs = [job_with(database, calm, 1) for _ in range(2)]
    queue = notification_queue(ClaimOrder(max_priority_wait_seconds=60, max_in_flight_per_destination=3))

    first = claim(conn, queue, 16)
    assert running_by_destination(first, queue.table) == {str(busy): 3, str(calm): 2}
    assert {job.job_id for job in first} >= set(calm_jobs)

    second = claim(conn, queue, 16, {str(busy): 2})
    assert running_by_destination(second, queue.table) == {str(busy): 1}
    assert claim(conn, queue, 16, {str(busy): 3}) == []


def test_the_cap_applies_to_integrations_by_integration(database, conn):
    one = insert_integration(database, "webhook", config_json={"url": "http://127.0.0.1:9"})
    for _ in range(6):
        insert_delivery_job(database, one)
    queue = DeliveryJobs(lease_seconds=300, policy=POLICY, order=ClaimOrder(max_in_flight_per_destination=2))

    assert len(claim(conn, queue, 16)) == 2
    assert claim(conn, queue, 16, {one: 2}) == []


def test_the_worker_keeps_a_slow_destination_to_its_share_and_others_flow(database, http_server):
    http_server.script("/slow", *[Reply(200, delay=1.5)] * 10)
    slow = insert_channel(database, "webhook", {"url": http_server.url("/slow")}, tenant_id="tenant-a")
    fast = insert_channel(database, "webhook", {"url": http_server.url("/fast")}, tenant_id="tenant-a")
    slow_jobs = [insert_notification_job(database, slow) for _ in range(8)]
    worker = start_worker(database, worker_threads="8", worker_max_in_flight_per_destination="2")
    try:
        most_at_once = 0
        assert wait_until(lambda: processing(database, slow) > 0)
        fast_jobs = [insert_notification_job(database, fast) for _ in range(4)]
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            most_at_once = max(most_at_once, processing(database, slow))
            time.sleep(0.05)
        fast_done = [job(database, "notification_jobs", j)["status"] for j in fast_jobs]
        slow_done = [job(database, "notification_jobs", j)["status"] for j in slow_jobs]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)

    assert most_at_once == 2
    assert fast_done == ["COMPLETED"] * 4
    assert slow_done.count("COMPLETED") < 8  # 8 jobs of 1.5 s two at a time need 6 s


def processing(dsn: str, channel_id: int) -> int:
    rows = execute(
        dsn,
        "SELECT count(*) AS n FROM notification_jobs WHERE channel_id = %s AND status = 'PROCESSING'",
        (channel_id,),
    )
    return int(rows[0]["n"])


def test_no_share_lets_one_destination_fill_the_threads_and_the_tasks_claimed_ahead(database, conn):
    """``max_in_flight_per_destination = 0``: a destination running on every thread still gets the
    tasks claimed ahead of them (capped at the threads, one busy destination had none queued)."""
    busy = webhook(database)
    for _ in range(12):
        job_with(database, busy, 3)
    settings = make_settings(worker={"threads": 8, "batch_size": 50, "max_in_flight_per_destination": 0})
    queue = build_queues(settings)[0]
    assert len(claim(conn, queue, 16, {str(busy): 8})) == 8  # 8 threads + 8 ahead (at most a batch)
    assert claim(conn, queue, 16, {str(busy): 16}) == []
