"""Inserting channels, integrations and jobs the way the platform's producers do, and reading them back."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg2
import psycopg2.extras

from delivery_worker.config import Settings
from delivery_worker.service import run_worker
from tests.support import SAMPLE_PAYLOAD, make_settings


def execute(dsn: str, statement: str, params: Any = None) -> list[dict[str, Any]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(statement, params)
            return [dict(row) for row in cur.fetchall()] if cur.description else []
    finally:
        conn.close()


def insert_channel(
    dsn: str, channel_type: str, config: Any, *, tenant_id: str = "tenant-a", enabled: bool = True
) -> int:
    rows = execute(
        dsn,
        "INSERT INTO notification_channels (tenant_id, name, channel_type, config, is_enabled)"
        " VALUES (%s, %s, %s, %s, %s) RETURNING channel_id",
        (tenant_id, f"{channel_type} channel", channel_type, json.dumps(config), enabled),
    )
    return int(rows[0]["channel_id"])


_alert_ids = iter(range(1_000, 10_000_000))


def insert_notification_job(
    dsn: str,
    channel_id: int,
    payload: Any = None,
    *,
    tenant_id: str = "tenant-a",
    alert_id: int | None = None,
    event: str = "OPEN",
    raw_payload_sql: str | None = None,
) -> int:
    alert_id = next(_alert_ids) if alert_id is None else alert_id
    body = dict(SAMPLE_PAYLOAD, alert_id=alert_id) if payload is None else payload
    value_sql = raw_payload_sql or "%s::jsonb"
    params: tuple[Any, ...] = (tenant_id, alert_id, channel_id, event)
    if raw_payload_sql is None:
        params += (json.dumps(body),)
    rows = execute(
        dsn,
        "INSERT INTO notification_jobs (tenant_id, alert_id, channel_id, deliver_on_event, payload_json)"
        f" VALUES (%s, %s, %s, %s, {value_sql}) RETURNING job_id",
        params,
    )
    return int(rows[0]["job_id"])


def insert_integration(
    dsn: str, kind: str, *, tenant_id: str = "tenant-a", enabled: bool = True, **columns: Any
) -> str:
    integration_id = str(uuid.uuid4())
    names = ["tenant_id", "integration_id", "name", "type", "enabled", *columns]
    values = [tenant_id, integration_id, f"{kind} integration", kind, enabled]
    values += [json.dumps(v) if isinstance(v, dict | list) else v for v in columns.values()]
    placeholders = ", ".join(["%s"] * len(values))
    execute(dsn, f"INSERT INTO integrations ({', '.join(names)}) VALUES ({placeholders})", values)
    return integration_id


def insert_email_integration(dsn: str, smtp_port: int, **columns: Any) -> str:
    """An email integration sending to ops@acme.test through a plain-text SMTP server on 127.0.0.1."""
    return insert_integration(
        dsn,
        "email",
        email_config={
            "host": "127.0.0.1",
            "port": smtp_port,
            "use_tls": False,
            "from_address": "a@pulse.test",
        },
        email_recipients={"to": ["ops@acme.test"]},
        **columns,
    )


def insert_route(dsn: str, integration_id: str, *, tenant_id: str = "tenant-a") -> str:
    route_id = str(uuid.uuid4())
    execute(
        dsn,
        "INSERT INTO integration_routes (tenant_id, route_id, integration_id, name) VALUES (%s, %s, %s, 'r')",
        (tenant_id, route_id, integration_id),
    )
    return route_id


def insert_delivery_job(
    dsn: str,
    integration_id: str,
    payload: Any = None,
    *,
    tenant_id: str = "tenant-a",
    alert_id: int | None = None,
    event: str = "OPEN",
    route_id: str | None = None,
) -> int:
    alert_id = next(_alert_ids) if alert_id is None else alert_id
    route_id = route_id or insert_route(dsn, integration_id, tenant_id=tenant_id)
    body = payload if payload is not None else integration_payload(alert_id)
    rows = execute(
        dsn,
        "INSERT INTO delivery_jobs"
        " (tenant_id, alert_id, integration_id, route_id, deliver_on_event, payload_json)"
        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING job_id",
        (tenant_id, alert_id, integration_id, route_id, event, json.dumps(body)),
    )
    return int(rows[0]["job_id"])


def integration_payload(alert_id: int) -> dict[str, Any]:
    """The older producer's shape: summary, status, created_at, confidence, no tenant_id."""
    return {
        "alert_id": alert_id,
        "device_id": "sensor-9",
        "site_id": "plant-1",
        "alert_type": "OFFLINE",
        "severity": "3",
        "summary": "Device offline for 10 minutes",
        "status": "OPEN",
        "created_at": "2026-11-29T03:00:00Z",
        "confidence": 0.93,
    }


def job(dsn: str, table: str, job_id: int) -> dict[str, Any]:
    return execute(dsn, f"SELECT * FROM {table} WHERE job_id = %s", (job_id,))[0]


def log_rows(dsn: str, job_id: int) -> list[dict[str, Any]]:
    return execute(dsn, "SELECT * FROM notification_log WHERE job_id = %s ORDER BY log_id", (job_id,))


def attempt_rows(dsn: str, job_id: int) -> list[dict[str, Any]]:
    return execute(dsn, "SELECT * FROM delivery_attempts WHERE job_id = %s ORDER BY attempt_id", (job_id,))


def worker_settings(dsn: str, **sections: dict[str, Any]) -> Settings:
    """Fast test defaults: immediate durable retries, quick in-process waits, short timeouts."""
    worker = {"backoff_base_seconds": 0.0, "poll_interval": 0.05, "quick_retries": 0, "threads": 8}
    worker.update(sections.pop("worker", {}))
    http = {"connect_timeout": 2.0, "read_timeout": 5.0, **sections.pop("http", {})}
    return make_settings(database={"dsn": dsn, "migrate_dsn": dsn}, worker=worker, http=http, **sections)


def drain(dsn: str, **sections: dict[str, Any]) -> None:
    run_worker(worker_settings(dsn, **sections), drain=True)
