"""`requeue`: give FAILED jobs a fresh start — PENDING, attempts 0, due now.

Typical use: a channel's webhook was broken for an hour and has been fixed, so
``requeue --channel-id 7 --since 2h``. Without any filter it refuses to run unless ``--all`` is
given. ``last_error`` is kept (it shows why the job failed until the next attempt replaces it), and
the job's ``notification_log`` / ``delivery_attempts`` history stays.

Every filter given must hold (AND), in every table it is applied to. A filter that exists in one
table only (``--channel-id``: notification_jobs, ``--integration-id``: delivery_jobs) leaves the
other table out; two filters that no single table can satisfy together are a usage error (exit 2).
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
    announce_database,
    excerpt,
    parse_since,
    print_json,
    render_table,
    selected_tables,
)

# The filters shared by both tables; a NULL parameter switches its filter off.
# --error is a case-insensitive substring: strpos, so % and _ in the text are plain characters.
MATCH_FAILED = """
    j.status = 'FAILED'
    AND (%(since)s::timestamptz IS NULL OR j.updated_at >= %(since)s::timestamptz)
    AND (%(job_ids)s::bigint[] IS NULL OR j.job_id = ANY(%(job_ids)s::bigint[]))
    AND (%(tenant)s::text IS NULL OR j.tenant_id = %(tenant)s::text)
    AND (%(error)s::text IS NULL OR strpos(lower(j.last_error), lower(%(error)s::text)) > 0)
"""

# The filters on each table's destination: its id and its channel type.
MATCH_CHANNEL = """
    AND (%(channel_id)s::integer IS NULL OR j.channel_id = %(channel_id)s::integer)
    AND (%(channel_type)s::text IS NULL OR j.channel_id IN (
        SELECT channel_id FROM notification_channels WHERE channel_type = %(channel_type)s::text))
"""

MATCH_INTEGRATION = """
    AND (%(integration_id)s::uuid IS NULL OR j.integration_id = %(integration_id)s::uuid)
    AND (%(channel_type)s::text IS NULL OR (j.tenant_id, j.integration_id) IN (
        SELECT tenant_id, integration_id FROM integrations WHERE type::text = %(channel_type)s::text))
"""

MATCH = {
    Table.NOTIFICATION_JOBS: MATCH_FAILED + MATCH_CHANNEL,
    Table.DELIVERY_JOBS: MATCH_FAILED + MATCH_INTEGRATION,
}

# {table} and {destination} are fixed identifiers, {match} one of the MATCH constants; never input.
LIST_FAILED = """
SELECT j.job_id, j.tenant_id, j.{destination}::text, j.attempts, j.updated_at, j.last_error
FROM {table} AS j
WHERE {match}
ORDER BY j.job_id
"""

REQUEUE_FAILED = """
WITH matched AS (
    SELECT j.job_id, j.attempts, j.updated_at
    FROM {table} AS j
    WHERE {match}
    FOR UPDATE
)
UPDATE {table} AS j
SET status = 'PENDING', attempts = 0, next_run_at = now(), updated_at = now()
FROM matched
WHERE j.job_id = matched.job_id
RETURNING j.job_id, j.tenant_id, j.{destination}::text, matched.attempts, matched.updated_at, j.last_error
"""

DESTINATION_COLUMN = {Table.NOTIFICATION_JOBS: "channel_id", Table.DELIVERY_JOBS: "integration_id"}
COLUMNS = ("job_id", "tenant_id", "destination", "attempts", "updated_at", "last_error")

# The filters that exist in one table only, with the option that names them.
ONE_TABLE_FILTERS = {"channel_id": Table.NOTIFICATION_JOBS, "integration_id": Table.DELIVERY_JOBS}


class UsageError(Exception):
    """Raised when the filters given cannot be applied as asked."""


@dataclass(frozen=True)
class Selection:
    """Which FAILED jobs to requeue: the tables to look in, and every filter (None: not given)."""

    tables: list[Table]
    since: datetime | None = None
    job_ids: list[int] | None = None
    tenant: str | None = None
    channel_type: str | None = None
    error: str | None = None
    channel_id: int | None = None
    integration_id: str | None = None

    def params(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "job_ids": self.job_ids,
            "tenant": self.tenant,
            "channel_type": self.channel_type,
            "error": self.error,
            "channel_id": self.channel_id,
            "integration_id": self.integration_id,
        }


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "requeue",
        help="set FAILED jobs back to PENDING with attempts 0",
        description=(
            "Set FAILED jobs back to PENDING with attempts = 0 and next_run_at = now(). Every filter "
            "given must match (AND), in both tables: --channel-id selects notification_jobs only, "
            "--integration-id delivery_jobs only, and the two together match nothing (exit 2). At "
            "least one filter, or --all, is required."
        ),
    )
    add_table_argument(parser)
    parser.add_argument("--channel-id", type=int, metavar="N", help="notification_jobs of this channel")
    parser.add_argument(
        "--integration-id", type=_uuid, metavar="UUID", help="delivery_jobs of this integration"
    )
    parser.add_argument("--tenant", type=_text, metavar="TENANT_ID", help="jobs of this tenant (both tables)")
    parser.add_argument(
        "--channel-type",
        type=_text,
        metavar="TYPE",
        help="jobs whose channel or integration has this type: slack, webhook, email, ... (both tables)",
    )
    parser.add_argument(
        "--error",
        type=_text,
        metavar="TEXT",
        help="jobs whose last_error contains TEXT (case-insensitive substring)",
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
        nargs="+",
        action="extend",
        metavar="N",
        help="these jobs: --job-id 16 24 --job-id 30 (ids are per table: needs --table, or a filter "
        "that selects one table)",
    )
    parser.add_argument("--all", action="store_true", help="every FAILED job in the selected table(s)")
    parser.add_argument("--dry-run", action="store_true", help="list the jobs without changing anything")
    add_json_argument(parser)


def _text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected some text, got an empty string")
    return text


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
    announce_database(settings.database.dsn)
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
    """The tables every filter given can apply to, and the filters; UsageError when none can."""
    tables = selected_tables(args.table)
    if args.channel_id is not None and args.integration_id is not None:
        raise UsageError(
            "--channel-id (notification_jobs) and --integration-id (delivery_jobs) cannot both match "
            "one job: give one of them, or run requeue once for each"
        )
    for name, only in ONE_TABLE_FILTERS.items():
        if getattr(args, name) is None:
            continue
        if only not in tables:
            raise UsageError(
                f"--{name.replace('_', '-')} applies to {only.value} only, "
                f"and --table {args.table} leaves it out: nothing can match"
            )
        tables = [only]
    job_ids = sorted(set(args.job_id)) if args.job_id else None
    if job_ids and len(tables) != 1:
        raise UsageError(
            "--job-id needs --table notification_jobs or --table delivery_jobs (ids are per table)"
        )
    selection = Selection(
        tables,
        since=args.since,
        job_ids=job_ids,
        tenant=args.tenant,
        channel_type=args.channel_type,
        error=args.error,
        channel_id=args.channel_id,
        integration_id=args.integration_id,
    )
    filtered = any(value is not None for value in selection.params().values())
    if not filtered and not args.all:
        raise UsageError(
            "refusing to requeue every FAILED job without a filter: give --since, --channel-id, "
            "--integration-id, --tenant, --channel-type, --error or --job-id, or --all"
        )
    return selection


def requeue(conn: Connection, selection: Selection, *, dry_run: bool) -> list[dict[str, Any]]:
    """Requeue (or, dry, only list) the selected jobs, in one transaction; return them."""
    statement = LIST_FAILED if dry_run else REQUEUE_FAILED
    jobs: list[dict[str, Any]] = []
    with transaction(conn) as cur:
        for table in selection.tables:
            query = sql.SQL(statement).format(
                table=sql.Identifier(table.value),
                destination=sql.Identifier(DESTINATION_COLUMN[table]),
                match=sql.SQL(MATCH[table]),
            )
            cur.execute(query, selection.params())
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
