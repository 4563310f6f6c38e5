"""`prune`: delete finished jobs last updated before their retention, with their history, and the
``notification_log`` rows whose job is gone.

Retention: ``--older-than`` for COMPLETED jobs, and for FAILED jobs unless ``--failed-older-than``
keeps them longer (they are the ones an operator still reads or requeues).

Each batch is its own short transaction: it locks up to ``--batch-size`` old finished rows
(``SKIP LOCKED``, so it never waits on anyone), deletes their ``notification_log`` or
``delivery_attempts`` rows, then the jobs. The poll loop only touches PENDING and PROCESSING rows,
so it is never blocked for longer than one batch. Batches walk the table by id (keyset), so each
one starts where the last stopped instead of rescanning the rows just deleted.

History rows are deleted by ``job_id`` before their job: ``notification_log.job_id`` is ``ON DELETE
SET NULL``, so deleting the job alone would leave its log rows behind, detached. Log rows that are
detached already (``job_id`` NULL because their job went with a deleted channel, or a ``job_id``
that names no job, on databases without the foreign key) are orphans: they are deleted once their
``sent_at`` is past the same retention (a failure's log row as FAILED, a success's as COMPLETED),
in batches of the same size. Per-attempt tables that reference the jobs ``ON DELETE CASCADE`` go
with their jobs.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
    format_duration,
    parse_duration,
    print_json,
    render_table,
    selected_tables,
)

MIN_AGE = timedelta(hours=1)
DEFAULT_BATCH_SIZE = 1000
HISTORY_TABLE = {Table.NOTIFICATION_JOBS: "notification_log", Table.DELIVERY_JOBS: "delivery_attempts"}

# A finished job past its status's retention.
PRUNABLE = """
    ((status = 'COMPLETED' AND updated_at < %(completed_cutoff)s)
     OR (status = 'FAILED' AND updated_at < %(failed_cutoff)s))
"""

# {table} and {history} are fixed identifiers from HISTORY_TABLE, {prunable} is PRUNABLE; never input.
LOCK_BATCH = """
SELECT job_id
FROM {table}
WHERE {prunable} AND job_id > %(after)s
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
    SELECT job_id FROM {table} WHERE {prunable}
)
SELECT (SELECT count(*) FROM finished),
       (SELECT count(*) FROM {history} WHERE job_id IN (SELECT job_id FROM finished))
"""

# A log row whose job is gone, sent before the retention of the outcome it records.
ORPHAN_LOG_ROW = """
    (l.job_id IS NULL OR NOT EXISTS (SELECT 1 FROM notification_jobs AS j WHERE j.job_id = l.job_id))
    AND l.sent_at < CASE WHEN l.success IS FALSE THEN %(failed_cutoff)s ELSE %(completed_cutoff)s END
"""

DELETE_ORPHAN_LOG_BATCH = (
    """
WITH batch AS (
    SELECT l.log_id
    FROM notification_log AS l
    WHERE l.log_id > %(after)s AND"""
    + ORPHAN_LOG_ROW
    + """
    ORDER BY l.log_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM notification_log WHERE log_id IN (SELECT log_id FROM batch)
RETURNING log_id
"""
)

COUNT_ORPHAN_LOG_ROWS = (
    """
SELECT count(*) FROM notification_log AS l WHERE"""
    + ORPHAN_LOG_ROW
)


@dataclass(frozen=True)
class Cutoffs:
    """Finished jobs (and orphan log rows) last touched before these go."""

    completed: datetime
    failed: datetime

    def params(self) -> dict[str, datetime]:
        return {"completed_cutoff": self.completed, "failed_cutoff": self.failed}


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "prune",
        help="delete old COMPLETED/FAILED jobs, their log rows, and orphan log rows, in small batches",
        description=(
            "Delete COMPLETED jobs last updated before --older-than and FAILED jobs before "
            "--failed-older-than (default: the same), with their notification_log / "
            "delivery_attempts rows, then notification_log rows whose job is gone and that are as "
            "old; one short transaction per batch. PENDING and PROCESSING jobs are never touched."
        ),
    )
    parser.add_argument(
        "--older-than",
        type=_age,
        required=True,
        metavar="DURATION",
        help="finished jobs last updated longer ago than this, e.g. 30d, 12h, 2w (at least 1h)",
    )
    parser.add_argument(
        "--failed-older-than",
        type=_age,
        metavar="DURATION",
        help="FAILED jobs only after this long instead, e.g. 90d (at least --older-than)",
    )
    add_table_argument(parser)
    parser.add_argument(
        "--batch-size",
        type=_batch_size,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"jobs (or orphan log rows) deleted per transaction (default: {DEFAULT_BATCH_SIZE})",
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
    failed_older_than = args.failed_older_than or args.older_than
    if failed_older_than < args.older_than:
        print(
            "delivery-worker prune: --failed-older-than must be at least --older-than: FAILED jobs "
            "are kept at least as long as COMPLETED ones",
            file=sys.stderr,
        )
        return EXIT_USAGE
    now = datetime.now(UTC)
    cutoffs = Cutoffs(completed=now - args.older_than, failed=now - failed_older_than)
    tables = selected_tables(args.table)
    announce_database(settings.database.dsn)
    conn = connect(settings.database.dsn, session=OPERATOR_SESSION)
    try:
        if args.dry_run:
            results = {table.value: count_prunable(conn, table, cutoffs) for table in tables}
        else:
            results = {table.value: prune_table(conn, table, cutoffs, args.batch_size) for table in tables}
        orphans = None
        if Table.NOTIFICATION_JOBS in tables:
            orphans = (
                count_orphan_log_rows(conn, cutoffs)
                if args.dry_run
                else prune_orphan_log_rows(conn, cutoffs, args.batch_size)
            )
    finally:
        conn.close()
    report = {
        "dry_run": args.dry_run,
        "older_than": format_duration(args.older_than),
        "failed_older_than": format_duration(failed_older_than),
        "cutoff": cutoffs.completed,
        "failed_cutoff": cutoffs.failed,
        "tables": results,
        "orphan_log_rows": orphans,
    }
    if args.json:
        print_json(report)
    else:
        print(render(report))
    return EXIT_OK


def _statement(template: str, table: Table) -> sql.Composed:
    return sql.SQL(template).format(
        table=sql.Identifier(table.value),
        history=sql.Identifier(HISTORY_TABLE[table]),
        prunable=sql.SQL(PRUNABLE),
    )


def count_prunable(conn: Connection, table: Table, cutoffs: Cutoffs) -> dict[str, int]:
    with transaction(conn) as cur:
        cur.execute(_statement(COUNT_PRUNABLE, table), cutoffs.params())
        row = cur.fetchone()
    jobs, history = row if row is not None else (0, 0)
    return {"jobs": jobs, HISTORY_TABLE[table]: history}


def prune_table(conn: Connection, table: Table, cutoffs: Cutoffs, batch_size: int) -> dict[str, int]:
    """Delete in batches until no unlocked old finished job is left; return what was deleted."""
    lock, delete_history, delete_jobs = (
        _statement(template, table) for template in (LOCK_BATCH, DELETE_HISTORY, DELETE_JOBS)
    )
    totals = {"jobs": 0, HISTORY_TABLE[table]: 0, "batches": 0}
    after = 0
    while True:
        with transaction(conn) as cur:
            cur.execute(lock, {**cutoffs.params(), "after": after, "limit": batch_size})
            job_ids = [job_id for (job_id,) in cur.fetchall()]
            if not job_ids:
                break
            cur.execute(delete_history, {"job_ids": job_ids})
            totals[HISTORY_TABLE[table]] += cur.rowcount
            cur.execute(delete_jobs, {"job_ids": job_ids})
            totals["jobs"] += cur.rowcount
        totals["batches"] += 1
        after = job_ids[-1]
    return totals


def count_orphan_log_rows(conn: Connection, cutoffs: Cutoffs) -> dict[str, int]:
    with transaction(conn) as cur:
        cur.execute(COUNT_ORPHAN_LOG_ROWS, cutoffs.params())
        row = cur.fetchone()
    return {"rows": row[0] if row is not None else 0}


def prune_orphan_log_rows(conn: Connection, cutoffs: Cutoffs, batch_size: int) -> dict[str, int]:
    """Delete old log rows whose job is gone, a batch per transaction; return what was deleted."""
    totals = {"rows": 0, "batches": 0}
    after = 0
    while True:
        with transaction(conn) as cur:
            cur.execute(DELETE_ORPHAN_LOG_BATCH, {**cutoffs.params(), "after": after, "limit": batch_size})
            log_ids = [log_id for (log_id,) in cur.fetchall()]
        if not log_ids:
            break
        totals["rows"] += len(log_ids)
        totals["batches"] += 1
        after = max(log_ids)
    return totals


def render(report: dict[str, Any]) -> str:
    rows = []
    for name, counts in report["tables"].items():
        history = HISTORY_TABLE[Table(name)]
        rows.append([name, counts["jobs"], history, counts[history], counts.get("batches")])
    orphans = report["orphan_log_rows"]
    if orphans is not None:
        rows.append(["(job gone)", None, "notification_log", orphans["rows"], orphans.get("batches")])
    verb = "would delete" if report["dry_run"] else "deleted"
    completed = report["cutoff"].strftime("%Y-%m-%d %H:%M:%SZ")
    failed = report["failed_cutoff"].strftime("%Y-%m-%d %H:%M:%SZ")
    header = (
        f"{verb}: COMPLETED jobs last updated before {completed} (older than {report['older_than']}), "
        f"FAILED before {failed} (older than {report['failed_older_than']})"
    )
    headers = ["table", "jobs", "history table", "history rows"]
    if report["dry_run"]:
        rows = [row[:4] for row in rows]
    else:
        headers.append("batches")
    return header + "\n" + render_table(headers, rows)
