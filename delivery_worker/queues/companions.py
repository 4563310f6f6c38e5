"""Claiming a digest's companions: the other due PENDING jobs of one destination and tenant.

When the poller has claimed a job for a destination that can take a digest, this claims that
destination's other due jobs in the same transaction, under the same lease, so one message can cover
them all. The locking SELECT is ours; the ``UPDATE … RETURNING`` that follows is the tail of the
queue's own CLAIM, so companion rows always come back in exactly the shape its ``job_from_row``
reads, whatever that CLAIM returns.

Each alert's events stay in order: a job is not taken while a job of an earlier event (OPEN before
ACKNOWLEDGED before CLOSED) for the same alert and destination is still PENDING or PROCESSING, the
ones this cycle just claimed included, so a CLOSED never overtakes its OPEN into an earlier message.
"""

from __future__ import annotations

from psycopg2.extensions import cursor

from delivery_worker.jobs import Job, Table
from delivery_worker.queues.claim_order import not_paused
from delivery_worker.queues.status import LeasedQueue

DESTINATION_COLUMN = {Table.NOTIFICATION_JOBS: "channel_id", Table.DELIVERY_JOBS: "integration_id"}
DESTINATION_TYPE = {Table.NOTIFICATION_JOBS: "integer", Table.DELIVERY_JOBS: "uuid"}

EVENT_RANK = "CASE {e}.deliver_on_event WHEN 'ACKNOWLEDGED' THEN 1 WHEN 'CLOSED' THEN 2 ELSE 0 END"

# The CLAIM's UPDATE reads the locked ids from a CTE named ``due`` (or ``chosen``): both are offered.
COMPANIONS = """
WITH chosen AS (
    SELECT j.job_id, j.tenant_id, j.{destination}
    FROM {table} AS j
    WHERE j.status = 'PENDING' AND j.next_run_at <= now()
      AND j.{destination} = %(destination)s::{destination_type} AND j.tenant_id = %(tenant_id)s
      AND {not_paused}
      AND NOT EXISTS (
          SELECT 1 FROM {table} AS earlier
          WHERE earlier.tenant_id = j.tenant_id AND earlier.alert_id = j.alert_id
            AND earlier.{destination} = j.{destination}
            AND earlier.status IN ('PENDING', 'PROCESSING')
            AND {earlier_rank} < {rank}
      )
    ORDER BY j.next_run_at, j.job_id
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
),
due AS (SELECT * FROM chosen)
"""


def claimed_rows_tail(claim_sql: str) -> str:
    """The ``UPDATE … RETURNING`` that ends a queue's CLAIM statement."""
    return claim_sql[claim_sql.rindex("\nUPDATE ") :]


def companions_sql(queue: LeasedQueue) -> str:
    table = queue.table
    head = COMPANIONS.format(
        table=table.value,
        destination=DESTINATION_COLUMN[table],
        destination_type=DESTINATION_TYPE[table],
        earlier_rank=EVENT_RANK.format(e="earlier"),
        rank=EVENT_RANK.format(e="j"),
        not_paused=not_paused(table, "j.tenant_id", "j." + DESTINATION_COLUMN[table]),
    )
    return head + claimed_rows_tail(queue.claim_sql)


def claim_companions(cur: cursor, queue: LeasedQueue, lead: Job, limit: int) -> list[Job]:
    """Up to ``limit`` more due jobs for ``lead``'s destination and tenant, claimed as PROCESSING."""
    assert lead.destination is not None, "only a job with a destination has companions"
    cur.execute(
        companions_sql(queue),
        {
            "destination": lead.destination.destination_id,
            "tenant_id": lead.tenant_id,
            "limit": limit,
            "lease_seconds": queue.lease_seconds,
        },
    )
    return [queue.job_from_row(row) for row in cur.fetchall()]
