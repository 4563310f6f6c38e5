"""`show JOB`: one job as an operator needs it — the row, its attempts, its log rows, its destination.

Attempts come from ``delivery_attempts`` (delivery_jobs) or ``notification_job_attempts``
(notification_jobs, migration 007); ``notification_log`` rows only exist for notification jobs. The
destination (channel or integration) is shown with its config masked: every value the channel's own
config declares secret (``ChannelConfig.secrets()``) or that looks like one (delivery_worker/redaction.py:
URL paths and queries, header values, keys named like secrets) is replaced by ``[REDACTED]``, and the
stored error texts are masked the same way. Read-only: it changes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from datetime import UTC
from typing import Any

from channels.errors import DeliveryError
from channels.registry import ChannelRegistry, build_registry
from delivery_worker.config import Settings
from delivery_worker.db import OPERATOR_SESSION, Connection, connect, transaction
from delivery_worker.jobs import Table
from delivery_worker.ops.job_selection import add_job_arguments, find_jobs, tables_for
from delivery_worker.ops.output import (
    EXIT_FAILURE,
    EXIT_OK,
    add_json_argument,
    excerpt,
    print_json,
    render_table,
)
from delivery_worker.queues.delivery_jobs import integration_config
from delivery_worker.redaction import MASK, redact, secret_values

JOB_COLUMNS = (
    "job_id, tenant_id, alert_id, deliver_on_event, status, attempts, next_run_at, lease_expires_at, "
    "last_error, created_at, updated_at, payload_json"
)

NOTIFICATION_JOB = f"""
SELECT {JOB_COLUMNS}, channel_id, rule_id FROM notification_jobs WHERE job_id = %(job_id)s
"""
DELIVERY_JOB = f"""
SELECT {JOB_COLUMNS}, integration_id::text, route_id::text FROM delivery_jobs WHERE job_id = %(job_id)s
"""

CHANNEL = """
SELECT channel_id, tenant_id, name, channel_type, is_enabled, config
FROM notification_channels WHERE channel_id = %(destination)s::integer
"""
INTEGRATION = """
SELECT integration_id::text, tenant_id, name, type::text AS type, enabled, config_json,
       snmp_host, snmp_port, snmp_config, snmp_oid_prefix,
       email_config, email_recipients, email_template,
       mqtt_topic, mqtt_qos, mqtt_retain, mqtt_config
FROM integrations WHERE tenant_id = %(tenant_id)s AND integration_id = %(destination)s::uuid
"""

NOTIFICATION_ATTEMPTS = """
SELECT attempt_no, outcome, http_status, latency_ms, started_at, finished_at, error
FROM notification_job_attempts WHERE job_id = %(job_id)s ORDER BY attempt_id
"""
DELIVERY_ATTEMPTS = """
SELECT attempt_no, CASE WHEN ok THEN 'completed' ELSE 'failed' END AS outcome,
       http_status, latency_ms, started_at, finished_at, error
FROM delivery_attempts WHERE job_id = %(job_id)s ORDER BY attempt_id
"""
ATTEMPT_COLUMNS = ("attempt_no", "outcome", "http_status", "latency_ms", "started_at", "finished_at", "error")

LOG_ROWS = """
SELECT log_id, sent_at, success, error_msg FROM notification_log WHERE job_id = %(job_id)s ORDER BY log_id
"""
LOG_COLUMNS = ("log_id", "sent_at", "success", "error_msg")

PAUSES = """
SELECT scope, target, paused_at, reason FROM delivery_worker_pauses
WHERE (scope, target) IN (('tenant', %(tenant_id)s), (%(scope)s, %(destination)s))
ORDER BY scope
"""

JOB_QUERY = {Table.NOTIFICATION_JOBS: NOTIFICATION_JOB, Table.DELIVERY_JOBS: DELIVERY_JOB}
ATTEMPTS_QUERY = {Table.NOTIFICATION_JOBS: NOTIFICATION_ATTEMPTS, Table.DELIVERY_JOBS: DELIVERY_ATTEMPTS}
PAUSE_SCOPE = {Table.NOTIFICATION_JOBS: "channel", Table.DELIVERY_JOBS: "integration"}


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "show",
        help="one job: its row, attempts, log rows, last error and destination (secrets masked)",
        description=(
            "Show a job with its attempts, notification_log rows, last error and destination "
            "(config secrets masked). Ids are per table: without --table, a job found in both "
            "tables is shown twice, each labelled. Exit 1 when no such job exists."
        ),
    )
    add_job_arguments(parser, many=False)
    add_json_argument(parser)


def run(settings: Settings, args: argparse.Namespace) -> int:
    conn = connect(settings.database.dsn, session=OPERATOR_SESSION)
    registry: ChannelRegistry | None = None

    def channels() -> ChannelRegistry:  # built only when a destination's config is to be masked
        nonlocal registry
        registry = registry or build_registry(settings, pool_size=1)
        return registry

    try:
        shown = collect(conn, args.job_ids, tables_for(args.table), channels)
    finally:
        conn.close()
        if registry is not None:
            registry.close()
    if not shown:
        where = args.table or "notification_jobs or delivery_jobs"
        print(f"delivery-worker show: no job {args.job_ids} in {where}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print_json({"jobs": shown})
    else:
        print("\n\n".join(render(job) for job in shown))
    return EXIT_OK


def collect(
    conn: Connection, job_id: int, tables: list[Table], channels: Callable[[], ChannelRegistry]
) -> list[dict[str, Any]]:
    shown = []
    with transaction(conn) as cur:
        for found in find_jobs(cur, [job_id], tables, lock=False):
            table = found.table
            params = {"job_id": job_id}
            cur.execute(JOB_QUERY[table], params)
            row = _row(cur)
            if row is None:  # deleted since find_jobs
                continue
            destination_id = row.pop("channel_id" if table is Table.NOTIFICATION_JOBS else "integration_id")
            destination = _destination(cur, table, row["tenant_id"], destination_id, channels)
            secrets = destination.pop("_secrets")
            row["last_error"] = _masked(row["last_error"], secrets)
            cur.execute(ATTEMPTS_QUERY[table], params)
            attempts = [_with_masked(a, "error", secrets) for a in _rows(cur)]
            log: list[dict[str, Any]] = []
            if table is Table.NOTIFICATION_JOBS:
                cur.execute(LOG_ROWS, params)
                log = [_with_masked(entry, "error_msg", secrets) for entry in _rows(cur)]
            shown.append(
                {
                    "table": table.value,
                    "job": row,
                    "destination": destination,
                    "attempts": attempts,
                    "log": log,
                }
            )
    return shown


def _destination(
    cur: Any, table: Table, tenant_id: str, destination_id: Any, channels: Callable[[], ChannelRegistry]
) -> dict[str, Any]:
    """The channel or integration, config masked; ``_secrets`` holds what was masked (for error texts)."""
    params = {"tenant_id": tenant_id, "destination": None if destination_id is None else str(destination_id)}
    kind = "channel" if table is Table.NOTIFICATION_JOBS else "integration"
    found: dict[str, Any] | None = None
    if destination_id is not None:
        cur.execute(CHANNEL if table is Table.NOTIFICATION_JOBS else INTEGRATION, params)
        found = _row(cur)
    cur.execute(PAUSES, {**params, "scope": PAUSE_SCOPE[table]})
    paused = _rows(cur)
    described: dict[str, Any] = {"kind": kind, "id": params["destination"], "exists": found is not None}
    if found is None:
        return {**described, "paused": paused, "_secrets": set()}
    if table is Table.NOTIFICATION_JOBS:
        channel_type, enabled, config = found["channel_type"], found["is_enabled"], found["config"]
    else:
        channel_type, enabled = found["type"], found["enabled"] is not False
        config = integration_config(channel_type, found)
    secrets = declared_secrets(channels, channel_type, config)
    return {
        **described,
        "name": found["name"],
        "type": channel_type,
        "tenant_id": found["tenant_id"],
        "enabled": enabled,
        "paused": paused,
        "config": masked_config(config, secrets),
        "_secrets": secrets,
    }


def declared_secrets(channels: Callable[[], ChannelRegistry], channel_type: str, config: Any) -> set[str]:
    """What the channel declares secret in this config, plus whatever looks like a secret in it."""
    secrets = secret_values(config)
    # An invalid config declares nothing: the scan above still masks whatever looks secret in it.
    with contextlib.suppress(DeliveryError, TypeError, ValueError, AttributeError):
        secrets.update(channels().get(channel_type).parse_config(config).secrets())
    return secrets


def masked_config(node: Any, secrets: set[str]) -> Any:
    """``node`` with every string that is, or holds, a secret masked (keys are kept). A URL keeps its
    scheme, host and port (where it goes) and loses its credential-bearing parts (path, query, userinfo)."""
    if isinstance(node, dict):
        return {key: masked_config(value, secrets) for key, value in node.items()}
    if isinstance(node, list):
        return [masked_config(item, secrets) for item in node]
    if isinstance(node, str):
        if "://" in node:
            return redact(node, secrets - {node})
        return MASK if node in secrets else redact(node, secrets)
    return node


def _masked(text: str | None, secrets: set[str]) -> str | None:
    return None if text is None else redact(text, secrets)


def _with_masked(row: dict[str, Any], key: str, secrets: set[str]) -> dict[str, Any]:
    return {**row, key: _masked(row[key], secrets)}


def _row(cur: Any) -> dict[str, Any] | None:
    found = cur.fetchone()
    return None if found is None else dict(zip([c.name for c in cur.description], found, strict=True))


def _rows(cur: Any) -> list[dict[str, Any]]:
    names = [c.name for c in cur.description]
    return [dict(zip(names, found, strict=True)) for found in cur.fetchall()]


def render(shown: dict[str, Any]) -> str:
    job, destination = shown["job"], shown["destination"]
    lines = [f"{shown['table']} job {job['job_id']}"]
    fields = [
        ("status", job["status"]),
        ("tenant", job["tenant_id"]),
        ("alert", f"{job['alert_id']} ({job['deliver_on_event']})"),
        ("attempts", job["attempts"]),
        ("next_run_at", job["next_run_at"]),
        ("lease", job["lease_expires_at"]),
        ("created", job["created_at"]),
        ("updated", job["updated_at"]),
        ("last_error", job["last_error"]),
        ("destination", describe(destination)),
    ]
    if destination.get("exists"):
        fields.append(("config", json.dumps(destination["config"], sort_keys=True, default=str)))
    lines.append(render_table(["field", "value"], [[name, value] for name, value in fields]))
    lines.append("")
    if shown["attempts"]:
        rows = [
            [a[c] if c != "error" else excerpt(a[c], 70) for c in ATTEMPT_COLUMNS] for a in shown["attempts"]
        ]
        lines += [
            "attempts:",
            render_table(["attempt", "outcome", "http", "ms", "started", "finished", "error"], rows),
        ]
    else:
        lines.append("attempts: none")
    if shown["table"] == Table.NOTIFICATION_JOBS:
        if shown["log"]:
            rows = [
                [e["log_id"], e["sent_at"], e["success"], excerpt(e["error_msg"], 70)] for e in shown["log"]
            ]
            lines += ["", "notification_log:", render_table(["log_id", "sent_at", "success", "error"], rows)]
        else:
            lines += ["", "notification_log: none"]
    return "\n".join(lines)


def describe(destination: dict[str, Any]) -> str:
    what = f"{destination['kind']} {destination['id']}"
    if not destination.get("exists"):
        text = f"{what} (does not exist)"
    else:
        enabled = "enabled" if destination["enabled"] else "disabled"
        kind, tenant = destination["type"], destination["tenant_id"]
        text = f"{what} {destination['name']!r} ({kind}, tenant {tenant}, {enabled})"
    for pause in destination["paused"]:
        since = pause["paused_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        text += f"; {pause['scope']} paused since {since}"
    return text
