"""The demo's queue: ``notification_jobs``, only the jobs `delivery-worker demo` queued, for its own worker.

Another worker may be polling the same database (`make run` in another terminal). Its address
guard rightly refuses the demo's loopback receiver, so a demo job it claimed would fail. The demo's
jobs are therefore *parked*: inserted with ``next_run_at`` a century ahead (``PARKED``), so no
normal claim (``status = 'PENDING' AND next_run_at <= now()``) ever sees them as due. This queue
claims them by id, reading ``next_run_at - PARKED`` as their due time, and every outcome that puts
one back to PENDING (a deferral, e.g. a rate limit) re-parks it in the same transaction. Everything
else (the lease, the heartbeat, the status writes and ``notification_log`` rows) is
``NotificationJobs``'s, so the rows and log lines are those of any real delivery.

Why parking rather than a marker the normal claim would skip: it needs no column, no migration and
no change to the normal claim (queues/claim_order.py), and a worker of any version already skips
a job that is not due.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from psycopg2.extensions import cursor

from delivery_worker.jobs import Job, Outcome, Verdict
from delivery_worker.queues.companions import claimed_rows_tail
from delivery_worker.queues.notification_jobs import CLAIM, NotificationJobs
from delivery_worker.retry import RetryPolicy

PARKED = "interval '100 years'"

# The demo's jobs that are due for it, an alert's earlier event first (as the normal claim does),
# then the UPDATE ... RETURNING of the normal claim, so rows come back in the shape job_from_row reads.
CLAIM_DEMO_JOBS = f"""
WITH chosen AS (
    SELECT j.job_id, j.channel_id
    FROM notification_jobs AS j
    WHERE j.job_id = ANY(%(job_ids)s::bigint[])
      AND j.status = 'PENDING'
      AND j.next_run_at - {PARKED} <= now()
      AND (j.deliver_on_event = 'OPEN' OR NOT EXISTS (
            SELECT 1 FROM notification_jobs AS earlier
            WHERE earlier.tenant_id = j.tenant_id AND earlier.alert_id = j.alert_id
              AND earlier.channel_id = j.channel_id
              AND earlier.status IN ('PENDING', 'PROCESSING')
              AND array_position(ARRAY['OPEN', 'ACKNOWLEDGED', 'CLOSED'], earlier.deliver_on_event)
                  < array_position(ARRAY['OPEN', 'ACKNOWLEDGED', 'CLOSED'], j.deliver_on_event)))
    ORDER BY j.job_id
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
)""" + claimed_rows_tail(CLAIM)

# A demo job put back to PENDING (now() + its delay) is parked again before anyone can see it due.
REPARK = f"""
UPDATE notification_jobs
SET next_run_at = next_run_at + {PARKED}
WHERE job_id = ANY(%(job_ids)s::bigint[]) AND status = 'PENDING'
"""

STILL_PENDING = """
SELECT EXISTS (
    SELECT 1 FROM notification_jobs WHERE job_id = ANY(%(job_ids)s::bigint[]) AND status = 'PENDING'
)
"""


class DemoJobs(NotificationJobs):
    """``notification_jobs`` limited to ``job_ids``, which are parked (see the module docstring)."""

    claim_sql = CLAIM_DEMO_JOBS

    def __init__(self, job_ids: Sequence[int], *, lease_seconds: float, policy: RetryPolicy) -> None:
        super().__init__(lease_seconds=lease_seconds, policy=policy)
        self.job_ids = list(job_ids)

    def claim(self, cur: cursor, limit: int, running: Mapping[str, int] | None = None) -> list[Job]:
        """The demo's due jobs (a few per channel, so the per-destination share never binds)."""
        cur.execute(
            CLAIM_DEMO_JOBS,
            {"job_ids": self.job_ids, "limit": limit, "lease_seconds": self.lease_seconds},
        )
        return [self.job_from_row(row) for row in cur.fetchall()]

    def record(self, cur: cursor, outcomes: Sequence[Outcome]) -> set[int]:
        written = super().record(cur, outcomes)
        back = [
            o.job.job_id
            for o in outcomes
            if o.verdict in (Verdict.RETRY, Verdict.DEFERRED) and o.job.job_id in written
        ]
        if back:
            cur.execute(REPARK, {"job_ids": back})
        return written

    def has_due(self, cur: cursor) -> bool:
        """Any demo job still PENDING, due or deferred: a drain waits for it."""
        cur.execute(STILL_PENDING, {"job_ids": self.job_ids})
        row = cur.fetchone()
        return bool(row and row[0])

    # The demo takes back no expired lease: other workers' jobs are theirs to recover, and its own
    # claims are renewed by its heartbeat for as long as it runs.
    def reap(self, cur: cursor, *, mine: Sequence[int] = (), only: int | None = None) -> int:
        return 0

    def expired_jobs(self, cur: cursor, *, mine: Sequence[int] = (), limit: int = 1000) -> list[int]:
        return []
