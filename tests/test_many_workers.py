"""Several worker processes sharing one database: SKIP LOCKED gives each job to exactly one."""

from __future__ import annotations

import collections
import os
import subprocess
import sys

from tests.rows import execute, insert_channel, insert_notification_job


def start_worker(dsn: str) -> subprocess.Popen[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DATABASE_URL": dsn,
        "DELIVERY_WORKER_WORKER_THREADS": "4",
        "DELIVERY_WORKER_WORKER_BATCH_SIZE": "5",
        "DELIVERY_WORKER_WORKER_POLL_INTERVAL": "0.05",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "delivery_worker", "--config", "/dev/null", "run", "--drain"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_send_each_job_once(database, http_server):
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    job_ids = [insert_notification_job(database, channel) for _ in range(200)]

    workers = [start_worker(database), start_worker(database)]
    outputs = [w.communicate(timeout=120) for w in workers]

    assert [w.returncode for w in workers] == [0, 0], [err for _, err in outputs]
    keys = collections.Counter(r.header("Idempotency-Key") for r in http_server.received("/hook"))
    assert keys == collections.Counter({f"notification_jobs:{j}": 1 for j in job_ids})
    rows = execute(database, "SELECT status, count(*) AS n FROM notification_jobs GROUP BY status")
    assert rows == [{"status": "COMPLETED", "n": 200}]
    # Both processes did part of the work.
    completed_lines = [out.count('"job.completed"') for out, _ in outputs]
    assert sum(completed_lines) == 200
