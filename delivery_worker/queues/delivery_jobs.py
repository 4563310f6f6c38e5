"""The integrations pipeline's queue: ``delivery_jobs``, ``integrations`` and ``delivery_attempts``.

An integration row keeps each type's settings in its own columns; ``integration_config`` maps them
onto the config shape the channel modules read, so both pipelines share one sender per type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from psycopg2.extensions import cursor
from psycopg2.extras import execute_values

from delivery_worker.jobs import Destination, Job, Outcome, Table, Verdict
from delivery_worker.queues.claim_order import ClaimOrder, ClaimsInOrder, ordered_claim
from delivery_worker.queues.json_columns import JsonColumns
from delivery_worker.queues.status import LEASE_LOST_ERROR, LeasedQueue, clip, record_statuses
from delivery_worker.retry import RetryPolicy

# One statement claims the batch in claim order (queues/claim_order.py) and returns each job with
# its integration (NULL when it was deleted). JSON comes back as text, read by json_columns.py.
CLAIM = ordered_claim(
    Table.DELIVERY_JOBS,
    destination="integration_id",
    chosen_columns="j.job_id, j.tenant_id, j.integration_id",
    update="""
UPDATE delivery_jobs AS j
SET status = 'PROCESSING',
    lease_expires_at = now() + %(lease_seconds)s * interval '1 second',
    updated_at = now()
FROM chosen
LEFT JOIN integrations AS i
       ON i.tenant_id = chosen.tenant_id AND i.integration_id = chosen.integration_id
WHERE j.job_id = chosen.job_id
RETURNING j.job_id, j.tenant_id, j.alert_id, j.deliver_on_event, j.attempts, j.payload_json::text,
          j.lease_expires_at, j.created_at, j.integration_id::text,
          i.integration_id, i.type::text, i.enabled, i.config_json::text,
          i.snmp_host, i.snmp_port, i.snmp_config::text, i.snmp_oid_prefix,
          i.email_config::text, i.email_recipients::text, i.email_template::text,
          i.mqtt_topic, i.mqtt_qos, i.mqtt_retain, i.mqtt_config::text
""",
)

INSERT_ATTEMPTS = """
INSERT INTO delivery_attempts
    (tenant_id, job_id, attempt_no, ok, http_status, latency_ms, error, started_at, finished_at)
VALUES %s
"""


def integration_config(kind: str, row: Mapping[str, Any]) -> Any:
    """The channel-module config for an integration row of the given type."""
    if kind == "webhook":
        return row["config_json"]
    if kind == "email":
        return {
            "smtp": row["email_config"],
            "recipients": row["email_recipients"],
            "template": row["email_template"],
        }
    if kind == "snmp":
        extra = row["snmp_config"] if row["snmp_config"] is not None else {}
        if not isinstance(extra, Mapping):
            return extra  # the channel rejects a non-object config with a clear error
        columns = {"host": row["snmp_host"], "port": row["snmp_port"], "oid_prefix": row["snmp_oid_prefix"]}
        return {**extra, **{key: value for key, value in columns.items() if value is not None}}
    if kind == "mqtt":
        extra = row["mqtt_config"] if row["mqtt_config"] is not None else {}
        if not isinstance(extra, Mapping):
            return extra
        columns = {"topic": row["mqtt_topic"], "qos": row["mqtt_qos"], "retain": row["mqtt_retain"]}
        return {**extra, **{key: value for key, value in columns.items() if value is not None}}
    return row["config_json"]


INTEGRATION_COLUMNS = (
    "integration_id",
    "type",
    "enabled",
    "config_json",
    "snmp_host",
    "snmp_port",
    "snmp_config",
    "snmp_oid_prefix",
    "email_config",
    "email_recipients",
    "email_template",
    "mqtt_topic",
    "mqtt_qos",
    "mqtt_retain",
    "mqtt_config",
)

JSON_COLUMNS = (
    "config_json",
    "snmp_config",
    "email_config",
    "email_recipients",
    "email_template",
    "mqtt_config",
)


class DeliveryJobs(ClaimsInOrder, LeasedQueue):
    table = Table.DELIVERY_JOBS
    claim_sql = CLAIM
    reap_returns = "NULL"

    def __init__(self, *, lease_seconds: float, policy: RetryPolicy, order: ClaimOrder | None = None) -> None:
        super().__init__(lease_seconds=lease_seconds, policy=policy)
        self.order = order or ClaimOrder()

    def record(self, cur: cursor, outcomes: Sequence[Outcome]) -> set[int]:
        written = record_statuses(cur, self.table, outcomes)
        rows = [
            (
                o.job.tenant_id,
                o.job.job_id,
                o.job.attempt,
                o.verdict is Verdict.COMPLETED,
                o.http_status,
                o.latency_ms,
                clip(o.error),
                o.started_at,
                o.finished_at,
            )
            for o in outcomes
            if o.verdict is not Verdict.DEFERRED and o.job.job_id in written
        ]
        if rows:
            execute_values(cur, INSERT_ATTEMPTS, rows)
        return written

    def reap(self, cur: cursor, *, mine: Sequence[int] = (), only: int | None = None) -> int:
        reaped = self.reap_expired(cur, mine=mine, only=only)
        rows = [
            (tenant_id, job_id, attempts, False, None, None, LEASE_LOST_ERROR, None, None)
            for job_id, _status, tenant_id, _alert, attempts, _extra in reaped
        ]
        if rows:
            execute_values(
                cur,
                INSERT_ATTEMPTS,
                rows,
                template="(%s, %s, %s, %s, %s, %s, %s, COALESCE(%s, now()), COALESCE(%s, now()))",
            )
        return len(reaped)

    def job_from_row(self, row: tuple[Any, ...]) -> Job:
        job_id, tenant_id, alert_id, event, attempts, payload, lease, created_at, job_integration, *rest = row
        integration = dict(zip(INTEGRATION_COLUMNS, rest, strict=True))
        columns = JsonColumns()
        payload = columns.read("payload_json", payload)
        destination = None
        if integration["integration_id"] is not None:
            for name in JSON_COLUMNS:
                integration[name] = columns.read(f"integrations.{name}", integration[name])
            kind = integration["type"]
            destination = Destination(
                destination_id=str(integration["integration_id"]),
                tenant_id=tenant_id,
                channel_type=kind,
                enabled=integration["enabled"] is not False,
                config=integration_config(kind, integration),
            )
        return Job(
            table=Table.DELIVERY_JOBS,
            job_id=job_id,
            tenant_id=tenant_id,
            alert_id=alert_id,
            event=event or "OPEN",
            attempts=attempts,
            payload=payload,
            destination=destination,
            lease=lease,
            unreadable=columns.unreadable,
            created_at=created_at,
            integration_id=job_integration,
        )
