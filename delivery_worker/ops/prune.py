"""`prune`: delete finished jobs (COMPLETED or FAILED) last updated before a cutoff, with their history.

Each batch is its own short transaction: it locks up to ``--batch-size`` old finished rows
(``SKIP LOCKED``, so it never waits on anyone), deletes their ``notification_log`` or
``delivery_attempts`` rows, then the jobs. The poll loop only touches PENDING and PROCESSING rows,
so it is never blocked for longer than one batch.

History rows are deleted by ``job_id`` before their job: ``notification_log.job_id`` is ``ON DELETE
SET NULL``, so deleting the job alone would leave its log rows behind, detached. Log rows whose
``job_id`` is already NULL (their job was deleted with its channel, or another writer logged them)
are left alone: they cannot be matched to a finished job, and the platform may read them as history.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg2 import sql

from delivery_worker.config import Settings
from delivery_worker.db import OPERATOR_SESSION, Connection, connect, transaction
from delivery_worker.jobs import Table
from delivery_worker.ops.output import (
    EXIT_OK,
    add_json_argument,
    add_table_argument,
    format_duration,
    parse_duration,
    print_json,
    render_table,
    selected_tables,
)

MIN_AGE = timedelta(hours=1)
DEFAULT_BATCH_SIZE = 1000
HISTORY_TABLE = {Table.NOTIFICATION_JOBS: "notification_log", Table.DELIVERY_JOBS: "delivery_attempts"}

# {table} and {history} are fixed identifiers from HISTORY_TABLE, never input.
LOCK_BATCH = """
SELECT job_id
FROM {table}
WHERE status IN ('COMPLETED', 'FAILED') AND updated_at < %(cutoff)s
ORDER BY job_id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""

DELETE_HISTORY = """
DELETE FROM {history} WHERE job_id = ANY(%(job_ids)s::bigint[])
"""

DELETE_JOBS = """
DELETE FROM {table} WHERE job_id = ANY(%(job_ids)s::bigint[])
"""

COUNT_PRUNABLE = """
WITH finished AS (
    SELECT job_id FROM {table}
    WHERE status IN ('COMPLETED', 'FAILED') AND updated_at < %(cutoff)s
)
SELECT (SELECT count(*) FROM finished),
       (SELECT count(*) FROM {history} WHERE job_id IN (SELECT job_id FROM finished))
"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "prune",
        help="delete old COMPLETED/FAILED jobs and their log rows, in small batches",
        description=(
            "Delete COMPLETED and FAILED jobs last updated before the cutoff, with their "
            "notification_log / delivery_attempts rows, one short transaction per batch. "
            "PENDING and PROCESSING jobs are never touched."
        ),
    )
    parser.add_argument(
        "--older-than",
        type=_age,
        required=True,
        metavar="DURATION",
        help="finished jobs last updated longer ago than this, e.g. 30d, 12h, 2w (at least 1h)",
    )
    add_table_argument(parser)
    parser.add_argument(
        "--batch-size",
        type=_batch_size,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"jobs deleted per transaction (default: {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")
    add_json_argument(parser)


def _age(text: str) -> timedelta:
    age = parse_duration(text)
    if age < MIN_AGE:  # recent jobs still guard the producers' unique keys against duplicates
        raise argparse.ArgumentTypeError(f"must be at least 1h, got {text!r}")
    return age


def _batch_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100000, got {value}")
    return value


def run(settings: Settings, args: argparse.Namespace) -> int:
    cutoff = datetime.now(UTC) - args.older_than
    tables = selected_tables(args.table)
    conn = connect(settings.database.dsn, session=OPERATOR_SESSION)
    try:
        if args.dry_run:
            results = {table.value: count_prunable(conn, table, cutoff) for table in tables}
        else:
            results = {table.value: prune_table(conn, table, cutoff, args.batch_size) for table in tables}
    finally:
        conn.close()
    report = {
        "dry_run": args.dry_run,
        "older_than": format_duration(args.older_than),
        "cutoff": cutoff,
        "tables": results,
    }
    if args.json:
        print_json(report)
    else:
        print(render(report))
    return EXIT_OK


def _identifiers(table: Table) -> dict[str, sql.Identifier]:
    return {"table": sql.Identifier(table.value), "history": sql.Identifier(HISTORY_TABLE[table])}


def count_prunable(conn: Connection, table: Table, cutoff: datetime) -> dict[str, int]:
    with transaction(conn) as cur:
        cur.execute(sql.SQL(COUNT_PRUNABLE).format(**_identifiers(table)), {"cutoff": cutoff})
        row = cur.fetchone()
    jobs, history = row if row is not None else (0, 0)
    return {"jobs": jobs, HISTORY_TABLE[table]: history}


def prune_table(conn: Connection, table: Table, cutoff: datetime, batch_size: int) -> dict[str, int]:
    """Delete in batches until no unlocked old finished job is left; return what was deleted."""
    names = _identifiers(table)
    lock, delete_history, delete_jobs = (
        sql.SQL(statement).format(**names) for statement in (LOCK_BATCH, DELETE_HISTORY, DELETE_JOBS)
    )
    totals = {"jobs": 0, HISTORY_TABLE[table]: 0, "batches": 0}
    while True:
        with transaction(conn) as cur:
            cur.execute(lock, {"cutoff": cutoff, "limit": batch_size})
            job_ids = [job_id for (job_id,) in cur.fetchall()]
            if not job_ids:
                break
            cur.execute(delete_history, {"job_ids": job_ids})
            totals[HISTORY_TABLE[table]] += cur.rowcount
            cur.execute(delete_jobs, {"job_ids": job_ids})
            totals["jobs"] += cur.rowcount
        totals["batches"] += 1
    return totals


def render(report: dict[str, Any]) -> str:
    rows = []
    for name, counts in report["tables"].items():
        history = HISTORY_TABLE[Table(name)]
        rows.append([name, counts["jobs"], history, counts[history], counts.get("batches")])
    verb = "would delete" if report["dry_run"] else "deleted"
    cutoff = report["cutoff"].strftime("%Y-%m-%d %H:%M:%SZ")
    header = f"{verb}: finished jobs last updated before {cutoff} (older than {report['older_than']})"
    headers = ["table", "jobs", "history table", "history rows"]
    if report["dry_run"]:
        rows = [row[:4] for row in rows]
    else:
        headers.append("batches")
    return header + "\n" + render_table(headers, rows)
