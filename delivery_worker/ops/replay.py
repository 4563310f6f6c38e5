"""`replay`: deliver a COMPLETED or FAILED job again (Svix/Convoy "resend"), as a new attempt.

The job goes back to PENDING, due now, and idle workers are woken (NOTIFY). It keeps its row and id,
so every idempotency key a channel derives from the job is the same bytes as before (see
docs/operations.md "Replay and idempotency keys"): webhook ``Idempotency-Key`` and ``webhook-id``,
email ``Message-ID``, PagerDuty ``dedup_key`` (from the alert id). A receiver that drops duplicates
will drop the replay; that is the point of the key, and why replay never mints a new one.

``attempts`` (finished attempts) is kept, so the history numbers on: the replay is attempt
``attempts + 1`` in delivery_attempts / notification_job_attempts. A COMPLETED job never counted
its successful attempt, so it counts it now (attempts + 1). The claim never checks the retry budget,
so a replay always gets one real attempt; if that attempt fails, it is retried only while
``max_attempts`` allows (a job that had used up its retries fails again at once). To start over with
the whole retry budget, use `requeue` (attempts 0) instead.
"""

from __future__ import annotations

import argparse

from psycopg2 import sql
from psycopg2.extensions import cursor

from delivery_worker.config import Settings
from delivery_worker.jobs import Status, Table
from delivery_worker.ops.job_selection import Change, add_job_arguments, change_jobs
from delivery_worker.ops.output import add_json_argument

# The rows are already locked by find_jobs; the status condition keeps the statement safe on its own.
REPLAY = """
UPDATE {table}
SET status = 'PENDING',
    attempts = CASE WHEN status = 'COMPLETED' THEN attempts + 1 ELSE attempts END,
    next_run_at = now(),
    lease_expires_at = NULL,
    updated_at = now()
WHERE job_id = ANY(%(job_ids)s::bigint[]) AND status IN ('COMPLETED', 'FAILED')
RETURNING job_id, attempts
"""

# Idle workers wake at once (delivered at commit), as on a producer's INSERT (005_notify_on_insert.sql).
WAKE_WORKERS = "SELECT pg_notify('delivery_worker_new_job', %(table)s)"

REFUSALS: dict[str, str] = {
    Status.PENDING: "is PENDING: it will be delivered when due; nothing to replay",
    Status.PROCESSING: "is PROCESSING: a worker is delivering it now; replay it once it has finished",
}


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "replay",
        help="deliver COMPLETED or FAILED jobs again, with the same idempotency key",
        description=(
            "Set COMPLETED or FAILED jobs back to PENDING, due now, as a new attempt of the same job "
            "(same idempotency key; attempts kept, so a replay gets one real attempt and whatever "
            "retries max_attempts still allows). PENDING and PROCESSING jobs are refused (exit 1); "
            "an id in both tables needs --table (exit 2)."
        ),
    )
    add_job_arguments(parser, many=True)
    add_json_argument(parser)


def replay(cur: cursor, table: Table, job_ids: list[int]) -> dict[int, str]:
    """Replay the COMPLETED and FAILED jobs among ``job_ids``; {job_id: note} of those replayed."""
    cur.execute(sql.SQL(REPLAY).format(table=sql.Identifier(table.value)), {"job_ids": job_ids})
    replayed = {job_id: f"due now as attempt {attempts + 1}" for job_id, attempts in cur.fetchall()}
    if replayed:
        cur.execute(WAKE_WORKERS, {"table": table.value})
    return replayed


REPLAY_FINISHED = Change(
    command="replay",
    verb="replayed",
    allowed=frozenset({Status.COMPLETED, Status.FAILED}),
    becomes=Status.PENDING,
    refusals=REFUSALS,
    apply=replay,
)


def run(settings: Settings, args: argparse.Namespace) -> int:
    return change_jobs(settings, args, REPLAY_FINISHED)
