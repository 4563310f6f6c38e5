"""Several worker processes sharing one database: SKIP LOCKED gives each job to exactly one."""

from __future__ import annotations

import collections

from tests.processes import start_worker
from tests.rows import execute, insert_channel, insert_notification_job


def test_two_processes_send_each_job_once(database, http_server):
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    job_ids = [insert_notification_job(database, channel) for _ in range(200)]

    settings = {"worker_threads": "4", "worker_batch_size": "5"}
    workers = [start_worker(database, "--drain", **settings) for _ in range(2)]
    outputs = [w.communicate(timeout=120) for w in workers]

    assert [w.returncode for w in workers] == [0, 0], [err for _, err in outputs]
    keys = collections.Counter(r.header("Idempotency-Key") for r in http_server.received("/hook"))
    assert keys == collections.Counter({f"notification_jobs:{j}": 1 for j in job_ids})
    rows = execute(database, "SELECT status, count(*) AS n FROM notification_jobs GROUP BY status")
    assert rows == [{"status": "COMPLETED", "n": 200}]
    # Every completion is logged exactly once across the processes.
    completed_lines = [out.count('"job.completed"') for out, _ in outputs]
    assert sum(completed_lines) == 200


def test_three_processes_with_thousands_of_jobs_send_each_once(database, http_server):
    channel = insert_channel(database, "webhook", {"url": http_server.url("/bulk")})
    execute(
        database,
        "INSERT INTO notification_jobs (tenant_id, alert_id, channel_id, payload_json)"
        " SELECT 'tenant-a', g, %s, jsonb_build_object('alert_id', g) FROM generate_series(1, 3000) AS g",
        (channel,),
    )

    settings = {"worker_threads": "8", "worker_batch_size": "20"}
    workers = [start_worker(database, "--drain", **settings) for _ in range(3)]
    outputs = [w.communicate(timeout=300) for w in workers]

    assert [w.returncode for w in workers] == [0, 0, 0], [err for _, err in outputs]
    keys = collections.Counter(r.header("Idempotency-Key") for r in http_server.received("/bulk"))
    assert len(keys) == 3000 and set(keys.values()) == {1}
    rows = execute(database, "SELECT status, count(*) AS n FROM notification_jobs GROUP BY status")
    assert rows == [{"status": "COMPLETED", "n": 3000}]
    assert all(out.count('"job.completed"') > 0 for out, _ in outputs), "a worker process did nothing"
