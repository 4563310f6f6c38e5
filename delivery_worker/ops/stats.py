"""`stats`: how the queues look now — jobs by status, the oldest due and PROCESSING jobs, recent
failures — per table (the default), or ``--by channel`` / ``--by tenant`` with the top failing ones
and their last error.

Counting by status reads the whole table; on a large history that is a sequential scan, which is
one reason to `prune` finished jobs regularly. ``last_error`` is printed as stored: it is redacted
when it is written, and no channel config is ever read here.

A PROCESSING job's ``updated_at`` is the time it was claimed (lease renewals move only
``lease_expires_at``), so its age is how long its worker has held it; a lease in the past means
that worker stopped renewing it (it died or lost the database) and any worker will take it back.
The row does not record which worker holds it.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg2 import sql

from delivery_worker.config import Settings
from delivery_worker.db import OPERATOR_SESSION, Connection, connect, transaction
from delivery_worker.jobs import Status, Table
from delivery_worker.ops.output import (
    EXIT_OK,
    add_json_argument,
    announce_database,
    format_age,
    format_duration,
    parse_duration,
    print_json,
    render_table,
)
from delivery_worker.ops.stats_by import DESTINATION_COLUMN, collect_groups, render_groups

BY_CHOICES = ("table", "channel", "tenant")
DEFAULT_TOP = 10

# {table} is a fixed identifier (notification_jobs or delivery_jobs), never input.
JOBS_BY_STATUS = """
SELECT status,
       count(*) AS jobs,
       count(*) FILTER (WHERE status = 'PENDING' AND next_run_at <= now()) AS due,
       EXTRACT(EPOCH FROM now() - min(next_run_at) FILTER (WHERE status = 'PENDING' AND next_run_at <= now()))
           AS oldest_due_age_seconds,
       EXTRACT(EPOCH FROM now() - min(updated_at) FILTER (WHERE status = 'PROCESSING'))
           AS oldest_processing_age_seconds,
       count(*) FILTER (WHERE status = 'PROCESSING' AND lease_expires_at < now()) AS expired_leases
FROM {table}
GROUP BY status
"""

NOTIFICATION_FAILURES_BY_CHANNEL_TYPE = """
SELECT COALESCE(c.channel_type, '(channel deleted)') AS channel_type, count(*) AS failed
FROM notification_jobs AS j
LEFT JOIN notification_channels AS c ON c.channel_id = j.channel_id
WHERE j.status = 'FAILED' AND j.updated_at >= %(since)s
GROUP BY 1
ORDER BY 2 DESC, 1
"""

DELIVERY_FAILURES_BY_CHANNEL_TYPE = """
SELECT COALESCE(i.type::text, '(integration deleted)') AS channel_type, count(*) AS failed
FROM delivery_jobs AS j
LEFT JOIN integrations AS i ON i.tenant_id = j.tenant_id AND i.integration_id = j.integration_id
WHERE j.status = 'FAILED' AND j.updated_at >= %(since)s
GROUP BY 1
ORDER BY 2 DESC, 1
"""

FAILURES_BY_CHANNEL_TYPE = {
    Table.NOTIFICATION_JOBS: NOTIFICATION_FAILURES_BY_CHANNEL_TYPE,
    Table.DELIVERY_JOBS: DELIVERY_FAILURES_BY_CHANNEL_TYPE,
}

# The PROCESSING jobs held longest. {table} and {destination} are fixed identifiers.
OLDEST_PROCESSING = """
SELECT job_id, tenant_id, {destination}::text, attempts,
       EXTRACT(EPOCH FROM now() - updated_at) AS held_seconds,
       EXTRACT(EPOCH FROM lease_expires_at - now()) AS lease_left_seconds
FROM {table}
WHERE status = 'PROCESSING'
ORDER BY updated_at, job_id
LIMIT %(limit)s
"""

PROCESSING_COLUMNS = ("job_id", "tenant_id", "destination", "attempts", "held_seconds", "lease_left_seconds")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "stats",
        help="jobs by status, due, PROCESSING and recent failures, per table, channel or tenant",
        description=(
            "Per queue table (or with --by, per channel/integration or per tenant): jobs by status, "
            "how many PENDING jobs are due, the PROCESSING jobs held longest and whether their lease "
            "expired, and the jobs that FAILED within --window; with --by, the --top groups that "
            "failed most and their last error."
        ),
    )
    parser.add_argument(
        "--window",
        type=parse_duration,
        default=timedelta(hours=1),
        metavar="DURATION",
        help="count failures within this window, e.g. 1h, 30m, 1d (default: 1h)",
    )
    parser.add_argument(
        "--by",
        choices=BY_CHOICES,
        default="table",
        help="group by queue table (default), by channel/integration, or by tenant",
    )
    parser.add_argument(
        "--top",
        type=_top,
        default=DEFAULT_TOP,
        metavar="N",
        help=f"how many top failing groups and oldest PROCESSING jobs to list (default: {DEFAULT_TOP})",
    )
    add_json_argument(parser)


def _top(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 10000, got {value}")
    return value


def run(settings: Settings, args: argparse.Namespace) -> int:
    since = datetime.now(UTC) - args.window
    announce_database(settings.database.dsn)
    conn = connect(settings.database.dsn, session=OPERATOR_SESSION)
    try:
        if args.by == "table":
            report = collect(conn, since)
        else:
            report = collect_groups(conn, args.by, since, args.top)
        report["processing"] = collect_processing(conn, args.top)
    finally:
        conn.close()
    report["failed_window"] = format_duration(args.window)
    if args.json:
        print_json(report)
    else:
        summary = render(report) if args.by == "table" else render_groups(report)
        print("\n".join([summary, *render_processing(report["processing"])]))
    return EXIT_OK


def collect(conn: Connection, since: datetime) -> dict[str, Any]:
    tables: dict[str, Any] = {}
    failures: dict[str, dict[str, int]] = {}
    with transaction(conn) as cur:
        for table in Table:
            cur.execute(sql.SQL(JOBS_BY_STATUS).format(table=sql.Identifier(table.value)))
            by_status = {status.value: 0 for status in Status}
            summary: dict[str, Any] = {
                "due": 0,
                "oldest_due_age_seconds": None,
                "oldest_processing_age_seconds": None,
                "expired_leases": 0,
            }
            for status, jobs, due, due_age, processing_age, expired in cur.fetchall():
                by_status[status] = jobs
                if status == Status.PENDING:
                    summary.update(due=due, oldest_due_age_seconds=_seconds(due_age))
                if status == Status.PROCESSING:
                    summary.update(
                        oldest_processing_age_seconds=_seconds(processing_age), expired_leases=expired
                    )
            tables[table.value] = {"by_status": by_status, **summary}
            cur.execute(FAILURES_BY_CHANNEL_TYPE[table], {"since": since})
            failures[table.value] = {channel_type: failed for channel_type, failed in cur.fetchall()}
    return {"tables": tables, "failed_since": since, "failed_by_channel_type": failures}


def collect_processing(conn: Connection, limit: int) -> list[dict[str, Any]]:
    """The PROCESSING jobs held longest, across both tables."""
    jobs: list[dict[str, Any]] = []
    with transaction(conn) as cur:
        for table in Table:
            query = sql.SQL(OLDEST_PROCESSING).format(
                table=sql.Identifier(table.value), destination=sql.Identifier(DESTINATION_COLUMN[table])
            )
            cur.execute(query, {"limit": limit})
            for row in cur.fetchall():
                job = dict(zip(PROCESSING_COLUMNS, row, strict=True))
                job.update(
                    held_seconds=_seconds(job["held_seconds"]),
                    lease_left_seconds=_seconds(job["lease_left_seconds"]),
                )
                jobs.append({"table": table.value, **job})
    jobs.sort(key=lambda j: -(j["held_seconds"] or 0.0))
    return jobs[:limit]


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


def render(report: dict[str, Any]) -> str:
    statuses = [status.value for status in Status]
    rows = []
    for name, table in report["tables"].items():
        counts = table["by_status"]
        rows.append(
            [
                name,
                counts["PENDING"],
                table["due"],
                *(counts[s] for s in statuses[1:]),
                format_age(table["oldest_due_age_seconds"]),
                format_age(table["oldest_processing_age_seconds"]),
            ]
        )
    headers = ["table", "PENDING", "due", *statuses[1:], "oldest due", "oldest PROCESSING"]
    out = [render_table(headers, rows), ""]
    failures = [
        [name, channel_type, failed]
        for name, by_type in report["failed_by_channel_type"].items()
        for channel_type, failed in by_type.items()
    ]
    window = report["failed_window"]
    if failures:
        out += [
            f"failed in the last {window}, by channel type:",
            render_table(["table", "channel_type", "failed"], failures),
        ]
    else:
        out.append(f"failed in the last {window}: none")
    return "\n".join(out)


def render_processing(jobs: list[dict[str, Any]]) -> list[str]:
    if not jobs:
        return []
    rows = [
        [
            j["table"],
            j["job_id"],
            j["tenant_id"],
            j["destination"],
            j["attempts"],
            format_age(j["held_seconds"]),
            _lease(j["lease_left_seconds"]),
        ]
        for j in jobs
    ]
    headers = ["table", "job_id", "tenant_id", "destination", "attempts", "held for", "lease"]
    return ["", "PROCESSING, held longest:", render_table(headers, rows)]


def _lease(left: float | None) -> str:
    if left is None:
        return "-"
    if left < 0:
        return f"expired {format_age(-left)} ago"
    return f"{format_age(left)} left"
