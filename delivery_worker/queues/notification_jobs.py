"""The unified pipeline's queue: ``notification_jobs``, its channels, and ``notification_log``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg2.extensions import cursor
from psycopg2.extras import execute_values

from delivery_worker.jobs import Destination, Job, Outcome, Table, Verdict
from delivery_worker.queues.claim_order import ClaimOrder, ClaimsInOrder, ordered_claim
from delivery_worker.queues.json_columns import JsonColumns
from delivery_worker.queues.status import LEASE_LOST_ERROR, LeasedQueue, clip, record_statuses
from delivery_worker.retry import RetryPolicy

# One statement claims the batch in claim order (queues/claim_order.py) and returns each job with
# its channel (NULL when it was deleted). JSON comes back as text, read by json_columns.py.
CLAIM = ordered_claim(
    Table.NOTIFICATION_JOBS,
    destination="channel_id",
    chosen_columns="j.job_id, j.channel_id",
    update="""
UPDATE notification_jobs AS j
SET status = 'PROCESSING',
    lease_expires_at = now() + %(lease_seconds)s * interval '1 second',
    updated_at = now()
FROM chosen
LEFT JOIN notification_channels AS c ON c.channel_id = chosen.channel_id
WHERE j.job_id = chosen.job_id
RETURNING j.job_id, j.tenant_id, j.alert_id, j.channel_id, j.deliver_on_event, j.attempts,
          j.payload_json::text, j.lease_expires_at, j.created_at,
          c.channel_id, c.tenant_id, c.channel_type, c.is_enabled, c.config::text
""",
)

INSERT_LOG = """
INSERT INTO notification_log (channel_id, alert_id, job_id, success, error_msg)
VALUES %s
"""


class NotificationJobs(ClaimsInOrder, LeasedQueue):
    table = Table.NOTIFICATION_JOBS
    claim_sql = CLAIM
    reap_returns = "j.channel_id"

    def __init__(self, *, lease_seconds: float, policy: RetryPolicy, order: ClaimOrder | None = None) -> None:
        super().__init__(lease_seconds=lease_seconds, policy=policy)
        self.order = order or ClaimOrder()

    def record(self, cur: cursor, outcomes: Sequence[Outcome]) -> set[int]:
        written = record_statuses(cur, self.table, outcomes)
        finished = [
            o
            for o in outcomes
            if o.verdict in (Verdict.COMPLETED, Verdict.FAILED) and o.job.job_id in written
        ]
        if finished:
            rows = [
                (
                    o.job.channel_id,
                    o.job.alert_id,
                    o.job.job_id,
                    o.verdict is Verdict.COMPLETED,
                    None if o.verdict is Verdict.COMPLETED else clip(o.error),
                )
                for o in finished
            ]
            execute_values(cur, INSERT_LOG, rows)
        return written

    def reap(self, cur: cursor, *, mine: Sequence[int] = (), only: int | None = None) -> int:
        reaped = self.reap_expired(cur, mine=mine, only=only)
        failed = [
            (channel_id, alert_id, job_id, False, LEASE_LOST_ERROR)
            for job_id, status, _tenant, alert_id, _attempts, channel_id in reaped
            if status == "FAILED"
        ]
        if failed:
            execute_values(cur, INSERT_LOG, failed)
        return len(reaped)

    def job_from_row(self, row: tuple[Any, ...]) -> Job:
        (job_id, tenant_id, alert_id, channel_id, event, attempts, payload, lease, created_at, *channel) = row
        found_id, channel_tenant, channel_type, enabled, config = channel
        columns = JsonColumns()
        payload = columns.read("payload_json", payload)
        destination = None
        if found_id is not None:
            destination = Destination(
                destination_id=str(found_id),
                tenant_id=channel_tenant,
                channel_type=channel_type,
                enabled=bool(enabled),
                config=columns.read("notification_channels.config", config),
            )
        return Job(
            table=Table.NOTIFICATION_JOBS,
            job_id=job_id,
            tenant_id=tenant_id,
            alert_id=alert_id,
            event=event or "OPEN",
            attempts=attempts,
            payload=payload,
            destination=destination,
            channel_id=channel_id,
            lease=lease,
            unreadable=columns.unreadable,
            created_at=created_at,
        )
