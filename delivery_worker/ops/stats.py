"""`stats`: how the queues look now — jobs by status, the oldest due job, recent failures by type.

Counting by status reads the whole table; on a large history that is a sequential scan, which is
one reason to `prune` finished jobs regularly.
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
    format_age,
    format_duration,
    parse_duration,
    print_json,
    render_table,
)

# {table} is a fixed identifier (notification_jobs or delivery_jobs), never input.
JOBS_BY_STATUS = """
SELECT status,
       count(*) AS jobs,
       count(*) FILTER (WHERE status = 'PENDING' AND next_run_at <= now()) AS due,
       EXTRACT(EPOCH FROM now() - min(next_run_at) FILTER (WHERE status = 'PENDING' AND next_run_at <= now()))
           AS oldest_due_age_seconds
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


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "stats",
        help="jobs by status, oldest due job, recent failures by channel type",
        description=(
            "Per queue table: jobs by status, how many PENDING jobs are due and how long the oldest "
            "has waited, and the jobs that FAILED recently by channel type."
        ),
    )
    parser.add_argument(
        "--window",
        type=parse_duration,
        default=timedelta(hours=1),
        metavar="DURATION",
        help="count failures within this window, e.g. 1h, 30m, 1d (default: 1h)",
    )
    add_json_argument(parser)


def run(settings: Settings, args: argparse.Namespace) -> int:
    since = datetime.now(UTC) - args.window
    conn = connect(settings.database.dsn, session=OPERATOR_SESSION)
    try:
        report = collect(conn, since)
    finally:
        conn.close()
    report["failed_window"] = format_duration(args.window)
    if args.json:
        print_json(report)
    else:
        print(render(report))
    return EXIT_OK


def collect(conn: Connection, since: datetime) -> dict[str, Any]:
    tables: dict[str, Any] = {}
    failures: dict[str, dict[str, int]] = {}
    with transaction(conn) as cur:
        for table in Table:
            cur.execute(sql.SQL(JOBS_BY_STATUS).format(table=sql.Identifier(table.value)))
            by_status = {status.value: 0 for status in Status}
            due, oldest = 0, None
            for status, jobs, due_here, age in cur.fetchall():
                by_status[status] = jobs
                if status == Status.PENDING:
                    due, oldest = due_here, None if age is None else float(age)
            tables[table.value] = {"by_status": by_status, "due": due, "oldest_due_age_seconds": oldest}
            cur.execute(FAILURES_BY_CHANNEL_TYPE[table], {"since": since})
            failures[table.value] = {channel_type: failed for channel_type, failed in cur.fetchall()}
    return {"tables": tables, "failed_since": since, "failed_by_channel_type": failures}


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
            ]
        )
    headers = ["table", "PENDING", "due", *statuses[1:], "oldest due"]
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
