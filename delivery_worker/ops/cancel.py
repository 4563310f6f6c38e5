"""`cancel`: stop PENDING jobs for good — FAILED with last_error "cancelled by operator", never sent.

For a job retrying a destination that will not come back (a deleted webhook, a decommissioned
pager), instead of waiting out its retries. Only PENDING jobs: a PROCESSING job is being delivered
right now (its outcome will be written whatever we do), and a finished job has nothing left to stop.
A cancelled notification job gets its ``notification_log`` row (success false), as every job that
ends FAILED does; ``attempts`` is unchanged (no attempt was made) and no attempt row is written.
"""

from __future__ import annotations

import argparse

from psycopg2 import sql
from psycopg2.extensions import cursor

from delivery_worker.config import Settings
from delivery_worker.jobs import Status, Table
from delivery_worker.ops.job_selection import Change, add_job_arguments, change_jobs
from delivery_worker.ops.output import add_json_argument

CANCELLED_ERROR = "cancelled by operator"

# The rows are already locked by find_jobs; the status condition keeps the statement safe on its own.
CANCEL = """
UPDATE {table}
SET status = 'FAILED', last_error = %(error)s, lease_expires_at = NULL, updated_at = now()
WHERE job_id = ANY(%(job_ids)s::bigint[]) AND status = 'PENDING'
RETURNING job_id
"""

LOG_CANCELLED = """
INSERT INTO notification_log (channel_id, alert_id, job_id, success, error_msg)
SELECT channel_id, alert_id, job_id, FALSE, %(error)s
FROM notification_jobs
WHERE job_id = ANY(%(job_ids)s::bigint[])
"""

REFUSALS: dict[str, str] = {
    Status.PROCESSING: "is PROCESSING: a worker is delivering it now; only PENDING jobs can be cancelled",
    Status.COMPLETED: "is COMPLETED: already delivered, nothing to cancel",
    Status.FAILED: "is already FAILED: nothing to cancel (requeue or replay sends it again)",
}


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "cancel",
        help="PENDING jobs → FAILED 'cancelled by operator', never sent",
        description=(
            "Set PENDING jobs to FAILED with last_error 'cancelled by operator'; they are never sent. "
            "Jobs in any other status are refused (exit 1); an id in both tables needs --table (exit 2)."
        ),
    )
    add_job_arguments(parser, many=True)
    add_json_argument(parser)


def cancel(cur: cursor, table: Table, job_ids: list[int]) -> dict[int, str]:
    """Cancel the PENDING jobs among ``job_ids``; {job_id: note} of those cancelled."""
    query = sql.SQL(CANCEL).format(table=sql.Identifier(table.value))
    cur.execute(query, {"job_ids": job_ids, "error": CANCELLED_ERROR})
    cancelled = [job_id for (job_id,) in cur.fetchall()]
    if cancelled and table is Table.NOTIFICATION_JOBS:
        cur.execute(LOG_CANCELLED, {"job_ids": cancelled, "error": CANCELLED_ERROR})
    return {job_id: CANCELLED_ERROR for job_id in cancelled}


CANCEL_PENDING = Change(
    command="cancel",
    verb="cancelled",
    allowed=frozenset({Status.PENDING}),
    becomes=Status.FAILED,
    refusals=REFUSALS,
    apply=cancel,
)


def run(settings: Settings, args: argparse.Namespace) -> int:
    return change_jobs(settings, args, CANCEL_PENDING)
