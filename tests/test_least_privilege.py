"""`run` works under a role holding only the documented GRANTs, and says clearly when one is missing."""

from __future__ import annotations

import subprocess
import sys

from tests.processes import start_worker, worker_env
from tests.rows import (
    execute,
    insert_channel,
    insert_delivery_job,
    insert_integration,
    insert_notification_job,
    job,
)


def test_run_completes_jobs_under_the_documented_grants(database, http_server, runner_role):
    _role, dsn = runner_role
    channel = insert_channel(database, "webhook", {"url": http_server.url("/n")})
    failing = insert_channel(database, "webhook", {"url": http_server.url("/gone")}, enabled=False)
    integration = insert_integration(database, "webhook", config_json={"url": http_server.url("/d")})
    ok_job = insert_notification_job(database, channel)
    failed_job = insert_notification_job(database, failing)
    delivery_job = insert_delivery_job(database, integration)

    worker = start_worker(dsn, "--drain")
    _out, err = worker.communicate(timeout=60)

    assert worker.returncode == 0, err
    assert job(database, "notification_jobs", ok_job)["status"] == "COMPLETED"
    assert job(database, "notification_jobs", failed_job)["status"] == "FAILED"
    assert job(database, "delivery_jobs", delivery_job)["status"] == "COMPLETED"
    assert len(execute(database, "SELECT * FROM notification_log")) == 2
    assert len(execute(database, "SELECT * FROM delivery_attempts")) == 1
    assert len(execute(database, "SELECT * FROM notification_job_attempts")) == 2


def test_missing_grant_is_one_clear_line_not_a_traceback(database, runner_role):
    role, dsn = runner_role
    execute(database, f"REVOKE INSERT ON notification_log FROM {role}")

    worker = start_worker(dsn, "--drain")
    _out, err = worker.communicate(timeout=60)

    assert worker.returncode == 1
    assert err.strip().splitlines() == [
        f"delivery-worker: database role '{role}' lacks INSERT ON notification_log"
        " (see docs/configuration.md 'Least privilege' for the GRANTs)"
    ]


def test_migrate_needs_the_migrate_dsn_not_the_runner_role(database, runner_role):
    _role, dsn = runner_role
    env = worker_env(dsn)
    command = [sys.executable, "-m", "delivery_worker", "--config", "/dev/null", "migrate"]
    execute(database, "DELETE FROM delivery_worker_migrations WHERE name LIKE '005%%'")

    as_runner = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    with_migrate_dsn = subprocess.run(
        command,
        env={**env, "DELIVERY_WORKER_DATABASE_MIGRATE_DSN": database},
        capture_output=True,
        text=True,
        check=False,
    )

    assert as_runner.returncode == 1
    assert "Traceback" not in as_runner.stderr and "permission denied" in as_runner.stderr
    assert with_migrate_dsn.returncode == 0, with_migrate_dsn.stderr
    assert with_migrate_dsn.stdout.startswith("applied 1 migration(s): 005_notify_on_insert.sql")


def test_a_revoked_select_on_the_migration_ledger_is_one_line_naming_it(database, runner_role):
    role, dsn = runner_role
    execute(database, f"REVOKE SELECT ON delivery_worker_migrations FROM {role}")

    worker = start_worker(dsn, "--drain")
    _out, err = worker.communicate(timeout=60)

    assert worker.returncode == 1
    assert err.strip().splitlines() == [
        f"delivery-worker: database role '{role}' lacks SELECT ON delivery_worker_migrations"
        " (see docs/configuration.md 'Least privilege' for the GRANTs)"
    ]


def test_a_revoked_usage_on_the_schema_is_one_line_naming_it_not_run_migrate(database, runner_role):
    role, dsn = runner_role
    execute(database, f"REVOKE USAGE ON SCHEMA public FROM {role}")
    execute(database, "REVOKE USAGE ON SCHEMA public FROM PUBLIC")

    worker = start_worker(dsn, database_schema_wait_seconds="60")
    _out, err = worker.communicate(timeout=60)

    assert worker.returncode == 1
    assert err.strip().splitlines() == [
        f"delivery-worker: database role '{role}' lacks USAGE ON SCHEMA public"
        " (see docs/configuration.md 'Least privilege' for the GRANTs)"
    ]
