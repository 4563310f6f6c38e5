"""`stats --by channel` and `stats --by tenant`: the queues' counts per channel or integration, or per
tenant, and the groups that failed most within the window with their newest error.

One statement per table groups its jobs; a second aggregate in it (``DISTINCT ON``) picks each
group's newest FAILED job, so only one ``last_error`` per group is read and sorted, never all of them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg2 import sql

from delivery_worker.db import Connection, transaction
from delivery_worker.jobs import Table
from delivery_worker.ops.output import excerpt, format_age, render_table

DESTINATION_COLUMN = {Table.NOTIFICATION_JOBS: "channel_id", Table.DELIVERY_JOBS: "integration_id"}

# Per group (a tenant, or a tenant's channel or integration): counts by status, due, failed within
# the window, the PROCESSING jobs' oldest claim and expired leases, and the newest FAILED job's
# error. {table} is a fixed identifier; {group} and {destinations} come from GROUPS; never input.
JOBS_BY_GROUP = """
WITH counts AS (
    SELECT j.tenant_id, {group} AS destination,
           count(*) FILTER (WHERE j.status = 'PENDING') AS pending,
           count(*) FILTER (WHERE j.status = 'PENDING' AND j.next_run_at <= now()) AS due,
           count(*) FILTER (WHERE j.status = 'PROCESSING') AS processing,
           count(*) FILTER (WHERE j.status = 'COMPLETED') AS completed,
           count(*) FILTER (WHERE j.status = 'FAILED') AS failed,
           count(*) FILTER (WHERE j.status = 'FAILED' AND j.updated_at >= %(since)s) AS failed_in_window,
           EXTRACT(EPOCH FROM now() - min(j.updated_at) FILTER (WHERE j.status = 'PROCESSING'))
               AS oldest_processing_age_seconds,
           count(*) FILTER (WHERE j.status = 'PROCESSING' AND j.lease_expires_at < now()) AS expired_leases
    FROM {table} AS j
    GROUP BY 1, 2
),
last_failure AS (
    SELECT DISTINCT ON (j.tenant_id, {group})
           j.tenant_id, {group} AS destination, j.last_error, j.updated_at AS last_failed_at
    FROM {table} AS j
    WHERE j.status = 'FAILED'
    ORDER BY j.tenant_id, {group}, j.updated_at DESC, j.job_id DESC
)
SELECT c.tenant_id, c.destination, d.channel_type, d.name,
       c.pending, c.due, c.processing, c.completed, c.failed, c.failed_in_window,
       c.oldest_processing_age_seconds, c.expired_leases, f.last_error, f.last_failed_at
FROM counts AS c
LEFT JOIN last_failure AS f ON f.tenant_id = c.tenant_id AND f.destination = c.destination
LEFT JOIN ({destinations}) AS d ON d.tenant_id = c.tenant_id AND d.destination = c.destination
"""

GROUP_COLUMNS = (
    "tenant_id",
    "destination",
    "channel_type",
    "name",
    "pending",
    "due",
    "processing",
    "completed",
    "failed",
    "failed_in_window",
    "oldest_processing_age_seconds",
    "expired_leases",
    "last_error",
    "last_failed_at",
)

CHANNELS = """
SELECT tenant_id, channel_id::text AS destination, channel_type, name FROM notification_channels
"""

INTEGRATIONS = """
SELECT tenant_id, integration_id::text AS destination, type::text AS channel_type, name FROM integrations
"""

NO_DESTINATIONS = """
SELECT NULL::text AS tenant_id, NULL::text AS destination, NULL::text AS channel_type, NULL::text AS name
WHERE false
"""

# (by, table) -> the group's destination expression and the rows that describe a destination.
GROUPS = {
    ("channel", Table.NOTIFICATION_JOBS): ("j.channel_id::text", CHANNELS),
    ("channel", Table.DELIVERY_JOBS): ("j.integration_id::text", INTEGRATIONS),
    ("tenant", Table.NOTIFICATION_JOBS): ("''::text", NO_DESTINATIONS),
    ("tenant", Table.DELIVERY_JOBS): ("''::text", NO_DESTINATIONS),
}


def collect_groups(conn: Connection, by: str, since: datetime, top: int) -> dict[str, Any]:
    """Every group with at least one job, most failures in the window first, and the top failing."""
    groups: list[dict[str, Any]] = []
    with transaction(conn) as cur:
        for table in Table:
            group, destinations = GROUPS[(by, table)]
            query = sql.SQL(JOBS_BY_GROUP).format(
                table=sql.Identifier(table.value), group=sql.SQL(group), destinations=sql.SQL(destinations)
            )
            cur.execute(query, {"since": since})
            groups += [
                _group(by, table, dict(zip(GROUP_COLUMNS, row, strict=True))) for row in cur.fetchall()
            ]
    groups.sort(
        key=lambda g: (-g["failed_in_window"], -g["by_status"]["FAILED"], -g["due"], g["table"], g["key"])
    )
    failing = [g for g in groups if g["failed_in_window"]]
    failing.sort(
        key=lambda g: (-g["failed_in_window"], -g["last_failed_at"].timestamp(), g["table"], g["key"])
    )
    return {"by": by, "failed_since": since, "groups": groups, "top_failing": failing[:top]}


def _group(by: str, table: Table, row: dict[str, Any]) -> dict[str, Any]:
    group: dict[str, Any] = {"table": table.value, "tenant_id": row["tenant_id"]}
    if by == "channel":
        destination = row["destination"]
        group[DESTINATION_COLUMN[table]] = (
            int(destination) if table is Table.NOTIFICATION_JOBS else destination
        )
        group.update(channel_type=row["channel_type"], name=row["name"])
        group["key"] = destination
    else:
        group["key"] = row["tenant_id"]
    group["by_status"] = {
        "PENDING": row["pending"],
        "PROCESSING": row["processing"],
        "COMPLETED": row["completed"],
        "FAILED": row["failed"],
    }
    group.update(
        due=row["due"],
        failed_in_window=row["failed_in_window"],
        oldest_processing_age_seconds=_seconds(row["oldest_processing_age_seconds"]),
        expired_leases=row["expired_leases"],
        last_error=row["last_error"],
        last_failed_at=row["last_failed_at"],
    )
    return group


def render_groups(report: dict[str, Any]) -> str:
    by, window = report["by"], report["failed_window"]
    key_headers = ["destination", "tenant_id", "type"] if by == "channel" else ["tenant_id"]
    headers = ["table", *key_headers, "PENDING", "due", "PROCESSING", "COMPLETED", "FAILED"]
    headers += [f"failed {window}", "oldest PROCESSING", "lease expired"]
    rows = [
        [
            g["table"],
            *_key_cells(by, g),
            g["by_status"]["PENDING"],
            g["due"],
            g["by_status"]["PROCESSING"],
            g["by_status"]["COMPLETED"],
            g["by_status"]["FAILED"],
            g["failed_in_window"],
            format_age(g["oldest_processing_age_seconds"]),
            g["expired_leases"],
        ]
        for g in report["groups"]
    ]
    out = [render_table(headers, rows) if rows else "no jobs", ""]
    if report["top_failing"]:
        failing = [
            [
                g["table"],
                *_key_cells(by, g),
                g["failed_in_window"],
                g["last_failed_at"],
                excerpt(g["last_error"], 80),
            ]
            for g in report["top_failing"]
        ]
        out += [
            f"top failing in the last {window}:",
            render_table(["table", *key_headers, "failed", "last failed", "last error"], failing),
        ]
    else:
        out.append(f"failed in the last {window}: none")
    return "\n".join(out)


def _key_cells(by: str, group: dict[str, Any]) -> list[Any]:
    if by == "channel":
        return [group["key"], group["tenant_id"], group["channel_type"]]
    return [group["tenant_id"]]


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)
