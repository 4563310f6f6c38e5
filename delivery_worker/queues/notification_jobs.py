"""The unified pipeline's queue: ``notification_jobs``, its channels, and ``notification_log``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg2.extensions import cursor
from psycopg2.extras import execute_values

from delivery_worker.jobs import Destination, Job, Outcome, Table, Verdict
from delivery_worker.queues.status import clip, record_statuses

# One statement claims the batch and returns each job with its channel (NULL when it was deleted).
CLAIM = """
WITH due AS (
    SELECT job_id, channel_id
    FROM notification_jobs
    WHERE status = 'PENDING' AND next_run_at <= now()
    ORDER BY next_run_at, job_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE notification_jobs AS j
SET status = 'PROCESSING', updated_at = now()
FROM due
LEFT JOIN notification_channels AS c ON c.channel_id = due.channel_id
WHERE j.job_id = due.job_id
RETURNING j.job_id, j.tenant_id, j.alert_id, j.channel_id, j.deliver_on_event, j.attempts,
          j.payload_json, c.channel_id, c.tenant_id, c.channel_type, c.is_enabled, c.config
"""

INSERT_LOG = """
INSERT INTO notification_log (channel_id, alert_id, job_id, success, error_msg)
VALUES %s
"""


class NotificationJobs:
    table = Table.NOTIFICATION_JOBS

    def claim(self, cur: cursor, limit: int) -> list[Job]:
        cur.execute(CLAIM, {"limit": limit})
        return [self._job(row) for row in cur.fetchall()]

    def record(self, cur: cursor, outcomes: Sequence[Outcome]) -> None:
        record_statuses(cur, self.table, outcomes)
        finished = [o for o in outcomes if o.verdict is not Verdict.RETRY]
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

    @staticmethod
    def _job(row: tuple[Any, ...]) -> Job:
        (job_id, tenant_id, alert_id, channel_id, event, attempts, payload, *channel) = row
        found_id, channel_tenant, channel_type, enabled, config = channel
        destination = None
        if found_id is not None:
            destination = Destination(
                destination_id=str(found_id),
                tenant_id=channel_tenant,
                channel_type=channel_type,
                enabled=bool(enabled),
                config=config,
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
        )
