"""Status transitions shared by both queues: the retry contract written as UPDATEs, and the leases.

Each runs once per poll cycle for all outcomes of its kind (``execute_values``). An outcome is
written only while the job is still PROCESSING under the lease its worker holds (set by the claim,
moved by each heartbeat renewal), so a late outcome can never overwrite a job that was requeued or
reclaimed by another worker meanwhile. Also here: renewing leases, reaping expired ones (all at once
or one job at a time), and restoring a reaped claim for an outcome that outlived it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg2 import sql
from psycopg2.extensions import cursor
from psycopg2.extras import execute_values

from delivery_worker.jobs import Job, Outcome, Table, Verdict
from delivery_worker.retry import RetryPolicy

ERROR_LIMIT = 500
LEASE_LOST_ERROR = "worker stopped while processing (lease expired); attempt counted"

# Each write first locks the rows still PROCESSING under the lease the outcome holds (``held``),
# skipping rows another session has locked: such an outcome is not written this cycle (the poller keeps
# it and tries again) instead of stalling the loop behind one locked row.
MARK_COMPLETED = """
WITH done (job_id, lease) AS (VALUES %s),
held AS (
    SELECT j.job_id FROM {table} AS j JOIN done USING (job_id)
    WHERE j.status = 'PROCESSING' AND j.lease_expires_at IS NOT DISTINCT FROM done.lease
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE {table} AS j
SET status = 'COMPLETED', lease_expires_at = NULL, updated_at = now()
FROM held
WHERE j.job_id = held.job_id
RETURNING j.job_id
"""

SCHEDULE_RETRY = """
WITH retry (job_id, lease, attempts, delay_seconds, error) AS (VALUES %s),
held AS (
    SELECT j.job_id FROM {table} AS j JOIN retry USING (job_id)
    WHERE j.status = 'PROCESSING' AND j.lease_expires_at IS NOT DISTINCT FROM retry.lease
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE {table} AS j
SET status = 'PENDING',
    attempts = retry.attempts,
    next_run_at = now() + retry.delay_seconds * interval '1 second',
    last_error = retry.error,
    lease_expires_at = NULL,
    updated_at = now()
FROM held JOIN retry USING (job_id)
WHERE j.job_id = held.job_id
RETURNING j.job_id
"""

MARK_FAILED = """
WITH failed (job_id, lease, attempts, error) AS (VALUES %s),
held AS (
    SELECT j.job_id FROM {table} AS j JOIN failed USING (job_id)
    WHERE j.status = 'PROCESSING' AND j.lease_expires_at IS NOT DISTINCT FROM failed.lease
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE {table} AS j
SET status = 'FAILED', attempts = failed.attempts, last_error = failed.error,
    lease_expires_at = NULL, updated_at = now()
FROM held JOIN failed USING (job_id)
WHERE j.job_id = held.job_id
RETURNING j.job_id
"""

DEFER = """
WITH deferred (job_id, lease, delay_seconds, reason) AS (VALUES %s),
held AS (
    SELECT j.job_id FROM {table} AS j JOIN deferred USING (job_id)
    WHERE j.status = 'PROCESSING' AND j.lease_expires_at IS NOT DISTINCT FROM deferred.lease
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE {table} AS j
SET status = 'PENDING',
    next_run_at = now() + deferred.delay_seconds * interval '1 second',
    last_error = COALESCE(deferred.reason, j.last_error),
    lease_expires_at = NULL,
    updated_at = now()
FROM held JOIN deferred USING (job_id)
WHERE j.job_id = held.job_id
RETURNING j.job_id
"""

# The heartbeat: the lease of every job this worker still holds (running, or finished with its outcome
# not yet written) moves lease_seconds ahead. The new value is also the claim's new token, so the
# poller writes the outcome with it. Rows locked by another session are skipped (renewed next time).
RENEW_LEASES = """
WITH mine (job_id, lease) AS (VALUES %s),
held AS (
    SELECT j.job_id FROM {table} AS j JOIN mine USING (job_id)
    WHERE j.status = 'PROCESSING' AND j.lease_expires_at IS NOT DISTINCT FROM mine.lease
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE {table} AS j
SET lease_expires_at = now() + {lease_seconds} * interval '1 second'
FROM held
WHERE j.job_id = held.job_id
RETURNING j.job_id, j.lease_expires_at
"""

# Asked only about claims a write or renewal did not touch: still held (so a lock was in the way and
# the next cycle tries again), or lost (the job was reaped, and maybe claimed again).
STILL_HELD = """
SELECT j.job_id FROM {table} AS j JOIN (VALUES %s) AS mine (job_id, lease) USING (job_id)
WHERE j.status = 'PROCESSING' AND j.lease_expires_at IS NOT DISTINCT FROM mine.lease
"""

# After a connection broke during a transaction that renewed leases, the worker cannot know whether
# the renewal committed. While the lease it knew is still in the future nobody can have reaped the
# job, so a later lease on a job still PROCESSING can only be its own renewal: it adopts that value.
RESYNC_LEASES = """
SELECT j.job_id, j.lease_expires_at
FROM {table} AS j JOIN (VALUES %s) AS mine (job_id, lease) USING (job_id)
WHERE j.status = 'PROCESSING' AND mine.lease > now() AND j.lease_expires_at > mine.lease
"""

# An outcome that outlived its lease (kept in the spool over a restart, or held through a long outage)
# may find its job reaped: PENDING (or FAILED at max_attempts) again with the lost attempt counted. If
# nothing happened to the job since (attempts just one more, the reap's error, no lease), nobody has
# run it again: the claim is restored so the outcome is written as usual, and the delivery that did
# happen wins. A job claimed again by anyone no longer matches and is left alone.
RESTORE_REAPED = """
WITH mine (job_id, lease, attempts) AS (VALUES %s),
reaped AS (
    SELECT j.job_id FROM {table} AS j JOIN mine USING (job_id)
    WHERE j.status IN ('PENDING', 'FAILED') AND j.lease_expires_at IS NULL
      AND j.attempts = mine.attempts + 1 AND j.last_error = {lease_lost}
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE {table} AS j
SET status = 'PROCESSING', lease_expires_at = mine.lease, attempts = mine.attempts
FROM reaped JOIN mine USING (job_id)
WHERE j.job_id = reaped.job_id
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
      AND job_id <> ALL (%(mine)s::bigint[])
      AND (%(only)s::bigint IS NULL OR job_id = %(only)s::bigint)
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

# The expired jobs one by one, for when reaping them all in one statement is refused (one bad row must
# not block the recovery of every other crashed job).
EXPIRED_JOBS = """
SELECT job_id FROM {table}
WHERE status = 'PROCESSING'
  AND COALESCE(lease_expires_at, updated_at + %(lease_seconds)s * interval '1 second') < now()
  AND job_id <> ALL (%(mine)s::bigint[])
ORDER BY job_id
LIMIT %(limit)s
"""


# Whether any job is due at all (the due-job partial index answers it). A claim can come back empty
# while jobs are due: every candidate row was locked by another worker's claim at that moment.
ANY_DUE = """
SELECT EXISTS (SELECT 1 FROM {table} WHERE status = 'PENDING' AND next_run_at <= now())
"""


def clip(error: str | None) -> str | None:
    """At most ERROR_LIMIT characters, without NUL (PostgreSQL text cannot hold it)."""
    return None if error is None else error.replace("\x00", "\\0")[:ERROR_LIMIT]


def _statement(cur: cursor, statement: str, table: Table, **literals: Any) -> str:
    """The statement with its table name (and any constants) filled in, ready for execute_values."""
    values = {name: sql.Literal(value) for name, value in literals.items()}
    return sql.SQL(statement).format(table=sql.Identifier(table.value), **values).as_string(cur)


def renew_leases(
    cur: cursor, table: Table, claims: Sequence[tuple[int, datetime | None]], lease_seconds: float
) -> dict[int, datetime]:
    """Renew the leases of (job_id, lease) claims still held; return each renewed job's new lease."""
    if not claims:
        return {}
    query = _statement(cur, RENEW_LEASES, table, lease_seconds=lease_seconds)
    rows = execute_values(cur, query, claims, template="(%s::bigint, %s::timestamptz)", fetch=True)
    return {job_id: lease for job_id, lease in rows}


def still_held(cur: cursor, table: Table, claims: Sequence[tuple[int, datetime | None]]) -> set[int]:
    """The jobs among (job_id, lease) claims that are still PROCESSING under that lease."""
    if not claims:
        return set()
    query = _statement(cur, STILL_HELD, table)
    rows = execute_values(cur, query, claims, template="(%s::bigint, %s::timestamptz)", fetch=True)
    return {job_id for (job_id,) in rows}


def resync_leases(
    cur: cursor, table: Table, claims: Sequence[tuple[int, datetime | None]]
) -> dict[int, datetime]:
    """The leases an uncertain renewal stored for these (job_id, lease) claims (see RESYNC_LEASES)."""
    known = [(job_id, lease) for job_id, lease in claims if lease is not None]
    if not known:
        return {}
    query = _statement(cur, RESYNC_LEASES, table)
    rows = execute_values(cur, query, known, template="(%s::bigint, %s::timestamptz)", fetch=True)
    return {job_id: lease for job_id, lease in rows}


def restore_reaped(cur: cursor, table: Table, jobs: Sequence[Job]) -> set[int]:
    """Put back the claim of jobs reaped since and untouched after (see RESTORE_REAPED)."""
    if not jobs:
        return set()
    query = _statement(cur, RESTORE_REAPED, table, lease_lost=LEASE_LOST_ERROR)
    rows = execute_values(
        cur,
        query,
        [(j.job_id, j.lease, j.attempts) for j in jobs],
        template="(%s::bigint, %s::timestamptz, %s::int)",
        fetch=True,
    )
    return {job_id for (job_id,) in rows}


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

    def reap_expired(
        self, cur: cursor, *, mine: Sequence[int] = (), only: int | None = None
    ) -> list[tuple[Any, ...]]:
        """Take back jobs whose lease ran out: (job_id, status, tenant_id, alert_id, attempts, extra).

        ``mine``: jobs this worker holds, never taken back by it (it is still running them or has
        their outcome to write). ``only``: reap just this job (when the whole batch was refused).
        """
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
                "mine": list(mine),
                "only": only,
            },
        )
        return list(cur.fetchall())

    def has_due(self, cur: cursor) -> bool:
        """Whether any PENDING job is due now (claimable or not by this worker)."""
        cur.execute(sql.SQL(ANY_DUE).format(table=sql.Identifier(self.table.value)))
        row = cur.fetchone()
        return bool(row and row[0])

    def expired_jobs(self, cur: cursor, *, mine: Sequence[int] = (), limit: int = 1000) -> list[int]:
        """Ids of jobs whose lease ran out, without taking them (for reaping one by one)."""
        query = sql.SQL(EXPIRED_JOBS).format(table=sql.Identifier(self.table.value))
        cur.execute(query, {"lease_seconds": self.lease_seconds, "mine": list(mine), "limit": limit})
        return [job_id for (job_id,) in cur.fetchall()]
