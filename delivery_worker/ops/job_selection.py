"""What `show`, `replay` and `cancel` share: job ids from the command line, found in one or both tables,
and the report of a change that some jobs may refuse.

Job ids are per table, so the same number may name a notification job and a delivery job. Without
``--table`` a command looks in both; `show` shows both, while `replay` and `cancel` refuse to guess
(exit 2, nothing changed) and ask for ``--table``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg2 import sql
from psycopg2.extensions import cursor

from delivery_worker.config import Settings
from delivery_worker.db import OPERATOR_SESSION, connect, transaction
from delivery_worker.jobs import Table
from delivery_worker.ops.output import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    announce_database,
    print_json,
    render_table,
)

DESTINATION_COLUMN = {Table.NOTIFICATION_JOBS: "channel_id", Table.DELIVERY_JOBS: "integration_id"}

# {table} is a fixed identifier; FOR UPDATE (when changing them) holds the rows until the change commits,
# so a worker cannot claim a job between the check of its status and the change.
FIND_JOBS = """
SELECT job_id, status FROM {table} WHERE job_id = ANY(%(job_ids)s::bigint[]) ORDER BY job_id {lock}
"""


@dataclass(frozen=True)
class FoundJob:
    table: Table
    job_id: int
    status: str


def add_job_arguments(parser: argparse.ArgumentParser, *, many: bool) -> None:
    parser.add_argument(
        "job_ids", type=_job_id, nargs="+" if many else None, metavar="JOB", help="job id" + "s" * many
    )
    parser.add_argument(
        "--table",
        choices=[table.value for table in Table],
        help="the queue the id belongs to (default: look in both)",
    )


def _job_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a job id (a positive integer), got {text!r}")
    return value


def tables_for(choice: str | None) -> list[Table]:
    return list(Table) if choice is None else [Table(choice)]


def find_jobs(cur: cursor, job_ids: Sequence[int], tables: Sequence[Table], *, lock: bool) -> list[FoundJob]:
    """The jobs with these ids in these tables, in table then id order (locked FOR UPDATE with ``lock``)."""
    found: list[FoundJob] = []
    for table in tables:
        query = sql.SQL(FIND_JOBS).format(
            table=sql.Identifier(table.value), lock=sql.SQL("FOR UPDATE" if lock else "")
        )
        cur.execute(query, {"job_ids": list(job_ids)})
        found += [FoundJob(table, job_id, status) for job_id, status in cur.fetchall()]
    return found


def missing_ids(job_ids: Sequence[int], found: Sequence[FoundJob]) -> list[int]:
    seen = {job.job_id for job in found}
    return [job_id for job_id in dict.fromkeys(job_ids) if job_id not in seen]


def ambiguous_ids(found: Sequence[FoundJob]) -> list[int]:
    """Ids present in both tables."""
    by_id: dict[int, int] = {}
    for job in found:
        by_id[job.job_id] = by_id.get(job.job_id, 0) + 1
    return sorted(job_id for job_id, count in by_id.items() if count > 1)


class AmbiguousJobIds(Exception):
    """Raised (rolling the change back) when an id names a job in both tables and no --table was given."""


# apply(cur, table, job_ids) changes the allowed jobs of one table: {job_id: note} of those changed.
Apply = Callable[[cursor, Table, list[int]], dict[int, str]]


@dataclass(frozen=True)
class Change:
    """A status change `replay` or `cancel` makes: from which statuses, to which, and why others refuse."""

    command: str  # "replay"
    verb: str  # "replayed"
    allowed: frozenset[str]  # statuses it applies to
    becomes: str  # the status after it
    refusals: Mapping[str, str]  # status -> why a job in that status is refused
    apply: Apply


def change_jobs(settings: Settings, args: argparse.Namespace, change: Change) -> int:
    """Lock the jobs asked for, apply ``change`` to those in an allowed status, report the rest."""
    announce_database(settings.database.dsn)
    conn = connect(settings.database.dsn, session=OPERATOR_SESSION)
    try:
        with transaction(conn) as cur:
            found = find_jobs(cur, args.job_ids, tables_for(args.table), lock=True)
            if both := ambiguous_ids(found):
                raise AmbiguousJobIds(both)
            report = _apply(cur, change, found)
    except AmbiguousJobIds as exc:
        ids = ", ".join(str(job_id) for job_id in exc.args[0])
        print(
            f"delivery-worker {change.command}: job id(s) {ids} exist in both notification_jobs and "
            "delivery_jobs; give --table (nothing was changed)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    finally:
        conn.close()
    report.refused += [
        {"table": None, "job_id": job_id, "was": None, "reason": "no such job"}
        for job_id in missing_ids(args.job_ids, found)
    ]
    report.print(change.command, as_json=args.json)
    return report.exit_code()


def _apply(cur: cursor, change: Change, found: Sequence[FoundJob]) -> ChangeReport:
    report = ChangeReport(change.verb, [], [])
    for table in Table:
        jobs = [job for job in found if job.table is table]
        allowed = [job.job_id for job in jobs if job.status in change.allowed]
        notes = change.apply(cur, table, allowed) if allowed else {}
        for job in jobs:
            entry = {"table": table.value, "job_id": job.job_id, "was": job.status}
            if job.job_id in notes:
                report.changed.append({**entry, "now": change.becomes, "note": notes[job.job_id]})
            else:
                reason = change.refusals.get(job.status, f"is {job.status}")
                report.refused.append({**entry, "reason": reason})
    return report


@dataclass
class ChangeReport:
    """What `replay` or `cancel` did to each job asked for."""

    verb: str  # "replayed", "cancelled"
    changed: list[dict[str, Any]]
    refused: list[dict[str, Any]]

    def exit_code(self) -> int:
        return EXIT_FAILURE if self.refused else EXIT_OK

    def print(self, command: str, *, as_json: bool) -> None:
        for job in self.refused:  # the why, where an operator at a terminal or a script's log sees it
            where = f"{job['table']} job {job['job_id']}" if job["table"] else f"job {job['job_id']}"
            print(f"delivery-worker {command}: {where}: {job['reason']}", file=sys.stderr)
        if as_json:
            print_json({self.verb: self.changed, "refused": self.refused})
            return
        rows = [[j["table"], j["job_id"], j["was"], j["now"], j["note"]] for j in self.changed]
        rows += [
            [j["table"], j["job_id"], j["was"], j["was"], "refused: " + j["reason"]] for j in self.refused
        ]
        if rows:
            print(render_table(["table", "job_id", "was", "now", "note"], rows) + "\n")
        refused = f", refused {len(self.refused)}" if self.refused else ""
        print(f"{self.verb} {len(self.changed)} job(s){refused}")
