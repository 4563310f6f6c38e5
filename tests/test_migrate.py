"""`migrate` on an empty database and on one that already has the platform's tables, twice each."""

from __future__ import annotations

import subprocess
import sys

from delivery_worker.db import connect
from delivery_worker.migrate import apply_migrations, migration_files, pending_migrations
from tests.rows import execute

# The platform's own DDL as production has it: INTEGER notification_log.alert_id, an enum for
# integrations.type, no indexes or ledger of ours, and producers' rows already present.
PLATFORM_DDL = """
CREATE TYPE integration_type AS ENUM ('webhook', 'snmp', 'email', 'mqtt');
CREATE TABLE notification_channels (
    channel_id SERIAL PRIMARY KEY, tenant_id TEXT NOT NULL, name TEXT NOT NULL,
    channel_type TEXT NOT NULL, config JSONB NOT NULL DEFAULT '{}',
    is_enabled BOOLEAN NOT NULL DEFAULT TRUE, created_at TIMESTAMPTZ DEFAULT now(),
    updated_at TIMESTAMPTZ DEFAULT now());
CREATE TABLE notification_jobs (
    job_id BIGSERIAL PRIMARY KEY, tenant_id TEXT NOT NULL, alert_id BIGINT NOT NULL,
    channel_id INTEGER NOT NULL REFERENCES notification_channels ON DELETE CASCADE,
    rule_id INTEGER NULL, deliver_on_event TEXT NOT NULL DEFAULT 'OPEN',
    status TEXT NOT NULL DEFAULT 'PENDING', attempts INTEGER NOT NULL DEFAULT 0,
    next_run_at TIMESTAMPTZ NOT NULL DEFAULT now(), last_error TEXT,
    payload_json JSONB NOT NULL DEFAULT '{}', created_at TIMESTAMPTZ DEFAULT now(),
    updated_at TIMESTAMPTZ DEFAULT now(),
    UNIQUE (tenant_id, alert_id, channel_id, deliver_on_event));
CREATE TABLE notification_log (
    log_id BIGSERIAL PRIMARY KEY, channel_id INTEGER NOT NULL, alert_id INTEGER NOT NULL,
    sent_at TIMESTAMPTZ DEFAULT now(),
    job_id BIGINT NULL REFERENCES notification_jobs ON DELETE SET NULL,
    success BOOLEAN DEFAULT TRUE, error_msg TEXT);
CREATE TABLE integrations (
    tenant_id TEXT NOT NULL, integration_id UUID NOT NULL, name TEXT, type integration_type NOT NULL,
    enabled BOOLEAN DEFAULT TRUE, config_json JSONB, snmp_host TEXT, snmp_port INTEGER DEFAULT 162,
    snmp_config JSONB, snmp_oid_prefix TEXT DEFAULT '1.3.6.1.4.1.99999', email_config JSONB,
    email_recipients JSONB, email_template JSONB, mqtt_topic TEXT, mqtt_qos INTEGER DEFAULT 1,
    mqtt_retain BOOLEAN DEFAULT false, mqtt_config JSONB, created_at TIMESTAMPTZ DEFAULT now(),
    updated_at TIMESTAMPTZ DEFAULT now(), PRIMARY KEY (tenant_id, integration_id));
CREATE TABLE integration_routes (
    tenant_id TEXT NOT NULL, route_id UUID NOT NULL, integration_id UUID NOT NULL, name TEXT,
    enabled BOOLEAN DEFAULT TRUE, min_severity INTEGER, alert_types TEXT[], deliver_on TEXT[],
    priority INTEGER, PRIMARY KEY (tenant_id, route_id));
CREATE TABLE delivery_jobs (
    job_id BIGSERIAL PRIMARY KEY, tenant_id TEXT NOT NULL, alert_id BIGINT NOT NULL,
    integration_id UUID NOT NULL, route_id UUID NOT NULL, deliver_on_event TEXT NOT NULL DEFAULT 'OPEN',
    status TEXT NOT NULL DEFAULT 'PENDING', attempts INT NOT NULL DEFAULT 0,
    next_run_at TIMESTAMPTZ NOT NULL DEFAULT now(), last_error TEXT, payload_json JSONB NOT NULL,
    created_at TIMESTAMPTZ DEFAULT now(), updated_at TIMESTAMPTZ DEFAULT now(),
    UNIQUE (tenant_id, alert_id, route_id, deliver_on_event),
    FOREIGN KEY (tenant_id, integration_id) REFERENCES integrations (tenant_id, integration_id),
    FOREIGN KEY (tenant_id, route_id) REFERENCES integration_routes (tenant_id, route_id));
CREATE TABLE delivery_attempts (
    attempt_id BIGSERIAL PRIMARY KEY, tenant_id TEXT NOT NULL, job_id BIGINT REFERENCES delivery_jobs,
    attempt_no INT NOT NULL, ok BOOLEAN NOT NULL, http_status INT NULL, latency_ms INT NULL,
    error TEXT NULL, started_at TIMESTAMPTZ NOT NULL, finished_at TIMESTAMPTZ NOT NULL);
INSERT INTO notification_channels (tenant_id, name, channel_type) VALUES ('t', 'existing', 'slack');
INSERT INTO notification_jobs (tenant_id, alert_id, channel_id) VALUES ('t', 7, 1);
"""

EXPECTED_TABLES = {
    "notification_channels",
    "notification_routing_rules",
    "notification_jobs",
    "notification_log",
    "integrations",
    "integration_routes",
    "delivery_jobs",
    "delivery_attempts",
    "delivery_worker_migrations",
}


def tables(dsn: str) -> set[str]:
    rows = execute(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


def schema_snapshot(dsn: str) -> list[dict[str, object]]:
    return execute(
        dsn,
        "SELECT table_name, column_name, data_type, column_default FROM information_schema.columns"
        " WHERE table_schema = 'public' ORDER BY table_name, column_name",
    )


def migrate(dsn: str) -> list[str]:
    conn = connect(dsn)
    try:
        return apply_migrations(conn)
    finally:
        conn.close()


def test_migrate_empty_database_then_again_is_a_no_op(empty_database):
    applied = migrate(empty_database)
    assert applied == [name for name, _ in migration_files()]
    assert tables(empty_database) >= EXPECTED_TABLES
    before = schema_snapshot(empty_database)

    assert migrate(empty_database) == []
    assert schema_snapshot(empty_database) == before


def test_migrate_keeps_platform_tables_and_rows_and_widens_log_alert_id(empty_database):
    execute(empty_database, PLATFORM_DDL)

    migrate(empty_database)
    migrate(empty_database)

    assert tables(empty_database) >= EXPECTED_TABLES
    rows = execute(empty_database, "SELECT tenant_id, alert_id, status FROM notification_jobs")
    assert rows == [{"tenant_id": "t", "alert_id": 7, "status": "PENDING"}]
    (column,) = execute(
        empty_database,
        "SELECT data_type FROM information_schema.columns"
        " WHERE table_name = 'notification_log' AND column_name = 'alert_id'",
    )
    assert column["data_type"] == "bigint"
    (kind,) = execute(
        empty_database,
        "SELECT udt_name FROM information_schema.columns"
        " WHERE table_name = 'integrations' AND column_name = 'type'",
    )
    assert kind["udt_name"] == "integration_type"
    indexes = {r["indexname"] for r in execute(empty_database, "SELECT indexname FROM pg_indexes")}
    assert {"notification_jobs_due_idx", "delivery_jobs_due_idx"} <= indexes


def test_pending_migrations_reports_unmigrated_database(empty_database):
    conn = connect(empty_database)
    try:
        assert pending_migrations(conn) == [name for name, _ in migration_files()]
    finally:
        conn.close()


def test_migrate_command_twice_from_the_cli(empty_database):
    env = {"DATABASE_URL": empty_database, "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "delivery_worker", "--config", "/dev/null", "migrate"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    second = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"applied {len(migration_files())} migration(s)")
    assert second.returncode == 0 and second.stdout.strip() == "schema is up to date"
