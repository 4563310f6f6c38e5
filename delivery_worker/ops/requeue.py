"""`requeue`: give FAILED jobs a fresh start — PENDING, attempts 0, due now.

Typical use: a channel's webhook was broken for an hour and has been fixed, so
``requeue --channel-id 7 --since 2h``. Without any filter it refuses to run unless ``--all`` is
given. ``last_error`` is kept (it shows why the job failed until the next attempt replaces it), and
the job's ``notification_log`` / ``delivery_attempts`` history stays.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg2 import sql

from delivery_worker.config import Settings
from delivery_worker.db import OPERATOR_SESSION, Connection, connect, transaction
from delivery_worker.jobs import Table
from delivery_worker.ops.output import (
    EXIT_OK,
    EXIT_USAGE,
    add_json_argument,
    add_table_argument,
    excerpt,
    parse_since,
    print_json,
    render_table,
    selected_tables,
)

# The filters shared by the listing and the update; a NULL parameter switches its filter off.
# {destination} is channel_id (notification_jobs) or integration_id (delivery_jobs), as text.
MATCH_FAILED = """
    status = 'FAILED'
    AND (%(since)s::timestamptz IS NULL OR updated_at >= %(since)s::timestamptz)
    AND (%(job_ids)s::bigint[] IS NULL OR job_id = ANY(%(job_ids)s::bigint[]))
    AND (%(destination)s::text IS NULL OR {destination}::text = %(destination)s::text)
"""

LIST_FAILED = (
    """
SELECT job_id, tenant_id, {destination}::text, attempts, updated_at, last_error
FROM {table}
WHERE"""
    + MATCH_FAILED
    + """
ORDER BY job_id
"""
)

REQUEUE_FAILED = (
    """
WITH matched AS (
    SELECT job_id, attempts, updated_at
    FROM {table}
    WHERE"""
    + MATCH_FAILED
    + """
    FOR UPDATE
)
UPDATE {table} AS j
SET status = 'PENDING', attempts = 0, next_run_at = now(), updated_at = now()
FROM matched
WHERE j.job_id = matched.job_id
RETURNING j.job_id, j.tenant_id, j.{destination}::text, matched.attempts, matched.updated_at, j.last_error
"""
)

DESTINATION_COLUMN = {Table.NOTIFICATION_JOBS: "channel_id", Table.DELIVERY_JOBS: "integration_id"}
COLUMNS = ("job_id", "tenant_id", "destination", "attempts", "updated_at", "last_error")


class UsageError(Exception):
    """Raised when the filters given cannot be applied as asked."""


@dataclass(frozen=True)
class Selection:
    """Which FAILED jobs to requeue, per table."""

    tables: list[Table]
    since: datetime | None
    job_ids: list[int] | None
    channel_id: int | None
    integration_id: str | None

    def destination(self, table: Table) -> str | None:
        if table is Table.NOTIFICATION_JOBS:
            return None if self.channel_id is None else str(self.channel_id)
        return self.integration_id

    def params(self, table: Table) -> dict[str, Any]:
        return {"since": self.since, "job_ids": self.job_ids, "destination": self.destination(table)}


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "requeue",
        help="set FAILED jobs back to PENDING with attempts 0",
        description=(
            "Set FAILED jobs back to PENDING with attempts = 0 and next_run_at = now(). Filters "
            "combine with AND; at least one filter, or --all, is required."
        ),
    )
    add_table_argument(parser)
    parser.add_argument("--channel-id", type=int, metavar="N", help="notification_jobs of this channel")
    parser.add_argument(
        "--integration-id", type=_uuid, metavar="UUID", help="delivery_jobs of this integration"
    )
    parser.add_argument(
        "--since",
        type=parse_since,
        metavar="WHEN",
        help="jobs that failed at or after WHEN: a duration back from now (2h, 30m, 1d) or an ISO timestamp",
    )
    parser.add_argument(
        "--job-id",
        type=int,
        action="append",
        metavar="N",
        help="this job (repeatable; needs --table, as ids are per table)",
    )
    parser.add_argument("--all", action="store_true", help="every FAILED job in the selected table(s)")
    parser.add_argument("--dry-run", action="store_true", help="list the jobs without changing anything")
    add_json_argument(parser)


def _uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a UUID, got {text!r}") from None


def run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        selection = select(args)
    except UsageError as exc:
        print(f"delivery-worker requeue: {exc}", file=sys.stderr)
        return EXIT_USAGE
    conn = connect(settings.database.dsn, session=OPERATOR_SESSION)
    try:
        jobs = requeue(conn, selection, dry_run=args.dry_run)
    finally:
        conn.close()
    if args.json:
        print_json({"dry_run": args.dry_run, "count": len(jobs), "jobs": jobs})
    else:
        print(render(jobs, dry_run=args.dry_run))
    return EXIT_OK


def select(args: argparse.Namespace) -> Selection:
    tables = selected_tables(args.table)
    if args.channel_id is not None and args.table == Table.DELIVERY_JOBS:
        raise UsageError("--channel-id applies to notification_jobs; use --integration-id for delivery_jobs")
    if args.integration_id is not None and args.table == Table.NOTIFICATION_JOBS:
        raise UsageError("--integration-id applies to delivery_jobs; use --channel-id for notification_jobs")
    if args.job_id and len(tables) != 1:
        raise UsageError(
            "--job-id needs --table notification_jobs or --table delivery_jobs (ids are per table)"
        )
    # A destination filter for only one table leaves the other table out altogether.
    if args.channel_id is not None and args.integration_id is None:
        tables = [t for t in tables if t is Table.NOTIFICATION_JOBS]
    if args.integration_id is not None and args.channel_id is None:
        tables = [t for t in tables if t is Table.DELIVERY_JOBS]
    filtered = any(
        value is not None for value in (args.since, args.job_id, args.channel_id, args.integration_id)
    )
    if not filtered and not args.all:
        raise UsageError(
            "refusing to requeue every FAILED job without a filter: give --since, --channel-id, "
            "--integration-id or --job-id, or --all"
        )
    return Selection(tables, args.since, args.job_id, args.channel_id, args.integration_id)


def requeue(conn: Connection, selection: Selection, *, dry_run: bool) -> list[dict[str, Any]]:
    """Requeue (or, dry, only list) the selected jobs, in one transaction; return them."""
    statement = LIST_FAILED if dry_run else REQUEUE_FAILED
    jobs: list[dict[str, Any]] = []
    with transaction(conn) as cur:
        for table in selection.tables:
            query = sql.SQL(statement).format(
                table=sql.Identifier(table.value), destination=sql.Identifier(DESTINATION_COLUMN[table])
            )
            cur.execute(query, selection.params(table))
            for row in sorted(cur.fetchall()):
                jobs.append({"table": table.value, **dict(zip(COLUMNS, row, strict=True))})
    return jobs


def render(jobs: list[dict[str, Any]], *, dry_run: bool) -> str:
    counts = {table.value: sum(1 for job in jobs if job["table"] == table.value) for table in Table}
    by_table = ", ".join(f"{name}: {count}" for name, count in counts.items() if count)
    verb = "would requeue" if dry_run else "requeued"
    summary = f"{verb} {len(jobs)} job(s)" + (f" ({by_table})" if by_table else "")
    if not jobs:
        return summary
    headers = ["table", "job_id", "tenant_id", "destination", "attempts", "failed_at", "last_error"]
    rows = [
        [
            j["table"],
            j["job_id"],
            j["tenant_id"],
            j["destination"],
            j["attempts"],
            j["updated_at"],
            excerpt(j["last_error"]),
        ]
        for j in jobs
    ]
    return render_table(headers, rows) + "\n\n" + summary
