"""Leases of running jobs are renewed, and refused outcome writes never turn into second sends.

Real worker processes against the real PostgreSQL and a local HTTP endpoint. Each test counts the
requests the endpoint received: that is what a receiver would see twice if a job were re-sent.
"""

from __future__ import annotations

import collections
import signal
import time
from datetime import timedelta

import psycopg2.extensions

from delivery_worker.db import connect, transaction
from delivery_worker.jobs import Table
from delivery_worker.queues.status import LEASE_LOST_ERROR, resync_leases
from tests.processes import start_worker, wait_until
from tests.rows import (
    attempt_rows,
    execute,
    insert_channel,
    insert_delivery_job,
    insert_integration,
    insert_notification_job,
    job,
    log_rows,
)
from tests.servers.http import Reply


def statuses(dsn: str) -> dict[str, int]:
    rows = execute(dsn, "SELECT status, count(*) AS n FROM notification_jobs GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


def sends(server, path: str) -> collections.Counter[str | None]:
    return collections.Counter(r.header("Idempotency-Key") for r in server.received(path))


def stop(worker) -> tuple[str, str]:
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    return out, err


def test_a_job_running_longer_than_its_lease_is_sent_once_and_completes(database, http_server):
    """Two workers, an 8 s delivery under a 12 s lease: renewed while it runs, sent once."""
    http_server.script("/slow", Reply(200, delay=8.0))
    channel = insert_channel(database, "webhook", {"url": http_server.url("/slow")})
    job_id = insert_notification_job(database, channel)
    settings = {"worker_lease_seconds": "12", "http_read_timeout": "30", "worker_job_timeout_seconds": "10"}

    first = start_worker(database, **settings)
    assert wait_until(lambda: len(http_server.received("/slow")) == 1)
    second = start_worker(database, **settings)
    leases = set()
    assert wait_until(
        lambda: (
            leases.add(job(database, "notification_jobs", job_id)["lease_expires_at"])
            or job(database, "notification_jobs", job_id)["status"] == "COMPLETED"
        ),
        timeout=30,
    )
    out_first, _ = stop(first)
    out_second, _ = stop(second)

    assert len(http_server.received("/slow")) == 1
    row = job(database, "notification_jobs", job_id)
    assert (row["status"], row["attempts"], row["last_error"]) == ("COMPLETED", 0, None)
    assert [r["success"] for r in log_rows(database, job_id)] == [True]
    assert len(leases - {None}) >= 2, "the lease was never renewed"
    assert '"jobs.reclaimed"' not in out_first + out_second


def test_revoked_insert_on_the_log_for_a_few_seconds_sends_nothing_twice(database, http_server, runner_role):
    role, dsn = runner_role
    http_server.script("/hook", *[Reply(200, delay=0.3)] * 400)
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    job_ids = [insert_notification_job(database, channel) for _ in range(40)]

    worker = start_worker(dsn, worker_threads="4", worker_lease_seconds="4", worker_job_timeout_seconds="2")
    assert wait_until(lambda: statuses(database).get("COMPLETED", 0) >= 5)
    execute(database, f"REVOKE INSERT ON notification_log FROM {role}")
    time.sleep(6)  # outcomes refused for longer than a lease; the worker keeps delivering meanwhile
    assert statuses(database).get("COMPLETED", 0) < 40
    execute(database, f"GRANT INSERT ON notification_log TO {role}")
    assert wait_until(lambda: statuses(database) == {"COMPLETED": 40}, timeout=90)
    out, _ = stop(worker)

    sent = sends(http_server, "/hook")
    assert set(sent) == {f"notification_jobs:{j}" for j in job_ids}
    assert set(sent.values()) == {1}, "a job was sent twice"
    logged = execute(database, "SELECT job_id, count(*) AS n FROM notification_log GROUP BY job_id")
    assert {r["job_id"]: r["n"] for r in logged} == dict.fromkeys(job_ids, 1)
    assert '"outcome.rejected"' in out and "permission denied" in out
    assert '"database.unavailable"' not in out


def test_a_log_row_refused_by_a_check_constraint_is_not_resent_and_others_complete(database, http_server):
    http_server.script("/a", *[Reply(200)] * 50)
    refused_channel = insert_channel(
        database, "webhook", {"url": http_server.url("/refused")}, tenant_id="t-b"
    )
    other_channel = insert_channel(database, "webhook", {"url": http_server.url("/a")})
    execute(
        database,
        f"ALTER TABLE notification_log ADD CONSTRAINT no_refused CHECK (channel_id <> {refused_channel})",
    )
    refused_job = insert_notification_job(database, refused_channel, tenant_id="t-b")
    others = [insert_notification_job(database, other_channel) for _ in range(6)]

    workers = [
        start_worker(database, worker_lease_seconds="4", worker_job_timeout_seconds="2", worker_threads="4")
        for _ in range(2)
    ]
    assert wait_until(lambda: statuses(database) == {"COMPLETED": 6, "PROCESSING": 1}, timeout=30)
    time.sleep(5)  # more than two leases: neither worker's reaper may take the refused job back
    assert job(database, "notification_jobs", refused_job)["status"] == "PROCESSING"
    assert len(http_server.received("/refused")) == 1

    execute(database, "ALTER TABLE notification_log DROP CONSTRAINT no_refused")
    assert wait_until(lambda: statuses(database) == {"COMPLETED": 7}, timeout=60)
    outputs = "".join(stop(w)[0] for w in workers)

    assert len(http_server.received("/refused")) == 1
    assert sorted(sends(http_server, "/a").values()) == [1] * len(others)
    assert [r["success"] for r in log_rows(database, refused_job)] == [True]
    assert '"outcome.rejected"' in outputs and "no_refused" in outputs
    assert '"jobs.reclaimed"' not in outputs


def test_one_row_that_cannot_be_reaped_does_not_block_the_others(database, http_server):
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    crashed = [insert_notification_job(database, channel) for _ in range(70)]
    stuck = insert_notification_job(database, channel)  # beyond the first round of one-by-one reaps
    crashed += [insert_notification_job(database, channel) for _ in range(30)]
    execute(
        database,
        "UPDATE notification_jobs SET status = 'PROCESSING', lease_expires_at = now() - interval '1 minute'",
    )
    # A constraint (as an operator or a trigger might add) that refuses the reap of one row only.
    execute(
        database,
        "ALTER TABLE notification_jobs ADD CONSTRAINT keep_stuck"
        f" CHECK (job_id <> {stuck} OR status = 'PROCESSING')",
    )

    worker = start_worker(database, "--drain")
    out, err = worker.communicate(timeout=60)

    assert worker.returncode == 0, err
    assert statuses(database) == {"COMPLETED": 100, "PROCESSING": 1}
    assert job(database, "notification_jobs", stuck)["status"] == "PROCESSING"
    assert sorted(sends(http_server, "/hook")) == sorted(f"notification_jobs:{j}" for j in crashed)
    assert '"reap.rejected"' in out and "keep_stuck" in out
    assert '"database.unavailable"' not in out


def test_drain_exits_only_once_every_outcome_is_written(database, http_server):
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    job_id = insert_notification_job(database, channel)
    execute(database, f"ALTER TABLE notification_log ADD CONSTRAINT held_back CHECK (job_id <> {job_id})")

    worker = start_worker(database, "--drain")
    assert wait_until(lambda: len(http_server.received("/hook")) == 1)
    time.sleep(3)
    assert worker.poll() is None, "drain exited with an outcome unwritten"
    execute(database, "ALTER TABLE notification_log DROP CONSTRAINT held_back")
    _out, err = worker.communicate(timeout=60)

    assert worker.returncode == 0, err
    assert job(database, "notification_jobs", job_id)["status"] == "COMPLETED"
    assert len(http_server.received("/hook")) == 1
    assert [r["success"] for r in log_rows(database, job_id)] == [True]


def test_a_row_locked_by_another_session_does_not_stop_other_outcomes(database, http_server):
    http_server.script("/slow", Reply(200, delay=1.0))
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    slow_channel = insert_channel(database, "webhook", {"url": http_server.url("/slow")})
    locked_job = insert_notification_job(database, slow_channel)

    worker = start_worker(database, worker_threads="4")
    try:
        assert wait_until(lambda: len(http_server.received("/slow")) == 1)
        holder = psycopg2.connect(database)
        try:
            with holder.cursor() as cur:  # an open transaction holding the row lock
                cur.execute("SELECT 1 FROM notification_jobs WHERE job_id = %s FOR UPDATE", (locked_job,))
            time.sleep(1.5)  # the delivery ends: its outcome now waits for the locked row
            others = [insert_notification_job(database, channel) for _ in range(5)]
            assert wait_until(
                lambda: all(job(database, "notification_jobs", j)["status"] == "COMPLETED" for j in others)
            )
            assert job(database, "notification_jobs", locked_job)["status"] == "PROCESSING"
        finally:
            holder.rollback()
            holder.close()
        assert wait_until(lambda: job(database, "notification_jobs", locked_job)["status"] == "COMPLETED")
    finally:
        stop(worker)
    assert len(http_server.received("/slow")) == 1


def test_a_job_claimed_again_while_its_worker_still_runs_it_is_not_sent_twice(database, http_server):
    """Another worker reaped the job under this one (as after a long outage); this worker's next claim
    returns it: it takes the claim over, does not start a second delivery, and records the first."""
    http_server.script("/slow", Reply(200, delay=3.0))
    channel = insert_channel(database, "webhook", {"url": http_server.url("/slow")})
    job_id = insert_notification_job(database, channel)

    worker = start_worker(database, "--drain")
    assert wait_until(lambda: len(http_server.received("/slow")) == 1)
    execute(  # exactly what the reap of another worker writes
        database,
        "UPDATE notification_jobs SET status = 'PENDING', attempts = attempts + 1, next_run_at = now(),"
        " lease_expires_at = NULL, last_error = %s WHERE job_id = %s",
        (LEASE_LOST_ERROR, job_id),
    )
    out, err = worker.communicate(timeout=60)

    assert worker.returncode == 0, err
    assert len(http_server.received("/slow")) == 1
    assert job(database, "notification_jobs", job_id)["status"] == "COMPLETED"
    assert [r["success"] for r in log_rows(database, job_id)] == [True]
    assert '"job.claimed_again"' in out


def test_after_a_renewal_of_unknown_fate_only_the_workers_own_later_lease_is_adopted(database):
    channel = insert_channel(database, "webhook", {"url": "http://127.0.0.1:9/unused"})
    ids = [insert_notification_job(database, channel) for _ in range(3)]
    execute(
        database,
        "UPDATE notification_jobs"
        " SET status = 'PROCESSING', lease_expires_at = now() + interval '10 minutes'",
    )
    renewed = {
        r["job_id"]: r["lease_expires_at"] for r in execute(database, "SELECT * FROM notification_jobs")
    }
    known = {j: renewed[j] - timedelta(minutes=5) for j in ids}  # what the worker knew before the renewal
    known[ids[1]] = renewed[ids[1]] - timedelta(minutes=20)  # already past: it may have been reaped
    execute(database, "UPDATE notification_jobs SET status = 'COMPLETED' WHERE job_id = %s", (ids[2],))

    conn = connect(database)
    try:
        with transaction(conn) as cur:
            found = resync_leases(cur, Table.NOTIFICATION_JOBS, list(known.items()))
    finally:
        conn.close()

    assert found == {ids[0]: renewed[ids[0]]}


def test_connections_cut_while_leases_are_renewed_send_nothing_twice(database, http_server):
    """Backends killed again and again while a lease is renewed under a 6 s delivery; the job is
    sent once."""
    from tests.test_faults import terminate_worker_connections

    http_server.script("/slow", Reply(200, delay=6.0))
    channel = insert_channel(database, "webhook", {"url": http_server.url("/slow")})
    job_id = insert_notification_job(database, channel)
    settings = {"worker_lease_seconds": "10", "http_read_timeout": "30", "worker_job_timeout_seconds": "8"}

    first = start_worker(database, **settings)
    assert wait_until(lambda: len(http_server.received("/slow")) == 1)
    second = start_worker(database, **settings)
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        terminate_worker_connections(database)
        time.sleep(0.3)
    assert wait_until(lambda: job(database, "notification_jobs", job_id)["status"] == "COMPLETED", timeout=30)
    stop(first)
    stop(second)

    assert len(http_server.received("/slow")) == 1
    assert [r["success"] for r in log_rows(database, job_id)] == [True]


def test_the_heartbeat_covers_the_integrations_queue_too(database, http_server):
    http_server.script("/slow", Reply(200, delay=5.0))
    integration = insert_integration(database, "webhook", config_json={"url": http_server.url("/slow")})
    job_id = insert_delivery_job(database, integration)
    settings = {"worker_lease_seconds": "9", "http_read_timeout": "30", "worker_job_timeout_seconds": "7"}

    workers = [start_worker(database, **settings) for _ in range(2)]
    assert wait_until(lambda: job(database, "delivery_jobs", job_id)["status"] == "COMPLETED", timeout=30)
    for worker in workers:
        stop(worker)

    assert len(http_server.received("/slow")) == 1
    assert [(r["attempt_no"], r["ok"]) for r in attempt_rows(database, job_id)] == [(1, True)]
