"""`run` started before `migrate` finished (a Procfile platform starts release and worker together):
it waits for the schema, logging schema.waiting, for at most [database] schema_wait_seconds."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from tests.processes import start_worker, wait_until, worker_env
from tests.rows import insert_channel, insert_notification_job, job
from tests.test_database_sessions import OutputLines


def events(out: OutputLines, name: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in list(out.lines) if f'"{name}"' in line]


def test_a_worker_started_before_migrate_waits_for_it_then_delivers(empty_database, http_server):
    worker = start_worker(empty_database, database_schema_wait_seconds="120")
    out = OutputLines(worker)
    try:
        assert wait_until(lambda: out.count("schema.waiting") == 1)
        (waiting,) = events(out, "schema.waiting")
        assert "001_platform_tables.sql" in waiting["missing"]  # type: ignore[operator]
        assert waiting["migrate_running"] is False
        assert worker.poll() is None  # still waiting, not exited

        migrate = subprocess.run(
            [sys.executable, "-m", "delivery_worker", "--config", "/dev/null", "migrate"],
            env=worker_env(empty_database),
            capture_output=True,
            text=True,
            check=False,
        )
        assert migrate.returncode == 0, migrate.stderr
        assert wait_until(lambda: out.count("worker.started") == 1, timeout=30)
        assert out.count("schema.ready") == 1

        channel = insert_channel(empty_database, "webhook", {"url": http_server.url("/late")})
        job_id = insert_notification_job(empty_database, channel)
        assert wait_until(lambda: job(empty_database, "notification_jobs", job_id)["status"] == "COMPLETED")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
    assert worker.returncode == 0


def test_the_schema_wait_is_bounded_then_one_line_and_exit_1(empty_database):
    worker = start_worker(empty_database, database_schema_wait_seconds="1")
    out, err = worker.communicate(timeout=30)

    assert worker.returncode == 1
    assert '"schema.waiting"' in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "delivery-worker: database schema is not up to date (missing "
    )
    assert lines[0].endswith("run `delivery-worker migrate`")
