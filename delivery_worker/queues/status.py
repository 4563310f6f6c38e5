"""Status transitions shared by both queues: the retry contract written as UPDATEs.

Each runs once per poll cycle for all outcomes of its kind (``execute_values``). An outcome is
written only while the job is still PROCESSING under the lease it was claimed with, so a late
outcome can never overwrite a job that was requeued or reclaimed by another worker meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg2 import sql
from psycopg2.extensions import cursor
from psycopg2.extras import execute_values

from delivery_worker.jobs import Job, Outcome, Table, Verdict
from delivery_worker.retry import RetryPolicy

ERROR_LIMIT = 500
LEASE_LOST_ERROR = "worker stopped while processing (lease expired); attempt counted"

MARK_COMPLETED = """
UPDATE {table} AS j
SET status = 'COMPLETED', lease_expires_at = NULL, updated_at = now()
FROM (VALUES %s) AS done (job_id, lease)
WHERE j.job_id = done.job_id AND j.status = 'PROCESSING'
  AND j.lease_expires_at IS NOT DISTINCT FROM done.lease
RETURNING j.job_id
"""

SCHEDULE_RETRY = """
UPDATE {table} AS j
SET status = 'PENDING',
    attempts = retry.attempts,
    next_run_at = now() + retry.delay_seconds * interval '1 second',
    last_error = retry.error,
    lease_expires_at = NULL,
    updated_at = now()
FROM (VALUES %s) AS retry (job_id, lease, attempts, delay_seconds, error)
WHERE j.job_id = retry.job_id AND j.status = 'PROCESSING'
  AND j.lease_expires_at IS NOT DISTINCT FROM retry.lease
RETURNING j.job_id
"""

MARK_FAILED = """
UPDATE {table} AS j
SET status = 'FAILED', attempts = failed.attempts, last_error = failed.error,
    lease_expires_at = NULL, updated_at = now()
FROM (VALUES %s) AS failed (job_id, lease, attempts, error)
WHERE j.job_id = failed.job_id AND j.status = 'PROCESSING'
  AND j.lease_expires_at IS NOT DISTINCT FROM failed.lease
RETURNING j.job_id
"""

DEFER = """
UPDATE {table} AS j
SET status = 'PENDING',
    next_run_at = now() + deferred.delay_seconds * interval '1 second',
    last_error = COALESCE(deferred.reason, j.last_error),
    lease_expires_at = NULL,
    updated_at = now()
FROM (VALUES %s) AS deferred (job_id, lease, delay_seconds, reason)
WHERE j.job_id = deferred.job_id AND j.status = 'PROCESSING'
  AND j.lease_expires_at IS NOT DISTINCT FROM deferred.lease
RETURNING j.job_id
"""

# Jobs whose worker died: the lost attempt counts, and the contract's backoff applies
# (the same formula as RetryPolicy.backoff_seconds). Rows claimed before leases existed
# (lease_expires_at NULL) expire lease_seconds after their last update.
REAP_EXPIRED = """
WITH expired AS (
    SELECT job_id FROM {table}
    WHERE status = 'PROCESSING'
      AND COALESCE(lease_expires_at, updated_at + %(lease_seconds)s * interval '1 second') < now()
    FOR UPDATE SKIP LOCKED
)
UPDATE {table} AS j
SET attempts = j.attempts + 1,
    status = CASE WHEN j.attempts + 1 >= %(max_attempts)s THEN 'FAILED' ELSE 'PENDING' END,
    next_run_at = now() + LEAST(%(base)s * power(2, LEAST(j.attempts, 62)), %(max)s) * interval '1 second',
    last_error = %(error)s,
    lease_expires_at = NULL,
    updated_at = now()
FROM expired
WHERE j.job_id = expired.job_id
RETURNING j.job_id, j.status, j.tenant_id, j.alert_id, j.attempts, {extra}
"""


def clip(error: str | None) -> str | None:
    """At most ERROR_LIMIT characters, without NUL (PostgreSQL text cannot hold it)."""
    return None if error is None else error.replace("\x00", "\\0")[:ERROR_LIMIT]


def record_statuses(cur: cursor, table: Table, outcomes: Sequence[Outcome]) -> set[int]:
    """Apply the outcomes; return the ids of jobs actually updated (their claim still held)."""
    name = sql.Identifier(table.value)
    written: set[int] = set()

    def run(statement: str, rows: list[tuple[Any, ...]], template: str) -> None:
        if rows:
            query = sql.SQL(statement).format(table=name).as_string(cur)
            result = execute_values(cur, query, rows, template=template, fetch=True)
            written.update(job_id for (job_id,) in result)

    by_verdict = {verdict: [o for o in outcomes if o.verdict is verdict] for verdict in Verdict}
    run(
        MARK_COMPLETED,
        [(o.job.job_id, o.job.lease) for o in by_verdict[Verdict.COMPLETED]],
        "(%s::bigint, %s::timestamptz)",
    )
    run(
        SCHEDULE_RETRY,
        [
            (o.job.job_id, o.job.lease, o.job.attempts + 1, o.retry_delay_seconds, clip(o.error))
            for o in by_verdict[Verdict.RETRY]
        ],
        "(%s::bigint, %s::timestamptz, %s::int, %s::float8, %s::text)",
    )
    run(
        MARK_FAILED,
        [(o.job.job_id, o.job.lease, o.job.attempts + 1, clip(o.error)) for o in by_verdict[Verdict.FAILED]],
        "(%s::bigint, %s::timestamptz, %s::int, %s::text)",
    )
    run(
        DEFER,
        [
            (o.job.job_id, o.job.lease, o.retry_delay_seconds, clip(o.error))
            for o in by_verdict[Verdict.DEFERRED]
        ],
        "(%s::bigint, %s::timestamptz, %s::float8, %s::text)",
    )
    return written


class LeasedQueue:
    """What both queues share: claiming under a lease with the table's CLAIM statement, and taking
    back expired leases. Subclasses add their row mapping and their log writes."""

    table: Table
    claim_sql: str
    reap_returns: str  # the extra RETURNING column of REAP_EXPIRED

    def __init__(self, *, lease_seconds: float, policy: RetryPolicy) -> None:
        self.lease_seconds = lease_seconds
        self.policy = policy

    def claim(self, cur: cursor, limit: int) -> list[Job]:
        cur.execute(self.claim_sql, {"limit": limit, "lease_seconds": self.lease_seconds})
        return [self.job_from_row(row) for row in cur.fetchall()]

    def job_from_row(self, row: tuple[Any, ...]) -> Job:
        raise NotImplementedError

    def reap_expired(self, cur: cursor) -> list[tuple[Any, ...]]:
        """Take back jobs whose lease ran out: (job_id, status, tenant_id, alert_id, attempts, extra)."""
        query = sql.SQL(REAP_EXPIRED).format(
            table=sql.Identifier(self.table.value), extra=sql.SQL(self.reap_returns)
        )
        cur.execute(
            query,
            {
                "lease_seconds": self.lease_seconds,
                "max_attempts": self.policy.max_attempts,
                "base": self.policy.backoff_base_seconds,
                "max": self.policy.backoff_max_seconds,
                "error": LEASE_LOST_ERROR,
            },
        )
        return list(cur.fetchall())
