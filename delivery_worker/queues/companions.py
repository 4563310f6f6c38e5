"""Claiming a digest's companions: the other due PENDING jobs of one destination and tenant.

When the poller has claimed a job for a destination that can take a digest, these statements claim
that destination's other due jobs in the same transaction, under the same lease, so one message can
cover them all. They return rows in exactly the shape of the queue's CLAIM, mapped by the queue's own
``job_from_row``.

Each alert's events stay in order: a job is not taken while a job of an earlier event (OPEN before
ACKNOWLEDGED before CLOSED) for the same alert and destination is still PENDING or PROCESSING, the
ones this cycle just claimed included, so a CLOSED never overtakes its OPEN into an earlier message.
"""

from __future__ import annotations

from psycopg2.extensions import cursor

from delivery_worker.jobs import Job, Table
from delivery_worker.queues.status import LeasedQueue

EVENT_RANK = "CASE {e}.deliver_on_event WHEN 'ACKNOWLEDGED' THEN 1 WHEN 'CLOSED' THEN 2 ELSE 0 END"

NOTIFICATION_COMPANIONS = f"""
WITH due AS (
    SELECT j.job_id, j.channel_id
    FROM notification_jobs AS j
    WHERE j.status = 'PENDING' AND j.next_run_at <= now()
      AND j.channel_id = %(destination)s::integer AND j.tenant_id = %(tenant_id)s
      AND NOT EXISTS (
          SELECT 1 FROM notification_jobs AS earlier
          WHERE earlier.tenant_id = j.tenant_id AND earlier.alert_id = j.alert_id
            AND earlier.channel_id = j.channel_id
            AND earlier.status IN ('PENDING', 'PROCESSING')
            AND {EVENT_RANK.format(e="earlier")} < {EVENT_RANK.format(e="j")}
      )
    ORDER BY j.next_run_at, j.job_id
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE notification_jobs AS j
SET status = 'PROCESSING',
    lease_expires_at = now() + %(lease_seconds)s * interval '1 second',
    updated_at = now()
FROM due
LEFT JOIN notification_channels AS c ON c.channel_id = due.channel_id
WHERE j.job_id = due.job_id
RETURNING j.job_id, j.tenant_id, j.alert_id, j.channel_id, j.deliver_on_event, j.attempts,
          j.payload_json, j.lease_expires_at,
          c.channel_id, c.tenant_id, c.channel_type, c.is_enabled, c.config
"""

DELIVERY_COMPANIONS = f"""
WITH due AS (
    SELECT j.job_id, j.tenant_id, j.integration_id
    FROM delivery_jobs AS j
    WHERE j.status = 'PENDING' AND j.next_run_at <= now()
      AND j.integration_id = %(destination)s::uuid AND j.tenant_id = %(tenant_id)s
      AND NOT EXISTS (
          SELECT 1 FROM delivery_jobs AS earlier
          WHERE earlier.tenant_id = j.tenant_id AND earlier.alert_id = j.alert_id
            AND earlier.integration_id = j.integration_id
            AND earlier.status IN ('PENDING', 'PROCESSING')
            AND {EVENT_RANK.format(e="earlier")} < {EVENT_RANK.format(e="j")}
      )
    ORDER BY j.next_run_at, j.job_id
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE delivery_jobs AS j
SET status = 'PROCESSING',
    lease_expires_at = now() + %(lease_seconds)s * interval '1 second',
    updated_at = now()
FROM due
LEFT JOIN integrations AS i
       ON i.tenant_id = due.tenant_id AND i.integration_id = due.integration_id
WHERE j.job_id = due.job_id
RETURNING j.job_id, j.tenant_id, j.alert_id, j.deliver_on_event, j.attempts, j.payload_json,
          j.lease_expires_at,
          i.integration_id, i.type::text, i.enabled, i.config_json,
          i.snmp_host, i.snmp_port, i.snmp_config, i.snmp_oid_prefix,
          i.email_config, i.email_recipients, i.email_template,
          i.mqtt_topic, i.mqtt_qos, i.mqtt_retain, i.mqtt_config
"""

STATEMENTS = {Table.NOTIFICATION_JOBS: NOTIFICATION_COMPANIONS, Table.DELIVERY_JOBS: DELIVERY_COMPANIONS}


def claim_companions(cur: cursor, queue: LeasedQueue, lead: Job, limit: int) -> list[Job]:
    """Up to ``limit`` more due jobs for ``lead``'s destination and tenant, claimed as PROCESSING."""
    assert lead.destination is not None, "only a job with a destination has companions"
    cur.execute(
        STATEMENTS[queue.table],
        {
            "destination": lead.destination.destination_id,
            "tenant_id": lead.tenant_id,
            "limit": limit,
            "lease_seconds": queue.lease_seconds,
        },
    )
    return [queue.job_from_row(row) for row in cur.fetchall()]
