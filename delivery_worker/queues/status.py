"""Status transitions shared by both queues: the retry contract written as three UPDATEs.

Each runs once per poll cycle for all outcomes of that kind (``execute_values``), and only touches
rows still PROCESSING, so an outcome can never overwrite a job that was requeued in the meantime.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg2 import sql
from psycopg2.extensions import cursor
from psycopg2.extras import execute_values

from delivery_worker.jobs import Outcome, Table, Verdict

ERROR_LIMIT = 500

MARK_COMPLETED = """
UPDATE {table} AS j
SET status = 'COMPLETED', updated_at = now()
FROM (VALUES %s) AS done (job_id)
WHERE j.job_id = done.job_id AND j.status = 'PROCESSING'
"""

SCHEDULE_RETRY = """
UPDATE {table} AS j
SET status = 'PENDING',
    attempts = retry.attempts,
    next_run_at = now() + retry.delay_seconds * interval '1 second',
    last_error = retry.error,
    updated_at = now()
FROM (VALUES %s) AS retry (job_id, attempts, delay_seconds, error)
WHERE j.job_id = retry.job_id AND j.status = 'PROCESSING'
"""

MARK_FAILED = """
UPDATE {table} AS j
SET status = 'FAILED', attempts = failed.attempts, last_error = failed.error, updated_at = now()
FROM (VALUES %s) AS failed (job_id, attempts, error)
WHERE j.job_id = failed.job_id AND j.status = 'PROCESSING'
"""


def clip(error: str | None) -> str | None:
    return None if error is None else error[:ERROR_LIMIT]


def record_statuses(cur: cursor, table: Table, outcomes: Sequence[Outcome]) -> None:
    name = sql.Identifier(table.value)

    def run(statement: str, rows: list[tuple[object, ...]], template: str) -> None:
        if rows:
            query = sql.SQL(statement).format(table=name).as_string(cur)
            execute_values(cur, query, rows, template=template)

    by_verdict = {verdict: [o for o in outcomes if o.verdict is verdict] for verdict in Verdict}
    run(MARK_COMPLETED, [(o.job.job_id,) for o in by_verdict[Verdict.COMPLETED]], "(%s::bigint)")
    run(
        SCHEDULE_RETRY,
        [
            (o.job.job_id, o.job.attempts + 1, o.retry_delay_seconds, clip(o.error))
            for o in by_verdict[Verdict.RETRY]
        ],
        "(%s::bigint, %s::int, %s::float8, %s::text)",
    )
    run(
        MARK_FAILED,
        [(o.job.job_id, o.job.attempts + 1, clip(o.error)) for o in by_verdict[Verdict.FAILED]],
        "(%s::bigint, %s::int, %s::text)",
    )
